"""Is a scan in MNI space? A header check of its field of view and a coarse match to the template.

cdsf-bench resamples every volume onto the MNI reference grid but does not register it, so a
scan that is not in MNI space (a scanner-space export, a T1 whose origin was moved) would be
accepted and land centimetres off the template, silently. Two checks catch it:

- ``coverage``, from the header alone: how much of the MNI brain box the file's field of
  view covers, in world coordinates (so storage order, oblique affines and voxel sizes do not
  matter). A file whose volume does not even reach the brain is refused before any voxel is read.
- ``template_offset``, from the voxels: the image, resampled (linearly) onto a coarse grid
  around the brain box, is cross-correlated with the ICBM152 brain mask on that grid; the
  shift of the correlation's peak (refined to a fraction of a voxel) is how far the scan's
  brain sits from the template's. It is cheap (a few thousand voxels, one FFT) and works for
  T1 and PET alike, because both are bright inside the brain and dark outside.

The offset is refused above ``data.max_offset_mm`` (docs/data.md states the default); the
message names the offset per axis so the user can tell a moved origin from a wrong file.
"""

from __future__ import annotations

import functools
import math
import warnings

import nibabel
import numpy as np

from cdsf_bench.data.grid import BRAIN_BOX_MM, Grid
from cdsf_bench.data.nifti import HeaderInfo

#: Voxel size of the coarse grid the offset is measured on.
REGISTRATION_VOXEL_MM = 8.0
#: The coarse grid extends the brain box by this much on every side: the largest offset measured.
SEARCH_MM = 64.0
#: A file's field of view must cover at least this fraction of the MNI brain box.
MIN_COVERAGE = 0.5
#: Fraction of an image's robust maximum below which a voxel counts as background.
BACKGROUND_FRACTION = 0.1


def _world_box(info: HeaderInfo) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest world coordinate (mm) of the file's voxel centres, per axis."""
    last = [n - 1 for n in info.shape]
    corners = np.array([[i, j, k, 1.0] for i in (0, last[0]) for j in (0, last[1]) for k in (0, last[2])])
    world = (corners @ info.affine.T)[:, :3]
    return world.min(axis=0), world.max(axis=0)


def coverage(info: HeaderInfo) -> float:
    """The fraction of the MNI brain box inside the file's field of view (world coordinates)."""
    low, high = _world_box(info)
    inside = 1.0
    for axis, (box_low, box_high) in enumerate(BRAIN_BOX_MM):
        overlap = min(high[axis], box_high) - max(low[axis], box_low)
        inside *= max(overlap, 0.0) / (box_high - box_low)
    return float(inside)


def field_of_view(info: HeaderInfo) -> str:
    """The file's world extent per axis, for a message: ``x -90..90, y ... mm``."""
    low, high = _world_box(info)
    return ", ".join(f"{n} {lo:.0f}..{hi:.0f}" for n, lo, hi in zip("xyz", low, high, strict=True)) + " mm"


@functools.cache
def search_grid() -> Grid:
    """The coarse grid of the offset measurement: the brain box plus ``SEARCH_MM`` each side."""
    shape, origin = [], []
    for low, high in BRAIN_BOX_MM:
        n = math.ceil((high - low + 2 * SEARCH_MM) / REGISTRATION_VOXEL_MM) + 1
        shape.append(n)
        origin.append((low + high) / 2 - (n - 1) / 2 * REGISTRATION_VOXEL_MM)
    affine = np.diag([REGISTRATION_VOXEL_MM] * 3 + [1.0])
    affine[:3, 3] = origin
    return Grid(shape=(shape[0], shape[1], shape[2]), affine=affine)


def _on_search_grid(image: nibabel.Nifti1Image, interpolation: str) -> np.ndarray:
    from nilearn.image import resample_img

    grid = search_grid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nilearn's notes on resampling choices made explicit here
        resampled = resample_img(
            nibabel.as_closest_canonical(image),
            target_affine=grid.affine,
            target_shape=grid.shape,
            interpolation=interpolation,
            force_resample=True,
            copy_header=True,
        )
    return np.nan_to_num(np.asarray(resampled.get_fdata(dtype=np.float32), dtype=np.float32))


