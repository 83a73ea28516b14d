"""A convolution with few output channels, computed fast on CPU by a space-to-depth view.

Why: oneDNN, PyTorch's CPU convolution library, vectorises over blocks of 16 output
channels, so a layer with one output channel (the last layer of a generator) computes
sixteen and keeps one. The ISM's last layer (8 -> 1, kernel 7, at full resolution) took
59% of the ISM's training step for a quarter of its FLOPs (``benchmarks/perf_layers.py``).

How: with factor s, every s x s x s block of output voxels becomes s^3 output channels of
a convolution over s^3 * C_in input channels at 1/s of each side, with kernel
ceil((k + s - 1) / s). Its weight is the original weight scattered into the larger one
(zeros elsewhere), so the result is the same sum of the same products, equal up to
floating-point summation order, with the very same parameters and state_dict. The extra
multiplies by zero cost less than the wasted output channels
(``benchmarks/perf_conv_s2d.py`` measures both and checks the equality in float64).

When: on CPU, and only when the network has been put in channels-last-3D memory, which is
the run's switch for CPU layout optimisations (``precision.channels_last``): with the switch
off the layer is the plain ``nn.Conv3d``, which keeps "plain fp32, contiguous" a true
reference. On CUDA, cuDNN has no such waste, so the layer is always the plain convolution.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def memory_format_of(module: nn.Module) -> torch.memory_format:
    """How ``module``'s conv weights are stored: channels-last-3D, or contiguous.

    The core places the modules that factories build (channels-last when the run asks for
    it); modules built later follow this. A weight with one input channel is both at once,
    so any weight that is channels-last and not contiguous decides.
    """
    channels_last = torch.channels_last_3d
    weights = [p for p in module.parameters() if p.dim() == 5]
    if any(w.is_contiguous(memory_format=channels_last) and not w.is_contiguous() for w in weights):
        return channels_last
    return torch.contiguous_format


def _space_to_depth(x: Tensor, s: int) -> Tensor:
    """[B, C, D, H, W] to [B, s^3*C, D/s, H/s, W/s], stored channels-last (one copy).

    The new channels are ordered (voxel in block, channel), channel fastest: on a
    channels-last input each output voxel's channels are then read in runs of s*C contiguous
    values (a block row's voxels with all their channels), not gathered one value at a time
    as with the channel slowest, which made this copy 5-6x slower on CPU.
    """
    b, c, d, h, w = x.shape
    blocks = x.reshape(b, c, d // s, s, h // s, s, w // s, s).permute(0, 2, 4, 6, 3, 5, 7, 1)
    return blocks.reshape(b, d // s, h // s, w // s, s**3 * c).permute(0, 4, 1, 2, 3)


def _depth_to_space(y: Tensor, s: int) -> Tensor:
    """The inverse for the output: [B, O*s^3, D', H', W'] to [B, O, D'*s, H'*s, W'*s]."""
    b, c, d, h, w = y.shape
    o = c // s**3
    blocks = y.permute(0, 2, 3, 4, 1).reshape(b, d, h, w, o, s, s, s).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return blocks.reshape(b, o, d * s, h * s, w * s)


def _scatter_index(out_channels: int, in_channels: int, k: int, s: int) -> Tensor:
    """Where each entry of the large weight comes from in the flattened original weight.

    Large weight W'[(o, i), (j, c), A] = W[o, c, a] with a = s*A + j - i per axis (i the
    output voxel within its block, j the input voxel within its block, A the block tap; the
    input channels in :func:`_space_to_depth`'s order); positions with a outside [0, k) read
    an appended zero at index numel(W).
    """
    taps = -(-(k + s - 1) // s)
    i = torch.arange(s).view(s, 1, 1)
    j = torch.arange(s).view(1, s, 1)
    tap = torch.arange(taps).view(1, 1, taps)
    a = s * tap + j - i  # [i, j, A] along one axis
    valid = (a >= 0) & (a < k)
    a = a.clamp(0, k - 1)

    def along(axis: int, values: Tensor) -> Tensor:
        """One axis's [i, j, A] spread over the nine dims (i_d, i_h, i_w, j_d, j_h, j_w, A_d, A_h, A_w)."""
        shape = [1] * 9
        shape[axis], shape[3 + axis], shape[6 + axis] = s, s, taps
        return values.view(shape)

    spatial = (along(0, a) * k + along(1, a)) * k + along(2, a)  # offset inside one k^3 kernel
    inside = along(0, valid) & along(1, valid) & along(2, valid)
    o = torch.arange(out_channels).view(-1, *[1] * 10)
    c = torch.arange(in_channels).view(1, 1, 1, 1, -1, *[1] * 6)
    flat = (o * in_channels + c) * k**3 + spatial.unsqueeze(0).unsqueeze(4)  # [O, i.., C, j.., A..]
    zero = out_channels * in_channels * k**3
    index = torch.where(inside.unsqueeze(0).unsqueeze(4), flat, torch.full_like(flat, zero))
    index = index.permute(0, 1, 2, 3, 5, 6, 7, 4, 8, 9, 10)  # [O, i.., j.., C, A..]
    return index.reshape(out_channels * s**3, in_channels * s**3, taps, taps, taps)


class SpaceToDepthConv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs on a space-to-depth view on CPU in channels-last memory.

    Same constructor, parameters and outputs as ``nn.Conv3d``. The reformulation needs
    stride, dilation and groups of 1, a cubic kernel and output sides divisible by
    ``factor``; otherwise, on CUDA, or with contiguous weights the layer is the plain
    convolution. ``always=True`` uses the reformulation wherever it applies (benchmarks).
    """

    def __init__(self, *args: Any, factor: int = 2, always: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.factor = factor
        self.always = always
        k = self.kernel_size[0]
        self.reformulable = (
            self.stride == (1, 1, 1)
            and self.dilation == (1, 1, 1)
            and self.groups == 1
            and len(set(self.kernel_size)) == 1
        )
        index = _scatter_index(self.out_channels, self.in_channels, k, factor) if self.reformulable else None
        self.register_buffer("scatter_index", index, persistent=False)

    def _reformulate(self, x: Tensor) -> bool:
        if not self.reformulable or x.device.type != "cpu":
            return False
        return self.always or memory_format_of(self) == torch.channels_last_3d

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if not self._reformulate(x):
            return super()._conv_forward(x, weight, bias)
        s = self.factor
        k = self.kernel_size[0]
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        padded = F.pad(x, self._reversed_padding_repeated_twice, mode=mode)
        out_sides = [n - k + 1 for n in padded.shape[-3:]]
        if any(n % s for n in out_sides):
            return super()._conv_forward(x, weight, bias)
        scatter_index = cast(Tensor, self.scatter_index)  # a buffer; nn.Module types it Tensor | Module
        taps = scatter_index.shape[-1]
        # grow each side so that every output block sees all ``taps`` input blocks
        extra = [int(n + s * (taps - 1) - m) for n, m in zip(out_sides, padded.shape[-3:], strict=True)]
        padded = F.pad(padded, (0, extra[2], 0, extra[1], 0, extra[0]))
        large = torch.cat([weight.flatten(), weight.new_zeros(1)])[scatter_index]
        large = large.contiguous(memory_format=torch.channels_last_3d)
        large_bias = None if bias is None else bias.repeat_interleave(s**3)
        return _depth_to_space(F.conv3d(_space_to_depth(padded, s), large, large_bias), s)
