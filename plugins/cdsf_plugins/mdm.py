"""MDM, the multi-modal diagnosis module of CDSF: a 3D CNN over stacked MRI and PET.

Five conv layers (kernel 3), each normalised and followed by ReLU; max pooling (kernel 3,
stride 2, padding 1) after the first four and average pooling (kernel 2, stride 2, ceil
mode) after the fifth; every pooling maps a side n to ceil(n / 2), so any input size of
at least one voxel a side survives.
The final map [B, C, D', H', W'] becomes a spatial representation [B, C, S] that is
L2-normalised along the channels (each position a unit vector: the pattern across
channels counts, not its magnitude), flattened to [B, C*S], L2-normalised again, and fed
to a linear layer. The model returns logits; the softmax of the paper belongs to the loss
(cross-entropy) and to whoever turns logits into probabilities, never to the model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cdsf_bench.interfaces import DiagnoserOutput
from cdsf_plugins.layers import conv_block

#: kernel, stride and padding of the max pooling after each conv layer but the last
MAX_POOL = (3, 2, 1)
#: Layers whose input has a side shorter than this run in float32 even under autocast.
#: On CPU, oneDNN's bf16 convolution backward intermittently returns NaN weight gradients
#: for maps of 2 voxels a side (measured with torch 2.13: up to 30 of 30 repeats for some
#: batch sizes); such layers cost almost nothing, so fp32 there loses no speed.
FP32_BELOW_SIDE = 4


def max_pooled_side(n: int, kernel: int, stride: int, padding: int) -> int:
    """The output side of ``nn.MaxPool3d`` (floor mode), the formula of its documentation."""
    return (n + 2 * padding - kernel) // stride + 1


class CeilAvgPool3d(nn.Module):
    """Average pooling, kernel 2 and stride 2, in ceil mode: a side ``n`` becomes ``ceil(n / 2)``.

    ``nn.AvgPool3d(2, 2, ceil_mode=True)`` gives the same values but refuses a side of 1
    (its kernel would be larger than the input). Padding odd sides by one replicated
    voxel averages the last voxel with itself, which is exactly what ceil mode computes
    for the overhanging window, and works for every side.
    """

    def forward(self, x: Tensor) -> Tensor:
        d, h, w = (n % 2 for n in x.shape[-3:])
        if d or h or w:
            x = F.pad(x, (0, w, 0, h, 0, d), mode="replicate")
        return F.avg_pool3d(x, 2)


class MDM(nn.Module):
    """Diagnose from ``in_channels`` stacked modalities [B, in_channels, *input_shape].

    The linear layer's size is computed from ``input_shape`` by the pooling arithmetic,
    so any volume size works and nothing runs at construction.

    Normalisation defaults to batch norm, as in the 3D CNNs of the paper's era: its
    statistics are shared across the subjects of a batch, so a subject's overall PET
    level survives. Instance norm would normalise each subject's maps on their own and can
    erase exactly that global signal (the widespread hypometabolism of AD), which is why
    it is not the default here; it is offered for comparison, like group norm (also per
    sample, but over groups of channels). Per-sample norms need more than one voxel in
    the fifth layer's map when training: at least one input side of 17 or more.
    """

    def __init__(
        self,
        in_channels: int,
        input_shape: tuple[int, int, int],
        num_classes: int = 2,
        widths: tuple[int, ...] = (16, 32, 64, 64, 64),
        norm: str = "batch",
        eps: float = 1e-12,
        feature_scale: float = 16.0,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.feature_scale = feature_scale
        layers: list[nn.Module] = []
        shape = tuple(input_shape)
        channels = in_channels
        for i, width in enumerate(widths):
            layers.append(conv_block(channels, width, 3, norm=norm))
            if i < len(widths) - 1:
                layers.append(nn.MaxPool3d(*MAX_POOL))
                shape = tuple(max_pooled_side(n, *MAX_POOL) for n in shape)
            else:
                layers.append(CeilAvgPool3d())
                shape = tuple((n + 1) // 2 for n in shape)
            channels = width
        self.features = nn.Sequential(*layers)
        self.feature_shape: tuple[int, ...] = (channels, *shape)
        self.classifier = nn.Linear(math.prod(self.feature_shape), num_classes)

    # A unit-norm vector spread over C*S entries has entries of about 1/sqrt(C*S), so a
    # linear layer initialised as usual gives logits near 0 and the softmax stays flat for
    # hundreds of steps. Scaling the normalised features by ``feature_scale`` before the
    # layer (the scale of normalised-feature classifiers, as in NormFace) lets logits
    # reach useful sizes at ordinary learning rates; the features themselves stay unit-norm.

    def spatial_representation(self, x: Tensor) -> Tensor:
        """The final map as [B, C, S], each of the S positions a unit vector over channels.

        The normalisation runs in float32 even under bf16 autocast: feature-consistency
        losses compare these vectors, and bf16 norms would be coarse.
        """
        for layer in self.features:
            if min(x.shape[-3:]) < FP32_BELOW_SIDE and torch.is_autocast_enabled(x.device.type):
                with torch.autocast(x.device.type, enabled=False):
                    x = layer(x.float())
            else:
                x = layer(x)
        return F.normalize(x.flatten(2).float(), dim=1, eps=self.eps)

    def forward(self, x: Tensor) -> DiagnoserOutput:
        features = F.normalize(self.spatial_representation(x).flatten(1), dim=1, eps=self.eps)
        return DiagnoserOutput(logits=self.classifier(features * self.feature_scale), features=features)
