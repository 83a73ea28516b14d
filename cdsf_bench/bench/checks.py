"""Checks: a suite's expected findings, written before it runs and evaluated as pass / fail.

A ``[[checks]]`` table of a suite file states what the results must show, for example that
one method beats another on AUC in one scenario, or that a metric stays near 0. The checks
are part of the suite (and of its hash), so they are fixed before any result is seen: a
benchmark that could only confirm what its authors expected, or whose expectations were
adjusted afterwards, would tell nothing. The report evaluates each check on the finished runs
and prints its outcome, also written to ``checks.csv``; a failed check is a finding about the
methods or the benchmark, never a reason to edit it.

Every check can fail. A claim of no difference ("does not beat", "near zero") is an
equivalence test, two one-sided tests (TOST) at the suite's alpha against a margin the suite
names: it passes only when the data show the difference inside the margin. A design whose
minimal detectable difference (at the planned power) exceeds that margin could not tell a
difference of the margin from none, so its check is "not evaluable at this power", never a
pass. Interval checks read the design's t-test (:mod:`cdsf_bench.bench.answers`): a folder
that recorded no design (no split sizes) leaves them "not evaluated", never evaluated on
uncorrected intervals.

This module holds the check type, the validation of ``[[checks]]`` tables (called by
:func:`cdsf_bench.bench.suite_file.load_suite`), the A/A checks that a method's ``aa_of``
declares, and the evaluation and rendering (called by :mod:`cdsf_bench.bench.report`); it
imports neither, so the dependency runs one way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cdsf_bench.bench.render import Block, Heading, Paragraph, Table
from cdsf_bench.bench.stats import (
    ALPHA,
    POWER,
    compare_replicate,
    equivalence_test,
    mdd_range,
    mean_sd,
    minimal_detectable_difference,
    replicate_of,
    t_interval,
)

CHECK_FIELDS = ("name", "scenario", "task", "kind", "method", "reference", "metric", "bound", "margin", "why")
#: paired comparisons (method minus reference, the design's t-test over replicates); "aa" is
#: declared by a method's ``aa_of``, never written
PAIRED_KINDS = ("beats", "not_beats", "aa")
#: equivalence tests: TOST against the check's margin
EQUIVALENCE_KINDS = ("not_beats", "metric_abs_below")
#: a metric's mean over replicates against a bound
THRESHOLD_KINDS = ("metric_above", "metric_below")
WRITTEN_KINDS = ("beats", "not_beats", "metric_above", "metric_below", "metric_abs_below")
#: metrics a paired check compares (the report's paired tests)
PAIRED_METRICS = ("auc", "bacc")
#: the metric an A/A check compares
AA_METRIC = "auc"
NOT_EVALUABLE = "not evaluable"


@dataclass(frozen=True)
class Check:
    """An expected finding, written before the suite runs (``[[checks]]``).

    ``beats``: the (1 - alpha) t interval over replicates of the paired difference (method
    minus reference, ``metric`` AUC or BACC) lies above 0. ``not_beats``: TOST shows that
    difference inside (-margin, +margin): the method neither beats the reference nor loses
    to it by the margin. ``metric_abs_below``: TOST shows the mean over replicates of
    ``metric`` inside (-margin, +margin). ``metric_above`` / ``metric_below``: that mean is
    above / below ``bound``. ``aa``: the interval of an A/A copy against its original
    contains 0. ``scenario`` and ``task`` select the runs (empty: the suite's only scenario;
    its first task).
    """

    name: str
    kind: str
    method: str
    metric: str
    scenario: str = ""
    task: str = ""
    reference: str = ""
    bound: float = 0.0
    margin: float = math.nan  # equivalence kinds only
    why: str = ""

    def canonical(self) -> dict:
        """The check in the suite's canonical content (``margin`` only where given)."""
        out = {f: getattr(self, f) for f in CHECK_FIELDS}
        if not math.isfinite(self.margin):
            del out["margin"]
        return out


def checks_from_canonical(content: dict[str, Any]) -> tuple[Check, ...]:
    """The checks of a suite's canonical content (``Suite.canonical``; none without ``checks``)."""
    return tuple(Check(**check) for check in content.get("checks", []))


