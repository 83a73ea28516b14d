"""Checks that can fail: equivalence tests against a margin, "not evaluable at this power",
the one-sided bounds and the MDD's range, the A/A copy, and n_train in the corrected t-test.

The statistics are compared with statsmodels and SciPy on fixed numbers; the checks are
judged on constructed per-replicate differences whose truth is known.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.weightstats import ttost_paired

from cdsf_bench.bench.answers import answers, design_of
from cdsf_bench.bench.checks import Check, interval_outcome
from cdsf_bench.bench.stats import equivalence_test, mdd_range, minimal_detectable_difference, t_interval
from cdsf_bench.bench.suite import AA_SEED_OFFSET, suite_from_canonical
from cdsf_bench.bench.suite_file import load_suite
from cdsf_bench.errors import InputError
from cdsf_bench.registry import default_registry

#: fixed per-replicate differences (ΔAUC), ten replicates
BETTER = np.array([0.071, 0.085, 0.079, 0.092, 0.068, 0.081, 0.088, 0.074, 0.083, 0.077])
EQUAL = np.array([0.004, -0.006, 0.009, -0.002, 0.001, -0.008, 0.005, 0.000, -0.004, 0.003])
NOISY = np.array([0.12, -0.15, 0.05])


def _not_beats(margin: float) -> Check:
    return Check("M not_beats R", "not_beats", "M", "auc", reference="R", margin=margin)


# -- the statistics ---------------------------------------------------------------------------


def test_tost_matches_statsmodels_on_independent_replicates():
    for values, margin in ((EQUAL, 0.02), (BETTER, 0.03), (NOISY, 0.1)):
        ours = equivalence_test(values, margin)
        p, lower, upper = ttost_paired(values, np.zeros_like(values), -margin, margin)
        assert ours.p_value == pytest.approx(p, rel=1e-10)
        assert ours.p_value == pytest.approx(max(lower[1], upper[1]), rel=1e-10)


def test_tost_with_the_overlap_correction_refers_to_the_t_distribution():
    """n_test / n_train = 1/4 on 10 folds: SE = s sqrt(1/10 + 1/4), 9 degrees of freedom."""
    ratio, margin = 0.25, 0.02
    found = equivalence_test(EQUAL, margin, ratio)
    se = EQUAL.std(ddof=1) * math.sqrt(1 / 10 + ratio)
    mean = EQUAL.mean()
    expected = max(stats.t.sf((mean + margin) / se, 9), stats.t.cdf((mean - margin) / se, 9))
    assert found.p_value == pytest.approx(expected, rel=1e-12)
    assert found.p_value > equivalence_test(EQUAL, margin).p_value  # the correction costs evidence


def test_one_sided_bounds_are_the_t_quantile_and_the_two_sided_interval_at_twice_alpha():
    result = t_interval(BETTER, level=0.95)
    low, high = result.one_sided(0.05)
    reach = stats.t.ppf(0.95, 9) * BETTER.std(ddof=1) / math.sqrt(10)
    assert (low, high) == pytest.approx((BETTER.mean() - reach, BETTER.mean() + reach), rel=1e-12)
    ninety = t_interval(BETTER, level=0.90)
    assert (low, high) == pytest.approx((ninety.low, ninety.high), rel=1e-12)
    assert result.low < low and high < result.high  # one-sided bounds are tighter


def test_mdd_range_follows_the_chi_square_limits_of_the_variance():
    sd, n = 0.05, 4
    point = minimal_detectable_difference(sd, n)
    low, high = mdd_range(sd, n)
    for limit, quantile in ((low, 0.975), (high, 0.025)):
        sigma = sd * math.sqrt(3 / stats.chi2.ppf(quantile, 3))
        assert limit == pytest.approx(minimal_detectable_difference(sigma, n), rel=1e-9)
    assert low < point < high
    # more replicates: a narrower range around the point
    many_low, many_high = mdd_range(sd, 30)
    assert many_high / many_low < high / low
    assert all(math.isnan(v) for v in mdd_range(0.0, 4))


# -- checks that can fail -----------------------------------------------------------------------


def test_a_truly_better_method_fails_does_not_beat_at_a_margin_below_its_advantage():
    """ΔAUC about +0.08 with sd 0.008: the design sees 0.03, so the check is judged, and fails."""
    outcome = interval_outcome(_not_beats(0.03), BETTER, 0.0, 0.05)
    assert minimal_detectable_difference(BETTER.std(ddof=1), 10) < 0.03
    assert outcome.status == "fail"
    # at a margin beyond its advantage the same method is within the margin
    assert interval_outcome(_not_beats(0.15), BETTER, 0.0, 0.05).status == "pass"


def test_a_truly_equivalent_method_passes_when_the_design_can_see_the_margin():
    outcome = interval_outcome(_not_beats(0.02), EQUAL, 0.0, 0.05)
    assert outcome.status == "pass"
    assert "TOST p" in outcome.observed and "MDD" in outcome.observed


def test_an_underpowered_design_is_not_evaluable_never_a_pass():
    """Three noisy replicates: an interval containing 0, an MDD far above the margin."""
    interval = t_interval(NOISY)
    assert interval.low < 0 < interval.high  # the old rule (lower end at most 0) would pass
    outcome = interval_outcome(_not_beats(0.03), NOISY, 0.0, 0.05)
    assert outcome.status == "not evaluable"
    assert "exceeds the margin 0.03" in outcome.detail
    # the corrected design is wider still: the same data are not evaluable at a margin the
    # independent design can see
    check = _not_beats(0.015)
    assert interval_outcome(check, EQUAL, 0.0, 0.05).status == "pass"
    assert interval_outcome(check, EQUAL, 1.0, 0.05).status == "not evaluable"


def test_near_zero_is_an_equivalence_test_of_the_metric_mean():
    check = Check("r near 0", "metric_abs_below", "M", "pet_specific_r", margin=0.05)
    assert interval_outcome(check, EQUAL, 0.0, 0.05).status == "pass"
    assert interval_outcome(check, BETTER + 0.02, 0.0, 0.05).status == "fail"  # r about 0.1
    assert interval_outcome(check, NOISY, 0.0, 0.05).status == "not evaluable"


def test_the_aa_check_passes_when_the_interval_contains_zero_and_flags_otherwise():
    check = Check("A/A: M2 vs M", "aa", "M2", "auc", reference="M")
    passed = interval_outcome(check, EQUAL, 0.0, 0.05)
    assert passed.status == "pass" and passed.detail == "A/A: no difference, as it must be"
    flagged = interval_outcome(check, BETTER, 0.0, 0.05)
    assert flagged.status == "fail" and flagged.detail.startswith("A/A flagged")


# -- the suite syntax -----------------------------------------------------------------------------

AA_SUITE = """
name = "aa"
task = "ad_cn"
preset = "tiny"
seeds = [0, 1]
alpha = 0.1

