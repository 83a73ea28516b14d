"""``npy-table``: a folder of ``.npy`` volumes and a table naming each subject's files and label.

Joint-Learning-style data: one 3D NumPy array per scan. The peers list the paths and labels in
pickled Python lists; those are refused (``tables.refuse_pickle``) and a CSV / TSV is read
instead (``tables.read_subject_table``: participant_id, diagnosis, mri, optional pet). Arrays
are loaded with pickling off, so a ``.npy`` holding Python objects is refused too. They carry
no voxel size and the layout documents none, so ``--voxel-mm`` is required; the axes are taken
as RAS+ unless ``--orientation`` says otherwise (``ArrayGeometry``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cdsf_bench.data.importers.cohort import ArrayGeometry, ImportOptions, Reading, Volume
from cdsf_bench.data.importers.tables import refuse_pickle, table_reading
from cdsf_bench.errors import InputError
from cdsf_bench.textfiles import check_regular_file

#: one volume: a 1 mm whole-head float64 array is about 130 MiB
VOLUME_LIMIT = 2**32


def _array(path: Path, where: str, geometry: ArrayGeometry) -> Volume:
    refuse_pickle(path)
    if path.suffix.lower() != ".npy":
        raise InputError(f"{where}: {path} is not a .npy file; give one NumPy array per scan.")
    check_regular_file(path, f"{where}:", VOLUME_LIMIT)
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as error:
        raise InputError(
            f"{where}: {path} cannot be read without unpickling ({error}); save plain arrays."
        ) from None
    except (OSError, EOFError) as error:
        raise InputError(f"{where}: {path} is not a readable .npy file ({error}).") from None
    return Volume(data, geometry.affine(data.shape), f"{where}: {path}")


def read(source: Path, options: ImportOptions) -> Reading:
    refuse_pickle(source)
    geometry = options.geometry("npy-table", None)
    facts = {
        "geometry": {**geometry.to_json(), "assumed": True},
        "labels_from": f"column diagnosis of {source}",
    }

    def array(path: Path, where: str) -> Volume:
        return _array(path, where, geometry)

    return table_reading(source, facts, array, array)
