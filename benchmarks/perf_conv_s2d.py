"""A faster, exact form of a convolution with few output channels: ``python benchmarks/perf_conv_s2d.py``.

``benchmarks/perf_layers.py`` shows that the ISM's last layer (Conv3d 8 -> 1, kernel 7, at
full resolution) takes most of the ISM's training time on CPU while doing a quarter of its
FLOPs. oneDNN vectorises a convolution over blocks of 16 output channels, so a layer with
one output channel computes sixteen and keeps one: forward and weight gradient cost as much
as an 8 -> 16 convolution.

The same layer can be computed on a space-to-depth view. With factor s, every s x s x s
block of output voxels becomes s^3 output channels of a convolution over s^3 * C_in input
channels at 1/s of each side, with kernel ceil((k + s - 1) / s). Its weight is the original
weight scattered into the larger one (zeros elsewhere), so the result is the same sum of
the same products: equal up to floating-point summation order, with the same parameters
(same state_dict). The extra multiplies by zero cost less than the wasted output channels.

This script checks the equality (float64) and times the original layer, the reformulated
layer, the ISM with its last layer swapped and, with ``--joint``, the joint training step, in
bf16 + channels_last_3d and in plain fp32. It is the evidence behind the recommendation in
the perf notes; ``SpaceToDepthConv3d`` is written so it can move into the plugins as is.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _space_to_depth(x: Tensor, s: int) -> Tensor:
    """[B, C, D, H, W] to [B, C*s^3, D/s, H/s, W/s] in channels_last_3d memory (one copy)."""
    b, c, d, h, w = x.shape
    blocks = x.reshape(b, c, d // s, s, h // s, s, w // s, s).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return blocks.reshape(b, d // s, h // s, w // s, c * s**3).permute(0, 4, 1, 2, 3)


def _depth_to_space(y: Tensor, s: int) -> Tensor:
    """The inverse of ``_space_to_depth`` for the output: [B, O*s^3, D', H', W'] to [B, O, D's, H's, W's]."""
    b, c, d, h, w = y.shape
    o = c // s**3
    blocks = y.permute(0, 2, 3, 4, 1).reshape(b, d, h, w, o, s, s, s).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return blocks.reshape(b, o, d * s, h * s, w * s)


def _scatter_index(out_channels: int, in_channels: int, k: int, s: int) -> Tensor:
    """Where each entry of the large weight comes from in the flattened original weight.

    Large weight W'[(o, i), (c, j), A] = W[o, c, a] with a = s*A + j - i per axis (i the
    output voxel within its block, j the input voxel within its block, A the block tap);
    positions with a outside [0, k) read the appended zero at index numel(W).
    """
    taps = -(-(k + s - 1) // s)
    i = torch.arange(s).view(s, 1, 1)
    j = torch.arange(s).view(1, s, 1)
    a_tap = torch.arange(taps).view(1, 1, taps)
    a = s * a_tap + j - i  # [s(i), s(j), taps(A)] per axis
    valid = (a >= 0) & (a < k)
    a = a.clamp(0, k - 1)
    # combine three axes: dims (i_d, i_h, i_w, j_d, j_h, j_w, A_d, A_h, A_w)
    ad = a.view(s, 1, 1, s, 1, 1, taps, 1, 1)
    ah = a.view(1, s, 1, 1, s, 1, 1, taps, 1)
    aw = a.view(1, 1, s, 1, 1, s, 1, 1, taps)
    ok = (
        valid.view(s, 1, 1, s, 1, 1, taps, 1, 1)
        & valid.view(1, s, 1, 1, s, 1, 1, taps, 1)
        & valid.view(1, 1, s, 1, 1, s, 1, 1, taps)
    )
    spatial = (ad * k + ah) * k + aw  # offset within one [k, k, k] kernel
    o = torch.arange(out_channels).view(-1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)
    c = torch.arange(in_channels).view(1, 1, 1, 1, -1, 1, 1, 1, 1, 1, 1)
    flat = (o * in_channels + c) * k**3 + spatial.unsqueeze(0).unsqueeze(4)  # [O, i.., C, j.., A..]
    zero = out_channels * in_channels * k**3
    index = torch.where(ok.unsqueeze(0).unsqueeze(4), flat, torch.full_like(flat, zero))
    return index.reshape(out_channels * s**3, in_channels * s**3, taps, taps, taps)


class SpaceToDepthConv3d(nn.Conv3d):
    """``nn.Conv3d`` (stride 1, cubic kernel) computed on a space-to-depth view; same parameters.

    Falls back to the ordinary convolution whenever the reformulation does not apply (a
    stride, dilation or groups other than 1, or output sides not divisible by the factor).
    """

    def __init__(self, *args, factor: int = 2, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.factor = factor
        k = self.kernel_size[0]
        self.applies = (
            self.stride == (1, 1, 1)
            and self.dilation == (1, 1, 1)
            and self.groups == 1
            and len(set(self.kernel_size)) == 1
        )
        index = (
            _scatter_index(self.out_channels, self.in_channels, k, factor) if self.applies else torch.empty(0)
        )
        self.register_buffer("scatter_index", index, persistent=False)

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        s = self.factor
        k = self.kernel_size[0]
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        padded = F.pad(x, self._reversed_padding_repeated_twice, mode=mode)
        out_sides = [n - k + 1 for n in padded.shape[-3:]]
        if not self.applies or any(n % s for n in out_sides):
            return super()._conv_forward(x, weight, bias)
        taps = self.scatter_index.shape[-1]
        extra = [n + s * (taps - 1) - m for n, m in zip(out_sides, padded.shape[-3:], strict=True)]
        padded = F.pad(padded, (0, extra[2], 0, extra[1], 0, extra[0]))
        large = torch.cat([weight.flatten(), weight.new_zeros(1)])[self.scatter_index]
        large = large.contiguous(memory_format=torch.channels_last_3d)
        large_bias = None if bias is None else bias.repeat_interleave(s**3)
        y = F.conv3d(_space_to_depth(padded, s), large, large_bias)
        return _depth_to_space(y, s)


def reformulated(conv: nn.Conv3d, factor: int = 2) -> SpaceToDepthConv3d:
    """A ``SpaceToDepthConv3d`` with ``conv``'s settings that shares its very parameters.

    Sharing the ``nn.Parameter`` objects keeps any optimiser built on the original working.
    """
    new = SpaceToDepthConv3d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        factor=factor,
    )
    new.weight = conv.weight
    new.bias = conv.bias
    return new


def _best(call: Callable[[], None], repeats: int) -> float:
    call()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def _train_step(module: nn.Module, x: Tensor, mixed: bool) -> Callable[[], None]:
    def step() -> None:
        module.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed):
            y = module(x)
        y.float().mean().backward()

    return step


def _joint_steps(size: tuple[int, int, int], batch: int, mixed: bool, channels_last: bool) -> tuple:
    """Two identical joint couplings on one batch, the second with its ISM's last layer swapped."""
    from cdsf_bench.data.pipeline import DevicePipeline
    from cdsf_bench.interfaces import TrainingContext
    from cdsf_bench.perf import PerfSettings, _resolve, _typical_batches, synthetic_cohort
    from cdsf_bench.registry import default_registry
    from cdsf_bench.run import build_method

    registry = default_registry()
    config = _resolve(PerfSettings(size=size, batch=batch, bf16=mixed, channels_last=channels_last), registry)
    device = torch.device("cpu")
    cohort, labels, splits = synthetic_cohort(size, batch, 0)
    pipeline = DevicePipeline(
        cohort,
        labels,
        splits,
        device=device,
        seed=0,
        batch_size=batch,
        augment=config["augment"],
        channels_last=channels_last,
    )
    context = TrainingContext(
        device=device,
        input_shape=size,
        num_classes=2,
        epochs=1,
        batch_size=batch,
        learning_rate=1e-3,
        patience=None,
        select_on="auc",
        train_pet_mean=pipeline.train_pet_mean(),
        has_pet_truth=True,
        mixed_precision=mixed,
    )
    drawn = _typical_batches(list(pipeline.train_batches(0)))[0]
    steps = []
    for swap in (False, True):
        torch.manual_seed(0)
        coupling = build_method(config, registry, context, channels_last)
        if swap:
            decoder = coupling.synthesiser.decoder
            decoder[2] = reformulated(decoder[2])
        stage = coupling.stages()[0]
        steps.append(lambda stage=stage: stage.step(drawn))
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=[64, 64, 64], metavar=("D", "H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--factor", type=int, default=2)
    parser.add_argument("--joint", action="store_true", help="also time the whole joint training step")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from cdsf_plugins.ism import ISM

    size = tuple(args.size)
    torch.manual_seed(0)
    conv = nn.Conv3d(8, 1, 7, padding=3, padding_mode="replicate")
    fast = reformulated(conv, args.factor)
    x64 = torch.randn(2, 8, 12, 16, 8, dtype=torch.float64)
    exact = (conv.double()(x64) - fast.double()(x64)).abs().max().item()
    conv.float()
    fast.float()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; factor {args.factor}; "
        f"float64 max |difference| {exact:.2e}; same state_dict keys: "
        f"{list(conv.state_dict()) == list(fast.state_dict())}"
    )
    for mixed, channels_last, label in (
        (True, True, "bf16 + channels_last"),
        (False, False, "fp32 contiguous"),
    ):
        fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
        x = (torch.rand(args.batch, 8, *size) * 2 - 1).contiguous(memory_format=fmt).requires_grad_()
        layer_times = [
            _best(_train_step(m.to(memory_format=fmt), x, mixed), args.repeats) for m in (conv, fast)
        ]
        ism = ISM().to(memory_format=fmt)
        swapped = copy.deepcopy(ism)
        swapped.decoder[2] = reformulated(ism.decoder[2], args.factor).to(memory_format=fmt)
        mri = (torch.rand(args.batch, 1, *size) * 2 - 1).contiguous(memory_format=fmt)
        ism_times = [_best(_train_step(m, mri, mixed), args.repeats) for m in (ism, swapped)]
        print(
            f"{label}: last layer {layer_times[0] * 1e3:.1f} -> {layer_times[1] * 1e3:.1f} ms "
            f"({layer_times[0] / layer_times[1]:.2f}x); ISM fwd+bwd {ism_times[0] * 1e3:.1f} -> "
            f"{ism_times[1] * 1e3:.1f} ms ({ism_times[0] / ism_times[1]:.2f}x)"
        )
        if args.joint:
            original, swapped_step = _joint_steps(size, args.batch, mixed, channels_last)
            joint = [_best(step, args.repeats) for step in (original, swapped_step)]
            print(f"{label}: joint step {joint[0]:.3f} -> {joint[1]:.3f} s ({joint[0] / joint[1]:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
