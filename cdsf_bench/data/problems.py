"""The record every check of a cohort returns, and how a list of them is shown.

A user fixing a cohort of hundreds of scans wants the whole list, not one error per run, so
each check returns ``Problem`` records and carries on; an error message shows them as one list.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


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
