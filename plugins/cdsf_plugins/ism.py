"""ISM, the image synthesis module of CDSF: a 3D ResNet generator from MRI to PET.

The shape is the ResNet generator of CycleGAN/pix2pix, in 3D:

- encoder: a kernel-7 conv at full resolution, then two kernel-3 stride-2 convs
  (widths 8, 16, 32 by default), so the transfer runs at a quarter of each side;
- transfer: ``n_residual`` residual blocks at the last width;
- decoder: two stride-2 transposed convs, then a kernel-7 conv to one channel and tanh.

The paper lists the decoder as "two transposed conv layers with 32 and 16 channels" and a
conv "with 1 channel", in the sentence form it uses for the encoder's "8, 16 and 32
channels", which are output widths; the 1 channel is the last conv's output. So by default
(``decoder_widths = (32, 16)``) the transposed convs map 32 -> 32 and 32 -> 16 and the last
conv 16 -> 1. ``decoder_widths = (16, 8)`` is the earlier reading (input widths, mirroring
the encoder: 32 -> 16 -> 8 -> 1), a narrower generator. Every layer is normalised and
followed by ReLU, except the last conv: it has no normalisation, because a norm in front
of tanh would fix the output's mean and spread per batch (or per volume) and stop the
network from producing the dark background that fills most of a PET volume.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from cdsf_plugins.layers import conv_block, make_norm, up_block
from cdsf_plugins.space_to_depth import SpaceToDepthConv3d

#: the two stride-2 convs mean each side must be a multiple of this to come back unchanged
SIZE_MULTIPLE = 4


class ResidualBlock(nn.Module):
    """conv-norm-ReLU-conv-norm plus the input; no ReLU after the sum, as in CycleGAN."""

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_block(channels, channels, 3, norm=norm),
            nn.Conv3d(channels, channels, 3, padding=1, bias=False),
            make_norm(norm, channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ISM(nn.Module):
    """MRI [B, 1, D, H, W] in [-1, 1] to synthetic PET of the same shape in [-1, 1].

    The two kernel-7 convs, which touch the image itself, use replicate padding: the
    volume's border is background at -1, and zero padding would put a band of value 0
    (mid-grey) around it, an artificial edge the network would learn to reproduce. The
    inner convs work on normalised features, where zero padding is the neutral choice.
    Sides that are not multiples of 4 are padded (replicate) up to the next multiple and
    the output is cropped back, so any size works; the pipeline normally avoids this.
    """

    def __init__(
        self,
        widths: tuple[int, int, int] = (8, 16, 32),
        n_residual: int = 6,
        norm: str = "instance",
        decoder_widths: tuple[int, int] = (32, 16),
    ) -> None:
        super().__init__()
        w1, w2, w3 = widths
        d1, d2 = decoder_widths
        self.encoder = nn.Sequential(
            conv_block(1, w1, 7, norm=norm, padding_mode="replicate"),
            conv_block(w1, w2, 3, stride=2, norm=norm),
            conv_block(w2, w3, 3, stride=2, norm=norm),
        )
        self.transfer = nn.Sequential(*(ResidualBlock(w3, norm) for _ in range(n_residual)))
        self.decoder = nn.Sequential(
            up_block(w3, d1, norm=norm),
            up_block(d1, d2, norm=norm),
            SpaceToDepthConv3d(d2, 1, 7, padding=3, padding_mode="replicate"),
            nn.Tanh(),
        )

    def forward(self, mri: Tensor) -> Tensor:
        size = mri.shape[-3:]
        pad = [(-n) % SIZE_MULTIPLE for n in size]
        if any(pad):
            # F.pad lists the last dimension first: (W_left, W_right, H_left, ...).
            mri = F.pad(mri, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
        pet = self.decoder(self.transfer(self.encoder(mri)))
        return pet[..., : size[0], : size[1], : size[2]]
