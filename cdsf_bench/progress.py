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

T = TypeVar("T")

console = Console(stderr=True)


def progress_enabled() -> bool:
    return os.environ.get("CDSF_BENCH_QUIET", "") in ("", "0")


def make_progress(enabled: bool = True) -> Progress:
    """A progress display with a bar, count, elapsed time and ETA (off when not ``enabled``)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not (enabled and progress_enabled()),
    )


def track(iterable: Iterable[T], total: int, description: str) -> Iterator[T]:
    """Iterate with a progress bar (ETA included) for ``description``."""
    with make_progress() as progress:
        task = progress.add_task(description, total=total, status="")
        for item in iterable:
            yield item
            progress.advance(task)
