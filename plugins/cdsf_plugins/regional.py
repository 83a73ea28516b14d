"""A regional diagnoser: the mean of each input channel in the atlas regions, then a small classifier.

A CNN over whole volumes has tens of thousands of weights and does not learn from a few dozen
labelled subjects; the disease effects of Alzheimer's disease (and of the phantom) sit in a
handful of known regions. This diagnoser reads each channel (MRI, then PET where the
coupling passes it) as its weighted mean in every region of the atlas
(:data:`cdsf_bench.data.regions.REGIONS`: the AD-signature regions and the PET reference
regions, both hemispheres pooled), standardises these features by batch statistics (batch
norm without learnt scale or shift: running statistics at evaluation) and classifies them
with logistic regression (``hidden = 0``) or a one-hidden-layer MLP. Its regularisation is
the coupling's weight decay, as for MDM, and early stopping on validation.

The atlas is in MNI space and the core passes the grid's voxel-to-MNI ``affine``, so the
regions fall where they belong on the phantom and on real cohorts resampled to the MNI grid
alike; the weights are computed once, at construction. Without an affine (a harness that
builds diagnosers from ``input_shape`` alone) the volume is taken to span the MNI brain's
bounding box (:func:`cdsf_bench.data.regions.brain_box_affine`), which the reference grid
does to within a voxel.

The features are linear in the input, so the module is differentiable end to end: under the
joint coupling the diagnostic gradient reaches the generator, and the feature-consistency
term compares regional patterns (``features`` is the standardised regional vector, or the
hidden layer of the MLP).

Defaults, chosen on validation AUC only: on the phantom's ``label_scarce`` scenario at 8 mm
(800 subjects, 24 labelled training and 24 validation subjects, ``data.missing_pet`` 0.2, 25
epochs, patience 8, seeds 0-2), under ``single`` and ``oracle``, the grid ``masks`` in
{hard, soft} x ``hidden`` in {0, 16} x the coupling's ``weight_decay`` in {1e-4, 1e-2}; the
rule: the simplest setting (no hidden layer before one, the coupling's default weight decay)
within 0.01 of the best validation AUC averaged over both couplings and the seeds. Hard
masks beat soft ones (0.862 against 0.836), the MLP gained nothing (0.863), and Adam's
coupled L2 term made no difference between 1e-4 and 1e-2; 25 epochs suffice (100 epochs
with patience 30 raised the validation AUC by 0.004, within the rule's 0.01).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from cdsf_bench.data.regions import REGIONS, brain_box_affine, region_weights
from cdsf_bench.interfaces import DiagnoserOutput

#: how regions weigh their voxels: Gaussian around the centres, or uniform in spheres
MASKS = ("soft", "hard")


class Regional(nn.Module):
    """Diagnose from the regional means of ``in_channels`` stacked modalities [B, C, *input_shape].

    ``masks``: "hard" (uniform in spheres of the region's ``sigma_mm``) or "soft" (Gaussian
    weights of that standard deviation, which reach into the regions' neighbours). ``hidden``:
    0 for logistic regression on the standardised regional features, else the width of one
    hidden ReLU layer. The last layer starts at zero (every subject at probability one half),
    so that training, not the initial draw, orders the subjects.
    """

    def __init__(
        self,
        in_channels: int,
        input_shape: tuple[int, int, int],
        num_classes: int = 2,
        affine: np.ndarray | None = None,
        masks: str = "hard",
        hidden: int = 0,
    ) -> None:
        super().__init__()
        if masks not in MASKS:
            raise ValueError(f"masks must be one of {', '.join(MASKS)}, got {masks!r}")
        if hidden < 0:
            raise ValueError(f"hidden must be 0 (logistic regression) or a layer width, got {hidden}")
        shape = tuple(int(n) for n in input_shape)
        placement = brain_box_affine(shape) if affine is None else np.asarray(affine)
        self.region_names = tuple(REGIONS)
        weights = region_weights(placement, shape, self.region_names, soft=masks == "soft")
        # derived from the grid alone, so rebuilt with the module and not part of its state
        # ([R, V], a layout no memory format applies to)
        self.weights: Tensor
        self.register_buffer("weights", torch.from_numpy(weights).float(), persistent=False)
        n_features = in_channels * len(weights)
        self.standardise = nn.BatchNorm1d(n_features, affine=False)
        self.hidden: nn.Module = nn.Identity()
        if hidden:
            self.hidden = nn.Sequential(nn.Linear(n_features, hidden), nn.ReLU())
            n_features = hidden
        self.classifier = nn.Linear(n_features, num_classes)
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def regional_means(self, x: Tensor) -> Tensor:
        """[B, C * R]: each channel's weighted mean in each region, channel by channel.

        Computed in float32 even under bf16 autocast: subjects differ by a few per cent of
        a region's mean, below bf16's resolution.
        """
        with torch.autocast(x.device.type, enabled=False):
            means = x.float().flatten(2) @ self.weights.T
        return means.flatten(1)

    def forward(self, x: Tensor) -> DiagnoserOutput:
        features = self.hidden(self.standardise(self.regional_means(x)))
        return DiagnoserOutput(logits=self.classifier(features), features=features)
