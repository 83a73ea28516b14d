"""The subject table of a manifest: one row per subject with its label and the paths of its volumes.

A manifest is a CSV or TSV written by the user, or by ``cdsf-bench data phantom``; a Clinica
CAPS directory gives the same table (``cdsf_bench.data.caps``, which reuses the reading and
normalising here). The table has ``participant_id``, ``diagnosis``, ``mri`` (absolute
path), ``pet`` (absolute path or "" when the subject has no PET), optionally ``pet_truth``,
``pet_expected`` and ``split``, and every other column of the input (age, sex, ...), so the run folder keeps
what the user gave.

Labels are matched case-insensitively to CN, sMCI, pMCI and AD. A bare "MCI" is not
accepted: without knowing whether the subject converted it belongs to neither task, so
the error asks for sMCI / pMCI (ClinicaDL's ``get-labels`` writes them) or for the rows to
be dropped. Reading never stops at the first bad row: row problems (labels, duplicates,
splits) are gathered by ``cdsf_bench.data.check`` and, with ``strict``, raised together.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cdsf_bench.data.check import table_problems
from cdsf_bench.data.conventions import DIAGNOSES
from cdsf_bench.data.problems import Problem, format_problems
from cdsf_bench.errors import InputError
from cdsf_bench.textfiles import TABLE_LIMIT, check_regular_file

REQUIRED = ("participant_id", "diagnosis", "mri")
#: Other names people give the columns; the key is the name the table uses.
ALIASES = {
    "participant_id": ("subject_id", "subject", "participant"),
    "diagnosis": ("label", "dx"),
    "mri": ("mri_path", "t1", "t1w", "t1_path"),
    "pet": ("pet_path",),
    "pet_truth": ("pet_truth_path",),
    "session_id": ("session",),
}
PATH_COLUMNS = ("mri", "pet", "pet_truth", "pet_expected")
SPLIT_ALIASES = {"validation": "val", "valid": "val", "training": "train", "testing": "test"}
_DIAGNOSIS_BY_LOWER = {label.lower(): label for label in DIAGNOSES}


def normalise_diagnosis(value: object) -> str | None:
    """The canonical label for ``value`` (case and surrounding space ignored), else None."""
    return _DIAGNOSIS_BY_LOWER.get(str(value).strip().lower())


def _separator(path: Path) -> str:
    """The delimiter: by extension for .csv / .tsv, else sniffed from the first lines."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return ","
    if suffix == ".tsv":
        return "\t"
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        sample = handle.read(8192)
    try:
        return csv.Sniffer().sniff(sample, delimiters=",\t;").delimiter
    except csv.Error:
        return "\t" if "\t" in sample else ","


def _refuse_repeated_columns(path: Path, separator: str, what: str) -> None:
    """A header naming a column twice (case and space ignored), read before pandas, which
    would rename the second one (``age.1``) and so hide the repeat."""
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
        header = next(csv.reader(handle, delimiter=separator), [])
    names = [name.strip().lower() for name in header]
    repeated = sorted({name for name in names if name and names.count(name) > 1})
    if repeated:
        raise InputError(f"{what} {path} repeats the columns {repeated}; give each column once.")


def read_table_file(path: Path, what: str) -> pd.DataFrame:
    """Read a CSV / TSV as strings, column names lower-cased and aliases resolved.

    Everything is read as text (empty cells are "") so identifiers like "0012" keep their
    zeros; numbers are restored later for the extra columns only.
    """
    path = Path(path)
    check_regular_file(path, what, TABLE_LIMIT)
    separator = _separator(path)
    _refuse_repeated_columns(path, separator, what)
    try:
        table = pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError as error:
        raise InputError(
            f"{what} {path} is empty; it needs a header row ({', '.join(REQUIRED)}, ...) "
            "and one row per subject."
        ) from error
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as error:
        raise InputError(
            f"{what} {path} cannot be parsed as CSV / TSV ({error}); check its delimiter and quoting."
        ) from error
    table.columns = [str(column).strip().lower() for column in table.columns]
    for name, aliases in ALIASES.items():
        present = [column for column in (name, *aliases) if column in table.columns]
        if len(present) > 1:
            raise InputError(f"{what} {path} has columns {present} that all mean {name!r}; keep one of them.")
        if present and present[0] != name:
            table = table.rename(columns={present[0]: name})
    table = table.apply(lambda column: column.str.strip())
    if table.empty:
        raise InputError(f"{what} {path} has a header but no subjects; add one row per subject.")
    return table


