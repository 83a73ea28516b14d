"""The report's answers: for each comparison with the reference, an estimate and a verdict.

A suite compares every method with a reference, replicate by replicate (the paired tests of
:func:`cdsf_bench.bench.stats.compare_replicate`). This module turns those per-replicate
differences into one answer per comparison and metric (AUC, balanced accuracy):

- the mean difference over replicates with its paired (1 - alpha) interval and p-value,
  from the t-test the design calls for (:func:`design_of`): plain when every replicate drew
  its own cohort, the Nadeau-Bengio corrected resampled t-test when replicates re-use one
  cohort; beside it the one-sided (1 - alpha) bounds ("the advantage is at most +x", "at
  least -y"), each a statement of its own;
- the Holm-adjusted p-value over all comparisons of the suite (every scenario, task,
  method and metric of the table: one family);
- the minimal detectable difference (MDD): the smallest true difference this design would
  detect with 80% power at the observed spread (two-sided alpha), with its range over the
  chi-square confidence interval of the replicates' variance (J - 1 degrees of freedom);
- a verdict: "better" or "worse" when the Holm-adjusted p is below alpha, otherwise "no
  difference detectable at this power", which is not a claim that the methods are equal.

alpha is the suite's (``alpha`` in its file, 0.05 by default).

A results folder whose runs did not record their split sizes (no ``n_train`` column) has
no design to read: its report has no answers and plain t intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cdsf_bench.bench.figures import answers_plot
from cdsf_bench.bench.render import Block, Figure, Heading, Paragraph, Table
from cdsf_bench.bench.stats import (
    ALPHA,
    POWER,
    holm,
    mdd_range,
    minimal_detectable_difference,
    t_interval,
)
from cdsf_bench.bench.suite import PER_REPLICATE

#: the metrics answered (the paired tests' differences, column ``<metric>_diff``)
ANSWERED = {"auc": "AUC", "bacc": "BACC"}


@dataclass(frozen=True)
class Design:
    """How the replicates of one scenario and task relate, and the test that follows.

    ``test_train_ratio`` is the Nadeau-Bengio correction's n_test / n_train (0: independent
    replicates, the plain paired t-test).
    """

    kind: str  # "independent", "hold-out" or "k-fold"
    replicates: int
    test_train_ratio: float

    def describe(self) -> str:
        if self.kind == "independent":
            return (
                f"{self.replicates} replicates, each its own cohort and split: independent, so the "
                f"paired t-test over replicates (df = {self.replicates - 1})"
            )
        shared = (
            f"{self.replicates} folds of stratified k-fold: the folds of a cohort share subjects"
            if self.kind == "k-fold"
            else f"{self.replicates} repeated hold-out splits of one cohort: they share subjects"
        )
        return (
            f"{shared}, so the Nadeau-Bengio corrected resampled t-test (variance of the mean "
            f"(1/J + n_test/n_train) s², df = J - 1 = {self.replicates - 1}) with n_test/n_train = "
            f"{self.test_train_ratio:.3f} from the runs' split sizes"
        )


def design_of(suite: dict[str, Any], runs: pd.DataFrame) -> Design | None:
    """The design of the finished runs of one scenario and task; None without split sizes.

    ``suite`` is the suite.json's canonical definition. n_train counts the subjects the
    diagnoser learnt from (``n_train``: the labelled training subjects of the task's classes,
    never the unlabelled ones kept for a generator; ``n_val``: validation, which chose the
    epoch).
    """
    if "n_train" not in runs.columns or runs["n_train"].isna().all():
        return None
    replicates = int(runs["run_folder"].map(lambda r: r.rsplit("/", 1)[0]).nunique())
    if not suite.get("folds") and suite.get("cohorts") == PER_REPLICATE:
        return Design("independent", replicates, 0.0)
    sizes = runs[["n_test", "n_train", "n_val"]].astype(float).dropna()
    ratio = float((sizes["n_test"] / (sizes["n_train"] + sizes["n_val"])).mean())
    return Design("k-fold" if suite.get("folds") else "hold-out", replicates, ratio)


@dataclass(frozen=True)
class Answer:
    scenario: str
    task: str
    method: str
    metric: str
    replicates: int
    estimate: float
    low: float
    high: float
    p_value: float
    mdd: float
    at_least: float = math.nan  # the one-sided (1 - alpha) lower bound
    at_most: float = math.nan  # and upper bound
    mdd_low: float = math.nan  # the MDD at the variance's lower and upper confidence limits
    mdd_high: float = math.nan
    alpha: float = ALPHA
    holm_p: float = math.nan

    def verdict(self, reference: str) -> str:
        if self.replicates < 2:
            return "not answered: an interval needs two replicates"
        if np.isfinite(self.holm_p) and self.holm_p < self.alpha:
            return f"{'better' if self.estimate > 0 else 'worse'} than {reference}"
        if not np.isfinite(self.mdd):
            return "no difference detectable at this power"
        if self.mdd > 1:  # beyond any difference of two AUCs or balanced accuracies
            return "no difference detectable at this power (not even |Δ| = 1 at 80% power)"
        return f"no difference detectable at this power (80% power needs |Δ| ≥ {self.mdd:.3f})"


def answers(
    pairs: pd.DataFrame, designs: dict[tuple[str, str], Design], alpha: float = ALPHA
) -> list[Answer]:
    """One answer per (scenario, task, method, metric) with Holm over all of them.

    ``pairs``: the per-replicate comparisons (``report.comparisons``, a ``scenario`` column
    added); ``designs``: the design of each (scenario, task) that has one; ``alpha``: the
    suite's level.
    """
    if pairs.empty:
        return []
    pairs = pairs.assign(scenario=pairs["scenario"] if "scenario" in pairs.columns else "")
    out = []
    for (scenario, task), design in designs.items():
        group = pairs[(pairs["scenario"] == scenario) & (pairs["task"] == task)]
        for method in dict.fromkeys(group["method"]):
            part = group[group["method"] == method]
            for metric in ANSWERED:
                ratio = design.test_train_ratio
                result = t_interval(part[f"{metric}_diff"].to_numpy(), 1 - alpha, ratio)
                mdd = minimal_detectable_difference(result.sd, result.n, ratio, alpha=alpha)
                at_least, at_most = result.one_sided(alpha)
                mdd_low, mdd_high = mdd_range(result.sd, result.n, ratio, alpha=alpha)
                out.append(
                    Answer(
                        scenario,
                        task,
                        method,
                        metric,
                        result.n,
                        result.mean,
                        result.low,
                        result.high,
                        result.p_value,
                        mdd,
                        at_least,
                        at_most,
                        mdd_low,
                        mdd_high,
                        alpha,
                    )
                )
    adjusted = holm([a.p_value for a in out], alpha)
    return [Answer(**{**a.__dict__, "holm_p": float(p)}) for a, p in zip(out, adjusted, strict=True)]


def _number(value: float, digits: int = 3, signed: bool = False) -> str:
    if not np.isfinite(value):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _p(value: float) -> str:
    return f"{value:.3g}" if np.isfinite(value) else "-"


def _advantage(a: Answer) -> str:
    """The reference's advantage (minus Δ) as its two one-sided bounds."""
    if a.replicates < 2:
        return "-"
    return f"at most {_number(-a.at_least, signed=True)}, at least {_number(-a.at_most, signed=True)}"