@functools.cache
def _template() -> np.ndarray:
    """The ICBM152 brain mask (the fraction of brain per coarse voxel), mean removed; read-only."""
    from nilearn.datasets import load_mni152_brain_mask
    from scipy.ndimage import uniform_filter

    mask = load_mni152_brain_mask(resolution=2)
    # a box filter first, so the linear sampling at 8 mm reads each voxel's brain fraction
    data = uniform_filter(np.asarray(mask.get_fdata(), dtype=np.float32), size=4)
    fraction = _on_search_grid(nibabel.Nifti1Image(data, mask.affine), "linear")
    fraction -= fraction.mean()
    fraction.flags.writeable = False
    return fraction


def _peak(correlation: np.ndarray) -> np.ndarray:
    """The peak's signed shift in voxels, refined per axis by a parabola through its neighbours."""
    index = np.unravel_index(int(np.argmax(correlation)), correlation.shape)
    shift = np.zeros(3)
    for axis in range(3):
        n = correlation.shape[axis]
        at = [int(i) for i in index]
        values = []
        for step in (-1, 0, 1):
            probe = list(at)
            probe[axis] = (at[axis] + step) % n
            values.append(float(correlation[tuple(probe)]))
        below, centre, above = values
        curvature = below - 2 * centre + above
        fraction = 0.5 * (below - above) / curvature if curvature < 0 else 0.0
        signed = at[axis] if at[axis] <= n // 2 else at[axis] - n
        shift[axis] = signed + float(np.clip(fraction, -0.5, 0.5))
    return shift


def template_offset(image: nibabel.Nifti1Image) -> np.ndarray:
    """How far (mm, x y z in MNI) the brain in ``image`` sits from the ICBM152 brain.

    Background (below a tenth of the image's 99th percentile, noise included) is set to 0,
    so only the bright head counts; the shift that best overlays the template's brain on it
    is the offset. Shifts up to ``SEARCH_MM`` are measured; beyond, the value saturates there.
    """
    data = _on_search_grid(image, "linear")
    positive = data[data > 0]
    scale = float(np.percentile(positive, 99)) if positive.size else 0.0
    if scale <= 0:
        return np.full(3, np.nan)
    data = np.clip(data / scale - BACKGROUND_FRACTION, 0.0, 1.0)
    data -= data.mean()
    template = _template()
    correlation = np.real(np.fft.ifftn(np.fft.fftn(data) * np.conj(np.fft.fftn(template))))
    return _peak(correlation) * REGISTRATION_VOXEL_MM


def offset_message(role: str, offset: np.ndarray, limit_mm: float) -> str | None:
    """Why a scan ``offset`` mm from the template is refused, or None when it is within ``limit_mm``.

    ``limit_mm`` 0 turns the check off. A scan whose offset could not be measured (no bright
    voxel on the search grid) is refused too: it has no brain where MNI space has one.
    """
    if limit_mm <= 0:
        return None
    if not np.all(np.isfinite(offset)):
        return (
            f"{role} has no brain inside the MNI brain box; it is not in MNI space. Register it to "
            "MNI152 (Clinica t1-linear / pet-linear, or ANTs / FSL flirt) before using it."
        )
    distance = float(np.linalg.norm(offset))
    if distance <= limit_mm:
        return None
    axes = ", ".join(f"{name} {value:+.0f}" for name, value in zip("xyz", offset, strict=True))
    return (
        f"{role} brain lies {distance:.0f} mm from the MNI template's ({axes} mm), beyond "
        f"data.max_offset_mm = {limit_mm:g} mm: it does not look registered to MNI space (a scanner-space "
        "file or a moved origin). Register it to MNI152 (Clinica t1-linear / pet-linear, or ANTs / FSL "
        "flirt); if it is registered, raise the limit with --set data.max_offset_mm=... "
        "(0 turns the check off)."
    )