def require_columns(table: pd.DataFrame, columns: tuple[str, ...], path: Path, what: str) -> None:
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise InputError(
            f"{what} {path} lacks the column(s) {', '.join(missing)} (found: {', '.join(table.columns)}); "
            f"add them (column names are case-insensitive)."
        )


def _absolute(value: str, folder: Path) -> str:
    """An absolute path for a table cell, relative ones read from the table's folder."""
    if not value:
        return ""
    return os.path.abspath(os.path.join(folder, os.path.expanduser(value)))


def _restore_numbers(table: pd.DataFrame, keep_text: set[str]) -> pd.DataFrame:
    """Turn extra columns that hold only numbers (age, MMSE, ...) back into numbers."""
    for column in table.columns:
        if column in keep_text:
            continue
        values = table[column].replace("", np.nan)
        try:
            table[column] = pd.to_numeric(values)
        except (ValueError, TypeError):
            continue
    return table


def normalise_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Canonical labels and split names; unknown ones are left as given for the checks to name."""
    table["diagnosis"] = [normalise_diagnosis(v) or v for v in table["diagnosis"]]
    if "split" in table.columns:
        split = table["split"].str.lower().replace(SPLIT_ALIASES)
        if (split == "").all():
            table = table.drop(columns="split")
        else:
            table["split"] = split
    return table


def _finish(table: pd.DataFrame, strict: bool, where: str) -> pd.DataFrame:
    text = {"participant_id", "diagnosis", "split", "session_id", *PATH_COLUMNS}
    table = _restore_numbers(table.reset_index(drop=True), text)
    if strict:
        problems = table_problems(table)
        if problems:
            raise InputError(f"{where} has {len(problems)} problem(s):\n{format_problems(problems)}")
    return table


def session_name(session: str) -> str:
    """A session as BIDS and Clinica name it: ``M00`` and ``ses-M00`` are both ``ses-M00``."""
    return session if not session or session.startswith("ses-") else f"ses-{session}"


def select_session(table: pd.DataFrame, session: str, path: Path) -> tuple[pd.DataFrame, list[Problem]]:
    """The rows of ``session`` (``data.session``) when given; the table as it is otherwise.

    A longitudinal manifest lists a participant once per session; ``data.session`` picks one,
    as it does for a CAPS directory. Participants without a row for that session are left out
    (a manifest lists what exists); a manifest without ``session_id``, or no row at all for
    the session, is a problem naming the sessions there are.
    """
    if not session:
        return table, []
    wanted = session_name(session)
    if "session_id" not in table.columns:
        return table, [
            Problem(
                "",
                str(path),
                f"data.session = {session!r} but the manifest has no session_id column; add one "
                "(one row per participant and session) or leave data.session empty.",
            )
        ]
    sessions = [session_name(str(value)) for value in table["session_id"]]
    table = table.assign(session_id=sessions)
    chosen = table[table["session_id"] == wanted].reset_index(drop=True)
    if chosen.empty:
        there = ", ".join(sorted(set(sessions), key=str)) or "none"
        return chosen, [
            Problem("", str(path), f"has no row for session {wanted} (sessions there: {there}); pick one.")
        ]
    return chosen, []


def read_manifest(path: Path, *, strict: bool = True) -> pd.DataFrame:
    """Read a manifest: CSV or TSV with participant_id, diagnosis, mri, and optional
    pet, pet_truth, pet_expected, split and any other columns; relative paths are read from its folder.

    ``strict`` raises one ``InputError`` listing every bad row (label, duplicate, split);
    without it the rows come back as given, for ``check_table`` to report.
    """
    path = Path(path)
    table = read_table_file(path, "Manifest")
    require_columns(table, REQUIRED, path, "Manifest")
    folder = path.resolve().parent
    for column in PATH_COLUMNS:
        if column in table.columns:
            table[column] = [_absolute(value, folder) for value in table[column]]
    if "pet" not in table.columns:
        table["pet"] = ""
    return _finish(normalise_rows(table), strict, f"Manifest {path}")
