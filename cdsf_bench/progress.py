"""Rich progress bars with ETA for every long loop, silent when output is not a terminal log.

One console (stderr) serves progress, logs and warnings so that they interleave cleanly,
and another (stdout) the results; ``CDSF_BENCH_QUIET=1`` turns the bars off (tests and CI
logs). Off a terminal neither wraps lines.

The ETA is the task's mean pace so far (:func:`time_remaining`), known from its first completed
step however long a step takes: rich's own estimate reads only the last 30 s of progress, and
shows none for a run whose epochs each last longer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column, Table
from rich.text import Text

T = TypeVar("T")

#: Width of output that is not a terminal (a file, a pipe, a CI log): wide enough that no
#: path or message is split across lines, which grep and copy-paste would then miss.
PLAIN_WIDTH = 1000


def make_console(*, stderr: bool) -> Console:
    """A console that wraps for a terminal and never for a file or pipe (no soft line breaks)."""
    made = Console(stderr=stderr, log_path=False)  # the source line of a log call is no news to a user
    if not made.is_terminal:
        made.soft_wrap = True
        made.width = PLAIN_WIDTH
    return made


#: Progress, logs, warnings and errors: stderr, so they never mix with results.
console = make_console(stderr=True)
#: Results (a run's metrics table and folder, ``data check``'s report): stdout, so
#: ``cdsf-bench run ... | tee log`` and ``> report.txt`` capture them.
out = make_console(stderr=False)


def progress_enabled() -> bool:
    return os.environ.get("CDSF_BENCH_QUIET", "") in ("", "0")


#: the task field that holds the steps a task had done before this process took it up (a
#: resumed run's epochs): they took no time here, so the pace leaves them out
DONE_BEFORE = "done_before"


def time_remaining(task: Task) -> float | None:
    """Seconds left at the mean pace of the steps this process completed; None before the first."""
    done = task.completed - task.fields.get(DONE_BEFORE, 0)
    if task.total is None or task.elapsed is None or done <= 0:
        return None
    return task.elapsed / done * max(task.total - task.completed, 0.0)


def clock(seconds: float | None) -> str:
    """``H:MM:SS``, or ``-:--:--`` for a time not known yet."""
    if seconds is None:
        return "-:--:--"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}"


class RemainingColumn(ProgressColumn):
    """The ETA of :func:`time_remaining`."""

    def render(self, task: Task) -> Text:
        return Text(clock(time_remaining(task)), style="progress.remaining")


def make_progress(enabled: bool = True, get_time: Callable[[], float] | None = None) -> Progress:
    """A progress display with a bar, count, elapsed time and ETA (off when not ``enabled``).

    Counts and times keep their width; the label, the bar and the status share what is left
    and end in an ellipsis rather than wrap, so a line stays legible at 80 columns.
    ``get_time`` is the clock (a test's fake one; default rich's monotonic clock).
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
        RemainingColumn(),
        console=console,
        transient=False,
        expand=True,
        disable=not (enabled and progress_enabled()),
        get_time=get_time,
    )


def progress_line(progress: Progress, task_id: TaskID) -> str:
    """One task as a line: label, count, status, elapsed time and ETA."""
    task = next(task for task in progress.tasks if task.id == task_id)
    total = "?" if task.total is None else f"{task.total:g}"
    status = task.fields.get("status", "")
    return (
        f"{task.description} {task.completed:g}/{total}{f' {status}' if status else ''}, "
        f"{clock(task.elapsed)} elapsed, ETA {clock(time_remaining(task))}"
    )


def print_progress_line(progress: Progress, task_id: TaskID) -> None:
    """Print :func:`progress_line` above the live bars, so that each step leaves a line (a
    terminal's scrollback, a log file); nothing when the display is off."""
    if not progress.disable:
        progress.console.print(progress_line(progress, task_id), highlight=False, markup=False)


def track(iterable: Iterable[T], total: int, description: str) -> Iterator[T]:
    """Iterate with a progress bar (ETA included) for ``description``."""
    with make_progress() as progress:
        task = progress.add_task(description, total=total, status="")
        for item in iterable:
            yield item
            progress.advance(task)


def metrics_table(metrics: dict, title: str) -> Table:
    """A run's (or a prediction's) diagnosis and synthesis metrics as one rich table.

    ``run`` and ``predict`` print the same table, each adding its own closing rows.
    """
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    diagnosis = metrics["diagnosis"]
    for key in ("auc", "acc", "bacc", "sen", "spe", "f1", "mcc"):
        value = f"{diagnosis[key]:.3f}"
        if key == "auc":
            value += f" [{diagnosis['auc_ci_low']:.3f}, {diagnosis['auc_ci_high']:.3f}]"
        table.add_row(key.upper(), value)
    for key, value in (metrics["synthesis"] or {}).items():
        table.add_row(f"synthesis {key.upper()}", f"{value:.4f}")
    return table
