"""Verdicts that hold: the corrected t-test, Holm, the power of a design, calibration, k-fold.

Every statistic is checked on a constructed case with a value derived by hand (or by an
independent formula), never only against the library it calls.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.calibration import calibration_curve

from cdsf_bench.bench.answers import Design, answers, design_of
from cdsf_bench.bench.sizing import Components, Target, half_width, plan
from cdsf_bench.bench.stats import holm, minimal_detectable_difference, t_interval
from cdsf_bench.bench.suite import PER_REPLICATE, SHARED, suite_from_canonical
from cdsf_bench.bench.suite_file import load_suite
from cdsf_bench.data.splits import make_splits
from cdsf_bench.errors import InputError
from cdsf_bench.metrics import diagnosis_metrics, expected_calibration_error, subgroup_metrics
from cdsf_bench.registry import default_registry

RESULTS = Path(__file__).parent.parent / "benchmarks" / "results"

# -- the corrected resampled t-test ----------------------------------------------------------


def test_corrected_t_test_matches_a_hand_computation():
    """d = 0.02, 0.04, 0.06, 0.08 and n_test / n_train = 1/4.

    mean 0.05; s^2 = (0.03^2 + 0.01^2 + 0.01^2 + 0.03^2) / 3 = 0.002 / 3; the corrected
    variance of the mean (1/4 + 1/4) s^2 = 0.001 / 3, so t = 0.05 / sqrt(0.001 / 3) =
    sqrt(7.5) with 3 degrees of freedom. Student's t with 3 df has the closed-form CDF
    1/2 + (x / (1 + x^2) + atan x) / pi with x = t / sqrt(3); t(0.975, 3) = 3.182446.
    """
    result = t_interval(np.array([0.02, 0.04, 0.06, 0.08]), test_train_ratio=0.25)
    x = math.sqrt(7.5) / math.sqrt(3)
    p = 2 * (1 - (0.5 + (x / (1 + x * x) + math.atan(x)) / math.pi))
    assert result.mean == pytest.approx(0.05)
    assert result.p_value == pytest.approx(p, rel=1e-9)
    assert result.p_value == pytest.approx(0.071422, abs=1e-6)
    assert result.half_width == pytest.approx(3.182446305 * math.sqrt(0.001 / 3), rel=1e-8)
    # uncorrected (independent replicates): variance s^2 / 4, t = 0.05 / sqrt(0.0005 / 3)
    plain = t_interval(np.array([0.02, 0.04, 0.06, 0.08]))
    assert plain.p_value == pytest.approx(2 * stats.t.sf(0.05 / math.sqrt(0.0005 / 3), 3))
    assert plain.half_width < result.half_width


def test_corrected_t_test_edge_cases():
    same = t_interval(np.array([0.25, 0.25, 0.25]), test_train_ratio=0.25)
    assert same.p_value == 0.0 and same.half_width == 0.0
    assert t_interval(np.array([0.0, 0.0])).p_value == 1.0
    one = t_interval(np.array([0.3, math.nan]))
    assert one.n == 1 and math.isnan(one.p_value) and math.isnan(one.low)


# -- Holm ------------------------------------------------------------------------------------


def test_holm_on_a_constructed_family():
    """p = 0.01, 0.04, 0.03, 0.005: sorted, times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04, made
    monotone (0.04 -> 0.06), back in the given order. A NaN is not part of the family."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    with_missing = holm([0.01, math.nan, 0.04, 0.03, 0.005])
    assert math.isnan(with_missing[1])
    assert np.delete(with_missing, 1) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


# -- the minimal detectable difference --------------------------------------------------------


def test_mdd_has_the_stated_power_by_the_noncentral_t():
    """At the MDD the two-sided test rejects with probability 0.8: checked with SciPy's
    noncentral t, independently of statsmodels' solver."""
    for sd, count, ratio in ((0.07, 3, 0.0), (0.04, 6, 0.0), (0.05, 15, 0.25), (1.0, 10, 0.0)):
        mdd = minimal_detectable_difference(sd, count, ratio)
        se = sd * math.sqrt(1 / count + ratio)
        critical = stats.t.ppf(0.975, count - 1)
        power = stats.nct.sf(critical, count - 1, mdd / se) + stats.nct.cdf(-critical, count - 1, mdd / se)
        assert power == pytest.approx(0.8, abs=1e-4)
    # sd 1 and ten replicates: the one-sample t-test's effect size for 80% power, d = 0.996
    assert minimal_detectable_difference(1.0, 10) == pytest.approx(0.996, abs=1e-3)
    # large samples: (z(0.975) + z(0.8)) standard errors = 2.8016
    assert minimal_detectable_difference(1.0, 200_000) * math.sqrt(200_000) == pytest.approx(2.8016, abs=2e-3)
    # the correction widens it by sqrt(1 + J r)
    ratio = minimal_detectable_difference(0.1, 10, 0.25) / minimal_detectable_difference(0.1, 10)
    assert ratio == pytest.approx(math.sqrt(1 + 10 * 0.25))
    assert math.isnan(minimal_detectable_difference(0.1, 1)) and math.isnan(
        minimal_detectable_difference(0, 5)
    )


