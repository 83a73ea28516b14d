"""Reading one NIfTI volume safely, and bringing it onto the reference grid.

Real inputs come from people's disks and pipelines, so every way a file can be wrong is
turned into an ``InputError`` that names the file and its role before any model sees it.
Header facts (dimensions, data type, scaling, affine) are checked before the voxel data are
read, so a file whose header claims more memory than the budget is refused without trying to
allocate it: the budget counts the bytes that reading would allocate (float32 voxels, the data
as stored, and nibabel's float64 scaling where the header scales), not the voxels, and is
settable with ``CDSF_BENCH_MAX_VOLUME_MB`` (default :data:`DEFAULT_VOLUME_MB`).

Real data are expected to be in MNI152 space already (Clinica's ``t1-linear`` and
``pet-linear`` outputs, or any equivalent affine registration): this module only
reorients and resamples onto the grid, it does not register.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import uuid
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from cdsf_bench.data.conventions import normalise_mri, normalise_pet
from cdsf_bench.data.grid import Grid
from cdsf_bench.errors import InputError

#: Largest size of any axis we accept: a 0.1 mm whole-brain volume is about 2000 voxels wide.
MAX_AXIS = 2048
#: The memory one volume may take while it is read, in MiB, unless CDSF_BENCH_MAX_VOLUME_MB says
#: otherwise: a scaled int16 1 mm whole-head T1 (256^3 voxels) takes about 224 MiB to read.
DEFAULT_VOLUME_MB = 2048
VOLUME_BUDGET_ENV = "CDSF_BENCH_MAX_VOLUME_MB"
GZIP_MAGIC = b"\x1f\x8b"
NIFTI_SUFFIXES = (".nii", ".nii.gz")

#: What nibabel and the decompressors raise on damaged or foreign files.
_READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    zlib.error,
    struct.error,
    ImageFileError,
    HeaderDataError,
)


@dataclass(frozen=True)
class HeaderInfo:
    """What a NIfTI header says about the volume, read without touching the voxel data."""

    shape: tuple[int, int, int]
    affine: np.ndarray


def _open(path: Path, role: str) -> nibabel.Nifti1Image:
    """Open lazily (header only) after the checks that need no nibabel at all."""
    path = Path(path)
    if not path.exists():
        raise InputError(
            f"{role} file {path} does not exist; check the path "
            "(relative paths are read from the table's folder)."
        )
    if not path.is_file():
        raise InputError(f"{role} path {path} is not a file; give the path of a .nii or .nii.gz volume.")
    name = path.name.lower()
    if not name.endswith(NIFTI_SUFFIXES):
        raise InputError(
            f"{role} file {path} is not NIfTI (expected .nii or .nii.gz); "
            "convert it, e.g. with dcm2niix or Clinica."
        )
    try:
        with path.open("rb") as handle:
            head = handle.read(2)
    except OSError as error:
        raise InputError(f"{role} file {path} cannot be read ({error}); check its permissions.") from error
    if not head:
        raise InputError(f"{role} file {path} is empty (0 bytes); re-export or re-download it.")
    if name.endswith(".gz") and head != GZIP_MAGIC:
        raise InputError(
            f"{role} file {path} is named .gz but is not gzip-compressed; "
            "rename it to .nii if it is plain NIfTI, or compress it with gzip."
        )
    try:
        image = nibabel.load(path)
    except _READ_ERRORS as error:
        raise InputError(
            f"{role} file {path} cannot be read as NIfTI ({error}); re-export or re-download it."
        ) from error
    if not isinstance(image, nibabel.Nifti1Image):  # Nifti2Image is a subclass
        raise InputError(f"{role} file {path} is a {type(image).__name__}, not NIfTI; convert it to .nii.gz.")
    return image


def volume_budget_bytes() -> int:
    """The byte budget of one volume: ``CDSF_BENCH_MAX_VOLUME_MB`` MiB, else the default."""
    given = os.environ.get(VOLUME_BUDGET_ENV, "").strip()
    if not given:
        return DEFAULT_VOLUME_MB * 2**20
    try:
        megabytes = float(given)
    except ValueError:
        megabytes = float("nan")
    if not (math.isfinite(megabytes) and megabytes > 0):
        raise InputError(
            f"{VOLUME_BUDGET_ENV}={given!r} is not a positive number of MiB; unset it or fix it."
        )
    return int(megabytes * 2**20)


def _reading_bytes(voxels: int, stored: np.dtype, scaled: bool) -> int:
    """What reading a volume allocates: the data as stored, float64 if nibabel applies the
    header's scaling, and the float32 copy this module keeps."""
    return voxels * (stored.itemsize + (8 if scaled else 0) + 4)