def _number_field(entry: dict[str, Any], key: str) -> float | None:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


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
        if not isinstance(entry, dict):
            raise fail(f"[[checks]] entry {number} must be a table.")
        label = f"[[checks]] entry {number}" + (f" ('{entry['name']}')" if entry.get("name") else "")
        unknown = sorted(set(entry) - set(CHECK_FIELDS))
        if unknown:
            fields = ", ".join(CHECK_FIELDS)
            raise fail(f"{label} has unknown field(s) {', '.join(unknown)}; a check has {fields}.")
        for key in ("name", "scenario", "task", "kind", "method", "reference", "metric", "why"):
            if key in entry and not isinstance(entry[key], str):
                raise fail(f"{label}: field '{key}' must be a string, got {entry[key]!r}.")
        kind = entry.get("kind", "")
        if kind == "aa":
            raise fail(f"{label}: an 'aa' check is declared by a method's aa_of, not written.")
        if kind not in WRITTEN_KINDS:
            raise fail(f"{label}: field 'kind' must be one of {', '.join(WRITTEN_KINDS)}, got {kind!r}.")
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
        if kind in PAIRED_KINDS:
            if metric not in PAIRED_METRICS:
                allowed = " or ".join(PAIRED_METRICS)
                raise fail(f"{label}: a '{kind}' check compares {allowed}, not {metric!r}.")
            if entry.get("reference") not in names or entry.get("reference") == entry["method"]:
                raise fail(
                    f"{label}: field 'reference' must name another method of the suite {names}, "
                    f"got {entry.get('reference')!r}."
                )
        else:
            if metric not in metrics:
                raise fail(f"{label}: field 'metric' must be one of {', '.join(metrics)}, got {metric!r}.")
            if "reference" in entry:
                raise fail(f"{label}: a '{kind}' check has no 'reference'.")
        bound = _number_field(entry, "bound")
        if kind in THRESHOLD_KINDS:
            if bound is None:
                raise fail(
                    f"{label}: a '{kind}' check needs a numeric field 'bound', got {entry.get('bound')!r}."
                )
        elif "bound" in entry:
            raise fail(f"{label}: a '{kind}' check has no 'bound'.")
        margin = _number_field(entry, "margin")
        if kind in EQUIVALENCE_KINDS:
            if margin is None or margin <= 0:
                raise fail(
                    f"{label}: a '{kind}' check is an equivalence test and needs field 'margin' (a "
                    f"positive number, in {metric} units, named before the suite runs), got "
                    f"{entry.get('margin')!r}."
                )
        elif "margin" in entry:
            raise fail(f"{label}: a '{kind}' check has no 'margin' (only {', '.join(EQUIVALENCE_KINDS)}).")
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
                bound=bound if bound is not None else 0.0,
                margin=margin if margin is not None else math.nan,
                why=entry.get("why", ""),
            )
        )
    return tuple(out)


def aa_checks(
    copies: list[tuple[str, str]], tasks: tuple[str, ...], scenario_names: list[str]
) -> tuple[Check, ...]:
    """The A/A checks of (copy, original) method pairs: one per scenario and task."""
    return tuple(
        Check(
            name=f"{scenario + ': ' if scenario else ''}A/A: {copy} vs {original}"
            + (f" ({task})" if len(tasks) > 1 else ""),
            kind="aa",
            method=copy,
            metric=AA_METRIC,
            scenario=scenario,
            task=task,
            reference=original,
            why="one method under two names, independent training seeds, the same replicates",
        )
        for copy, original in copies
        for scenario in scenario_names or [""]
        for task in tasks
    )


@dataclass(frozen=True)
class CheckOutcome:
    """A check's evaluation: what was observed, its status ("pass", "fail", "not evaluable",
    "not evaluated") and why."""

    check: Check
    observed: str
    status: str
    detail: str = ""