# -- calibration and subgroups ---------------------------------------------------------------


def test_ece_on_constructed_predictions():
    """Bins of width 0.1. Bin [0, 0.1): p 0.05, 0.05, no positive: gap 0.05 x 2 subjects;
    bin [0.1, 0.2): p 0.15, negative: 0.15 x 1; bin [0.9, 1]: p 0.95 x 4, 3 positives: gap
    0.2 x 4. ECE = (0.1 + 0.15 + 0.8) / 7 = 0.15."""
    labels = np.array([0, 0, 0, 1, 1, 1, 0])
    probability = np.array([0.05, 0.05, 0.15, 0.95, 0.95, 0.95, 0.95])
    assert expected_calibration_error(labels, probability) == pytest.approx(0.15)
    # calibrated within every bin: p = 0.25 with 1 of 4 positive, p = 0.75 with 3 of 4
    calibrated = np.array([0.25] * 4 + [0.75] * 4)
    assert expected_calibration_error(np.array([1, 0, 0, 0, 1, 1, 1, 0]), calibrated) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([1, 0]), np.array([1.0, 0.0])) == 0.0  # 1.0 in the last bin


def test_ece_agrees_with_scikit_learns_reliability_curve():
    rng = np.random.default_rng(3)
    probability = rng.uniform(0, 1, 500)
    labels = (rng.uniform(0, 1, 500) < probability**2).astype(int)
    true, predicted = calibration_curve(labels, probability, n_bins=10, strategy="uniform")
    counts = np.histogram(probability, bins=np.linspace(0, 1, 11))[0]
    expected = float(np.sum(counts[counts > 0] / len(labels) * np.abs(true - predicted)))
    assert expected_calibration_error(labels, probability) == pytest.approx(expected)


def test_brier_and_pet_subgroups_in_the_diagnosis_metrics():
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    probability = np.array([0.1, 0.9, 0.2, 0.8, 0.7, 0.3, 0.6, 0.4])
    has_pet = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    metrics = diagnosis_metrics(labels, probability, bootstrap=0, has_pet=has_pet)
    squared = (0.1**2 + 0.1**2 + 0.2**2 + 0.2**2 + 0.7**2 + 0.7**2 + 0.6**2 + 0.6**2) / 8
    assert metrics["brier"] == pytest.approx(squared)
    # with PET every positive outranks every negative; without, every negative outranks
    assert metrics["auc_with_pet"] == 1.0 and metrics["auc_without_pet"] == 0.0
    assert metrics["bacc_with_pet"] == 1.0 and metrics["bacc_without_pet"] == 0.0
    assert math.isnan(diagnosis_metrics(labels, probability, bootstrap=0)["auc_with_pet"])
    one_class = subgroup_metrics(labels, probability, labels, np.array([1, 0] * 4, dtype=bool))
    assert all(math.isnan(v) for v in one_class.values())  # each subgroup holds one class only


# -- repeated stratified k-fold ---------------------------------------------------------------


def test_repeated_kfold_tests_every_subject_once_per_repeat_with_disjoint_roles():
    labels = np.array([0] * 37 + [1] * 23)
    table = pd.DataFrame({"participant_id": [f"sub-{i:03d}" for i in range(60)], "diagnosis": labels})
    partitions = []
    for seed in (0, 1, 2):
        folds = [make_splits(table, labels, val=0.2, test=0.2, seed=seed, folds=5, fold=k) for k in range(5)]
        tested = np.concatenate([f.test for f in folds])
        assert sorted(tested) == list(range(60))  # every subject tested exactly once per repeat
        for fold in folds:
            roles = [set(fold.train), set(fold.val), set(fold.test)]
            assert sum(map(len, roles)) == 60 and len(set.union(*roles)) == 60  # disjoint, complete
            assert len(fold.val) == pytest.approx(0.2 * 60, abs=1)  # carved from the training folds
            for rows in (fold.test, fold.val, fold.train):  # stratified: each class within one subject
                share = len(rows) / 60
                assert abs(labels[rows].sum() - 23 * share) <= 1
        partitions.append(sorted(tuple(sorted(f.test)) for f in folds))
    assert partitions[0] != partitions[1] != partitions[2]  # each repeat reshuffles


