"""The subject table of a Clinica CAPS directory and its diagnosis TSV.

Clinica's ``t1-linear`` and ``pet-linear`` write one folder per subject and session; this
module finds each subject's T1 and PET there and builds the same table a manifest gives
(``cdsf_bench.data.manifest``). Subjects that cannot be placed (no T1, several T1 or PET
files, rows missing from the TSV) are returned as problems, all of them, not raised one by one.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import pandas as pd

from cdsf_bench.data.manifest import normalise_rows, read_table_file, require_columns, session_name
from cdsf_bench.data.problems import Problem
from cdsf_bench.errors import InputError

#: Space of Clinica's t1-linear and pet-linear outputs.
CAPS_SPACE = "MNI152NLin2009cSym"
#: The first columns of the table, in this order; the TSV's other columns follow.
COLUMNS = ["participant_id", "session_id", "diagnosis", "mri", "pet"]

#: A session name and the diagnosis TSV's row that goes with it.
Candidate = tuple[str, dict[Hashable, Any]]


def _natural_key(name: str) -> list[int | str]:
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


def _subject_name(participant: str) -> str:
    return participant if participant.startswith("sub-") else f"sub-{participant}"


def _read_labels(caps_dir: Path, diagnosis_tsv: Path | None) -> tuple[pd.DataFrame, Path]:
    """The diagnosis TSV (default ``<caps>/participants.tsv``), ids and sessions prefixed
    ``sub-`` / ``ses-``, and its path."""
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
    require_columns(labels, ("participant_id", "diagnosis"), tsv, "Diagnosis TSV")
    labels["participant_id"] = [_subject_name(p) if p else p for p in labels["participant_id"]]
    if "session_id" in labels.columns:
        labels["session_id"] = [session_name(s) for s in labels["session_id"]]
    return labels, tsv


def _sessions_from_tsv(
    participant: str, group: pd.DataFrame, wanted: str, tsv: Path
) -> list[Candidate] | Problem:
    """The participant's sessions named in the TSV (only ``wanted`` if set), natural order."""
    if wanted:
        group = group[group["session_id"] == wanted]
        if group.empty:
            message = f"has no row for session {wanted} in the diagnosis TSV; add it or pick another."
            return Problem(participant, str(tsv), message)
    candidates = [(str(row["session_id"]), row) for row in group.to_dict("records")]
    candidates.sort(key=lambda item: _natural_key(item[0]))
    return candidates


def _sessions_on_disk(
    participant: str, group: pd.DataFrame, subject_dir: Path, wanted: str, tsv: Path
) -> list[Candidate] | Problem:
    """Without a session_id column: the participant's one row with ``wanted``, else every
    ``ses-*`` folder of the subject (natural order)."""
    if len(group) != 1:
        return Problem(
            participant,
            str(tsv),
            f"has {len(group)} rows and the TSV has no session_id; keep one row per participant.",
        )
    record = group.to_dict("records")[0]
    sessions = [wanted] if wanted else sorted((p.name for p in subject_dir.glob("ses-*")), key=_natural_key)
    return [(s, record) for s in sessions]


def _first_with_t1(
    participant: str, candidates: list[Candidate], subject_dir: Path
) -> tuple[str, dict[Hashable, Any], Path] | Problem:
    """The first candidate session with exactly one t1-linear T1, and that T1."""
    chosen = next(((s, row, t1) for s, row in candidates if (t1 := find_t1(subject_dir / s))), None)
    if chosen is None:
        looked = ", ".join(s for s, _ in candidates) or "no session"
        return Problem(
            participant,
            str(subject_dir),
            f"has no t1-linear T1 (*_space-{CAPS_SPACE}_*_T1w.nii.gz) in {looked}; "
            "run Clinica's t1-linear for it or remove it from the diagnosis TSV.",
        )
    session, record, t1 = chosen
    if len(t1) > 1:
        return Problem(
            participant,
            str(t1[0].parent),
            f"has several T1 files ({', '.join(p.name for p in t1)}); keep one.",
        )
    return session, record, t1[0]


def _single_pet(
    participant: str, session_dir: Path, tracer: str, suvr_reference: str
) -> Path | None | Problem:
    """The session's PET for ``tracer``, None without one, a problem if several match."""
    pet = find_pet(session_dir, tracer, suvr_reference)
    if len(pet) > 1:
        return Problem(
            participant,
            str(pet[0].parent),
            f"has several PET files for tracer {tracer} ({', '.join(p.name for p in pet)}); "
            "set data.suvr_reference to pick one, or list the files in a manifest.",
        )
    return pet[0] if pet else None


def _subject_row(
    participant: str,
    group: pd.DataFrame,
    caps_dir: Path,
    tsv: Path,
    wanted: str,
    tracer: str,
    suvr_reference: str,
) -> dict[Hashable, Any] | Problem:
    """One participant's table row (its TSV row, session and files), or why there is none."""
    if not participant:
        return Problem("", str(tsv), "a row has no participant_id; fill it in or delete the row.")
    subject_dir = caps_dir / "subjects" / participant
    if "session_id" in group.columns:
        candidates = _sessions_from_tsv(participant, group, wanted, tsv)
    else:
        candidates = _sessions_on_disk(participant, group, subject_dir, wanted, tsv)
    if isinstance(candidates, Problem):
        return candidates
    chosen = _first_with_t1(participant, candidates, subject_dir)
    if isinstance(chosen, Problem):
        return chosen
    session, record, t1 = chosen
    pet = _single_pet(participant, subject_dir / session, tracer, suvr_reference)
    if isinstance(pet, Problem):
        return pet
    return {
        **record,
        "participant_id": participant,
        "session_id": session,
        "mri": str(t1.absolute()),
        "pet": str(pet.absolute()) if pet else "",
    }


def _table(rows: list[dict[Hashable, Any]]) -> pd.DataFrame:
    """The rows as a table, ``COLUMNS`` first, labels and splits normalised."""
    table = pd.DataFrame(rows) if rows else pd.DataFrame(columns=COLUMNS)
    table = table[COLUMNS + [c for c in table.columns if c not in COLUMNS]]
    return normalise_rows(table)


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
    labels, tsv = _read_labels(caps_dir, diagnosis_tsv)
    wanted = session_name(session)
    rows: list[dict[Hashable, Any]] = []
    problems: list[Problem] = []
    for participant, group in labels.groupby("participant_id", sort=False):
        row = _subject_row(str(participant), group, caps_dir, tsv, wanted, tracer, suvr_reference)
        if isinstance(row, Problem):
            problems.append(row)
        else:
            rows.append(row)
    return _table(rows), problems
