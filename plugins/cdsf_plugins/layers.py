"""Building blocks shared by the networks of the built-in plugins (3D, channels first).

Every block is a plain ``nn.Sequential`` so that its layers can be inspected by index,
which is how the tests check that normalisation and activations sit where the design
says. Convolutions followed by a normalisation have no bias: the normalisation's own
shift (or the batch mean it subtracts) would make the bias redundant.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

NORM_KINDS = ("batch", "instance", "group")
ACTIVATIONS = ("relu", "leaky_relu", "none")


def make_norm(kind: str, channels: int) -> nn.Module:
    """A 3D normalisation layer over ``channels`` feature maps.

    ``instance`` is affine, so that it carries a learnt scale and shift like the other
    two. ``group`` uses the largest number of groups up to 8 that divides ``channels``,
    so any width works (one group is layer norm, ``channels`` groups instance norm).
    """
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "group":
        groups = max(g for g in range(1, min(8, channels) + 1) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    raise ValueError(f"unknown norm {kind!r}; allowed values: {', '.join(NORM_KINDS)}")


def make_activation(kind: str, negative_slope: float = 0.2) -> nn.Module:
    """An activation by name; ``leaky_relu`` is what patch discriminators usually use."""
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "leaky_relu":
        return nn.LeakyReLU(negative_slope, inplace=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown activation {kind!r}; allowed values: {', '.join(ACTIVATIONS)}")


def conv_block(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    norm: str = "batch",
    activation: str = "relu",
    padding_mode: Literal["zeros", "reflect", "replicate", "circular"] = "zeros",
) -> nn.Sequential:
    """Conv3d, normalisation, activation; ``same`` padding, so stride alone sets the size.

    With stride 2 an even side is exactly halved and an odd side ``n`` becomes
    ``(n + 1) // 2``.
    """
    conv = nn.Conv3d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        padding_mode=padding_mode,
        bias=False,
    )
    return nn.Sequential(conv, make_norm(norm, out_channels), make_activation(activation))


def up_block(
    in_channels: int,
    out_channels: int,
    norm: str = "batch",
    activation: str = "relu",
) -> nn.Sequential:
    """ConvTranspose3d (kernel 3, stride 2), normalisation, activation: doubles every side.

    ``output_padding=1`` makes the output exactly twice the input, the inverse of a
    stride-2 ``conv_block`` on even sides.
    """
    conv = nn.ConvTranspose3d(in_channels, out_channels, 3, stride=2, padding=1, output_padding=1, bias=False)
    return nn.Sequential(conv, make_norm(norm, out_channels), make_activation(activation))
