"""A 3D U-Net generator from MRI to PET, the generator shape of pix2pix, in 3D.

With widths (w_0, ..., w_L) (default (8, 16, 32, 64), so L = 3):

- encoder: a kernel-3 conv at full resolution to w_0, then L kernel-3 stride-2 convs to
  w_1 ... w_L, each side halved every time; every block normalised and followed by
  LeakyReLU(0.2), as in pix2pix's encoder;
- decoder: from the bottleneck, L stride-2 transposed convs back up, each normalised and
  followed by ReLU; after each one the encoder map of the same resolution is concatenated
  (the skip connection), so level l feeds 2 * w_l channels to the next layer;
- output: a kernel-3 conv from 2 * w_0 channels to one, then tanh. It has no
  normalisation: a norm in front of tanh would fix the output's mean and spread and stop
  the network from producing the dark background of a PET volume (see ism.py).

The skips carry the MRI's fine anatomy straight to the output, which the ResNet-shaped
ISM has to squeeze through its quarter-resolution transfer blocks; the two generators
are the two choices pix2pix offers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdsf_plugins.layers import conv_block, up_block
from cdsf_plugins.space_to_depth import SpaceToDepthConv3d


class UNet3D(nn.Module):
    """MRI [B, 1, D, H, W] in [-1, 1] to synthetic PET of the same shape in [-1, 1].

    Each side must be a multiple of ``2 ** (len(widths) - 1)`` to come back unchanged
    through the stride-2 convs; other sizes are padded (replicate) up to the next
    multiple and the output is cropped back, as ISM does. The convs that touch the image
    itself (the first and the last) use replicate padding, because zero padding would
    draw a mid-grey band around a background of -1.
    """

    def __init__(self, widths: tuple[int, ...] = (8, 16, 32, 64), norm: str = "instance") -> None:
        super().__init__()
        if len(widths) < 2:
            raise ValueError(f"UNet3D needs at least two widths (one downsampling), got {widths!r}")
        widths = tuple(int(w) for w in widths)
        self.size_multiple = 2 ** (len(widths) - 1)
        self.stem = conv_block(1, widths[0], 3, norm=norm, activation="leaky_relu", padding_mode="replicate")
        self.down = nn.ModuleList(
            conv_block(w_in, w_out, 3, stride=2, norm=norm, activation="leaky_relu")
            for w_in, w_out in zip(widths[:-1], widths[1:], strict=True)
        )
        # up[i] brings level i + 1 to level i; below the bottleneck its input is a concatenation
        self.up = nn.ModuleList(
            up_block(widths[i + 1] * (1 if i == len(widths) - 2 else 2), widths[i], norm=norm)
            for i in range(len(widths) - 1)
        )
        self.head = nn.Sequential(
            SpaceToDepthConv3d(2 * widths[0], 1, 3, padding=1, padding_mode="replicate"),
            nn.Tanh(),
        )

    def forward(self, mri: Tensor) -> Tensor:
        size = mri.shape[-3:]
        pad = [(-n) % self.size_multiple for n in size]
        if any(pad):
            # F.pad lists the last dimension first: (W_left, W_right, H_left, ...).
            mri = F.pad(mri, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
        skips = [self.stem(mri)]
        for block in self.down:
            skips.append(block(skips[-1]))
        x = skips.pop()  # the bottleneck is not concatenated with itself
        for block in reversed(self.up):
            x = torch.cat([block(x), skips.pop()], dim=1)
        pet = self.head(x)
        return pet[..., : size[0], : size[1], : size[2]]
