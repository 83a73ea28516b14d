"""``ecat``: ADNI's FDG-PET downloads as ECAT 7 ``.v`` files, paired with NIfTI MRI by a table.

The table (``tables.read_subject_table``) names each subject's MRI (NIfTI, copied as it is)
and PET (an ECAT ``.v`` file, or empty). nibabel reads ECAT (``nibabel.ecat``), and its affine
is written with the PET (qform / sform code 1, scanner space): nothing is assumed. A file with
several frames is refused, because averaging dynamic frames needs the frames aligned first
(ADNI's "Co-reg, Avg" series are one frame). The PET stays in the scanner's space and units:
register it to MNI and express it in SUVR before a run (docs/data.md, "Bring your own data");
``data check`` says where either is missing.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from nibabel import ecat
from nibabel.filebasedimages import ImageFileError

from cdsf_bench.data.importers.cohort import ImportOptions, NiftiFile, Reading, Volume
from cdsf_bench.data.importers.tables import table_reading
from cdsf_bench.errors import InputError
from cdsf_bench.textfiles import check_regular_file

#: one ECAT volume: ADNI's are a few tens of MiB
VOLUME_LIMIT = 2**32


def read_ecat(path: Path, where: str) -> Volume:
    """The one frame of an ECAT file as a 3D volume with nibabel's affine."""
    check_regular_file(path, f"{where}:", VOLUME_LIMIT)
    try:
        image = ecat.load(path)
        frames = image.get_subheaders().get_nframes()
        data = np.asarray(image.get_fdata(), dtype=np.float64) if frames == 1 else None
    except (
        OSError,
        ValueError,
        TypeError,
        EOFError,
        struct.error,
        ImageFileError,
        IndexError,
        KeyError,
    ) as error:
        raise InputError(f"{where}: {path} cannot be read as ECAT 7 ({error}).") from None
    if data is None:
        raise InputError(
            f"{where}: {path} has {frames} frames; give one frame (ADNI's 'Co-reg, Avg' series), since "
            "averaging frames needs them aligned first."
        )
    return Volume(
        data.reshape(data.shape[:3]), np.asarray(image.affine, dtype=float), f"{where}: {path}", True
    )


def read(source: Path, options: ImportOptions) -> Reading:
    facts = {
        "geometry": {"assumed": False, "affine": "the ECAT file's own, as nibabel reads it"},
        "labels_from": f"column diagnosis of {source}",
    }
    return table_reading(source, facts, lambda path, where: NiftiFile(path), read_ecat)