[scenarios.one]
"data.phantom.scenario" = "default"

[[methods]]
name = "M"
synth = "none"
diag = "mdm"
coupling = "single"
settings = { "train.learning_rate" = 0.002 }

[[methods]]
name = "M again"
aa_of = "M"
"""


def _suite(tmp_path: Path, text: str):
    path = tmp_path / "aa.toml"
    path.write_text(text)
    return load_suite(path)


def test_an_aa_copy_differs_from_its_original_in_training_seed_only(tmp_path):
    suite = _suite(tmp_path, AA_SUITE)
    registry = default_registry()
    runs = suite.runs()
    assert [r.folder.as_posix() for r in runs] == [
        "one/ad_cn/seed-0/m",
        "one/ad_cn/seed-0/m-again",
        "one/ad_cn/seed-1/m",
        "one/ad_cn/seed-1/m-again",
    ]
    for original, copy in zip(runs[::2], runs[1::2], strict=True):
        a, b = original.resolve(registry), copy.resolve(registry)
        fresh = (a.seed + AA_SEED_OFFSET) % 2**32
        assert (a.seed_of("init"), a.seed_of("batches")) == (a.seed, a.seed)
        assert (b.seed_of("init"), b.seed_of("batches")) == (fresh, fresh)
        # the same replicate: seed (hence the split), cohort, and every other setting
        assert (b.seed, b.data.phantom_seed) == (a.seed, a.data.phantom_seed)
        differing = {
            (section, key)
            for section in a.raw
            if isinstance(a.raw[section], dict)
            for key in a.raw[section].keys() | b.raw[section].keys()
            if a.raw[section].get(key) != b.raw[section].get(key)
        }
        assert differing == {("seeds", "init"), ("seeds", "batches")}
        assert {k: v for k, v in a.raw.items() if not isinstance(v, dict)} == {
            k: v for k, v in b.raw.items() if not isinstance(v, dict)
        }
    # the A/A check is declared with the copy, and the suite's level is recorded
    (check,) = suite.checks
    assert (check.kind, check.method, check.reference, check.scenario) == ("aa", "M again", "M", "one")
    assert suite.canonical()["alpha"] == 0.1
    assert suite_from_canonical(suite.canonical()).hash == suite.hash


def test_the_aa_copy_shares_the_split_and_cohort_of_its_replicate(tmp_path):
    """The split is made from the run's seed, which the copy keeps: the same subjects in each split."""
    from cdsf_bench.assemble import load_cohort, split_cohort

    suite = _suite(tmp_path, AA_SUITE.replace("seeds = [0, 1]", "seeds = [3]"))
    registry = default_registry()
    original, copy = (spec.resolve(registry) for spec in suite.runs())
    splits = []
    for config in (original, copy):
        cohort, _ = load_cohort(config, registry)
        _, _, split, _ = split_cohort(config, cohort)
        splits.append((cohort.participants["participant_id"].tolist(), split))
    assert splits[0][0] == splits[1][0]
    for name in ("train", "val", "test"):
        assert np.array_equal(splits[0][1].rows(name), splits[1][1].rows(name))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('aa_of = "M"', 'aa_of = "N"'), "field 'aa_of' must name another method"),
        (('aa_of = "M"', 'aa_of = "M again"'), "field 'aa_of' must name another method"),
        (('aa_of = "M"', 'aa_of = "M"\ncoupling = "single"'), "takes its synth, diag, coupling, settings"),
        (("alpha = 0.1", "alpha = 0.7"), "field 'alpha' must be a number in"),
        (('"data.phantom.scenario"', '"method.coupling"'), "which the suite controls"),
    ],
)
def test_aa_and_alpha_errors_name_the_field(tmp_path, change, message):
    old, new = change
    assert old in AA_SUITE
    with pytest.raises(InputError, match=message):
        _suite(tmp_path, AA_SUITE.replace(old, new, 1))


