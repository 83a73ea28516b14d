"""Subject tables: one row per subject with its label and the paths of its volumes.

Two inputs produce the same table: a manifest (CSV or TSV written by the user, or by
``cdsf-bench data phantom``) and a Clinica CAPS directory with a diagnosis TSV. The table
has ``participant_id``, ``diagnosis``, ``mri`` (absolute path), ``pet`` (absolute path or
"" when the subject has no PET), optionally ``pet_truth`` and ``split``, and every other
column of the input (age, sex, ...), so the run folder keeps what the user gave.

Labels are matched case-insensitively to CN, sMCI, pMCI and AD. A bare "MCI" is not
accepted: without knowing whether the subject converted it belongs to neither task, so
the error asks for sMCI / pMCI (ClinicaDL's ``get-labels`` writes them) or for the rows to
be dropped. Reading never stops at the first bad row: row problems (labels, duplicates,
splits) are gathered by ``cdsf_bench.data.check`` and, with ``strict``, raised together.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cdsf_bench.data.check import Problem, format_problems, table_problems
from cdsf_bench.data.conventions import DIAGNOSES
from cdsf_bench.errors import InputError

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
PATH_COLUMNS = ("mri", "pet", "pet_truth")
SPLIT_ALIASES = {"validation": "val", "valid": "val", "training": "train", "testing": "test"}
#: Space of Clinica's t1-linear and pet-linear outputs.
CAPS_SPACE = "MNI152NLin2009cSym"
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


def read_table_file(path: Path, what: str) -> pd.DataFrame:
    """Read a CSV / TSV as strings, column names lower-cased and aliases resolved.

    Everything is read as text (empty cells are "") so identifiers like "0012" keep their
    zeros; numbers are restored later for the extra columns only.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path} does not exist; check the path.")
    try:
        table = pd.read_csv(
            path, sep=_separator(path), dtype=str, keep_default_na=False, encoding="utf-8-sig"
        )
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
    duplicated = sorted({c for c in table.columns if list(table.columns).count(c) > 1})
    if duplicated:
        raise InputError(f"{what} {path} repeats the columns {duplicated}; give each column once.")
    table = table.apply(lambda column: column.str.strip())
    if table.empty:
        raise InputError(f"{what} {path} has a header but no subjects; add one row per subject.")
    return table


def _require(table: pd.DataFrame, columns: tuple[str, ...], path: Path, what: str) -> None:
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


def _normalise_rows(table: pd.DataFrame) -> pd.DataFrame:
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


def read_manifest(path: Path, *, strict: bool = True) -> pd.DataFrame:
    """Read a manifest: CSV or TSV with participant_id, diagnosis, mri, and optional
    pet, pet_truth, split and any other columns; relative paths are read from its folder.

    ``strict`` raises one ``InputError`` listing every bad row (label, duplicate, split);
    without it the rows come back as given, for ``check_table`` to report.
    """
    path = Path(path)
    table = read_table_file(path, "Manifest")
    _require(table, REQUIRED, path, "Manifest")
    folder = path.resolve().parent
    for column in PATH_COLUMNS:
        if column in table.columns:
            table[column] = [_absolute(value, folder) for value in table[column]]
    if "pet" not in table.columns:
        table["pet"] = ""
    return _finish(_normalise_rows(table), strict, f"Manifest {path}")


def _natural_key(name: str) -> list:
    """Sort ses-M6 before ses-M12 (Clinica's older session names are not zero-padded)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _entities(filename: str) -> tuple[dict[str, str], str]:
    """BIDS-like entities of a file name and its suffix: ``sub-1_ses-M0_T1w.nii.gz`` ->
    ({"sub": "1", "ses": "M0"}, "T1w"). Words without a dash (a source file's suffix kept
    inside a derived name, as Clinica does) are skipped."""
    stem = re.sub(r"\.nii(\.gz)?$", "", filename)
    parts = stem.split("_")
    entities: dict[str, str] = {}
    for part in parts[:-1]:
        key, dash, value = part.partition("-")
        if dash:
            entities.setdefault(key, value)
    return entities, parts[-1]


def _tracer_matches(value: str, tracer: str) -> bool:
    """Tracer names compared without case and isotope prefix: 18FFDG matches Clinica's older ``acq-fdg``."""

    def bare(name: str) -> str:
        return re.sub(r"^(18f|11c|15o)", "", name.lower())

    return bare(value) == bare(tracer)


