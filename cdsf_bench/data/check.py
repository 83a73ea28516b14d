"""Checking a subject table before anything trains on it, reporting every problem at once.

A user fixing a cohort of hundreds of scans wants the whole list, not one error per run,
so each check collects ``Problem`` records and carries on. The checks come in three
costs: rows only (labels, duplicates, splits, task feasibility), headers only (files
exist, are 3D NIfTI, cover the MNI brain) and voxels (NaN, Inf, all-zero, PET not in SUVR,
brain offset from the MNI template), the last one loading one volume at a time.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import nibabel
import numpy as np
import pandas as pd

from cdsf_bench.data.conventions import DIAGNOSES, TASKS
from cdsf_bench.data.identities import ROLES, shared_file_problems, unsafe_id_problems
from cdsf_bench.data.labels import labelled_flags, unreadable_labelled
from cdsf_bench.data.nifti import HeaderInfo, inspect_header, read_volume
from cdsf_bench.data.problems import Problem
from cdsf_bench.data.registration import (
    MIN_COVERAGE,
    coverage,
    field_of_view,
    offset_message,
    template_offset,
)
from cdsf_bench.data.splits import MIN_PER_CLASS, SPLITS
from cdsf_bench.errors import InputError
from cdsf_bench.interfaces import DataSettings
from cdsf_bench.progress import track

#: A PET whose 99th percentile exceeds this many times ``pet_suvr_max`` is not in SUVR units.
SUVR_FACTOR = 4.0


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
    sessions = table["session_id"].astype(str) if "session_id" in table.columns else None
    for repeated, count in counts[counts > 1].items():
        if sessions is None:
            hint = "keep one row per participant (or add a session_id column and pick one with data.session)."
        else:
            listed = ", ".join(sorted(set(sessions[ids == repeated]))) or "none given"
            hint = (
                f"sessions {listed}; pick one with --set data.session=SESSION, or keep one row "
                "per participant and session."
            )
        problems.append(Problem(str(repeated), "", f"appears {count} times; {hint}"))
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
    for participant, cell in unreadable_labelled(table):
        problems.append(
            Problem(participant, "", f"has labelled {cell!r}; use true or false (or leave the column out).")
        )
    if "mri" in table.columns:
        for participant, path in zip(ids, table["mri"].fillna("").astype(str), strict=True):
            if not path:
                problems.append(Problem(participant, "", "has no MRI path; every subject needs an MRI."))
    return problems + unsafe_id_problems(table) + shared_file_problems(table)


@dataclass(frozen=True)
class Needs:
    """What a method asks of the cohort, read from its coupling's declared attributes
    (``needs_synthesiser``, ``subjects``, ``needs_pet_truth``), so the core names no method."""

    #: a synthesiser learns from real PET: the task needs subjects with PET
    pet_to_learn_from: bool = False
    #: the method sees subjects with real PET only: every class needs enough of them
    pet_in_every_class: bool = False
    #: the method needs every subject's real PET (a ``pet_truth`` for all)
    pet_truth: bool = False


def _too_few(task: str, count: int, what: str, needed: int, why: str) -> Problem:
    return Problem(
        "",
        "",
        f"task {task} has {count} {what}; it needs at least {needed} {why}. "
        "Add subjects or choose another task.",
    )


def class_problems(
    table: pd.DataFrame,
    task: str,
    folds: int = 0,
    needs: Needs | None = None,
    *,
    val: float = 0.2,
    test: float = 0.2,
) -> list[Problem]:
    """Whether ``task`` can be split and trained on this table, before any volume is read.

    Each class needs ``MIN_PER_CLASS`` labelled subjects (and ``folds`` for k-fold; the
    unlabelled ones only train); an explicit ``split`` column must put task subjects in
    every split; and the method's ``needs`` on PET must be met by the task's subjects.
    """
    if task not in TASKS:
        raise InputError(f"Unknown task {task!r}; choose one of {', '.join(TASKS)}.")
    needs = needs or Needs()
    labels = table["diagnosis"].astype(str)
    readable = not unreadable_labelled(table)  # table_problems names the others
    labelled = labelled_flags(table) if readable else np.ones(len(table), dtype=bool)
    in_task = table[labels.isin(TASKS[task]).to_numpy() & labelled]
    has_pet = in_task["pet"].fillna("").astype(str) != "" if "pet" in in_task.columns else None
    needed = max(MIN_PER_CLASS, folds)
    why = (
        f"per class for {folds}-fold cross-validation"
        if folds > MIN_PER_CLASS
        else "per class so that a stratified train / validation / test split can put one in each split"
    )
    problems = []
    for label in TASKS[task]:
        count = int((in_task["diagnosis"] == label).sum())
        if count < needed:
            problems.append(_too_few(task, count, f"{label} subject(s)", needed, why))
        elif needs.pet_in_every_class and has_pet is not None:
            with_pet = int((has_pet & (in_task["diagnosis"] == label)).sum())
            if with_pet < needed:
                problems.append(
                    _too_few(
                        task,
                        with_pet,
                        f"{label} subject(s) with PET",
                        needed,
                        "per class: the method trains on subjects with PET only",
                    )
                )
    if not problems and folds == 0 and "split" not in in_task.columns:
        problems += _split_size_problems(task, len(in_task), val, test)
    if needs.pet_to_learn_from:
        with_pet = 0 if has_pet is None else int(has_pet.sum())
        if with_pet < MIN_PER_CLASS:
            problems.append(
                _too_few(
                    task,
                    with_pet,
                    "subject(s) with PET",
                    MIN_PER_CLASS,
                    "for the synthesiser to learn from real PET",
                )
            )
    truth = in_task["pet_truth"].fillna("").astype(str) if "pet_truth" in in_task.columns else None
    every_truth = (truth is not None and bool((truth != "").all())) or (
        has_pet is not None and bool(has_pet.all())
    )
    if needs.pet_truth and not every_truth:
        problems.append(
            Problem(
                "",
                "",
                "the method needs every subject's real PET (a pet_truth column filled for all, as a "
                "phantom folder has); this cohort lacks it for some subjects.",
            )
        )
    if "split" in in_task.columns and folds == 0 and (in_task["split"].astype(str) != "").all():
        for name in SPLITS:
            if not (in_task["split"] == name).any():
                problems.append(
                    Problem(
                        "",
                        "",
                        f"the split column puts no {' or '.join(TASKS[task])} subject in {name}; "
                        "give every split subjects of the task, or drop the column for a random split.",
                    )
                )
    if "split" in table.columns and folds == 0:
        unlabelled = table[labels.isin(TASKS[task]).to_numpy() & ~labelled]
        for participant in unlabelled.loc[unlabelled["split"].isin(["val", "test"]), "participant_id"]:
            problems.append(
                Problem(
                    str(participant),
                    "",
                    "is unlabelled but its split is val or test; unlabelled subjects only train.",
                )
            )
    return problems


def _split_size_problems(task: str, n: int, val: float, test: float) -> list[Problem]:
    """A stratified split needs room for both classes in each part: ``split.test`` of the
    subjects (rounded up, as scikit-learn does) and ``split.val`` of them, at least 2 each."""
    n_test = math.ceil(test * n)
    rest = n - n_test
    n_val = math.ceil(val / (1 - test) * rest)
    sizes = {"test": n_test, "validation": n_val, "training": rest - n_val}
    small = [f"{name} {size}" for name, size in sizes.items() if size < 2]
    if not small:
        return []
    return [
        Problem(
            "",
            "",
            f"task {task} has {n} subjects; split.val = {val:g} and split.test = {test:g} leave "
            f"{', '.join(small)}, too few for both classes. Add subjects or enlarge the split fractions.",
        )
    ]


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


def coverage_problem(participant: str, path: str, role: str, info: HeaderInfo) -> Problem | None:
    """A file whose field of view misses most of the MNI brain box is not in MNI space."""
    covered = coverage(info)
    if covered >= MIN_COVERAGE:
        return None
    return Problem(
        participant,
        path,
        f"{role} field of view ({field_of_view(info)}, world coordinates) covers {covered:.0%} of the MNI "
        f"brain box, less than {MIN_COVERAGE:.0%}: the file is not in MNI space. Register it to MNI152 "
        "(Clinica t1-linear / pet-linear, or ANTs / FSL flirt) first.",
    )


def registration_problem(
    participant: str, path: str, role: str, image: nibabel.Nifti1Image, settings: DataSettings
) -> Problem | None:
    """A volume whose brain lies more than ``settings.max_offset_mm`` from the template's.

    ``run`` and ``data check`` both call this on every volume they read, so they refuse alike.
    """
    if settings.max_offset_mm <= 0:
        return None
    message = offset_message(role, template_offset(image), settings.max_offset_mm)
    return None if message is None else Problem(participant, path, message)


def _header_pass(table: pd.DataFrame, progress: bool) -> tuple[list[Problem], set[str]]:
    """Header problems, and the files refused outright (not worth loading for voxel checks)."""
    problems: list[Problem] = []
    refused: set[str] = set()
    rows = table.to_dict("records")
    iterator = track(rows, len(rows), "Checking headers") if progress else rows
    for row in iterator:
        participant = str(row.get("participant_id", ""))
        for column, path in _paths(row):
            try:
                info = inspect_header(path, ROLES[column])
            except InputError as error:
                problems.append(Problem(participant, path, str(error)))
                refused.add(path)
                continue
            problem = coverage_problem(participant, path, ROLES[column], info)
            if problem:
                problems.append(problem)
                refused.add(path)
    return problems, refused


def file_problems(table: pd.DataFrame, *, progress: bool = True) -> list[Problem]:
    """Problems visible from the files' headers: missing, not NIfTI, not 3D, absurd
    dimensions, and a field of view that misses the MNI brain.

    Only headers are read, so this is fast even on a large cohort. MRI and PET of a subject
    may lie on different grids (voxel sizes, storage orders, oblique affines): each volume is
    resampled from its own world coordinates, so only their being in MNI space matters.
    """
    return _header_pass(table, progress)[0]


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
            problem = registration_problem(participant, path, ROLES[column], image, settings)
            if problem:
                problems.append(problem)
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
    folds: int = 0,
    needs: Needs | None = None,
    val: float = 0.2,
    test: float = 0.2,
) -> list[Problem]:
    """Every problem with a subject table, in one list (empty when the cohort is usable).

    Rows first, then headers, then (with ``voxels``) the data of each file not already
    refused by its header, then, when ``task`` is given, whether each of its classes has
    enough subjects to split. Nothing stops at the first problem.
    """
    problems = table_problems(table)
    if table.empty:
        return problems
    header, refused = _header_pass(table, progress=progress)
    problems += header
    if voxels:
        readable = table.copy()
        for column in ROLES:
            if column in readable.columns:
                readable[column] = [p if str(p) not in refused else "" for p in readable[column].fillna("")]
        problems += voxel_problems(readable, settings, progress=progress)
    if task is not None:
        problems += class_problems(table, task, folds, needs, val=val, test=test)
    return problems
