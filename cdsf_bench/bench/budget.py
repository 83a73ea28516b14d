"""A tuned suite's budget: the ``[tune]`` table every method of every replicate is tuned with.

Parsed when the suite is loaded and part of the suite's hash; the tuning itself is
:mod:`cdsf_bench.bench.tuning`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cdsf_bench.config import SELECTION_METRICS
from cdsf_bench.tune.plan import PRUNERS

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
