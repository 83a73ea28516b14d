"""What every importer hands the writer: subjects, their volumes, and the geometry of bare arrays.

A layout reader turns its files into :class:`Subject` records and checks nothing but its own
layout (datasets, keys, file names); the rules every subject obeys (labels, ids, voxels) are
here and in ``writer.py``, so that every layout refuses the same things with the same words.

Arrays without an affine (HDF5, ``.mat``, ``.npy``) get one from :class:`ArrayGeometry`, a
stated assumption: isotropic voxels of the layout's documented size, the voxel axes in the
orientation the peers' code reads them in (RAS+ unless ``--orientation`` says otherwise), and
the volume's centre on the centre of the MNI brain box, because the peers' volumes are crops
of MNI-registered scans around the brain. ``data check`` measures how far each imported scan
lies from the MNI template, so a wrong assumption shows up there, with its offset per axis.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cdsf_bench.data.conventions import DIAGNOSES
from cdsf_bench.data.grid import BRAIN_BOX_MM
from cdsf_bench.errors import InputError

#: the centre of the MNI brain box (mm), where an array's centre voxel is placed by default
BRAIN_CENTRE_MM: tuple[float, float, float] = (
    (BRAIN_BOX_MM[0][0] + BRAIN_BOX_MM[0][1]) / 2,
    (BRAIN_BOX_MM[1][0] + BRAIN_BOX_MM[1][1]) / 2,
    (BRAIN_BOX_MM[2][0] + BRAIN_BOX_MM[2][1]) / 2,
)
#: the other names the peers' tables and files give the project's diagnoses (lower case)
DIAGNOSIS_SYNONYMS = {"dementia": "AD", "nc": "CN", "hc": "CN", "smci": "sMCI", "pmci": "pMCI"}
#: the letters of each world axis, positive end first (nibabel's axis codes)
_AXIS_LETTERS = (("R", "L"), ("A", "P"), ("S", "I"))


@dataclass(frozen=True)
class Volume:
    """Voxels read from a source, with their affine and where they came from (``file: field``)."""

    data: np.ndarray
    affine: np.ndarray
    where: str
    #: whether the affine is the source's own (ECAT) or an :class:`ArrayGeometry` assumption
    affine_from_source: bool = False


@dataclass(frozen=True)
class NiftiFile:
    """A NIfTI file the source already holds, copied as it is (its header checked first)."""

    path: Path


@dataclass(frozen=True)
class Subject:
    """One subject (one visit) of a source, as its layout gives it, not yet checked."""

    where: str
    participant_id: str
    diagnosis: str
    mri: Volume | NiftiFile
    pet: Volume | None
    session_id: str = ""
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class ArrayGeometry:
    """How bare arrays are placed in the world: voxel size (mm), axis codes, centre (mm)."""

    voxel_mm: float
    orientation: str = "RAS"
    centre_mm: tuple[float, float, float] = BRAIN_CENTRE_MM

    def __post_init__(self) -> None:
        if not (np.isfinite(self.voxel_mm) and self.voxel_mm > 0):
            raise InputError(f"--voxel-mm must be a positive number of millimetres, got {self.voxel_mm}.")
        _axis_columns(self.orientation)

    def affine(self, shape: tuple[int, ...]) -> np.ndarray:
        """The voxel-to-world affine of an array of ``shape`` under this assumption."""
        affine = np.eye(4)
        affine[:3, :3] = _axis_columns(self.orientation) * self.voxel_mm
        middle = (np.asarray(shape[:3], dtype=float) - 1.0) / 2.0
        affine[:3, 3] = np.asarray(self.centre_mm) - affine[:3, :3] @ middle
        return affine

    def to_json(self) -> dict:
        return {"voxel_mm": self.voxel_mm, "orientation": self.orientation, "centre_mm": list(self.centre_mm)}


@dataclass(frozen=True)
class ImportOptions:
    """What the user says about a source that its files do not (``data import``'s options)."""

    #: the voxel size of bare arrays; None: the layout's documented size
    voxel_mm: float | None = None
    orientation: str = "RAS"
    #: where an array's centre voxel lies; None: the centre of the MNI brain box
    centre_mm: tuple[float, float, float] | None = None
    nan_to_zero: bool = False
    #: PET voxels are written divided by this (0-255 PET: 255)
    pet_scale: float = 1.0
    #: source diagnoses whose subjects are left out (compared case-insensitively)
    skip_diagnoses: tuple[str, ...] = ()

    def geometry(self, layout: str, documented_mm: float | None) -> ArrayGeometry:
        """The geometry of ``layout``'s arrays: the options where given, the layout's documentation else."""
        voxel_mm = self.voxel_mm if self.voxel_mm is not None else documented_mm
        if voxel_mm is None:
            raise InputError(
                f"{layout} arrays carry no voxel size; give it with --voxel-mm (e.g. --voxel-mm 1.5)."
            )
        return ArrayGeometry(voxel_mm, self.orientation, self.centre_mm or BRAIN_CENTRE_MM)

    def skips(self, diagnosis: object) -> bool:
        word = (
            diagnosis.decode("utf-8", "replace") if isinstance(diagnosis, bytes) else str(diagnosis)
        ).strip()
        return word.lower() in {skip.strip().lower() for skip in self.skip_diagnoses}


@dataclass(frozen=True)
class Reading:
    """A source opened by its layout: how many subjects it has, the subjects, and the layout's facts."""

    total: int
    subjects: Generator[Subject, None, None]
    #: what import.json records of the layout: documented shape, geometry, where labels come from
    facts: dict


def _axis_columns(orientation: str) -> np.ndarray:
    """The unit world direction of each voxel axis for axis codes such as ``RAS`` or ``LPI``."""
    codes = orientation.upper()
    columns = np.zeros((3, 3))
    seen: set[int] = set()
    for axis, letter in enumerate(codes):
        found = [
            (world, 1.0 if letter == ends[0] else -1.0)
            for world, ends in enumerate(_AXIS_LETTERS)
            if letter in ends
        ]
        if not found or found[0][0] in seen:
            break
        world, sign = found[0]
        seen.add(world)
        columns[world, axis] = sign
    if len(codes) != 3 or len(seen) != 3:
        raise InputError(
            f"--orientation {orientation!r} is not three axis codes, one of L/R, A/P and S/I each "
            "(RAS: the first voxel axis runs to the right, the second to the front, the third up)."
        )
    return columns


def map_diagnosis(value: object, where: str) -> str:
    """The project's label (CN, sMCI, pMCI, AD) for a source's label, else an ``InputError``.

    Case and surrounding space are ignored; "Dementia" (ADNI's DX, PASTA's files) is AD and
    "NC" / "HC" are CN. A bare MCI is refused: whether the subject converted decides between
    sMCI and pMCI, and no source layout records it.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    word = str(value).strip()
    canonical = {label.lower(): label for label in DIAGNOSES}
    label = canonical.get(word.lower()) or DIAGNOSIS_SYNONYMS.get(word.lower())
    if label is not None:
        return label
    if word.lower() == "mci":
        raise InputError(
            f"{where}: diagnosis 'MCI' cannot be mapped: cdsf-bench needs sMCI or pMCI (converts to AD "
            "within 36 months), which the source does not say; pass --skip-diagnosis MCI to leave these "
            "subjects out, or label them sMCI / pMCI in the source."
        )
    raise InputError(
        f"{where}: diagnosis {word!r} is not one cdsf-bench knows ({', '.join(DIAGNOSES)}, or Dementia, "
        "NC, HC); fix it in the source or pass --skip-diagnosis to leave those subjects out."
    )


def checked_voxels(data: np.ndarray, where: str, *, nan_to_zero: bool) -> tuple[np.ndarray, int]:
    """``data`` as float32 once it is a 3D real volume with finite voxels; and how many NaN were set to 0.

    NaN voxels are refused unless ``nan_to_zero`` (PASTA's own reader sets them to 0); infinite
    voxels are refused always, since no value can stand for them.
    """
    if data.dtype.kind not in "biuf":
        raise InputError(f"{where} holds {data.dtype} voxels; give a real-valued (integer or float) volume.")
    if data.ndim != 3:
        raise InputError(f"{where} has shape {tuple(data.shape)}; give a 3D volume (one frame, one channel).")
    volume = np.asarray(data, dtype=np.float32)
    nan = np.isnan(volume)
    replaced = int(nan.sum())
    if replaced and not nan_to_zero:
        raise InputError(
            f"{where} has {replaced} NaN voxel(s); pass --nan-to-zero to set them to 0 (as PASTA's reader "
            "does), or fix the file."
        )
    if np.isinf(volume).any():
        raise InputError(f"{where} has infinite voxels (or values beyond float32); fix the file.")
    if replaced:
        volume = np.where(nan, np.float32(0.0), volume)
    return volume, replaced