def _mdd(a: Answer) -> str:
    if not np.isfinite(a.mdd):
        return "-"
    return f"{_number(a.mdd)} [{_number(a.mdd_low)}, {_number(a.mdd_high)}]"


def answers_blocks(
    found: list[Answer], designs: dict[tuple[str, str], Design], reference: str
) -> list[Block]:
    """The report's "Answers" section (nothing for a folder without a design)."""
    if not designs:
        return []
    alpha = found[0].alpha if found else ALPHA
    level = f"{1 - alpha:.0%}"
    scenarios = any(scenario for scenario, _ in designs)
    rows = []
    for a in found:
        low, high = _number(a.low, signed=True), _number(a.high, signed=True)
        interval = _number(a.estimate, signed=True) + (f" [{low}, {high}]" if a.replicates >= 2 else "")
        cells = [a.task, a.method, ANSWERED[a.metric], str(a.replicates), interval, _advantage(a)]
        cells += [_p(a.p_value), _p(a.holm_p), _mdd(a), a.verdict(reference)]
        rows.append(tuple([a.scenario or "-"] * scenarios + cells))
    columns = ["task", "method", "metric", "replicates", f"Δ vs {reference} [{level} CI]"]
    columns += [f"{reference}'s advantage (one-sided {level} each)", "p", "Holm p"]
    columns += [f"MDD ({POWER:.0%} power) [range]", "verdict"]
    described = list(dict.fromkeys(d.describe() for d in designs.values()))
    blocks: list[Block] = [
        Heading(2, f"Answers: each method against {reference}"),
        Paragraph("Design: " + "; ".join(described) + "."),
    ]
    if rows:
        blocks.append(Table(tuple(["scenario"] * scenarios + columns), tuple(rows)))
    else:
        blocks.append(Paragraph("No comparison: the reference has no finished run to pair with."))
    blocks.append(
        Paragraph(
            "Δ: method minus reference, the mean over replicates of the paired per-replicate differences "
            "(ΔAUC by DeLong's pairing, ΔBACC by the paired bootstrap's observed difference), with its "
            f"two-sided {level} interval. {reference}'s advantage: minus Δ, as two one-sided {level} "
            f'bounds, each a statement on its own ("{reference}\'s advantage is at most +x"). p: the '
            "across-replicate t-test of the design above. Holm p: Holm's step-down adjustment over the "
            f"{sum(np.isfinite(a.p_value) for a in found)} comparisons of this table (statsmodels). MDD: "
            f"the smallest true difference this design detects with {POWER:.0%} power at the observed "
            f"spread of the replicate differences (noncentral t, two-sided {alpha:g}); in brackets, the "
            f"MDD at the limits of the {level} chi-square interval of the replicates' variance (J − 1 "
            "degrees of freedom), the range the few replicates leave it in. Verdict: better or worse "
            f"when the Holm p is below {alpha:g}; otherwise no difference is detectable at this power, "
            "which does not show that the methods are equal: differences smaller than the MDD would "
            "mostly go unseen (docs/benchmark.md, 'Reading a verdict')."
        )
    )
    return blocks


def answers_figure(found: list[Answer], folder: Path, reference: str) -> list[Block]:
    """The answers as intervals beside their MDD (figures/answers.png); nothing to draw without
    an answered comparison."""
    answered = [a for a in found if a.replicates >= 2 and np.isfinite(a.low)]
    if not answered:
        return []
    several = len({(a.scenario, a.task) for a in answered}) > 1
    rows = [
        (
            f"{f'{a.scenario} {a.task}: ' if several else ''}{a.method}, {ANSWERED[a.metric]}",
            a.estimate,
            a.low,
            a.high,
            a.mdd,
            a.verdict(reference),
        )
        for a in answered
    ]
    answers_plot(rows, folder / "figures" / "answers.png", reference)
    level = f"{1 - answered[0].alpha:.0%}"
    caption = f"Each comparison with {reference}: the difference and its {level} interval; grey, ±MDD"
    return [Figure("figures/answers.png", caption)]


def answers_frame(found: list[Answer], reference: str) -> pd.DataFrame:
    """``answers.csv``: the table of the section, unrounded."""
    return pd.DataFrame(
        [{**a.__dict__, "reference": reference, "verdict": a.verdict(reference)} for a in found]
    )
