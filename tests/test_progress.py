"""The progress display's ETA: known from the first completed step, however long a step takes."""

from __future__ import annotations

from cdsf_bench.progress import DONE_BEFORE, clock, make_progress, progress_line, time_remaining


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_eta_after_one_slow_epoch_is_the_epochs_pace_times_those_left():
    time = FakeClock()
    progress = make_progress(enabled=False, get_time=time)
    task = progress.add_task("epochs", total=40, status="")
    assert time_remaining(progress.tasks[0]) is None  # nothing completed yet
    time.now = 300.0  # one epoch of five minutes: rich's own estimate has no pace for it
    progress.update(task, advance=1, status="val auc 0.612")
    assert progress.tasks[0].time_remaining is None
    assert time_remaining(progress.tasks[0]) == 39 * 300.0
    line = progress_line(progress, task)
    assert "1/40 val auc 0.612" in line and "ETA 3:15:00" in line and "0:05:00 elapsed" in line


def test_a_resumed_task_paces_only_the_steps_done_here():
    time = FakeClock()
    progress = make_progress(enabled=False, get_time=time)
    task = progress.add_task("epochs", total=10, completed=6, status="", **{DONE_BEFORE: 6})
    assert time_remaining(progress.tasks[0]) is None
    time.now = 50.0
    progress.update(task, advance=2)
    assert time_remaining(progress.tasks[0]) == 2 * 25.0
    time.now = 100.0
    progress.update(task, advance=2)
    assert time_remaining(progress.tasks[0]) == 0.0


def test_clock():
    assert clock(None) == "-:--:--"
    assert clock(3725.9) == "1:02:05"