def _suite(tmp_path: Path, head: str, settings: str = "", methods: str = "") -> Path:
    path = tmp_path / "s.toml"
    path.write_text(
        f'name = "s"\n{head}\n{settings}\n[[methods]]\nname = "A"\nsynth = "ism"\ndiag = "mdm"\n'
        f'coupling = "joint"\n{methods}'
    )
    return path


def test_phantom_replicates_draw_their_own_cohorts_unless_pinned(tmp_path):
    registry = default_registry()
    suite = load_suite(_suite(tmp_path, "seeds = [3, 4]"))
    assert suite.cohorts == PER_REPLICATE and suite.canonical()["cohorts"] == PER_REPLICATE
    assert [spec.resolve(registry).data.phantom_seed for spec in suite.runs()] == [3, 4]
    assert suite_from_canonical(suite.canonical()).hash == suite.hash
    pinned = load_suite(_suite(tmp_path, "seeds = [3, 4]", '[settings]\n"data.phantom_seed" = 9'))
    assert pinned.cohorts == SHARED and "cohorts" not in pinned.canonical()
    assert [spec.resolve(registry).data.phantom_seed for spec in pinned.runs()] == [9, 9]
    # a suite folder recorded before cohorts existed was run on one cohort: it rebuilds so
    legacy = {k: v for k, v in suite.canonical().items() if k != "cohorts"}
    assert suite_from_canonical(legacy).cohorts == SHARED
    assert suite_from_canonical(legacy).hash != suite.hash  # never resumed as the new design


@pytest.mark.parametrize(
    ("settings", "methods"),
    [
        ('[scenarios.a]\n"data.phantom_seed" = 2', ""),
        ("", 'settings = { "data.phantom_seed" = 2 }'),
    ],
)
def test_the_cohort_is_pinned_in_settings_only(tmp_path, settings, methods):
    with pytest.raises(InputError, match="data.phantom_seed"):
        load_suite(_suite(tmp_path, "seeds = [0, 1]", settings, methods))


def test_repeated_kfold_suites_expand_seeds_times_folds(tmp_path):
    suite = load_suite(_suite(tmp_path, "seeds = [0, 1]\nfolds = 3"))
    runs = suite.runs()
    assert [r.folder.as_posix() for r in runs] == [
        f"ad_cn/seed-{s}-fold-{k}/a" for s in (0, 1) for k in range(3)
    ]
    config = runs[4].resolve(default_registry())
    assert (config.seed, config.split.folds, config.split.fold) == (1, 3, 1)
    assert config.data.phantom_seed == 1  # the folds of a repeat share its cohort
    with pytest.raises(InputError, match="not both"):
        load_suite(_suite(tmp_path, "seeds = [0, 1]\nseed = 2\nfolds = 3"))


# -- the design and the answers --------------------------------------------------------------


def _runs(folders: list[str], n_test=36, n_train=108, n_val=36) -> pd.DataFrame:
    return pd.DataFrame({"run_folder": folders, "n_test": n_test, "n_train": n_train, "n_val": n_val})


def test_the_design_decides_the_correction():
    folders = [f"ad_cn/seed-{s}/{m}" for s in range(3) for m in ("a", "b")]
    independent = design_of({"folds": 0, "cohorts": PER_REPLICATE}, _runs(folders))
    assert independent == Design("independent", 3, 0.0)
    shared = design_of({"folds": 0}, _runs(folders))
    assert shared is not None and shared.kind == "hold-out"
    assert shared.test_train_ratio == pytest.approx(36 / 144)
    kfold = design_of({"folds": 5, "cohorts": PER_REPLICATE}, _runs(folders, 12, 38, 10))
    assert kfold is not None and kfold.kind == "k-fold" and kfold.test_train_ratio == pytest.approx(0.25)
    # a folder written before the split sizes were recorded has no design: no answers
    assert design_of({"folds": 0}, pd.DataFrame({"run_folder": folders, "n_test": 36})) is None


