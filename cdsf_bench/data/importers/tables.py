"""The subject table that the ``npy-table`` and ``ecat`` layouts read: one row per subject.

Columns (case-insensitive, the manifest's aliases accepted): ``participant_id``, ``diagnosis``,
``mri``, optional ``pet`` (empty where a subject has none) and ``session_id``; every other
column is kept in the manifest. Paths are relative to the table's folder or absolute.

A pickled list of paths and labels (Joint-Learning's) is refused unread: unpickling runs
whatever code the file holds, so a table is the only way in.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from pathlib import Path

import pandas as pd

from cdsf_bench.data.importers.cohort import NiftiFile, Reading, Subject, Volume
from cdsf_bench.data.manifest import read_table_file, require_columns
from cdsf_bench.errors import InputError

PICKLE_SUFFIXES = (".pkl", ".pickle", ".p")
COLUMNS = ("participant_id", "diagnosis", "mri", "pet", "session_id")


def refuse_pickle(path: Path) -> None:
    """An ``InputError`` for a pickle file, which is never opened."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise InputError(
            f"{path} is a pickle file; it is not read, because unpickling runs any code the file holds. "
            "Convert it once, in the environment that wrote it, to a CSV of participant_id, diagnosis, mri "
            "and pet (docs/data.md shows how)."
        )


def read_subject_table(path: Path, what: str) -> tuple[pd.DataFrame, Path]:
    """The table (text cells, columns resolved) and the folder its relative paths start at."""
    path = Path(path)
    refuse_pickle(path)
    table = read_table_file(path, what)
    require_columns(table, ("participant_id", "diagnosis", "mri"), path, what)
    if "pet" not in table.columns:
        table["pet"] = ""
    if "session_id" not in table.columns:
        table["session_id"] = ""
    return table, path.resolve().parent


def table_reading(
    source: Path,
    facts: dict,
    read_mri: Callable[[Path, str], Volume | NiftiFile],
    read_pet: Callable[[Path, str], Volume],
) -> Reading:
    """The subjects of the table ``source``, each volume read by the layout's reader
    (``reader(path, where)``, ``where`` naming the table, the row and the column)."""
    table, folder = read_subject_table(source, "Subject table")

    def path(value: str) -> Path:
        return Path(os.path.abspath(os.path.join(folder, os.path.expanduser(value))))

    def subjects() -> Generator[Subject, None, None]:
        for row in range(len(table)):
            cells = {column: str(table.at[row, column]) for column in COLUMNS}
            where = f"{source}, row {row + 1} ({cells['participant_id']})"
            yield Subject(
                where=where,
                participant_id=cells["participant_id"],
                session_id=cells["session_id"],
                diagnosis=cells["diagnosis"],
                mri=read_mri(path(cells["mri"]), f"{where} mri"),
                pet=read_pet(path(cells["pet"]), f"{where} pet") if cells["pet"] else None,
                extra={column: table.at[row, column] for column in table.columns if column not in COLUMNS},
            )

    return Reading(total=len(table), subjects=subjects(), facts=facts)
