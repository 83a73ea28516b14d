"""``cdsf-bench data import``: the peers' data layouts turned into NIfTI files and a manifest.

One module per layout reads its files into subjects (``cohort.Subject``); ``writer.py`` checks
and writes them, the same for every layout. A layout's module is imported only when it is
used, so that its reader (h5py, SciPy) is needed only by those who import that layout.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from cdsf_bench.data.importers.cohort import ImportOptions, Reading


@dataclass(frozen=True)
class Layout:
    """A source layout: its module (which defines ``read(source, options) -> Reading``) and summary."""

    module: str
    summary: str


LAYOUTS = {
    "pasta-hdf5": Layout("pasta", "one HDF5 file of PASTA / SiM2P image groups (MRI/T1, PET/FDG, DX)"),
    "tpagan-mat": Layout(
        "tpagan", "a folder of TPA-GAN .mat files (data[0] MRI, data[1] PET, label in the name)"
    ),
    "npy-table": Layout("npy_table", "a CSV / TSV naming .npy volumes and diagnoses"),
    "ecat": Layout("ecat", "a CSV / TSV pairing NIfTI MRI with ECAT .v FDG-PET"),
}


def open_source(layout: str, source: Path, options: ImportOptions) -> Reading:
    """``source`` opened by ``layout``'s reader."""
    module = importlib.import_module(f"{__name__}.{LAYOUTS[layout].module}")
    reading: Reading = module.read(Path(source), options)
    return reading
