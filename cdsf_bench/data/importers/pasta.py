"""``pasta-hdf5``: the one HDF5 file per split that PASTA (MICCAI 2024) and SiM2P read.

The layout, as their README and dataset readers define it: one group per image id at the top
level, each with the datasets ``MRI/T1/data`` and ``PET/FDG/data`` (3D, MRI at 1.5 mm,
113 x 137 x 113, PET on the same grid), a ``tabular`` dataset (age, gender, education, MMSE,
ADAS-Cog-13, ApoE4, named by ``stats/tabular/columns``) and the attributes ``DX`` (CN, MCI or
Dementia), ``RID`` (ADNI's participant number) and ``VISCODE`` (the visit); a ``stats`` group
holds the tabular means. The arrays carry no affine: they are used as stored (the readers slice
axis 1 as coronal), so the voxel axes are taken as RAS+ at 1.5 mm (``ArrayGeometry``).

Rules here: the participant is ``RID`` (``RID0123``; the image id where there is none) and the
session ``VISCODE``, so that a participant's visits stay one participant for the splits; the
image id is kept in the ``image_id`` column. A group without a ``PET`` group is an MRI-only
subject (the incomplete-modality case cdsf-bench is built for; the peers' readers need PET);
a group whose ``PET/FDG`` exists without its ``data`` is refused, as is a group without
``MRI/T1/data`` or ``DX``.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from cdsf_bench.data.importers.cohort import ArrayGeometry, ImportOptions, Reading, Subject, Volume
from cdsf_bench.errors import InputError
from cdsf_bench.textfiles import check_regular_file

DOCUMENTED_SHAPE = (113, 137, 113)
DOCUMENTED_VOXEL_MM = 1.5
MRI_FIELD, PET_FIELD, PET_GROUP = "MRI/T1/data", "PET/FDG/data", "PET"
#: the manifest's own columns, which the tabular names must not take
_RESERVED = {
    "participant_id",
    "session_id",
    "diagnosis",
    "mri",
    "pet",
    "source",
    "split",
    "labelled",
    "image_id",
}
#: a PASTA file holds a few thousand 113 x 137 x 113 pairs at most
SIZE_LIMIT = 2**40


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise InputError(
            "pasta-hdf5 needs h5py: pip install 'cdsf-bench[import]' (or pip install h5py)."
        ) from None
    return h5py


def _text(value: object) -> str:
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", errors="replace").strip()
    if isinstance(value, np.ndarray) and value.size == 1:
        return _text(value.reshape(()).item())
    return str(value).strip()


def _participant(rid: object, image_id: str, where: str) -> str:
    if rid is None:
        return image_id
    number = np.asarray(rid).reshape(-1)
    if number.size != 1 or number.dtype.kind not in "iuf" or not float(number[0]).is_integer():
        raise InputError(f"{where}: attribute RID is {rid!r}; it must be one whole number (ADNI's RID).")
    return f"RID{int(number[0]):04d}"


def _tabular_names(handle: Any, size: int) -> list[str]:
    names = [f"tabular_{i}" for i in range(size)]
    columns = handle.get("stats/tabular/columns")
    if columns is not None and columns.shape == (size,):
        names = [_text(name).lower().replace(" ", "_") or names[i] for i, name in enumerate(columns[()])]
    return [f"tabular_{name}" if name in _RESERVED else name for name in names]


def _tabular(group: Any, where: str) -> np.ndarray:
    try:
        return np.asarray(group["tabular"][()], dtype=float).reshape(-1)
    except (OSError, ValueError, TypeError) as error:
        raise InputError(f"{where}/tabular is not a list of numbers ({error}).") from None


def _array(group: Any, field: str, where: str, geometry: ArrayGeometry) -> Volume:
    dataset = group.get(field)
    if dataset is None or not hasattr(dataset, "shape"):
        raise InputError(
            f"{where}: dataset {field} is missing; each image group needs {MRI_FIELD}, "
            f"and {PET_FIELD} where it has a PET group."
        )
    try:
        data = np.asarray(dataset[()])
    except (OSError, ValueError, TypeError) as error:
        raise InputError(f"{where}/{field} cannot be read ({error}); the file may be damaged.") from None
    return Volume(data, geometry.affine(data.shape), f"{where}/{field}")


def read(source: Path, options: ImportOptions) -> Reading:
    h5py = _h5py()
    check_regular_file(source, "PASTA HDF5 file", SIZE_LIMIT)

    def opened() -> Any:
        try:
            return h5py.File(source, "r")
        except OSError as error:
            raise InputError(f"PASTA HDF5 file {source} cannot be opened as HDF5 ({error}).") from None

    with opened() as handle:
        names = [name for name in handle if name != "stats"]
    geometry = options.geometry("pasta-hdf5", DOCUMENTED_VOXEL_MM)
    facts = {
        "documented_shape": list(DOCUMENTED_SHAPE),
        "geometry": {**geometry.to_json(), "assumed": True},
        "labels_from": "attribute DX of each image group",
    }

    def subjects() -> Generator[Subject, None, None]:
        with opened() as handle:
            tabular_names: list[str] | None = None
            for name in names:
                where = f"{source}:/{name}"
                group = handle[name]
                if not isinstance(group, h5py.Group):
                    raise InputError(
                        f"{where} is a dataset, not an image group; the top level holds one group "
                        "per image id."
                    )
                if "DX" not in group.attrs:
                    raise InputError(f"{where}: attribute DX (the diagnosis) is missing.")
                extra: dict[str, object] = {"image_id": name}
                if "tabular" in group:
                    values = _tabular(group, where)
                    if tabular_names is None:
                        tabular_names = _tabular_names(handle, values.size)
                    if values.size != len(tabular_names):
                        raise InputError(
                            f"{where}/tabular has {values.size} values, other groups {len(tabular_names)}."
                        )
                    extra.update(
                        {
                            column: (v if np.isfinite(v) else "")
                            for column, v in zip(tabular_names, values, strict=True)
                        }
                    )
                yield Subject(
                    where=where,
                    participant_id=_participant(group.attrs.get("RID"), name, where),
                    session_id=_text(group.attrs["VISCODE"]) if "VISCODE" in group.attrs else "",
                    diagnosis=_text(group.attrs["DX"]),
                    mri=_array(group, MRI_FIELD, where, geometry),
                    pet=_array(group, PET_FIELD, where, geometry) if PET_GROUP in group else None,
                    extra=extra,
                )

    return Reading(total=len(names), subjects=subjects(), facts=facts)