def _paired_differences(folder: Path, runs: pd.DataFrame, check: Check) -> np.ndarray:
    """The per-replicate differences (method minus reference) of the check's metric."""
    mine = runs[runs["method"] == check.method]
    references = runs[runs["method"] == check.reference].set_index("replicate")
    pairs = [
        compare_replicate(folder, run, references.loc[run["replicate"]])
        for _, run in mine.iterrows()
        if run["replicate"] in references.index
    ]
    return np.array([pair[f"{check.metric}_diff"] for pair in pairs], dtype=float)


def interval_outcome(check: Check, values: np.ndarray, ratio: float, alpha: float) -> CheckOutcome:
    """An interval check (paired, A/A or equivalence) judged on its per-replicate ``values``
    (paired differences or a metric), the design's ``ratio`` and the suite's ``alpha``."""
    label = f"Δ{check.metric.upper()}" if check.kind in PAIRED_KINDS else check.metric
    interval = t_interval(values, level=1 - alpha, test_train_ratio=ratio)
    if interval.n < 2:
        return CheckOutcome(check, "-", "not evaluated", "an interval needs two replicates")
    if check.kind not in EQUIVALENCE_KINDS:
        text = f"{label} {interval.mean:+.3f} [{interval.low:+.3f}, {interval.high:+.3f}] (n={interval.n})"
        if check.kind == "beats":
            return CheckOutcome(check, text, _verdict(interval.low > 0))
        contains = interval.low <= 0 <= interval.high
        said = (
            "A/A: no difference, as it must be" if contains else "A/A flagged: two runs of one method differ"
        )
        return CheckOutcome(check, text, _verdict(contains), said)
    found = equivalence_test(values, check.margin, ratio)
    low, high = interval.one_sided(alpha)
    mdd = minimal_detectable_difference(interval.sd, interval.n, ratio, alpha=alpha)
    mdd_low, mdd_high = mdd_range(interval.sd, interval.n, ratio, alpha=alpha)
    text = (
        f"{label} {interval.mean:+.3f}, {1 - 2 * alpha:.0%} CI [{low:+.3f}, {high:+.3f}], TOST p "
        f"{found.p_value:.3g}; MDD {_mdd_text(mdd, mdd_low, mdd_high)} (n={interval.n})"
    )
    if mdd > check.margin:
        detail = f"at this power: MDD {mdd:.3f} at {POWER:.0%} power exceeds the margin {check.margin:g}"
        return CheckOutcome(check, text, NOT_EVALUABLE, detail)
    return CheckOutcome(check, text, _verdict(found.p_value < alpha))


def _mdd_text(mdd: float, low: float, high: float) -> str:
    if not np.isfinite(mdd):
        return "-"
    return f"{mdd:.3f} [{low:.3f}, {high:.3f}]"


def _check_outcome(
    folder: Path, done: pd.DataFrame, check: Check, ratio: float | None, alpha: float
) -> CheckOutcome:
    """Evaluate one check on the finished runs of its scenario and task (``ratio``: the
    design's overlap correction of the t interval; None: the folder records no design)."""
    runs = done[(done["scenario"] == check.scenario) & (done["task"] == check.task)].assign(
        replicate=lambda frame: frame["run_folder"].map(replicate_of)
    )
    mine = runs[runs["method"] == check.method]
    if mine.empty:
        return CheckOutcome(check, "-", "not evaluated", f"no finished run of {check.method}")
    if check.kind in EQUIVALENCE_KINDS and not math.isfinite(check.margin):
        return CheckOutcome(check, "-", "not evaluated", "no margin named before the run")
    if check.kind in PAIRED_KINDS:
        values = _paired_differences(folder, runs, check)
    elif check.metric not in mine.columns or mine[check.metric].isna().all():
        return CheckOutcome(check, "-", "not evaluated", f"no run of {check.method} reports {check.metric}")
    else:
        values = mine[check.metric].astype(float).to_numpy()
    if check.kind in THRESHOLD_KINDS:
        mean = float(np.nanmean(values))
        passed = mean > check.bound if check.kind == "metric_above" else mean < check.bound
        shown = pd.Series(values)
        return CheckOutcome(check, f"{check.metric} {mean_sd(shown)} (n={shown.count()})", _verdict(passed))
    if ratio is None:
        return CheckOutcome(check, "-", "not evaluated", "the folder records no design (no split sizes)")
    return interval_outcome(check, values, ratio, alpha)