def _pairs(method: str, auc: list[float], bacc: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "task": "ad_cn",
            "replicate": [f"seed-{i}" for i in range(len(auc))],
            "method": method,
            "auc_diff": auc,
            "bacc_diff": bacc,
        }
    )


def test_answers_verdicts_holm_and_mdd_on_constructed_differences():
    pairs = pd.concat(
        [
            _pairs("worse one", [-0.11, -0.10, -0.12, -0.09, -0.10, -0.11], [-0.1] * 5 + [-0.11]),
            _pairs(
                "close one", [0.04, -0.06, 0.02, -0.01, 0.05, -0.03], [0.02, -0.01, 0.0, 0.01, -0.02, 0.0]
            ),
        ],
        ignore_index=True,
    ).assign(scenario="")
    design = Design("independent", 6, 0.0)
    found = answers(pairs, {("", "ad_cn"): design})
    assert [(a.method, a.metric) for a in found] == [
        ("worse one", "auc"),
        ("worse one", "bacc"),
        ("close one", "auc"),
        ("close one", "bacc"),
    ]
    assert found[0].verdict("R") == "worse than R" and found[0].holm_p < 0.05
    assert found[0].holm_p == pytest.approx(holm([a.p_value for a in found])[0])
    close = found[2]
    assert close.verdict("R").startswith("no difference detectable at this power")
    sd = float(np.std([0.04, -0.06, 0.02, -0.01, 0.05, -0.03], ddof=1))
    assert close.mdd == pytest.approx(minimal_detectable_difference(sd, 6))
    assert f"{close.mdd:.3f}" in close.verdict("R")
    # the same differences on replicates that share a cohort: wider, so no verdict of "worse"
    # for a difference the plain test would call one
    shared = answers(
        _pairs("m", [-0.05, -0.02, -0.04, -0.03], [0.0, 0.01, 0.0, -0.01]).assign(scenario=""),
        {("", "ad_cn"): Design("hold-out", 4, 0.25)},
    )
    plain = answers(
        _pairs("m", [-0.05, -0.02, -0.04, -0.03], [0.0, 0.01, 0.0, -0.01]).assign(scenario=""),
        {("", "ad_cn"): Design("independent", 4, 0.0)},
    )
    assert shared[0].p_value > plain[0].p_value and shared[0].mdd > plain[0].mdd


# -- sizing ----------------------------------------------------------------------------------


def test_plan_gives_the_fewest_test_subjects_that_reach_the_target():
    parts = Components("m", 3, -0.02, 0.005, 0.0036, 36.0, 0.0014)
    for row in plan(parts, Target("half_width", 0.05), range(2, 9)):
        if row.test_subjects is None:  # the training variance alone is too large for this count
            t = stats.t.ppf(0.975, row.replicates - 1)
            assert t * math.sqrt(parts.training_variance / row.replicates) > 0.05
            continue
        assert half_width(parts, row.replicates, row.test_subjects) <= 0.05 + 1e-12
        assert half_width(parts, row.replicates, row.test_subjects - 1) > 0.05
    assert half_width(parts, 4, 1e12) == pytest.approx(
        stats.t.ppf(0.975, 3) * math.sqrt(0.0014 / 4), rel=1e-6
    )


# -- older results folders -------------------------------------------------------------------


def test_a_committed_folder_without_the_new_columns_re_renders_as_committed_then_its_cost(tmp_path):
    """The 2026-12-02 quick-core export lacks split sizes, calibration and subgroups: its
    report must come out exactly as committed (no answers, the old notes), followed only by
    the compute-cost section every report ends with (read from its runs' records)."""
    from click.testing import CliRunner

    from cdsf_bench.cli import main

    source = RESULTS / "2026-12-02-quick-core-3seeds"
    folder = tmp_path / "copy"
    shutil.copytree(source, folder)
    result = CliRunner().invoke(main, ["report", str(folder), "--format", "md"])
    assert result.exit_code == 0, result.output
    rendered = (folder / "report.md").read_text()
    committed = (source / "report.md").read_text()
    assert rendered.startswith(committed.rstrip("\n"))
    assert rendered[len(committed.rstrip("\n")) :].lstrip("\n").startswith("## Compute cost\n")
    assert not (folder / "answers.csv").exists()
