"""``tpagan-mat``: the folder of MATLAB files TPA-GAN reads, one ``.mat`` per subject.

The layout, as its repository's dataset reader and ``About_dataset.txt`` define it: each file
holds one array ``data`` of shape 2 x 76 x 94 x 76, ``data[0]`` the MRI and ``data[1]`` the
PET, intensities 0 to 255; the file is named ``<label>_<subject>.mat`` with label 0 for NC
(CN) and 1 for AD, the subject an ADNI id (``0_009_S_0862.mat``). Other files in the folder are
ignored (the peer's own note file among them); a ``.mat`` not named so is refused.

The arrays carry no affine. The repository does not state the voxel size; 2 mm is assumed,
because 76 x 94 x 76 is the 91 x 109 x 91 MNI152 2 mm grid less 15 voxels per axis
(``--voxel-mm`` for another). The axes are taken as stored, RAS+ (``ArrayGeometry``).
"""

from __future__ import annotations

import re
from collections.abc import Generator
from pathlib import Path

import numpy as np

from cdsf_bench.data.importers.cohort import ImportOptions, Reading, Subject, Volume
from cdsf_bench.errors import InputError

DOCUMENTED_SHAPE = (76, 94, 76)
DOCUMENTED_VOXEL_MM = 2.0
#: the label digit of a file name and what it means
LABELS = {"0": "CN", "1": "AD"}
NAME = re.compile(r"^(?P<label>[0-9])_(?P<subject>.+)\.mat$")


def _load(path: Path) -> np.ndarray:
    try:
        from scipy.io import loadmat
        from scipy.io.matlab import MatReadError
    except ImportError:
        raise InputError("tpagan-mat needs SciPy: pip install 'cdsf-bench[import]'.") from None
    try:
        contents = loadmat(path)
    except NotImplementedError:
        raise InputError(
            f"{path} is a MATLAB v7.3 file, which TPA-GAN's reader (scipy.io.loadmat) cannot read either; "
            "save it with -v7."
        ) from None
    except (MatReadError, ValueError, OSError, TypeError, IndexError, KeyError) as error:
        raise InputError(f"{path} cannot be read as a MATLAB file ({error}).") from None
    if "data" not in contents:
        keys = ", ".join(key for key in contents if not key.startswith("__")) or "none"
        raise InputError(f"{path}: variable 'data' is missing (variables there: {keys}).")
    data = np.asarray(contents["data"])
    if data.ndim != 4 or data.shape[0] != 2:
        raise InputError(
            f"{path}: variable 'data' has shape {data.shape}; TPA-GAN's is 2 x X x Y x Z "
            "(data[0] the MRI, data[1] the PET)."
        )
    return data


def read(source: Path, options: ImportOptions) -> Reading:
    if not source.is_dir():
        raise InputError(f"TPA-GAN folder {source} is not a folder; give the folder of .mat files.")
    files = sorted(path for path in source.iterdir() if path.suffix.lower() == ".mat")
    if not files:
        raise InputError(f"TPA-GAN folder {source} holds no .mat file.")
    geometry = options.geometry("tpagan-mat", DOCUMENTED_VOXEL_MM)
    facts = {
        "documented_shape": list(DOCUMENTED_SHAPE),
        "geometry": {**geometry.to_json(), "assumed": True},
        "labels_from": "the file name's first digit: 0 NC (CN), 1 AD",
    }

    def subjects() -> Generator[Subject, None, None]:
        for path in files:
            match = NAME.match(path.name)
            if match is None or match["label"] not in LABELS:
                raise InputError(
                    f"{path}: the name is not <label>_<subject>.mat with label 0 (NC) or 1 (AD), "
                    "as TPA-GAN names its files (0_009_S_0862.mat)."
                )
            data = _load(path)
            yield Subject(
                where=str(path),
                participant_id=match["subject"],
                diagnosis=LABELS[match["label"]],
                mri=Volume(data[0], geometry.affine(data.shape[1:]), f"{path}: data[0]"),
                pet=Volume(data[1], geometry.affine(data.shape[1:]), f"{path}: data[1]"),
            )

    return Reading(total=len(files), subjects=subjects(), facts=facts)