def _verdict(passed: bool) -> str:
    return "pass" if passed else "fail"


def evaluate_checks(
    folder: Path,
    results: pd.DataFrame,
    checks: tuple[Check, ...],
    ratios: dict[tuple[str, str], float],
    alpha: float = ALPHA,
) -> list[CheckOutcome]:
    """Every check of the suite on its finished runs (results as ``report.load_results`` reads them).

    ``ratios``: per (scenario, task) with a recorded design, the n_test / n_train that
    corrects the t interval (0 for independent replicates); a group missing from it has no
    design, and its interval checks are not evaluated.
    """
    done = results[results["status"] == "done"]
    return [
        _check_outcome(Path(folder), done, check, ratios.get((check.scenario, check.task)), alpha)
        for check in checks
    ]


def _expectation(check: Check, alpha: float) -> str:
    metric = check.metric.upper() if check.kind in PAIRED_KINDS else check.metric
    tost = f"TOST at α = {alpha:g}"
    margin = f"±{check.margin:g}" if math.isfinite(check.margin) else "a margin never named"
    if check.kind == "beats":
        return f"{check.method} beats {check.reference} on {metric} ({1 - alpha:.0%} t-CI above 0)"
    if check.kind == "not_beats":
        return f"{check.method} within {margin} of {check.reference} on {metric} ({tost})"
    if check.kind == "aa":
        return f"{check.method} − {check.reference} on {metric} contains 0 ({1 - alpha:.0%} t-CI)"
    if check.kind == "metric_abs_below":
        return f"{check.method}: mean {metric} within {margin} ({tost})"
    sign = {"metric_above": ">", "metric_below": "<"}[check.kind]
    return f"{check.method}: mean {metric} {sign} {check.bound:g}"


def _result(outcome: CheckOutcome) -> str:
    status = outcome.status.upper() if outcome.status in ("pass", "fail") else outcome.status
    return f"{status} ({outcome.detail})" if outcome.detail else status


def checks_blocks(outcomes: list[CheckOutcome], alpha: float = ALPHA) -> list[Block]:
    """The report's table of expected findings (nothing without checks)."""
    if not outcomes:
        return []
    counts = {s: sum(o.status == s for o in outcomes) for s in ("pass", "fail", NOT_EVALUABLE)}
    rows = tuple(
        (
            o.check.name,
            o.check.scenario or "-",
            o.check.task,
            _expectation(o.check, alpha),
            o.observed,
            _result(o),
            o.check.why,
        )
        for o in outcomes
    )
    evaluated = sum(counts.values())
    return [
        Heading(2, "Expected findings (written before the suite ran)"),
        Paragraph(
            f"{counts['pass']} passed, {counts['fail']} failed, {counts[NOT_EVALUABLE]} not evaluable at "
            f"this power, {len(outcomes) - evaluated} not evaluated, of {len(outcomes)}. A failed check is "
            "a finding about the methods or the benchmark, not a reason to change the check: checks are "
            "never edited after the results are seen. An equivalence check (within ±margin) passes only "
            f"when both one-sided tests reject at α = {alpha:g}, that is when the {1 - 2 * alpha:.0%} "
            "interval lies inside the margin; it is not evaluable when the design's MDD (at "
            f"{POWER:.0%} power; in brackets, its range over the confidence interval of the replicates' "
            "variance) exceeds the margin (docs/benchmark.md, 'How to read a check')."
        ),
        Table(("check", "scenario", "task", "expected", "observed", "result", "why"), rows),
    ]


def checks_frame(outcomes: list[CheckOutcome]) -> pd.DataFrame:
    """``checks.csv``: one row per check with its outcome."""
    rows = [
        {**{f: getattr(o.check, f) for f in CHECK_FIELDS}, "observed": o.observed, "status": o.status}
        | {"detail": o.detail}
        for o in outcomes
    ]
    return pd.DataFrame(rows)