def _pick(candidates: list[Path]) -> list[Path]:
    """Cropped outputs first (ClinicaDL's default); the uncropped ones only if there are none."""
    cropped = [c for c in candidates if _entities(c.name)[0].get("desc", "").lower() == "crop"]
    return sorted(cropped or candidates)


def _nifti_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.is_file() and re.search(r"\.nii(\.gz)?$", p.name)]


def find_t1(session_dir: Path) -> list[Path]:
    """t1-linear outputs of a session:
    ``t1_linear/*_space-MNI152NLin2009cSym[_desc-Crop]_res-*_T1w.nii[.gz]``."""
    found = []
    for path in _nifti_files(session_dir / "t1_linear"):
        entities, suffix = _entities(path.name)
        if suffix == "T1w" and entities.get("space") == CAPS_SPACE:
            found.append(path)
    return _pick(found)


def find_pet(session_dir: Path, tracer: str, suvr_reference: str = "") -> list[Path]:
    """pet-linear outputs of a session for ``tracer``: files in ``pet_linear/`` named
    ``*_trc-<tracer>[_rec-*]..._space-MNI152NLin2009cSym[_desc-Crop]_res-*_suvr-<ref>_pet.nii[.gz]``
    (``acq-`` instead of ``trc-`` in older Clinica), restricted to ``suvr_reference`` if set."""
    found = []
    for path in _nifti_files(session_dir / "pet_linear"):
        entities, suffix = _entities(path.name)
        tracer_value = entities.get("trc", entities.get("acq", ""))
        if suffix != "pet" or entities.get("space") != CAPS_SPACE or "suvr" not in entities:
            continue
        if not _tracer_matches(tracer_value, tracer):
            continue
        if suvr_reference and entities["suvr"].lower() != suvr_reference.lower():
            continue
        found.append(path)
    return _pick(found)


def _session_name(session: str) -> str:
    return session if not session or session.startswith("ses-") else f"ses-{session}"


def _subject_name(participant: str) -> str:
    return participant if participant.startswith("sub-") else f"sub-{participant}"


