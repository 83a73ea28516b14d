"""Checking a subject table before anything trains on it, reporting every problem at once.

A user fixing a cohort of hundreds of scans wants the whole list, not one error per run,
so each check collects ``Problem`` records and carries on. The checks come in three
costs: rows only (labels, duplicates, splits), headers only (files exist, are 3D NIfTI,
MRI and PET share a space) and voxels (NaN, Inf, all-zero, PET not in SUVR), the last one
loading one volume at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cdsf_bench.data.conventions import DIAGNOSES, TASKS
from cdsf_bench.data.nifti import HeaderInfo, inspect_header, read_volume
from cdsf_bench.data.splits import MIN_PER_CLASS, SPLITS
from cdsf_bench.errors import InputError
from cdsf_bench.interfaces import DataSettings
from cdsf_bench.progress import track

#: MRI and PET of a subject share a grid when, both reoriented to RAS as ``to_grid`` does,
#: their shapes match and no voxel centre of one lies further than this fraction of a voxel
#: from the same voxel's centre in the other (storage order, e.g. LAS vs RAS, is no mismatch).
GRID_TOLERANCE_VOXELS = 0.5
#: A PET whose 99th percentile exceeds this many times ``pet_suvr_max`` is not in SUVR units.
SUVR_FACTOR = 4.0
#: Volume columns, their role in messages.
ROLES = {"mri": "MRI", "pet": "PET", "pet_truth": "PET"}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input: whose it is, which file (or "") and how to fix it."""

    subject: str
    file: str
    message: str

    def __str__(self) -> str:
        where = " ".join(part for part in (self.subject, f"({self.file})" if self.file else "") if part)
        return f"{where}: {self.message}" if where else self.message


def format_problems(problems: Iterable[Problem], limit: int = 50) -> str:
    """A bulleted list for an error message, cut after ``limit`` lines with a count of the rest."""
    problems = list(problems)
    lines = [f"  - {problem}" for problem in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


def table_problems(table: pd.DataFrame) -> list[Problem]:
    """Problems visible in the rows alone: no subjects, empty ids, duplicates, labels, splits."""
    if table.empty:
        return [Problem("", "", "the table has no subjects; add one row per subject.")]
    problems: list[Problem] = []
    ids = table["participant_id"].astype(str)
    for row, participant in enumerate(ids, start=1):
        if not participant.strip():
            problems.append(Problem(f"row {row}", "", "has no participant_id; fill it in or delete the row."))
    counts = ids[ids.str.strip() != ""].value_counts()
    for repeated, count in counts[counts > 1].items():
        problems.append(Problem(str(repeated), "", f"appears {count} times; keep one row per participant."))
    for participant, label in zip(ids, table["diagnosis"].astype(str), strict=True):
        if label not in DIAGNOSES:
            hint = (
                " MCI without conversion status fits neither task: relabel it sMCI or pMCI, or drop the row."
                if label.strip().lower() == "mci"
                else ""
            )
            problems.append(
                Problem(participant, "", f"has diagnosis {label!r}; allowed: {', '.join(DIAGNOSES)}.{hint}")
            )
    if "split" in table.columns:
        split = table["split"].fillna("").astype(str)
        given = split != ""
        for participant, value in zip(ids, split, strict=True):
            if value == "" and given.any():
                problems.append(
                    Problem(
                        participant,
                        "",
                        "has no split while other subjects do; give every subject one, or none.",
                    )
                )
            elif value and value not in SPLITS:
                problems.append(Problem(participant, "", f"has split {value!r}; use train, val or test."))
    if "mri" in table.columns:
        for participant, path in zip(ids, table["mri"].fillna("").astype(str), strict=True):
            if not path:
                problems.append(Problem(participant, "", "has no MRI path; every subject needs an MRI."))
    return problems


def class_problems(table: pd.DataFrame, task: str) -> list[Problem]:
    """Classes of ``task`` with fewer subjects than a stratified three-way split needs."""
    if task not in TASKS:
        raise InputError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}.")
    counts = table["diagnosis"].astype(str).value_counts()
    problems = []
    for label in TASKS[task]:
        count = int(counts.get(label, 0))
        if count < MIN_PER_CLASS:
            problems.append(
                Problem(
                    "",
                    "",
                    f"task {task} has {count} {label} subject(s); it needs at least {MIN_PER_CLASS} per "
                    "class so that a stratified train / validation / test split can put one in each split. "
                    "Add subjects or choose another task.",
                )
            )
    return problems


def _paths(row: dict) -> list[tuple[str, str]]:
    """(column, path) of a row's volumes, each distinct file once."""
    seen: set[str] = set()
    result = []
    for column in ROLES:
        path = str(row.get(column) or "")
        if path and path not in seen:
            seen.add(path)
            result.append((column, path))
    return result


def missing_file_problems(table: pd.DataFrame) -> list[Problem]:
    """Volume paths that name no file: the cheapest file check, one ``stat`` per path."""
    problems = []
    for row in table.to_dict("records"):
        for column, path in _paths(row):
            if not os.path.isfile(path):
                problems.append(
                    Problem(
                        str(row.get("participant_id", "")),
                        path,
                        f"{ROLES[column]} file ({column} column) does not exist; fix the path"
                        + (", or empty the cell if the subject has no PET." if column == "pet" else "."),
                    )
                )
    return problems


