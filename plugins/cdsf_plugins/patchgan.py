"""A 3D PatchGAN discriminator conditioned on the MRI, as pix2pix pairs with its generator.

It reads the pair (x, p), MRI and PET stacked as two channels, and returns a map of
logits, one per overlapping patch: is this patch of PET real, given the MRI? Judging
patches rather than the whole volume asks the generator for realistic local texture
and leaves the global agreement with the real PET to the L1 term (pix2pix's division of
labour).

Layout, with widths (w_1, ..., w_K) (default (16, 32, 64)): K kernel-3 stride-2 convs,
each followed by LeakyReLU(0.2); all but the first are normalised (the first sees raw
intensities, and normalising them would discard the pair's absolute levels, which is
what tells real PET from fake); then a kernel-3 conv to one channel of patch logits,
with no activation (the loss applies the sigmoid). Kernel 3 with padding 1 maps a side
n to ceil(n / 2), so any volume of at least one voxel a side works. With the default
three blocks each logit sees a cube of 31 voxels a side (124 mm at 4 mm voxels).
"""

from __future__ import annotations

from torch import Tensor, nn

from cdsf_plugins.layers import conv_block, make_activation


class PatchGAN3D(nn.Module):
    """Patch logits [B, 1, d, h, w] for MRI and PET [B, 2, D, H, W] (MRI first)."""

    def __init__(
        self, in_channels: int = 2, widths: tuple[int, ...] = (16, 32, 64), norm: str = "instance"
    ) -> None:
        super().__init__()
        if not widths:
            raise ValueError("PatchGAN3D needs at least one width")
        first = nn.Sequential(
            nn.Conv3d(in_channels, widths[0], 3, stride=2, padding=1),
            make_activation("leaky_relu"),
        )
        rest = [
            conv_block(w_in, w_out, 3, stride=2, norm=norm, activation="leaky_relu")
            for w_in, w_out in zip(widths[:-1], widths[1:], strict=True)
        ]
        self.features = nn.Sequential(first, *rest)
        self.logits = nn.Conv3d(widths[-1], 1, 3, padding=1)

    def forward(self, pair: Tensor) -> Tensor:
        return self.logits(self.features(pair))