def _check_header_data(header: nibabel.Nifti1Header, path: Path, role: str) -> None:
    """Refuse data types and scalings that cannot be a scan, and volumes beyond the budget."""
    stored = np.dtype(header.get_data_dtype())
    if stored.fields is not None or stored.kind not in "biuf":
        kind = "RGB / structured" if stored.fields is not None else stored.name
        raise InputError(
            f"{role} file {path} stores {kind} voxels; give a single-channel real-valued (integer or "
            "float) volume, e.g. convert it with nibabel or fslmaths."
        )
    slope, intercept = header.get_slope_inter()
    for name, value in (("scl_slope", slope), ("scl_inter", intercept)):
        if value is not None and not math.isfinite(float(value)):
            raise InputError(
                f"{role} file {path} has a header {name} of {value}, not a finite number; "
                "fix the header's scaling (or re-export the file)."
            )
    shape = tuple(int(n) for n in header.get_data_shape())
    if any(n > MAX_AXIS for n in shape):
        raise InputError(
            f"{role} file {path} has a header claiming dimensions {shape}, beyond {MAX_AXIS} per axis; "
            "the header is corrupt, re-export the file."
        )
    scaled = (slope is not None and slope != 1.0) or (intercept is not None and intercept != 0.0)
    needed = _reading_bytes(math.prod(shape), stored, scaled)
    budget = volume_budget_bytes()
    if needed > budget:
        raise InputError(
            f"{role} file {path} claims dimensions {shape} of {stored.name}, which would take "
            f"{needed / 2**20:.0f} MiB to read, over the budget of {budget / 2**20:.0f} MiB a volume; "
            f"if the file is right, raise {VOLUME_BUDGET_ENV}, else re-export it."
        )


def _spatial_shape(shape: tuple[int, ...], path: Path, role: str) -> tuple[int, int, int]:
    """The 3D shape, after dropping trailing singleton axes (a 4D file with one frame)."""
    dims = [int(n) for n in shape]
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) > 3:
        raise InputError(
            f"{role} file {path} is {len(dims)}D with shape {tuple(dims)}; give one 3D volume "
            "(average or pick a frame first, e.g. with fslmaths or nilearn.image.index_img)."
        )
    if len(dims) < 3 or min(dims) < 2:
        raise InputError(
            f"{role} file {path} has shape {tuple(dims)}, a 2D image or single slice; give a 3D volume."
        )
    return dims[0], dims[1], dims[2]


def _open_checked(path: Path, role: str) -> tuple[nibabel.Nifti1Image, HeaderInfo]:
    """The lazily opened image and its checked header, so reading data opens the file once."""
    image = _open(path, role)
    _check_header_data(image.header, path, role)
    shape = _spatial_shape(image.header.get_data_shape(), path, role)
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError(
            f"{role} file {path} has an invalid affine (non-finite or zero voxel size); "
            "fix its header (sform/qform)."
        )
    return image, HeaderInfo(shape=shape, affine=affine)


def inspect_header(path: str | Path, role: str) -> HeaderInfo:
    """Check a file's header (existence, format, dimensions, affine) without reading voxels."""
    return _open_checked(Path(path), role)[1]


def read_volume(path: str | Path, role: str) -> nibabel.Nifti1Image:
    """Read a 3D volume and refuse anything that would poison training.

    Returns an in-memory float32 image (the file is not kept open). ``role`` ("MRI" or
    "PET") is named in every error, together with the path and how to fix it.
    """
    path = Path(path)
    image, info = _open_checked(path, role)
    try:
        # astype copies, so no memory map onto the file outlives this function
        with np.errstate(over="ignore"):  # a scaling beyond float32 is reported below, by name
            data = np.asarray(image.dataobj).astype(np.float32, copy=True)
    except (*_READ_ERRORS, gzip.BadGzipFile) as error:
        raise InputError(
            f"{role} file {path} is truncated or damaged ({error}); re-export or re-download it."
        ) from error
    data = data.reshape(info.shape)
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad and _scaling_overflows(image):
        slope, intercept = image.header.get_slope_inter()
        raise InputError(
            f"{role} file {path} has finite stored voxels that its header scaling (scl_slope {slope}, "
            f"scl_inter {intercept}) takes beyond the float32 range in {bad} voxels; fix the scaling."
        )
    if bad:
        raise InputError(
            f"{role} file {path} has {bad} NaN or infinite voxels; "
            "fix the preprocessing that wrote it (or set them to 0)."
        )
    if not np.any(data):
        raise InputError(
            f"{role} file {path} is all zeros; the preprocessing that wrote it failed, re-run it."
        )
    if float(data.min()) == float(data.max()):
        raise InputError(
            f"{role} file {path} has the same value ({float(data.flat[0]):g}) in every voxel, no image; "
            "the preprocessing that wrote it failed, re-run it."
        )
    header = image.header.copy()
    header.set_data_dtype(np.float32)
    return nibabel.Nifti1Image(data, info.affine, header)


