"""The ICBM152 2009a templates that ship inside nilearn, on the reference grid.

The phantom cohort is built on real anatomy rather than on geometric shapes, so that the
networks meet cortical folding, deep grey matter and ventricles where a real MNI-space scan
has them. nilearn carries the symmetric ICBM152 2009a T1, grey-matter and white-matter
maps and a brain mask inside the package, so nothing is downloaded. Each map is resampled
once per resolution onto :func:`cdsf_bench.data.grid.reference_grid` and cached.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from cdsf_bench.data.grid import Grid, reference_grid
from cdsf_bench.data.nifti import smooth_and_resample

#: A resampled brain-mask fraction at or above this is inside the brain.
MASK_THRESHOLD = 0.5


@dataclass
class Templates:
    """The template maps on one reference grid.

    ``t1`` is the template's T1 intensity (0 to 1), ``gm``, ``wm`` and ``csf`` are tissue
    fractions (0 to 1) and ``brain_mask`` is the brain. The arrays are shared through the
    cache and therefore read-only: copy before changing them.
    """

    t1: np.ndarray  # [D, H, W] float32
    gm: np.ndarray  # [D, H, W] float32
    wm: np.ndarray  # [D, H, W] float32
    csf: np.ndarray  # [D, H, W] float32
    brain_mask: np.ndarray  # [D, H, W] bool
    grid: Grid

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.grid.shape


def mni_to_voxel(grid: Grid, xyz_mm: np.ndarray | tuple | list) -> np.ndarray:
    """Continuous voxel coordinates on ``grid`` of MNI points ``xyz_mm`` (shape [..., 3]).

    Kept continuous (not rounded) because the phantom samples maps at deformed, off-grid
    positions; round the result yourself to index a voxel.
    """
    points = np.asarray(xyz_mm, dtype=np.float64)
    inverse = np.linalg.inv(grid.affine)
    return points @ inverse[:3, :3].T + inverse[:3, 3]


def voxel_to_mni(grid: Grid, ijk: np.ndarray | tuple | list) -> np.ndarray:
    """MNI coordinates (mm) of voxel coordinates ``ijk`` (shape [..., 3]) on ``grid``."""
    points = np.asarray(ijk, dtype=np.float64)
    return points @ grid.affine[:3, :3].T + grid.affine[:3, 3]


def grid_mni_coordinates(grid: Grid) -> np.ndarray:
    """The MNI position (mm) of every voxel centre of ``grid``, shape [D, H, W, 3].

    Region weights and random fields are defined in millimetres, so that a subject's
    anatomy and its disease pattern do not change with the resolution it is drawn at.
    """
    axes = [np.arange(n, dtype=np.float64) for n in grid.shape]
    ijk = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    return voxel_to_mni(grid, ijk)


@functools.lru_cache(maxsize=4)
def load_templates(resolution_mm: float) -> Templates:
    """The ICBM152 2009a T1, GM, WM, CSF maps and brain mask on the reference grid.

    Each 1 mm map is anti-aliased and resampled as a scan is (``smooth_and_resample``), so
    a voxel of side r holds the tissue fraction it would in a scanner (its partial volume).
    Cached per resolution because the resampling takes seconds and every phantom subject
    starts from the same maps. CSF is the part of the brain mask that is neither grey nor
    white matter (nilearn ships no CSF map), which holds the ventricles and sulci.
    """
    from nilearn import datasets

    grid = reference_grid(float(resolution_mm))
    t1 = smooth_and_resample(datasets.load_mni152_template(resolution=1), grid)
    gm = smooth_and_resample(datasets.load_mni152_gm_template(resolution=1), grid)
    wm = smooth_and_resample(datasets.load_mni152_wm_template(resolution=1), grid)
    mask_fraction = smooth_and_resample(datasets.load_mni152_brain_mask(resolution=1), grid)
    gm = np.clip(gm, 0.0, 1.0)
    wm = np.clip(wm, 0.0, 1.0)
    mask_fraction = np.clip(mask_fraction, 0.0, 1.0)
    csf = np.clip(mask_fraction - gm - wm, 0.0, 1.0).astype(np.float32)
    brain_mask = mask_fraction >= MASK_THRESHOLD
    arrays = {"t1": np.clip(t1, 0.0, None), "gm": gm, "wm": wm, "csf": csf, "brain_mask": brain_mask}
    for value in arrays.values():
        value.flags.writeable = False
    return Templates(grid=grid, **arrays)
