"""The brain-region atlas: named regions as MNI centres and a size, and their masks on a grid.

Every cohort ends on an MNI grid (:mod:`cdsf_bench.data.grid`), so one atlas serves them
all: the engine reads regional uptake in :data:`HYPOMETABOLISM_REGIONS` on any cohort, and a
generator that simulates disease (the phantom) places its effects and its PET reference on
the same regions. The atlas depends on nothing but NumPy and knows no data source.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Region:
    """A region as MNI centres (one per hemisphere, or one on the midline) and a size.

    ``sigma_mm`` is the standard deviation of the Gaussian weight an effect gets around
    each centre; for a mask (:func:`region_masks`, a reference region) it is the radius of
    the sphere around each centre.
    """

    centres_mm: tuple[tuple[float, float, float], ...]
    sigma_mm: float


def _bilateral(x: float, y: float, z: float) -> tuple[tuple[float, float, float], ...]:
    return ((-x, y, z), (x, y, z))


#: The regions of the Alzheimer's disease signature and the PET reference (DESIGN.md
#: section 3, docs/data.md "Regions"). The lateral ventricles' centre is the CSF centroid
#: measured in the nilearn template, (+-12.5, -16, 16): the design's (+-16, -10, 18) lies in
#: the white matter next to the ventricles there, and a radial expansion centred in white
#: matter would push tissue, not grow CSF. The hippocampi are the one pair not mirrored: their
#: centres are the design's, 26 mm left and 28 mm right of the midline.
REGIONS: dict[str, Region] = {
    "hippocampus": Region(((-26.0, -22.0, -14.0), (28.0, -22.0, -14.0)), 7.0),
    "entorhinal": Region(_bilateral(24.0, -6.0, -32.0), 6.0),
    "inferior_temporal": Region(_bilateral(56.0, -30.0, -16.0), 10.0),
    "posterior_cingulate": Region(((0.0, -50.0, 28.0),), 9.0),
    "precuneus": Region(((0.0, -64.0, 42.0),), 10.0),
    "angular": Region(_bilateral(46.0, -62.0, 34.0), 11.0),
    "ventricles": Region(_bilateral(12.5, -16.0, 16.0), 14.0),
    "pons": Region(((0.0, -26.0, -34.0),), 8.0),
    "cerebellum": Region(_bilateral(24.0, -64.0, -40.0), 12.0),
}
#: Regions where grey matter is lost with structural severity.
ATROPHY_REGIONS = ("hippocampus", "entorhinal", "inferior_temporal")
#: Regions whose uptake falls with metabolic severity; regional uptake is read in these.
HYPOMETABOLISM_REGIONS = ("posterior_cingulate", "precuneus", "angular")
#: PET reference regions by the name a setting gives them; none is affected by the disease.
REFERENCE_REGIONS = {
    "pons": ("pons",),
    "cerebellum": ("cerebellum",),
    "cerebellum+pons": ("cerebellum", "pons"),
}


def region_masks(
    affine: np.ndarray, shape: tuple[int, ...], brain_mask: np.ndarray, names: Iterable[str]
) -> dict[str, np.ndarray]:
    """Per region: the brain voxels within ``sigma_mm`` of any of its MNI centres.

    Computed from the affine (voxel to MNI mm), so it holds for any cohort on an MNI grid.
    """
    index = np.indices(tuple(shape), dtype=np.float64).reshape(3, -1)
    mm = (np.asarray(affine, dtype=np.float64)[:3, :3] @ index + np.asarray(affine)[:3, 3:4]).T
    brain = np.asarray(brain_mask, dtype=bool).reshape(-1)
    out = {}
    for name in names:
        region = REGIONS[name]
        near = np.zeros(len(mm), dtype=bool)
        for centre in region.centres_mm:
            near |= ((mm - np.asarray(centre)) ** 2).sum(-1) <= region.sigma_mm**2
        out[name] = (near & brain).reshape(tuple(shape))
    return out


def hypometabolism_masks(affine: np.ndarray, brain_mask: np.ndarray) -> dict[str, np.ndarray]:
    """The :data:`HYPOMETABOLISM_REGIONS` on a cohort's MNI grid, where regional uptake is read."""
    return region_masks(affine, brain_mask.shape, brain_mask, HYPOMETABOLISM_REGIONS)