def test_a_written_aa_check_is_refused(tmp_path):
    text = (
        AA_SUITE
        + '\n[[checks]]\nscenario = "one"\nkind = "aa"\nmethod = "M again"\nreference = "M"\nmetric = "auc"\n'
    )
    with pytest.raises(InputError, match="declared by a method's aa_of"):
        _suite(tmp_path, text)


def test_the_shipped_suites_name_a_margin_for_every_equivalence_check():
    suites = Path(__file__).parent.parent / "benchmarks" / "suites"
    for name in ("validation.toml", "validation-label-scarce.toml"):
        suite = load_suite(suites / name)
        for check in suite.checks:
            assert math.isfinite(check.margin) == (check.kind in ("not_beats", "metric_abs_below"))
    validation = load_suite(suites / "validation.toml")
    assert {c.scenario for c in validation.checks if c.kind == "aa"} == {n for n, _ in validation.scenarios}


# -- n_train: the subjects the diagnoser trains on ---------------------------------------------------


def test_n_train_of_the_diagnoser_changes_the_corrected_interval():
    """One cohort re-split 5 times: 60 labelled training subjects, 20 validation, 40 test, and
    200 unlabelled subjects of other diagnoses that only a generator trains on. Counting them
    makes r = 40 / 280 instead of 40 / 80 and the interval too narrow."""
    folders = [f"ad_cn/seed-{s}/m" for s in range(5)]
    labelled = pd.DataFrame({"run_folder": folders, "n_test": 40, "n_train": 60, "n_val": 20})
    counted_all = labelled.assign(n_train=260)
    right, wrong = design_of({"folds": 0}, labelled), design_of({"folds": 0}, counted_all)
    assert right is not None and wrong is not None
    assert right.test_train_ratio == pytest.approx(0.5) and wrong.test_train_ratio == pytest.approx(40 / 280)
    differences = np.array([0.05, 0.01, 0.04, 0.02, 0.06])
    pairs = pd.DataFrame(
        {"task": "ad_cn", "scenario": "", "method": "m", "auc_diff": differences, "bacc_diff": differences}
    )
    corrected = answers(pairs, {("", "ad_cn"): right})[0]
    understated = answers(pairs, {("", "ad_cn"): wrong})[0]
    sd = differences.std(ddof=1)
    half = stats.t.ppf(0.975, 4) * sd * math.sqrt(1 / 5 + 0.5)
    assert corrected.high - corrected.estimate == pytest.approx(half, rel=1e-10)
    # the unlabelled count makes the interval exclude 0 where the diagnoser's own does not
    assert understated.low > 0 > corrected.low
    assert corrected.mdd / understated.mdd == pytest.approx(math.sqrt(0.7 / (0.2 + 40 / 280)), rel=1e-10)


