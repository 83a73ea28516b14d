"""Tuned suites: every method tuned with the same budget inside every replicate, then tested.

A suite's ``[tune]`` table (:class:`~cdsf_bench.bench.budget.TuningBudget`, parsed when the
suite is loaded, part of its hash) gives every method of every replicate the same number of
trials.

For each run of a suite with a ``[tune]`` table (a task, a replicate, a method), a study is
planned from exactly the assignments that configure the run, so the replicate's seed fixes
the split: its trials train on that replicate's training subjects and are scored on its
validation subjects, and its test subjects are never predicted (nested tuning: the test
split of a replicate never informs its tuning). The suite's own settings and the method's
own settings are held fixed. The best trial's configuration is then run as the suite's run
of that method: trained again and tested once. Studies live in ``<suite>/tuning/<run folder>/``,
beside the run folders, and resume with the suite.
"""

from __future__ import annotations

from pathlib import Path

from cdsf_bench.bench.budget import TuningBudget
from cdsf_bench.bench.suite import RunSpec
from cdsf_bench.errors import CdsfBenchError, InputError, RunFailed
from cdsf_bench.registry import Registry
from cdsf_bench.settings import RunConfig
from cdsf_bench.tune.plan import StudyPlan, plan_study

#: the folder of a suite's studies, relative to the suite's folder
TUNING = "tuning"


def tuning_folder(out: Path, spec: RunSpec) -> Path:
    """Where the study of one run of a suite lives."""
    return Path(out) / TUNING / spec.folder


def plan_for(spec: RunSpec, registry: Registry, budget: TuningBudget) -> StudyPlan:
    """The study of one run; a bad space or metric names the method and the replicate."""
    try:
        return plan_study(registry, assignments=spec.assignments, metric=budget.metric, pruner=budget.pruner)
    except CdsfBenchError as error:
        where = f"Suite '{spec.suite}', method '{spec.method.name}' ({spec.task}, {spec.replicate})"
        raise InputError(f"{where}, tuning: {error}") from None


def tuned_config(spec: RunSpec, registry: Registry, out: Path, budget: TuningBudget) -> RunConfig:
    """Tune one run of a suite (or finish its study) and return its best trial's configuration.

    A study in which no trial completed fails the run (``RunFailed``): the suite records it
    and goes on, like a run that diverged.
    """
    from cdsf_bench.tune.run import run_study

    plan = plan_for(spec, registry, budget)
    folder = tuning_folder(out, spec)
    summary = run_study(plan, registry, folder, budget.trials)
    if summary["best"] is None:
        raise RunFailed(
            f"tuning of '{spec.method.name}' ({spec.task}, {spec.replicate}): none of its {budget.trials} "
            f"trials completed; see {folder / 'trials.csv'}"
        )
    return plan.trial_config(summary["best"]["settings"])
