"""Rich progress bars with ETA for every long loop, silent when output is not a terminal log.

One console serves the whole process so that progress, tables and warnings interleave
cleanly; ``CDSF_BENCH_QUIET=1`` turns the bars off (tests and CI logs).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column

T = TypeVar("T")

console = Console(stderr=True, log_path=False)  # the source line of a log call is no news to a user


def progress_enabled() -> bool:
    return os.environ.get("CDSF_BENCH_QUIET", "") in ("", "0")


def make_progress(enabled: bool = True) -> Progress:
    """A progress display with a bar, count, elapsed time and ETA (off when not ``enabled``).

    Counts and times keep their width; the label, the bar and the status share what is left
    and end in an ellipsis rather than wrap, so a line stays legible at 80 columns.
    """

    def shrinking(ratio: int) -> Column:
        return Column(ratio=ratio, no_wrap=True, overflow="ellipsis", min_width=8)

    return Progress(
        TextColumn("[bold]{task.description}", table_column=shrinking(3)),
        BarColumn(bar_width=None, table_column=shrinking(2)),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}", table_column=shrinking(3)),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        expand=True,
        disable=not (enabled and progress_enabled()),
    )


def track(iterable: Iterable[T], total: int, description: str) -> Iterator[T]:
    """Iterate with a progress bar (ETA included) for ``description``."""
    with make_progress() as progress:
        task = progress.add_task(description, total=total, status="")
        for item in iterable:
            yield item
            progress.advance(task)