def scan_caps(
    caps_dir: Path,
    diagnosis_tsv: Path | None = None,
    session: str = "",
    tracer: str = "18FFDG",
    suvr_reference: str = "",
) -> tuple[pd.DataFrame, list[Problem]]:
    """The subject table of a CAPS directory, and the subjects that could not be placed in it.

    Subjects come from the diagnosis TSV (default ``<caps>/participants.tsv``; columns
    participant_id, diagnosis and optionally session_id, as ClinicaDL's ``get-labels``
    writes). The session is ``session`` if given, else each participant's first session
    (natural order) that has a t1-linear T1; with a session_id column the diagnosis is the
    one of that session's row. A subject without a T1 is a problem; one without PET simply
    has none. Several PET files matching is a problem (set ``suvr_reference``).
    """
    caps_dir = Path(caps_dir)
    if not (caps_dir / "subjects").is_dir():
        raise InputError(
            f"CAPS directory {caps_dir} has no subjects/ folder; give the CAPS root that Clinica wrote."
        )
    tsv = Path(diagnosis_tsv) if diagnosis_tsv else caps_dir / "participants.tsv"
    if not tsv.is_file():
        raise InputError(
            f"Diagnosis TSV {tsv} does not exist; give one (columns participant_id, session_id, diagnosis, "
            f"e.g. from ClinicaDL's get-labels) as --data {caps_dir}::LABELS.tsv, "
            f"or put it at {caps_dir / 'participants.tsv'}."
        )
    labels = read_table_file(tsv, "Diagnosis TSV")
    _require(labels, ("participant_id", "diagnosis"), tsv, "Diagnosis TSV")
    labels["participant_id"] = [_subject_name(p) if p else p for p in labels["participant_id"]]
    if "session_id" in labels.columns:
        labels["session_id"] = [_session_name(s) for s in labels["session_id"]]
    wanted = _session_name(session)
    rows: list[dict] = []
    problems: list[Problem] = []
    for participant, group in labels.groupby("participant_id", sort=False):
        if not participant:
            problems.append(
                Problem("", str(tsv), "a row has no participant_id; fill it in or delete the row.")
            )
            continue
        subject_dir = caps_dir / "subjects" / participant
        if "session_id" in group.columns:
            if wanted:
                group = group[group["session_id"] == wanted]
                if group.empty:
                    message = f"has no row for session {wanted} in the diagnosis TSV; add it or pick another."
                    problems.append(Problem(participant, str(tsv), message))
                    continue
            candidates = list(zip(group["session_id"], group.to_dict("records"), strict=True))
            candidates.sort(key=lambda item: _natural_key(item[0]))
        else:
            record = group.to_dict("records")[0] if len(group) == 1 else None
            if record is None:
                problems.append(
                    Problem(
                        participant,
                        str(tsv),
                        f"has {len(group)} rows and the TSV has no session_id; keep one row per participant.",
                    )
                )
                continue
            sessions = (
                [wanted] if wanted else sorted((p.name for p in subject_dir.glob("ses-*")), key=_natural_key)
            )
            candidates = [(s, record) for s in sessions]
        chosen = next(((s, row, t1) for s, row in candidates if (t1 := find_t1(subject_dir / s))), None)
        if chosen is None:
            looked = ", ".join(s for s, _ in candidates) or "no session"
            problems.append(
                Problem(
                    participant,
                    str(subject_dir),
                    f"has no t1-linear T1 (*_space-{CAPS_SPACE}_*_T1w.nii.gz) in {looked}; "
                    "run Clinica's t1-linear for it or remove it from the diagnosis TSV.",
                )
            )
            continue
        ses, record, t1 = chosen
        if len(t1) > 1:
            problems.append(
                Problem(
                    participant,
                    str(t1[0].parent),
                    f"has several T1 files ({', '.join(p.name for p in t1)}); keep one.",
                )
            )
            continue
        pet = find_pet(subject_dir / ses, tracer, suvr_reference)
        if len(pet) > 1:
            problems.append(
                Problem(
                    participant,
                    str(pet[0].parent),
                    f"has several PET files for tracer {tracer} ({', '.join(p.name for p in pet)}); "
                    "set data.suvr_reference to pick one, or list the files in a manifest.",
                )
            )
            continue
        rows.append(
            {
                **record,
                "participant_id": participant,
                "session_id": ses,
                "mri": str(t1[0].absolute()),
                "pet": str(pet[0].absolute()) if pet else "",
            }
        )
    columns = ["participant_id", "session_id", "diagnosis", "mri", "pet"]
    table = pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)
    table = table[columns + [c for c in table.columns if c not in columns]]
    return _normalise_rows(table), problems


def read_caps(
    caps_dir: Path,
    diagnosis_tsv: Path | None = None,
    session: str = "",
    tracer: str = "18FFDG",
    suvr_reference: str = "",
    *,
    strict: bool = True,
) -> pd.DataFrame:
    """The subject table of a CAPS directory (see ``scan_caps``), raising on any problem
    when ``strict`` (subjects without T1, ambiguous PET, bad labels, duplicates)."""
    table, problems = scan_caps(caps_dir, diagnosis_tsv, session, tracer, suvr_reference)
    if strict and problems:
        raise InputError(
            f"CAPS directory {caps_dir} has {len(problems)} problem(s):\n{format_problems(problems)}"
        )
    return _finish(table, strict, f"CAPS directory {caps_dir}")