def _ras_grid(info: HeaderInfo) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and affine of a volume once reoriented to the closest RAS orientation."""
    from nibabel.orientations import inv_ornt_aff, io_orientation

    ornt = io_orientation(info.affine)
    shape = [0, 0, 0]
    for axis, size in zip(ornt[:, 0].astype(int), info.shape, strict=True):
        shape[axis] = int(size)
    return tuple(shape), info.affine @ inv_ornt_aff(ornt, info.shape)


def _pair_problem(participant: str, mri: HeaderInfo, pet: HeaderInfo, pet_path: str) -> Problem | None:
    """MRI and PET of one subject that do not share a grid suggest a registration mix-up."""
    mri_shape, mri_affine = _ras_grid(mri)
    pet_shape, pet_affine = _ras_grid(pet)
    voxel_mm = float(min(np.linalg.norm(a[:3, :3], axis=0).min() for a in (mri_affine, pet_affine)))
    tolerance = GRID_TOLERANCE_VOXELS * voxel_mm
    if mri_shape == pet_shape:
        # the two grids differ by an affine map, so their largest gap is at a corner
        last = [n - 1 for n in mri_shape]
        corners = np.array([[i, j, k, 1.0] for i in (0, last[0]) for j in (0, last[1]) for k in (0, last[2])])
        apart = float(np.max(np.linalg.norm((corners @ (mri_affine - pet_affine).T)[:, :3], axis=1)))
        if apart <= tolerance:
            return None
        how = f"voxel centres up to {apart:.3g} mm apart, beyond half a voxel ({tolerance:.3g} mm)"
    else:
        how = "the shapes differ"
    return Problem(
        participant,
        pet_path,
        f"PET grid (shape {pet.shape}, origin {np.round(pet.affine[:3, 3], 2).tolist()} mm) differs from "
        f"the MRI's (shape {mri.shape}, origin {np.round(mri.affine[:3, 3], 2).tolist()} mm): {how}; "
        "give MRI and PET registered to the same MNI grid (e.g. both Clinica desc-Crop outputs).",
    )


def _header_pass(table: pd.DataFrame, pairs: bool, progress: bool) -> tuple[list[Problem], set[str]]:
    """Header problems, and the files refused outright (not worth loading for voxel checks)."""
    problems: list[Problem] = []
    refused: set[str] = set()
    rows = table.to_dict("records")
    iterator = track(rows, len(rows), "Checking headers") if progress else rows
    for row in iterator:
        participant = str(row.get("participant_id", ""))
        headers: dict[str, HeaderInfo] = {}
        for column, path in _paths(row):
            try:
                headers[column] = inspect_header(path, ROLES[column])
            except InputError as error:
                problems.append(Problem(participant, path, str(error)))
                refused.add(path)
        if pairs and "mri" in headers and "pet" in headers:
            problem = _pair_problem(participant, headers["mri"], headers["pet"], str(row["pet"]))
            if problem:
                problems.append(problem)
    return problems, refused


def file_problems(table: pd.DataFrame, *, pairs: bool = True, progress: bool = True) -> list[Problem]:
    """Problems visible from the files' headers: missing, not NIfTI, not 3D, absurd
    dimensions, and (with ``pairs``) MRI and PET of a subject on different grids.

    Only headers are read, so this is fast even on a large cohort.
    """
    return _header_pass(table, pairs, progress)[0]


def voxel_problems(table: pd.DataFrame, settings: DataSettings, *, progress: bool = True) -> list[Problem]:
    """Problems that need the voxels: damaged data, NaN / Inf, all-zero, PET not in SUVR.

    Volumes are loaded one at a time and dropped, so memory stays at one scan.
    """
    problems: list[Problem] = []
    rows = table.to_dict("records")
    iterator = track(rows, len(rows), "Checking volumes") if progress else rows
    for row in iterator:
        participant = str(row.get("participant_id", ""))
        for column, path in _paths(row):
            try:
                image = read_volume(path, ROLES[column])
            except InputError as error:
                problems.append(Problem(participant, path, str(error)))
                continue
            if ROLES[column] == "PET":
                data = np.asarray(image.dataobj)
                high = float(np.percentile(data[data > 0], 99)) if np.any(data > 0) else 0.0
                if high > SUVR_FACTOR * settings.pet_suvr_max:
                    problems.append(
                        Problem(
                            participant,
                            path,
                            f"PET values reach {high:.3g} (99th percentile), far above SUVR (about 0 to "
                            f"{settings.pet_suvr_max}); give SUVR images (Clinica pet-linear writes them) "
                            "or they will all saturate at +1.",
                        )
                    )
    return problems


def check_table(
    table: pd.DataFrame,
    settings: DataSettings,
    task: str | None = None,
    *,
    voxels: bool = True,
    progress: bool = True,
) -> list[Problem]:
    """Every problem with a subject table, in one list (empty when the cohort is usable).

    Rows first, then headers, then (with ``voxels``) the data of each file not already
    refused by its header, then, when ``task`` is given, whether each of its classes has
    enough subjects to split. Nothing stops at the first problem.
    """
    problems = table_problems(table)
    if table.empty:
        return problems
    header, refused = _header_pass(table, pairs=True, progress=progress)
    problems += header
    if voxels:
        readable = table.copy()
        for column in ROLES:
            if column in readable.columns:
                readable[column] = [p if str(p) not in refused else "" for p in readable[column].fillna("")]
        problems += voxel_problems(readable, settings, progress=progress)
    if task is not None:
        problems += class_problems(table, task)
    return problems