def _scaling_overflows(image: nibabel.Nifti1Image) -> bool:
    """Whether the stored voxels are finite although the scaled ones are not."""
    get_unscaled = getattr(image.dataobj, "get_unscaled", None)
    if get_unscaled is None:
        return False
    stored = np.asarray(get_unscaled())
    return stored.dtype.kind in "iu" or bool(np.all(np.isfinite(stored)))


def save_nifti(image: nibabel.Nifti1Image, path: Path) -> None:
    """Write ``image`` to ``path`` atomically: into a temporary file in the same folder, then
    renamed over ``path``, so a reader never sees half a file. The folder is created if needed.

    The temporary name keeps the extension (nibabel compresses by it) and is unique per call,
    so concurrent writers of one path cannot mix their bytes; the last rename wins.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extension = ".nii.gz" if path.name.endswith(".gz") else ".nii"
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{extension}")
    try:
        nibabel.save(image, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def to_native(volume: np.ndarray, affine: np.ndarray, reference: str | Path) -> nibabel.Nifti1Image:
    """``volume`` (on the grid of ``affine``) resampled onto the grid of the file ``reference``.

    Used to write a subject's synthetic PET where that subject's own MRI lies, so a viewer
    overlays the two: the result has the reference's shape, affine and sform / qform codes.
    Only the reference's header is read.
    """
    from nilearn.image import resample_img

    target = _open(Path(reference), "MRI")
    shape = tuple(int(n) for n in target.shape[:3])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nilearn's notes on resampling choices made explicit here
        resampled = resample_img(
            nibabel.Nifti1Image(np.asarray(volume, dtype=np.float32), affine),
            target_affine=target.affine,
            target_shape=shape,
            interpolation="continuous",
            force_resample=True,
            copy_header=True,
        )
    data = np.asarray(resampled.get_fdata(dtype=np.float32), dtype=np.float32)
    image = nibabel.Nifti1Image(data, target.affine)
    sform, sform_code = target.header.get_sform(coded=True)
    qform, qform_code = target.header.get_qform(coded=True)
    image.set_sform(target.affine if sform is None else sform, code=int(sform_code) or 2)
    image.set_qform(target.affine if qform is None else qform, code=int(qform_code) or int(sform_code) or 2)
    image.header.set_xyzt_units("mm")
    return image


def smooth_and_resample(image: nibabel.Nifti1Image, grid: Grid) -> np.ndarray:
    """A volume in MNI space on ``grid`` (float32): reoriented, anti-aliased, resampled.

    The image is reoriented to RAS (``as_closest_canonical``), then smoothed before
    downsampling so that sampling a 1 mm scan at 4 mm does not alias noise (or the thin
    cortical ribbon of a template into speckle): the Gaussian's FWHM per axis is
    sqrt(target^2 - source^2), which brings the effective resolution to the grid's (each
    voxel then holds its partial volume, as a scanner measures) and does nothing when the
    source is already that coarse. nilearn then resamples with spline interpolation;
    voxels outside the image's field of view become 0. Serves real scans and templates alike.
    """
    from nilearn.image import resample_img, smooth_img

    canonical = nibabel.as_closest_canonical(image)
    zooms = np.asarray(canonical.header.get_zooms()[:3], dtype=np.float64)
    fwhm = np.sqrt(np.clip(grid.resolution_mm**2 - zooms**2, 0.0, None))
    if np.any(fwhm > 0.5 * zooms):
        canonical = smooth_img(canonical, fwhm=fwhm)
    with warnings.catch_warnings():
        # nilearn warns about resampling choices already made explicit here
        warnings.simplefilter("ignore")
        resampled = resample_img(
            canonical,
            target_affine=grid.affine,
            target_shape=grid.shape,
            interpolation="continuous",
            force_resample=True,
            copy_header=True,
        )
    return np.asarray(resampled.get_fdata(dtype=np.float32), dtype=np.float32)


def to_grid(
    image: nibabel.Nifti1Image,
    grid: Grid,
    kind: Literal["mri", "pet"],
    brain_mask: np.ndarray | None = None,
    pet_suvr_max: float = 2.5,
) -> np.ndarray:
    """Resample a volume already in MNI space onto ``grid`` and map it to [-1, 1].

    ``smooth_and_resample`` brings it onto the grid. MRI is then scaled by its own
    brain-masked percentiles (``brain_mask`` is required), PET by the fixed SUVR map
    (``pet_suvr_max`` to +1). No registration happens here: a scan that is not in MNI
    space lands wrong.
    """
    if kind not in ("mri", "pet"):
        raise ValueError(f"kind must be 'mri' or 'pet', got {kind!r}")
    volume = smooth_and_resample(image, grid)
    if kind == "mri":
        if brain_mask is None:
            raise ValueError("an MRI needs the brain mask for its percentile normalisation")
        return normalise_mri(volume, brain_mask.astype(bool))
    return normalise_pet(volume, pet_suvr_max)
