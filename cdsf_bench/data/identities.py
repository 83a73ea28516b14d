"""Whom and which file each row of a subject table names: ids that can become file names, and
no scan listed twice.

The splits' leak check compares subjects; these checks compare what the rows point at, so the
same scan cannot sit in training and test under two ids, and no id can steer a file the run
writes out of its folder (``cdsf_bench.safe_names``).
"""

from __future__ import annotations

import math
import os

import pandas as pd

from cdsf_bench.data.problems import Problem
from cdsf_bench.safe_names import unsafe_reason

#: Volume columns, their role in messages.
ROLES = {"mri": "MRI", "pet": "PET", "pet_truth": "PET", "pet_expected": "PET"}


def unsafe_id_problems(table: pd.DataFrame) -> list[Problem]:
    """Ids that cannot become a file name as they are (``safe_names``): they name files a run
    writes, so an id like ``../x`` would write outside the run folder."""
    problems: list[Problem] = []
    for column in ("participant_id", "session_id"):
        if column not in table.columns:
            continue
        for row, value in enumerate(table[column].fillna("").astype(str), start=1):
            reason = unsafe_reason(value) if value.strip() else None
            if reason is not None:
                problems.append(
                    Problem(f"row {row}", "", f"{column} {reason}; use letters, digits, '-', '_' and '.'.")
                )
    return problems


def shared_file_problems(table: pd.DataFrame) -> list[Problem]:
    """One file in two places: an MRI or PET listed for two subjects, or a subject's PET that
    is an MRI file. The splits' leak check compares subjects; this compares the files, so the
    same scan cannot sit in training and test under two ids (paths compared once resolved)."""
    seen: dict[str, tuple[str, str]] = {}
    problems: list[Problem] = []
    for row in table.to_dict("records"):
        participant = str(row.get("participant_id", ""))
        for column in ("mri", "pet"):
            value = row.get(column)
            path = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
            if not path:
                continue
            key = os.path.realpath(path)
            if key in seen:
                other, other_column = seen[key]
                if (other, other_column) == (participant, column):
                    continue  # a repeated row: reported as a duplicate participant
                whose = "its own" if other == participant else f"{other}'s"
                message = f"its {ROLES[column]} is the same file as {whose} {ROLES[other_column]}"
                problems.append(Problem(participant, path, f"{message}; give each scan once."))
            else:
                seen[key] = (participant, column)
    return problems
