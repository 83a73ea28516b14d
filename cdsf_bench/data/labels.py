"""Which subjects a run trains on, and which of their diagnoses it may use.

Two kinds of training subject carry no usable label. A cohort may mark subjects as
unlabelled (the optional ``labelled`` column: the phantom's ``label_scarce`` regime, or a
manifest's own): their diagnosis is known to the table but must not be trained on. And
with ``data.synthesis_subjects = "all_diagnoses"`` the subjects of the other diagnoses
(MCI for AD vs CN, say) join training when they have PET, so that a synthesiser can learn
from their paired scans; they belong to neither class of the task. Both kinds get the
label :data:`UNLABELLED`: the splitter puts them in training only (a subject without a
label cannot be validated or tested), and the pipeline marks them in ``Batch.labelled``, so
they train the terms that need no label and no other.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cdsf_bench.data.conventions import TASKS
from cdsf_bench.errors import InputError
from cdsf_bench.interfaces import Cohort

#: the label of a training subject whose diagnosis must not be used
UNLABELLED = -1
#: ``data.synthesis_subjects``: the task's subjects only, or also every other diagnosis's
#: subjects with PET, as unlabelled training subjects
SYNTHESIS_SUBJECTS = ("task", "all_diagnoses")
_TRUE = {"true", "yes", "1", "1.0"}
_FALSE = {"false", "no", "0", "0.0"}


def read_labelled(value: object) -> bool | None:
    """A ``labelled`` cell as a bool (true / false, yes / no, 1 / 0, any case), else None."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | float | np.integer | np.floating) and value in (0, 1):
        return bool(value)
    word = str(value).strip().lower()
    return True if word in _TRUE else False if word in _FALSE else None


def unreadable_labelled(participants: pd.DataFrame) -> list[tuple[str, object]]:
    """(participant, value) of every ``labelled`` cell that is not a boolean; [] without the column."""
    if "labelled" not in participants.columns:
        return []
    ids = participants["participant_id"].astype(str)
    return [
        (pid, v) for pid, v in zip(ids, participants["labelled"], strict=True) if read_labelled(v) is None
    ]


def labelled_flags(participants: pd.DataFrame) -> np.ndarray:
    """[N] bool: whose diagnosis may be trained on. Every subject without a ``labelled`` column."""
    if "labelled" not in participants.columns:
        return np.ones(len(participants), dtype=bool)
    bad = unreadable_labelled(participants)
    if bad:
        listed = ", ".join(f"{pid} ({value!r})" for pid, value in bad[:10])
        raise InputError(
            f"The labelled column must be true or false for every subject; it is not for {listed}"
            f"{' ...' if len(bad) > 10 else ''}."
        )
    return np.array([bool(read_labelled(v)) for v in participants["labelled"]], dtype=bool)


def _in_task(participants: pd.DataFrame, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Which subjects belong to the task's two classes, and which of them is positive."""
    negative, positive = TASKS[task]
    diagnosis = participants["diagnosis"].astype(str).to_numpy()
    in_task = np.isin(diagnosis, [negative, positive])
    if not in_task.any():
        raise InputError(f"The cohort has no {negative} or {positive} subjects for task {task}.")
    return in_task, diagnosis == positive


def task_cohort(cohort: Cohort, task: str) -> tuple[Cohort, np.ndarray]:
    """The task's subjects and their diagnoses as binary labels, whatever ``labelled`` says.

    What a trained model's predictions of a cohort are scored against (``predict``): the
    ``labelled`` column governs which labels may train, not which may evaluate.
    """
    in_task, positive = _in_task(cohort.participants, task)
    rows = np.flatnonzero(in_task)
    return cohort.subset(rows), positive[rows].astype(np.int64)


def training_cohort(cohort: Cohort, task: str, synthesis_subjects: str = "task") -> tuple[Cohort, np.ndarray]:
    """The subjects a run keeps and their labels: 1 = positive class, 0 = negative, UNLABELLED.

    The task's two classes are kept, labelled or not; with ``synthesis_subjects =
    "all_diagnoses"`` also every other subject with PET, unless an explicit ``split``
    column holds it out (val or test): a subject the table withholds never trains.
    Subjects stay in the cohort's order, so the task's subjects have the same positions
    among themselves whichever subjects join them.
    """
    if synthesis_subjects not in SYNTHESIS_SUBJECTS:
        raise InputError(
            f"data.synthesis_subjects must be one of {', '.join(SYNTHESIS_SUBJECTS)}, "
            f"got {synthesis_subjects!r}."
        )
    participants = cohort.participants
    in_task, positive = _in_task(participants, task)
    keep = in_task.copy()
    if synthesis_subjects == "all_diagnoses":
        withheld = np.zeros(len(participants), dtype=bool)
        if "split" in participants.columns:
            withheld = participants["split"].astype(str).str.lower().isin(["val", "test"]).to_numpy()
        keep |= ~in_task & np.asarray(cohort.has_pet, dtype=bool) & ~withheld
    rows = np.flatnonzero(keep)
    labels = np.where(in_task & labelled_flags(participants), positive, UNLABELLED)
    return cohort.subset(rows), labels[rows].astype(np.int64)