def test_a_run_counts_its_labelled_training_subjects_as_n_train():
    """metrics.json "n": the pipeline's training rows of the task's classes only."""
    from cdsf_bench.data.splits import Splits
    from cdsf_bench.run import _split_sizes

    class Pipeline:
        labelled_np = np.array([True, True, False, False, False, True, True])
        splits = Splits(np.array([0, 1, 2, 3, 4]), np.array([5]), np.array([6]))

        def rows(self, split: str, subjects: str = "all") -> np.ndarray:
            return self.splits.rows(split)

    class Coupling:
        subjects = "all"

    assert _split_sizes(Pipeline(), Coupling()) == {"train": 2, "val": 1, "test": 1}  # type: ignore[arg-type]


def test_an_aa_suite_runs_two_trainings_of_one_split_and_reports_its_check(tmp_path):
    """Trained end to end (tiny, one epoch): the two runs of a replicate record one split and
    cohort but another batch order, predict differently, and the report has the A/A check."""
    import json

    from click.testing import CliRunner

    from cdsf_bench.cli import main

    text = AA_SUITE.replace(
        "[scenarios.one]",
        '[settings]\n"data.subjects" = 60\n"train.epochs" = 1\n"evaluate.bootstrap" = 10\n\n[scenarios.one]',
    )
    (tmp_path / "aa.toml").write_text(text)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["bench", str(tmp_path / "aa.toml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for seed in (0, 1):
        replicate = out / "one" / "ad_cn" / f"seed-{seed}"
        data = [json.loads((replicate / m / "data.json").read_text()) for m in ("m", "m-again")]
        assert data[0]["phantom_seed"] == data[1]["phantom_seed"] == seed
        assert data[0]["fingerprints"]["splits_sha256"] == data[1]["fingerprints"]["splits_sha256"]
        assert data[0]["fingerprints"]["batch_order_sha256"] != data[1]["fingerprints"]["batch_order_sha256"]
        probabilities = [
            pd.read_csv(replicate / m / "predictions.csv")["probability"] for m in ("m", "m-again")
        ]
        assert not np.allclose(probabilities[0], probabilities[1])
    checks = pd.read_csv(out / "checks.csv")
    assert list(checks["kind"]) == ["aa"] and checks["status"][0] in ("pass", "fail"), checks.to_dict(
        "records"
    )
    assert "A/A" in checks["detail"][0] and "90% t-CI" in (out / "report.md").read_text()
