"""A study from start to budget: open or join it, run trials until it has enough, write outputs.

The loop asks for one trial at a time (Optuna's ask-and-tell), so that before each it can
give up on trials whose worker died and count the budget over every worker of the study.
A progress bar counts finished trials and shows the best so far; one line per trial says
how it ended. The cohort is loaded when the first trial is about to run, so a finished
study (resumed with no trials left) rewrites its outputs and trains nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape

from cdsf_bench.errors import InputError
from cdsf_bench.progress import console, make_progress
from cdsf_bench.registry import Registry
from cdsf_bench.tune.outputs import best_trial, value_text, write_outputs
from cdsf_bench.tune.plan import StudyPlan
from cdsf_bench.tune.space import default_point
from cdsf_bench.tune.study import (
    StudyFolder,
    counts,
    open_study,
    optuna_params,
    reap_stale,
    run_trial,
)
from cdsf_bench.tune.trial import StudyData, load_study_data

if TYPE_CHECKING:
    import optuna


def run_study(
    plan: StudyPlan, registry: Registry, out: Path, trials: int, storage: Path | None = None
) -> dict:
    """Run (or join, or resume) the plan's study until ``trials`` trials have finished.

    Returns the summary (summary.json). The first trial of a new study is the method's
    defaults, where the space holds them.
    """
    if trials < 1:
        raise InputError(f"--trials must be at least 1, got {trials}.")
    folder = StudyFolder(out)
    study = open_study(plan, folder, storage)
    if not study.get_trials(deepcopy=False):
        point = default_point(list(plan.space), plan.base)
        if point:
            study.enqueue_trial(optuna_params(point), user_attrs={"defaults": True}, skip_if_exists=True)
    console.print(
        f"study {plan.name}: {plan.metric} on validation ({plan.direction}), budget {trials} trials, "
        f"space: {'; '.join(dim.describe() for dim in plan.space)}",
        highlight=False,
    )
    data: StudyData | None = None
    with make_progress() as progress:
        now = counts(study)
        task = progress.add_task(
            f"tune {plan.method}",
            total=trials,
            completed=min(now["finished"], trials),
            status=_best(study, plan),
        )
        while True:
            for number in reap_stale(study, [dim.key for dim in plan.space]):
                console.print(
                    f"trial {number}: its worker is gone; marked failed and queued again", highlight=False
                )
            now = counts(study)
            if now["finished"] >= trials or now["finished"] + now["running"] >= trials:
                break
            if data is None:
                data = load_study_data(plan.base, registry)
            progress.update(task, status=f"trial running; {_best(study, plan)}")
            outcome = run_trial(study, plan, registry, data, folder)
            now = counts(study)
            write_outputs(study, plan, folder, trials, now, figure=False)
            progress.update(task, completed=min(now["finished"], trials), status=_best(study, plan))
            note = f" ({escape(outcome.note)})" if outcome.note else ""
            value = value_text(outcome.value, plan.metric)
            console.print(
                f"trial {outcome.number} {outcome.state}: {value}{note}; {_best(study, plan)}; "
                f"{outcome.seconds:.0f} s",
                highlight=False,
            )
    record = write_outputs(study, plan, folder, trials, counts(study), figure=True)
    if now["finished"] < trials:
        console.print(
            f"{now['running']} trial(s) still running in other workers; their results join the study "
            "when they finish (run again to rewrite the outputs).",
            highlight=False,
        )
    return record


def _best(study: optuna.Study, plan: StudyPlan) -> str:
    best = best_trial(study)
    return (
        "no trial complete yet"
        if best is None
        else f"best {value_text(best.value, plan.metric)} (trial {best.number})"
    )
