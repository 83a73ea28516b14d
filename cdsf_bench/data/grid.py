"""The reference grid every cohort is resampled to: the MNI brain's bounding box.

All sources end on the same grid (MNI152 space, isotropic voxels, the brain's bounding box
rounded up to a multiple of 4 voxels so the networks' stride-2 stages divide it exactly),
so a phantom and a real cohort at the same resolution have identical shapes and affines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Bounding box (mm, MNI152) of the ICBM152 2009a brain mask shipped with nilearn,
#: measured from ``nilearn.datasets.load_mni152_brain_mask(resolution=1)``.
BRAIN_BOX_MM = ((-72.0, 72.0), (-107.0, 73.0), (-72.0, 82.0))
#: The shape of every volume is a multiple of this (two stride-2 stages in the generators).
SHAPE_MULTIPLE = 4


@dataclass(frozen=True)
class Grid:
    """A voxel grid: its shape and its voxel-to-MNI affine."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def resolution_mm(self) -> float:
        return float(self.affine[0, 0])


def reference_grid(resolution_mm: float) -> Grid:
    """The grid that covers the MNI brain at ``resolution_mm``, centred on the brain box."""
    if not resolution_mm > 0:
        raise ValueError(f"resolution must be positive, got {resolution_mm}")
    shape = []
    origin = []
    for low, high in BRAIN_BOX_MM:
        n = math.ceil((high - low) / resolution_mm) + 1
        n = SHAPE_MULTIPLE * math.ceil(n / SHAPE_MULTIPLE)
        centre = (low + high) / 2
        shape.append(n)
        origin.append(centre - (n - 1) / 2 * resolution_mm)
    affine = np.diag([resolution_mm, resolution_mm, resolution_mm, 1.0])
    affine[:3, 3] = origin
    return Grid(shape=(shape[0], shape[1], shape[2]), affine=affine)
