"""Sizing a suite for a minimal detectable difference and for an equivalence margin.

The MDD sizing must invert the one MDD formula (``bench.stats.minimal_detectable_difference``):
the design it returns reaches the target and the next smaller one does not. The TOST power
is checked against a Monte-Carlo simulation of statsmodels' paired TOST, the test the
suite's checks run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats
from statsmodels.stats.weightstats import ttost_paired

from cdsf_bench.bench.sizing import MAX_TEST_SUBJECTS, Components, Target, plan, tost_power
from cdsf_bench.bench.stats import POWER, minimal_detectable_difference
from cdsf_bench.cli import main

#: the 2026-12-02 quick suite's decoupled-vs-CDSF components (tau^2 0.00176, c 0.136)
QUICK = Components("m", 5, 0.024, 0.00199, 0.000226, 600.0, 0.00176)
FOLDER = Path(__file__).parent.parent / "benchmarks" / "results" / "2026-12-02-quick-5replicates"


def mdd_at(parts: Components, replicates: int, subjects: float, **level: float) -> float:
    return minimal_detectable_difference(math.sqrt(parts.replicate_variance(subjects)), replicates, **level)


@pytest.mark.parametrize(("target", "level"), [(0.03, {}), (0.05, {"alpha": 0.01, "power": 0.9})])
def test_the_mdd_plan_inverts_the_mdd(target: float, level: dict[str, float]) -> None:
    rows = plan(QUICK, Target("mdd", target, **level), range(2, 41))
    reachable = [row for row in rows if row.test_subjects is not None]
    assert reachable, "the suite's variance reaches the target within 40 replicates"
    for row in reachable:
        n = row.test_subjects
        assert n is not None
        assert row.mdd == pytest.approx(mdd_at(QUICK, row.replicates, n, **level), rel=1e-12)
        assert row.mdd <= target
        assert mdd_at(QUICK, row.replicates, n - 1, **level) > target  # one subject fewer misses it
    # the fewest replicates: one fewer cannot reach the target with any test size
    first = reachable[0].replicates
    assert mdd_at(QUICK, first - 1, MAX_TEST_SUBJECTS, **level) > target
    assert all(row.test_subjects is None for row in rows if row.replicates < first)


@pytest.mark.parametrize(
    ("difference", "sd", "replicates", "margin"),
    [(0.0, 0.04, 5, 0.05), (0.0, 0.02, 3, 0.05), (0.01, 0.05, 10, 0.04), (0.0, 0.012, 2, 0.05)],
)
def test_tost_power_agrees_with_a_simulation_of_the_paired_tost(
    difference: float, sd: float, replicates: int, margin: float
) -> None:
    """4000 simulated suites (seed 0) through statsmodels' ttost_paired at alpha 0.05: the
    share declared equivalent lies within 0.025 (over 3 Monte-Carlo standard errors) of the power."""
    rng = np.random.default_rng(0)
    draws = rng.normal(difference, sd, (4000, replicates))
    zeros = np.zeros(replicates)
    declared = np.mean([ttost_paired(d, zeros, -margin, margin)[0] < 0.05 for d in draws])
    power = tost_power(difference, sd, replicates, margin)
    assert power == pytest.approx(declared, abs=0.025)
    # the noncentral-t shortcut P(T1 rejects) + P(T2 rejects) - 1 is a lower bound of it
    df, se = replicates - 1, sd / math.sqrt(replicates)
    critical = stats.t.ppf(0.95, df)
    first = stats.nct.sf(critical, df, (difference + margin) / se)
    second = stats.nct.cdf(-critical, df, (difference - margin) / se)
    assert power >= first + second - 1 - 1e-9


def test_tost_power_at_the_limits() -> None:
    assert tost_power(0.0, 1e-9, 5, 0.05) == pytest.approx(1.0)  # no spread: always equivalent
    assert tost_power(0.0, 10.0, 5, 0.05) == pytest.approx(0.0, abs=1e-6)
    assert tost_power(0.2, 0.01, 5, 0.05) == pytest.approx(0.0, abs=1e-9)  # far outside the margin
    assert math.isnan(tost_power(0.0, 0.01, 1, 0.05))


def test_the_margin_plan_has_the_power_and_is_evaluable_and_one_subject_fewer_is_not() -> None:
    parts = Components("m", 5, 0.0, 0.0009, 0.0002, 600.0, 0.0007)
    margin = 0.03
    rows = plan(parts, Target("margin", margin), range(2, 21))
    reachable = [row for row in rows if row.test_subjects is not None]
    assert reachable
    for row in reachable:
        n = row.test_subjects
        assert n is not None and row.tost_power is not None
        sd = math.sqrt(parts.replicate_variance(n))
        assert row.tost_power == pytest.approx(tost_power(0.0, sd, row.replicates, margin))
        assert row.tost_power >= POWER - 1e-9 and row.mdd <= margin + 1e-12  # evaluable by the checks
        fewer = math.sqrt(parts.replicate_variance(n - 1))
        assert (
            tost_power(0.0, fewer, row.replicates, margin) < POWER
            or minimal_detectable_difference(fewer, row.replicates) > margin
        )


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["power", str(FOLDER), *map(str, args)])
    return result.exit_code, result.output


def test_power_prints_json_for_each_target() -> None:
    code, output = invoke("--mdd", 0.03, "--max-replicates", 25, "--json")
    assert code == 0, output
    body = json.loads(output)
    assert body["target"] == {"kind": "mdd", "value": 0.03, "alpha": 0.05, "power": 0.8}
    methods = body["groups"][0]["methods"]
    assert {m["method"] for m in methods} == {"decoupled", "MRI only"}
    for method in methods:
        for row in method["plan"]:
            assert row["test_subjects"] is None or row["mdd"] <= 0.03
    code, output = invoke("--margin", 0.05, "--json")
    assert code == 0, output
    rows = json.loads(output)["groups"][0]["methods"][0]["plan"]
    assert all(row["tost_power"] is not None for row in rows)
    assert invoke()[1] == invoke("--half-width", 0.05)[1]  # the default target


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--mdd", 0.03, "--margin", 0.03), "one target at a time"),
        (("--mdd", 0), "--mdd must be in (0, 1)"),
        (("--margin", 1.5), "--margin must be in (0, 1)"),
        (("--half-width", -0.1), "--half-width must be in (0, 1)"),
        (("--mdd", 0.03, "--power", 1.2), "--power must be in (alpha, 1)"),
        (("--mdd", 0.03, "--power", 0.01), "--power must be in (alpha, 1)"),
        (("--margin", 0.03, "--alpha", 0.6), "--alpha must be in (0, 0.5)"),
    ],
)
def test_bad_targets_exit_2_naming_the_option(args: tuple[object, ...], message: str) -> None:
    code, output = invoke(*args)
    assert code == 2 and message in output and "Traceback" not in output
