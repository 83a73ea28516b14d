"""The brain-region atlas: named regions as MNI centres and a size, and their masks on a grid.

Every cohort ends on an MNI grid (:mod:`cdsf_bench.data.grid`), so one atlas serves them
all: the engine reads regional uptake in :data:`HYPOMETABOLISM_REGIONS` on any cohort, and a
generator that simulates disease (the phantom) places its effects and its PET reference on
the same regions, and a diagnoser may read its features there (:func:`region_weights`).
The atlas depends on nothing but NumPy and the grid module, and knows no data source.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from cdsf_bench.data.grid import BRAIN_BOX_MM


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


def brain_box_affine(shape: tuple[int, ...]) -> np.ndarray:
    """The voxel-to-MNI affine of a grid whose first and last voxels lie on the brain box's faces.

    For a reader given a volume's shape alone: the reference grid (:mod:`cdsf_bench.data.grid`)
    covers that box, centred, so this places the atlas on it to within a voxel.
    """
    affine = np.eye(4)
    for axis, ((low, high), n) in enumerate(zip(BRAIN_BOX_MM, shape, strict=True)):
        affine[axis, axis] = (high - low) / max(n - 1, 1)
        affine[axis, 3] = low
    return affine


def voxel_mm(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The MNI position (mm) of every voxel of a grid, [V, 3] in C order of ``shape``."""
    index = np.indices(tuple(shape), dtype=np.float64).reshape(3, -1)
    affine = np.asarray(affine, dtype=np.float64)
    return (affine[:3, :3] @ index + affine[:3, 3:4]).T


def region_masks(
    affine: np.ndarray, shape: tuple[int, ...], brain_mask: np.ndarray, names: Iterable[str]
) -> dict[str, np.ndarray]:
    """Per region: the brain voxels within ``sigma_mm`` of any of its MNI centres.

    Computed from the affine (voxel to MNI mm), so it holds for any cohort on an MNI grid.
    """
    mm = voxel_mm(affine, shape)
    brain = np.asarray(brain_mask, dtype=bool).reshape(-1)
    out = {}
    for name in names:
        region = REGIONS[name]
        near = np.zeros(len(mm), dtype=bool)
        for centre in region.centres_mm:
            near |= ((mm - np.asarray(centre)) ** 2).sum(-1) <= region.sigma_mm**2
        out[name] = (near & brain).reshape(tuple(shape))
    return out


def region_weights(
    affine: np.ndarray, shape: tuple[int, ...], names: Iterable[str], *, soft: bool
) -> np.ndarray:
    """Per region, voxel weights that sum to 1, [R, V] (V in C order of ``shape``).

    ``soft``: a Gaussian of standard deviation ``sigma_mm`` around each of the region's
    centres (the weight its effects get); otherwise uniform over the spheres of radius
    ``sigma_mm`` (the masks of :func:`region_masks`, no brain mask: a reader of the
    volumes alone has none). A weighted sum of a volume is then the region's mean; both
    hemispheres of a bilateral region pool into one. A region with no weight on the grid
    (it lies outside it) is refused.
    """
    mm = voxel_mm(affine, shape)
    rows = []
    for name in names:
        region = REGIONS[name]
        weight = np.zeros(len(mm))
        for centre in region.centres_mm:
            squared = ((mm - np.asarray(centre)) ** 2).sum(-1)
            if soft:
                weight += np.exp(-squared / (2 * region.sigma_mm**2))
            else:
                weight = np.maximum(weight, squared <= region.sigma_mm**2)
        total = weight.sum()
        if not total > 0:
            raise ValueError(f"region {name!r} has no voxel on this grid (shape {tuple(shape)})")
        rows.append(weight / total)
    return np.stack(rows)


def hypometabolism_masks(affine: np.ndarray, brain_mask: np.ndarray) -> dict[str, np.ndarray]:
    """The :data:`HYPOMETABOLISM_REGIONS` on a cohort's MNI grid, where regional uptake is read."""
    return region_masks(affine, brain_mask.shape, brain_mask, HYPOMETABOLISM_REGIONS)
