"""Tuned suites: every method tuned with the same budget inside every replicate, then tested.

A suite's ``[tune]`` table (:class:`TuningBudget`, parsed when the suite is loaded, part of
its hash) gives every method of every replicate the same number of trials.

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

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdsf_bench.config import SELECTION_METRICS
from cdsf_bench.errors import CdsfBenchError, InputError, RunFailed
from cdsf_bench.registry import Registry
from cdsf_bench.settings import RunConfig
from cdsf_bench.tune.plan import PRUNERS, StudyPlan, plan_study

if TYPE_CHECKING:
    from cdsf_bench.bench.suite import RunSpec

#: the folder of a suite's studies, relative to the suite's folder
TUNING = "tuning"
BUDGET_FIELDS = ("trials", "metric", "pruner")


@dataclass(frozen=True)
class TuningBudget:
    """Every method of every replicate gets ``trials`` trials, scored by ``metric`` on validation.

    ``metric`` None means each run's ``train.select_on``.
    """

    trials: int
    metric: str | None = None
    pruner: str = "median"

    def canonical(self) -> dict[str, Any]:
        return {"trials": self.trials, "metric": self.metric, "pruner": self.pruner}


def parse_budget(given: Any, fail: Callable[[str], Exception]) -> TuningBudget | None:
    """The suite's ``[tune]`` table, or None for an untuned suite; ``fail`` names the file."""
    if given is None:
        return None
    if not isinstance(given, dict):
        raise fail("field 'tune' must be a table: [tune] trials = 8 (metric, pruner optional).")
    unknown = sorted(set(given) - set(BUDGET_FIELDS))
    if unknown:
        raise fail(f"[tune] has unknown field(s) {', '.join(unknown)}; it has {', '.join(BUDGET_FIELDS)}.")
    trials = given.get("trials")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise fail(
            f"[tune] trials must be an integer of at least 1 (the trials of every method), got {trials!r}."
        )
    metric = given.get("metric")
    if metric is not None and metric not in SELECTION_METRICS:
        raise fail(f"[tune] metric must be one of {', '.join(SELECTION_METRICS)}, got {metric!r}.")
    pruner = given.get("pruner", "median")
    if pruner not in PRUNERS:
        raise fail(f"[tune] pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}.")
    return TuningBudget(trials, metric, pruner)


def budget_from_canonical(content: dict[str, Any] | None) -> TuningBudget | None:
    """Rebuild the budget from a suite's canonical form (suite.json)."""
    return None if content is None else TuningBudget(**content)


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
