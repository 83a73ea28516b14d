"""Checks: a suite's expected findings, written before it runs and evaluated as pass / fail.

A ``[[checks]]`` table of a suite file states what the results must show, for example that
one method beats another on AUC in one scenario, or that a metric stays below a bound. The
checks are part of the suite (and of its hash), so they are fixed before any result is seen:
a benchmark that could only confirm what its authors expected, or whose expectations were
adjusted afterwards, would tell nothing. The report evaluates each check on the finished runs
and prints pass, fail or not evaluated (with the reason), also written to ``checks.csv``; a
failed check is a finding about the methods or the benchmark, never a reason to edit it.

This module holds the check type, the validation of ``[[checks]]`` tables (called by
:func:`cdsf_bench.bench.suite.load_suite`) and the evaluation and rendering (called by
:mod:`cdsf_bench.bench.report`); it imports neither, so the dependency runs one way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cdsf_bench.bench.render import Block, Heading, Paragraph, Table
from cdsf_bench.bench.stats import compare_replicate, interval_text, mean_sd, replicate_of, t_interval

CHECK_FIELDS = ("name", "scenario", "task", "kind", "method", "reference", "metric", "bound", "why")
#: check kinds: paired comparisons (method minus reference, 95% t interval over replicates)
#: and thresholds on a metric's mean over replicates
PAIRED_KINDS = ("beats", "not_beats")
THRESHOLD_KINDS = ("metric_above", "metric_below", "metric_abs_below")
CHECK_KINDS = PAIRED_KINDS + THRESHOLD_KINDS
#: metrics a paired check compares (the report's paired tests)
PAIRED_METRICS = ("auc", "bacc")


@dataclass(frozen=True)
class Check:
    """An expected finding, written before the suite runs (``[[checks]]``).

    ``beats``: the 95% t interval over replicates of the paired difference (method minus
    reference, ``metric`` AUC or BACC) lies above 0. ``not_beats``: it does not (its lower
    end is at most 0). ``metric_above`` / ``metric_below``: the mean over replicates of
    ``metric`` (any results.csv column) is above / below ``bound``; ``metric_abs_below``:
    its absolute value is below ``bound``. ``scenario`` and ``task`` select the runs
    (empty: the suite's only scenario; its first task).
    """

    name: str
    kind: str
    method: str
    metric: str
    scenario: str = ""
    task: str = ""
    reference: str = ""
    bound: float = 0.0
    why: str = ""

    def canonical(self) -> dict:
        return {f: getattr(self, f) for f in CHECK_FIELDS}


def checks_from_canonical(content: dict[str, Any]) -> tuple[Check, ...]:
    """The checks of a suite's canonical content (``Suite.canonical``; none without ``checks``)."""
    return tuple(Check(**check) for check in content.get("checks", []))


def parse_checks(
    given: Any,
    names: list[str],
    tasks: tuple[str, ...],
    scenario_names: list[str],
    fail: Callable[[str], Exception],
) -> tuple[Check, ...]:
    """``[[checks]]``: every field checked against the suite's method names, tasks and scenarios."""
    from cdsf_bench.metrics import DIAGNOSIS_KEYS, DISEASE_SYNTHESIS_KEYS, SYNTHESIS_KEYS

    metrics = (*DIAGNOSIS_KEYS, *SYNTHESIS_KEYS, *DISEASE_SYNTHESIS_KEYS)
    if not isinstance(given, list):
        raise fail("field 'checks' must be a list of [[checks]] tables.")
    out: list[Check] = []
    for number, entry in enumerate(given, start=1):
        label = f"[[checks]] entry {number}"
        if not isinstance(entry, dict):
            raise fail(f"{label} must be a table.")
        unknown = sorted(set(entry) - set(CHECK_FIELDS))
        if unknown:
            fields = ", ".join(CHECK_FIELDS)
            raise fail(f"{label} has unknown field(s) {', '.join(unknown)}; a check has {fields}.")
        for key in ("name", "scenario", "task", "kind", "method", "reference", "metric", "why"):
            if key in entry and not isinstance(entry[key], str):
                raise fail(f"{label}: field '{key}' must be a string, got {entry[key]!r}.")
        kind = entry.get("kind", "")
        if kind not in CHECK_KINDS:
            raise fail(f"{label}: field 'kind' must be one of {', '.join(CHECK_KINDS)}, got {kind!r}.")
        for key in ("method", "metric"):
            if not entry.get(key):
                raise fail(f"{label}: field '{key}' is required.")
        if entry["method"] not in names:
            raise fail(f"{label}: field 'method' {entry['method']!r} is not a method of the suite: {names}.")
        scenario = entry.get("scenario", "")
        if scenario_names and scenario not in scenario_names:
            raise fail(f"{label}: field 'scenario' must be one of {scenario_names}, got {scenario!r}.")
        if not scenario_names and scenario:
            raise fail(f"{label}: field 'scenario' {scenario!r} given, but the suite has no [scenarios].")
        task = entry.get("task", "")
        if task and task not in tasks:
            raise fail(f"{label}: field 'task' must be one of the suite's tasks {list(tasks)}, got {task!r}.")
        metric = entry["metric"]
        bound = entry.get("bound", 0.0)
        if kind in PAIRED_KINDS:
            if metric not in PAIRED_METRICS:
                allowed = " or ".join(PAIRED_METRICS)
                raise fail(f"{label}: a '{kind}' check compares {allowed}, not {metric!r}.")
            if entry.get("reference") not in names or entry.get("reference") == entry["method"]:
                raise fail(
                    f"{label}: field 'reference' must name another method of the suite {names}, "
                    f"got {entry.get('reference')!r}."
                )
            if "bound" in entry:
                raise fail(f"{label}: a '{kind}' check has no 'bound' (it compares the interval with 0).")
        else:
            if metric not in metrics:
                raise fail(f"{label}: field 'metric' must be one of {', '.join(metrics)}, got {metric!r}.")
            if "bound" not in entry or isinstance(bound, bool) or not isinstance(bound, int | float):
                got = entry.get("bound")
                raise fail(f"{label}: a '{kind}' check needs a numeric field 'bound', got {got!r}.")
            if "reference" in entry:
                raise fail(f"{label}: a '{kind}' check has no 'reference'.")
        name = entry.get("name") or f"{scenario + ': ' if scenario else ''}{entry['method']} {kind} {metric}"
        out.append(
            Check(
                name=name,
                kind=kind,
                method=entry["method"],
                metric=metric,
                scenario=scenario,
                task=task or tasks[0],
                reference=entry.get("reference", ""),
                bound=float(bound),
                why=entry.get("why", ""),
            )
        )
    return tuple(out)


@dataclass(frozen=True)
class CheckOutcome:
    """A check's evaluation: what was observed and "pass", "fail" or "not evaluated"."""

    check: Check
    observed: str
    status: str
    detail: str = ""


def _check_outcome(folder: Path, done: pd.DataFrame, check: Check, ratio: float) -> CheckOutcome:
    """Evaluate one check on the finished runs of its scenario and task (``ratio``: the
    design's overlap correction of the t interval, :mod:`cdsf_bench.bench.answers`)."""
    runs = done[(done["scenario"] == check.scenario) & (done["task"] == check.task)].assign(
        replicate=lambda frame: frame["run_folder"].map(replicate_of)
    )
    mine = runs[runs["method"] == check.method]
    if mine.empty:
        return CheckOutcome(check, "-", "not evaluated", f"no finished run of {check.method}")
    if check.kind in PAIRED_KINDS:
        references = runs[runs["method"] == check.reference].set_index("replicate")
        pairs = [
            compare_replicate(folder, run, references.loc[run["replicate"]])
            for _, run in mine.iterrows()
            if run["replicate"] in references.index
        ]
        differences = pd.Series([pair[f"{check.metric}_diff"] for pair in pairs], dtype=float)
        interval = t_interval(differences.to_numpy(), test_train_ratio=ratio)
        text = interval_text(differences, ratio)
        if interval.n < 2:
            return CheckOutcome(check, text, "not evaluated", "an interval needs two paired replicates")
        beats = interval.low > 0
        passed = beats if check.kind == "beats" else not beats
        return CheckOutcome(check, f"Δ{check.metric.upper()} {text}", _verdict(passed))
    if check.metric not in mine.columns:
        return CheckOutcome(check, "-", "not evaluated", f"results.csv has no column {check.metric}")
    values = mine[check.metric].astype(float).dropna()
    if values.empty:
        return CheckOutcome(check, "-", "not evaluated", f"no run of {check.method} reports {check.metric}")
    mean = float(values.mean())
    if check.kind == "metric_above":
        passed = mean > check.bound
    elif check.kind == "metric_below":
        passed = mean < check.bound
    else:
        passed = abs(mean) < check.bound
    return CheckOutcome(check, f"{check.metric} {mean_sd(values)} (n={len(values)})", _verdict(passed))


def _verdict(passed: bool) -> str:
    return "pass" if passed else "fail"


def evaluate_checks(
    folder: Path,
    results: pd.DataFrame,
    checks: tuple[Check, ...],
    ratios: dict[tuple[str, str], float] | None = None,
) -> list[CheckOutcome]:
    """Every check of the suite on its finished runs (results as ``report.load_results`` reads them).

    ``ratios``: per (scenario, task), the n_test / n_train that corrects the t interval of
    replicates sharing one cohort; missing (no split sizes recorded, or independent cohorts): 0.
    """
    done = results[results["status"] == "done"]
    ratios = ratios or {}
    return [
        _check_outcome(Path(folder), done, check, ratios.get((check.scenario, check.task), 0.0))
        for check in checks
    ]


def _expectation(check: Check) -> str:
    if check.kind in PAIRED_KINDS:
        relation = "beats" if check.kind == "beats" else "does not beat"
        return f"{check.method} {relation} {check.reference} on {check.metric.upper()} (95% t-CI vs 0)"
    sign = {"metric_above": ">", "metric_below": "<", "metric_abs_below": "|·| <"}[check.kind]
    return f"{check.method}: mean {check.metric} {sign} {check.bound:g}"


def checks_blocks(outcomes: list[CheckOutcome]) -> list[Block]:
    """The report's table of expected findings (nothing without checks)."""
    if not outcomes:
        return []
    passed = sum(o.status == "pass" for o in outcomes)
    failed = sum(o.status == "fail" for o in outcomes)
    rows = tuple(
        (
            o.check.name,
            o.check.scenario or "-",
            o.check.task,
            _expectation(o.check),
            o.observed,
            o.status.upper() if o.status != "not evaluated" else f"not evaluated ({o.detail})",
            o.check.why,
        )
        for o in outcomes
    )
    return [
        Heading(2, "Expected findings (written before the suite ran)"),
        Paragraph(
            f"{passed} passed, {failed} failed, {len(outcomes) - passed - failed} not evaluated, of "
            f"{len(outcomes)}. A failed check is a finding about the methods or the benchmark, not a "
            "reason to change the check: checks are never edited after the results are seen."
        ),
        Table(("check", "scenario", "task", "expected", "observed", "result", "why"), rows),
    ]


def checks_frame(outcomes: list[CheckOutcome]) -> pd.DataFrame:
    """``checks.csv``: one row per check with its outcome."""
    rows = [
        {**o.check.canonical(), "observed": o.observed, "status": o.status, "detail": o.detail}
        for o in outcomes
    ]
    return pd.DataFrame(rows)
