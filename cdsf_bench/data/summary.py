"""What ``data check`` prints: problems grouped by kind, and a summary of a sound cohort.

A cohort exported by one pipeline usually fails the same way for every subject; one line
per kind, naming the subjects and showing one full message, reads better than a screen
of near-identical paragraphs. A cohort without problems is summarised by what a user
checks first: how many subjects of each diagnosis, with and without PET, per task, and how
many are labelled.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pandas as pd

from cdsf_bench.data.conventions import DIAGNOSES, TASKS
from cdsf_bench.data.labels import labelled_flags
from cdsf_bench.data.problems import Problem

#: Subjects named per group of problems before "and N more".
SHOWN_SUBJECTS = 8
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def _kind(problem: Problem) -> str:
    """The message with the file and every number blanked: what problems of one kind share."""
    message = problem.message.replace(problem.file, "") if problem.file else problem.message
    return _NUMBER.sub("#", message)


def group_problems(problems: Iterable[Problem]) -> list[str]:
    """One line per problem, or per kind of problem shared by several subjects.

    A group line names its subjects (the first ``SHOWN_SUBJECTS``) and quotes its first
    problem in full, file included, as the example to fix.
    """
    groups: dict[str, list[Problem]] = {}
    for problem in problems:
        groups.setdefault(_kind(problem), []).append(problem)
    lines = []
    for members in groups.values():
        if len(members) == 1:
            lines.append(str(members[0]))
            continue
        names = [m.subject or "(cohort)" for m in members]
        listed = ", ".join(names[:SHOWN_SUBJECTS])
        if len(names) > SHOWN_SUBJECTS:
            listed += f" and {len(names) - SHOWN_SUBJECTS} more"
        lines.append(f"{len(members)} subjects ({listed}) have this problem; e.g. {members[0]}")
    return lines


def _counts(table: pd.DataFrame, labels: Iterable[str]) -> str:
    has_pet = table["pet"].fillna("").astype(str) != "" if "pet" in table.columns else None
    parts = []
    for label in labels:
        rows = table["diagnosis"].astype(str) == label
        total = int(rows.sum())
        with_pet = 0 if has_pet is None else int((rows & has_pet).sum())
        parts.append(f"{label} {total} ({with_pet} with PET, {total - with_pet} without)")
    return ", ".join(parts)


def cohort_summary(table: pd.DataFrame, task: str | None = None) -> str:
    """Counts per diagnosis with and without PET, then per task (only ``task`` if given)."""
    lines = [f"diagnoses: {_counts(table, DIAGNOSES)}"]
    for name in [task] if task else list(TASKS):
        labels = TASKS[name]
        in_task = int(table["diagnosis"].astype(str).isin(labels).sum())
        lines.append(f"task {name}: {in_task} subjects: {_counts(table, labels)}")
    if "labelled" in table.columns:  # a summary is printed only once every cell reads as a boolean
        labelled = labelled_flags(table)
        lines.append(
            f"labelled: {int(labelled.sum())} of {len(labelled)} subjects "
            "(the others only train, on the terms that need no label)"
        )
    if "session_id" in table.columns:
        sessions = sorted(set(table["session_id"].astype(str)))
        lines.append(f"sessions: {', '.join(sessions)}")
    return "\n".join(lines)
