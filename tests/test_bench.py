"""Suites, the suite runner, the report and its statistics, and regression checks.

One tiny suite (support.TINY_SUITE: two methods, two seeds, 8 mm, one epoch) runs once per
session (conftest.py); the resume, shard, report and regression tests reuse a copy of its
folder. conftest.py keeps the progress bars quiet and the data cache private.
"""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy.stats import mannwhitneyu
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from support import load_benchmark, tiny_suite_text

from cdsf_bench.bench.report import choose_reference
from cdsf_bench.bench.runner import run_suite
from cdsf_bench.bench.stats import delong_test, paired_bootstrap_bacc, t_interval
from cdsf_bench.bench.suite import parse_shard, shard_runs
from cdsf_bench.bench.suite_file import load_suite
from cdsf_bench.bench.table import COLUMNS, results_frame
from cdsf_bench.cli import main
from cdsf_bench.errors import InputError, RunFailed
from cdsf_bench.interfaces import Method
from cdsf_bench.metrics import DIAGNOSIS_KEYS
from cdsf_bench.registry import default_registry


@pytest.fixture(scope="module")
def suite_file(tiny_suite_file: Path) -> Path:
    return tiny_suite_file


@pytest.fixture(scope="module")
def suite_run(tiny_suite: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's copy of the session's finished tiny suite (its tests change it)."""
    return Path(shutil.copytree(tiny_suite, tmp_path_factory.mktemp("bench") / "tiny"))


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


# -- suites -------------------------------------------------------------------------------


def test_suite_runs_in_stable_order_with_paired_assignments(suite_file):
    suite = load_suite(suite_file)
    runs = suite.runs()
    assert [r.folder.as_posix() for r in runs][:2] == [
        "ad_cn/seed-0/cdsf",
        f"ad_cn/seed-0/{runs[1].method.slug}",
    ]
    assert [r.seed for r in runs] == [0, 0, 1, 1]
    config = runs[0].resolve(default_registry())
    assert config.seed == 0 and config.train.epochs == 1 and config.data.subjects == 24
    assert config.raw["preset"] == "tiny"


def test_folds_set_split_and_keep_the_seed(tmp_path):
    path = tmp_path / "folds.toml"
    path.write_text(
        'name = "k"\nfolds = 3\nseed = 7\n[[methods]]\nname = "A"\nsynth = "ism"\n'
        'diag = "mdm"\ncoupling = "joint"\n'
    )
    runs = load_suite(path).runs()
    assert [r.folder.as_posix() for r in runs] == [f"ad_cn/fold-{f}/a" for f in range(3)]
    config = runs[2].resolve(default_registry())
    assert (config.split.folds, config.split.fold, config.seed) == (3, 2, 7)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('task = "ad_cn"', "name"),
        ('name = "x"\nseeds = [0, 0]\n[[methods]]\nname="a"\nsynth="ism"\ncoupling="joint"', "seeds"),
        ('name = "x"\ntask = "nope"\n[[methods]]\nname="a"\nsynth="ism"\ncoupling="joint"', "task"),
        ('name = "x"\n[[methods]]\nname="a"\ncoupling="joint"', "synth"),
        ('name = "x"\nbogus = 1\n[[methods]]\nname="a"\nsynth="ism"\ncoupling="joint"', "bogus"),
        ('name = "x"\n[settings]\nseed = 3\n[[methods]]\nname="a"\nsynth="ism"\ncoupling="joint"', "seed"),
    ],
)
def test_suite_errors_name_the_field(tmp_path, text, field):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=field):
        load_suite(path)


def test_shards_cover_the_suite_disjointly(suite_file):
    runs = load_suite(suite_file).runs()
    first, second = ({r.folder for r in shard_runs(runs, i, 2)} for i in (1, 2))
    assert first.isdisjoint(second)
    assert first | second == {r.folder for r in runs}
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/2", "3/2", "1-2"):
        with pytest.raises(InputError):
            parse_shard(bad)


# -- the suite runner ----------------------------------------------------------------------


def test_bench_writes_results_and_report(suite_run):
    results = pd.read_csv(suite_run / "results.csv")
    assert list(results.columns) == list(COLUMNS)
    assert len(results) == 4 and (results["status"] == "done").all()
    assert results["auc"].notna().all() and results["n_test"].gt(0).all()
    for folder in results["run_folder"]:
        assert (suite_run / folder / "metrics.json").exists()
    assert (suite_run / "report.md").exists() and (suite_run / "report.html").exists()
    recorded = json.loads((suite_run / "suite.json").read_text())
    assert recorded["name"] == "tiny" and len(recorded["hash"]) == 64


def test_replicates_draw_their_own_cohorts_and_the_report_answers(suite_run):
    """Each seed's runs read its own phantom cohort (data.json); the report answers every
    comparison (design, Holm, MDD, verdict) and shows calibration and the PET subgroups."""
    for seed in (0, 1):
        data = json.loads((suite_run / f"ad_cn/seed-{seed}/cdsf/data.json").read_text())
        assert data["phantom_seed"] == seed and f"seed {seed})" in data["description"]
        assert data["split"] == {"seed": seed, "folds": 0, "fold": None}
    results = pd.read_csv(suite_run / "results.csv")
    assert results[["n_train", "n_val", "brier", "ece"]].notna().all().all()
    predictions = pd.read_csv(suite_run / "ad_cn/seed-0/cdsf/predictions.csv")
    assert set(predictions["has_pet"]) <= {0, 1}
    text = (suite_run / "report.md").read_text()
    assert "## Answers: each method against CDSF" in text
    assert "2 replicates, each its own cohort and split: independent" in text
    assert "Calibration and PET subgroups" in text and "auc_without_pet" in text
    answered = pd.read_csv(suite_run / "answers.csv")
    assert list(answered["metric"]) == ["auc", "bacc"] and answered["replicates"].le(2).all()
    # three test subjects: DeLong may not be computable, and then the AUC is not answered
    assert (
        answered["verdict"].str.match("(better|worse) than CDSF|no difference detectable|not answered").all()
    )


def test_resume_skips_finished_runs(suite_run, suite_file):
    stamps = {p: p.stat().st_mtime_ns for p in suite_run.glob("*/*/*/metrics.json")}
    assert len(stamps) == 4
    refused = invoke("bench", suite_file, "--out", suite_run)
    assert refused.exit_code == 2 and "--resume" in refused.output
    result = invoke("bench", suite_file, "--out", suite_run, "--resume")
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert len(pd.read_csv(suite_run / "results.csv")) == 4


def test_a_failed_run_is_recorded_and_the_suite_goes_on(suite_file, tmp_path, monkeypatch):
    import cdsf_bench.run

    def fake_execute(config, registry, out, resume=False):
        if config.method.coupling == "joint" and config.seed == 0:
            raise RunFailed("Loss 'G' became nan")
        out.mkdir(parents=True)
        metrics = {"diagnosis": dict.fromkeys(DIAGNOSIS_KEYS, 0.5), "synthesis": None, "n": {"test": 3}}
        (out / "metrics.json").write_text(json.dumps(metrics))

    monkeypatch.setattr(cdsf_bench.run, "execute", fake_execute)
    results = run_suite(load_suite(suite_file), default_registry(), tmp_path / "out")
    assert results["status"].tolist() == ["failed", "done", "done", "done"]
    assert "nan" in results.loc[0, "error"]
    assert pd.read_csv(tmp_path / "out" / "results.csv")["status"].tolist() == results["status"].tolist()
    baseline = _baseline(tmp_path, '[methods."CDSF".auc]\nvalue = 0.5\n')
    result = invoke("regress", tmp_path / "out", "--baseline", baseline)
    assert result.exit_code == 1 and "CDSF auc failed" in result.output


def test_shards_merge_into_the_whole(suite_run, suite_file, tmp_path):
    shards = []
    for index in (1, 2):
        folder = tmp_path / f"shard{index}"
        shutil.copytree(
            suite_run, folder, ignore=shutil.ignore_patterns("results*.csv", "report*", "figures")
        )
        result = invoke("bench", suite_file, "--out", folder, "--resume", "--shard", f"{index}/2")
        assert result.exit_code == 0, result.output
        assert len(pd.read_csv(folder / f"results.shard-{index}-of-2.csv")) == 2
        shards.append(folder)
    merged = tmp_path / "merged"
    assert invoke("merge", *shards, "--out", merged, "--no-report").exit_code == 0
    whole = pd.read_csv(suite_run / "results.csv").drop(columns="wall_seconds")
    pd.testing.assert_frame_equal(pd.read_csv(merged / "results.csv").drop(columns="wall_seconds"), whole)

    other = tmp_path / "other"
    shutil.copytree(shards[1], other)
    recorded = json.loads((other / "suite.json").read_text())
    (other / "suite.json").write_text(json.dumps({**recorded, "hash": "0" * 64}))
    refused = invoke("merge", shards[0], other, "--out", tmp_path / "mixed")
    assert refused.exit_code == 2 and "different suites" in refused.output


# -- statistics ----------------------------------------------------------------------------


def test_delong_identical_predictions_give_no_difference():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 15)
    scores = labels + rng.normal(0, 1, 30)
    result = delong_test(labels, scores, scores)
    assert result.difference == 0 and result.z == 0 and result.p_value == 1


def test_delong_matches_a_hand_computation():
    # positives A: 0.9 0.8 0.4 | negatives A: 0.5 0.3 0.1 -> V10 = (1, 1, 2/3), V01 = (2/3, 1, 1)
    # positives B: 0.7 0.2 0.6 | negatives B: 0.3 0.5 0.4 -> V10 = (1, 0, 1), V01 = (2/3, 2/3, 2/3)
    # AUC_A = 8/9, AUC_B = 2/3; S10 = [[1/27, -1/18], [-1/18, 1/3]], S01 = [[1/27, 0], [0, 0]]
    # var = (1/27 + 1/3 + 1/9) / 3 + (1/27) / 3 = 14/81; z = (2/9) / sqrt(14/81) = 2 / sqrt(14)
    labels = [1, 1, 1, 0, 0, 0]
    result = delong_test(labels, [0.9, 0.8, 0.4, 0.5, 0.3, 0.1], [0.7, 0.2, 0.6, 0.3, 0.5, 0.4])
    assert result.auc_a == pytest.approx(8 / 9) and result.auc_b == pytest.approx(2 / 3)
    assert result.variance == pytest.approx(14 / 81)
    assert result.z == pytest.approx(2 / math.sqrt(14))
    assert result.p_value == pytest.approx(0.59298, abs=1e-4)


def test_delong_auc_is_the_mann_whitney_statistic_with_ties():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], [12, 9])
    score_a = np.round(labels * 0.5 + rng.normal(0, 0.5, 21), 1)  # rounded: ties occur
    score_b = np.round(rng.normal(0, 1, 21), 1)
    result = delong_test(labels, score_a, score_b)
    u = mannwhitneyu(score_a[labels == 1], score_a[labels == 0]).statistic
    assert result.auc_a == pytest.approx(u / (9 * 12))
    assert result.auc_b == pytest.approx(roc_auc_score(labels, score_b))
    assert 0 < result.p_value < 1


def test_paired_bootstrap_of_balanced_accuracy():
    labels = np.repeat([0, 1], [20, 10])
    same = paired_bootstrap_bacc(labels, labels, labels, replicates=200)
    assert (same.difference, same.ci_low, same.ci_high, same.p_value) == (0, 0, 0, 1)
    right, wrong = labels, 1 - labels
    result = paired_bootstrap_bacc(labels, right, wrong, replicates=200, seed=3)
    assert result.difference == 1 and result.ci_low == 1 and result.p_value == pytest.approx(2 / 201)
    rng = np.random.default_rng(4)
    noisy_a = np.where(rng.random(30) < 0.8, labels, 1 - labels)
    noisy_b = np.where(rng.random(30) < 0.6, labels, 1 - labels)
    first = paired_bootstrap_bacc(labels, noisy_a, noisy_b, replicates=300, seed=5)
    expected = balanced_accuracy_score(labels, noisy_a) - balanced_accuracy_score(labels, noisy_b)
    assert first.difference == pytest.approx(expected)
    assert first.ci_low <= first.difference <= first.ci_high
    assert paired_bootstrap_bacc(labels, noisy_a, noisy_b, replicates=300, seed=5) == first


def test_t_interval():
    result = t_interval(np.array([0.1, 0.2, 0.3]))
    assert result.mean == pytest.approx(0.2)
    assert result.high - result.mean == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert math.isnan(t_interval(np.array([0.5])).low)


# -- report ---------------------------------------------------------------------------------


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])
        for name, value in attrs:
            assert name not in ("href", "src") or value.startswith(("data:", "#")), f"external asset {value}"


def test_html_report_is_self_contained(suite_run):
    markdown = (suite_run / "report.md").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert {"figures/ad_cn_roc.png", "figures/ad_cn_strip.png"} <= set(figures)
    parser = _Images()
    parser.feed((suite_run / "report.html").read_text())
    parser.close()
    embedded = {src.removeprefix("data:image/png;base64,") for src in parser.sources}
    for figure in figures:
        assert base64.b64encode((suite_run / figure).read_bytes()).decode() in embedded, figure
    assert "DeLong" in markdown and "bootstrap" in markdown


def test_report_command_and_reference(suite_run):
    methods = pd.read_csv(suite_run / "results.csv")["method"].unique()
    result = invoke("report", suite_run, "--format", "md", "--reference", methods[1])
    assert result.exit_code == 0, result.output
    pairs = pd.read_csv(suite_run / "comparisons.csv")
    assert set(pairs["reference"]) == {methods[1]} and len(pairs) == 2
    assert invoke("report", suite_run, "--reference", "nobody").exit_code == 2
    invoke("report", suite_run)  # leave the default report for the other tests


def test_default_reference_comes_from_the_plugins():
    rows = [
        {"method": "MRI only", "synth": "none", "coupling": "single"},
        {"method": "CDSF", "synth": "ism", "coupling": "joint"},
        {"method": "decoupled", "synth": "ism", "coupling": "decoupled"},
    ]
    results = pd.DataFrame(rows)
    plugins = default_registry().method_defaults().method
    assert choose_reference(results, None, plugins) == "CDSF"
    other = Method(synth="ism", diag="mdm", coupling="decoupled")
    assert choose_reference(results, None, other) == "decoupled"
    # no plugin default, or none of its kind among the results: the first method
    assert choose_reference(results, None, None) == "MRI only"
    assert choose_reference(results, None, Method(synth="x", diag="mdm", coupling="joint")) == "MRI only"
    assert choose_reference(results, "decoupled", plugins) == "decoupled"


# -- regression -----------------------------------------------------------------------------


def _results(path: Path) -> Path:
    """A results.csv with known values: two seeds of 'A' (with synthesis), one of 'B'."""

    def row(seed: int, method: str, **metrics: float) -> dict:
        folder = f"ad_cn/seed-{seed}/{method.lower()}"
        identity = {"suite": "s", "task": "ad_cn", "seed": seed, "method": method, "status": "done"}
        return {**dict.fromkeys(COLUMNS), **identity, **metrics, "run_folder": folder}

    rows = [row(0, "A", auc=0.8, mae=0.10), row(1, "A", auc=0.9, mae=0.12), row(0, "B", auc=0.7)]
    results_frame(rows).to_csv(path / "results.csv", index=False)
    return path / "results.csv"


def _baseline(path: Path, text: str) -> Path:
    target = path / "baseline.toml"
    target.write_text(text)
    return target


def test_regress_passes_on_identical_results(tmp_path):
    results = _results(tmp_path)
    baseline = _baseline(
        tmp_path,
        "[methods.A.auc]\nvalue = 0.85\nabs_tol = 0.0\n"
        "[methods.A.mae]\nvalue = 0.11\n"
        "[methods.B.auc]\nvalue = 0.7\n",
    )
    result = invoke("regress", results, "--baseline", baseline, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and {c["verdict"] for c in report["checks"]} == {"ok"}
    assert invoke("regress", tmp_path, "--baseline", baseline).exit_code == 0  # the suite folder


def test_regress_fails_naming_the_worse_metric(tmp_path):
    results = _results(tmp_path)
    baseline = _baseline(tmp_path, "[methods.A.auc]\nvalue = 0.95\nabs_tol = 0.05\nrel_tol = 0.01\n")
    result = invoke("regress", results, "--baseline", baseline)
    assert result.exit_code == 1
    assert re.search(r"A auc worse", result.output)
    loose = _baseline(tmp_path, "[methods.A.auc]\nvalue = 0.95\nrel_tol = 0.2\n")
    assert invoke("regress", results, "--baseline", loose).exit_code == 0


def test_regress_respects_direction(tmp_path):
    results = _results(tmp_path)  # A's mean MAE is 0.11, and a lower MAE is better
    lower_now = _baseline(tmp_path, "[methods.A.mae]\nvalue = 0.2\nabs_tol = 0.001\n")
    assert invoke("regress", results, "--baseline", lower_now).exit_code == 0
    higher_now = _baseline(tmp_path, "[methods.A.mae]\nvalue = 0.05\nabs_tol = 0.001\n")
    result = invoke("regress", results, "--baseline", higher_now)
    assert result.exit_code == 1 and "A mae worse" in result.output
    flipped = _baseline(tmp_path, '[methods.A.mae]\nvalue = 0.2\nabs_tol = 0.001\ndirection = "higher"\n')
    assert invoke("regress", results, "--baseline", flipped).exit_code == 1


def test_regress_fails_on_missing_metric_or_method(tmp_path):
    results = _results(tmp_path)
    for text, name in (
        ("[methods.B.mae]\nvalue = 0.1\n", "B mae missing"),
        ("[methods.C.auc]\nvalue = 0.5\n", "C auc missing"),
    ):
        result = invoke("regress", results, "--baseline", _baseline(tmp_path, text))
        assert result.exit_code == 1 and name in result.output


def test_regress_update_keeps_tolerances(tmp_path):
    results = _results(tmp_path)
    baseline = _baseline(
        tmp_path,
        '[methods.A.auc]\nvalue = 0.1\nabs_tol = 0.03\n[methods.A.mae]\nrel_tol = 0.2\ndirection = "lower"\n',
    )
    assert invoke("regress", results, "--baseline", baseline).exit_code == 2  # A.mae has no value yet
    assert invoke("regress", results, "--baseline", baseline, "--update").exit_code == 0
    updated = tomllib.loads(baseline.read_text())["methods"]["A"]
    assert updated["auc"] == {"value": pytest.approx(0.85), "abs_tol": 0.03}
    assert updated["mae"] == {"value": pytest.approx(0.11), "direction": "lower", "rel_tol": 0.2}
    assert invoke("regress", results, "--baseline", baseline).exit_code == 0


def test_regress_update_keeps_the_files_opening_comments(tmp_path):
    """How a baseline's tolerances were derived is written in its opening comments; an update
    rewrites the values and keeps that derivation (with one stamp of the latest update)."""
    results = _results(tmp_path)
    derivation = "# tolerances: 3 sd over five seeds (docs/regression.md)\n# seeds 0-4\n"
    baseline = _baseline(tmp_path, derivation + "\n[methods.A.auc]\nvalue = 0.1\nabs_tol = 0.03\n")
    for _ in range(2):
        assert invoke("regress", results, "--baseline", baseline, "--update").exit_code == 0
    text = baseline.read_text()
    assert text.startswith(derivation)
    assert text.count("Values written by 'cdsf-bench regress --update'") == 1


def test_ci_tolerances_cover_every_seed_and_floor_a_ceiling():
    """The CI baseline's derivation: every seed of the spread passes its own baseline, and a
    metric at its ceiling on every seed still gets the metric's floor, not a zero tolerance."""
    tolerances = load_benchmark("ci_tolerances")
    table = pd.DataFrame(
        {
            "seed": range(5),
            "method": "CDSF",
            "status": "done",
            "auc": [0.97, 0.99, 0.95, 0.98, 0.96],
            "bacc": 1.0,
            "ssim": [0.80, 0.78, 0.81, 0.79, 0.77],
            "psnr": [20.0, 20.1, 20.2, 20.3, 20.4],
            "mae": 0.08,
        }
    )
    baseline = tomllib.loads(tolerances.baseline_text(table, "spread.csv"))["methods"]["CDSF"]
    for metric in ("auc", "bacc", "ssim", "psnr", "mae"):
        spec = baseline[metric]
        higher = metric != "mae"
        for value in table[metric]:
            loss = (spec["value"] - value) if higher else (value - spec["value"])
            assert loss <= spec["abs_tol"], (metric, value, spec)
    assert baseline["bacc"]["abs_tol"] == tolerances.FLOORS["bacc"]  # sd 0: the floor
    assert baseline["mae"]["abs_tol"] == tolerances.FLOORS["mae"]
    assert baseline["auc"]["abs_tol"] >= 3 * table["auc"].std(ddof=1)


def test_regress_on_a_run_folder_and_a_suite(suite_run, tmp_path):
    results = pd.read_csv(suite_run / "results.csv")
    run = results.iloc[0]
    key = f"{run['synth']}+{run['diag']}+{run['coupling']}"
    baseline = _baseline(tmp_path, f'[methods."{key}".auc]\nvalue = 0.0\nabs_tol = 0.0\n')
    assert invoke("regress", suite_run / run["run_folder"], "--baseline", baseline, "--update").exit_code == 0
    assert invoke("regress", suite_run / run["run_folder"], "--baseline", baseline).exit_code == 0
    suite_baseline = _baseline(tmp_path, f'[methods."{run["method"]}".bacc]\nabs_tol = 0.0\n')
    assert invoke("regress", suite_run, "--baseline", suite_baseline, "--update").exit_code == 0
    assert invoke("regress", suite_run, "--baseline", suite_baseline).exit_code == 0


def test_report_header_names_every_source_commit_of_the_runs(tmp_path):
    import pandas as pd

    from cdsf_bench.bench.header import _commit_line

    envs = {
        "a": {"git_commit": "c1"},
        "b": {"git_commit": "c1"},
        "c": {"git_commit": "c2", "git_uncommitted_changes": True},
    }
    for name, env in envs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "environment.json").write_text(json.dumps(env))
    done = pd.DataFrame({"run_folder": ["a", "b"]})
    assert _commit_line(tmp_path, done) == "Commit: c1"
    done = pd.DataFrame({"run_folder": ["a", "b", "c"]})
    assert _commit_line(tmp_path, done) == "Commits: c1 (2 runs); c2 with uncommitted changes (1 run)"


# -- scenarios and checks (issue #17) ------------------------------------------------------

CHECKED_SUITE = """
name = "checked"
task = "ad_cn"
seeds = [0, 1, 2]

[scenarios.easy]
"data.phantom.scenario" = "predictable"

[scenarios.hard]
"data.phantom.scenario" = "independent"
"data.phantom.severity_sd" = 0.5

[[methods]]
name = "M"
synth = "ism"
diag = "mdm"
coupling = "joint"

[[methods]]
name = "R"
synth = "none"
diag = "mdm"
coupling = "single"

[[checks]]
name = "M beats R when easy"
scenario = "easy"
kind = "beats"
method = "M"
reference = "R"
metric = "auc"
why = "constructed: M separates the classes, R does not"

[[checks]]
scenario = "hard"
kind = "not_beats"
method = "M"
reference = "R"
metric = "auc"
margin = 0.05

[[checks]]
scenario = "easy"
kind = "metric_above"
method = "M"
metric = "pet_specific_r"
bound = 0.3

[[checks]]
scenario = "hard"
kind = "metric_abs_below"
method = "M"
metric = "pet_specific_r"
margin = 0.1

[[checks]]
scenario = "hard"
kind = "metric_below"
method = "R"
metric = "roi_mae"
bound = 0.05
"""


def _checked_suite(tmp_path: Path, text: str = CHECKED_SUITE):
    path = tmp_path / "checked.toml"
    path.write_text(text)
    return load_suite(path)


def test_scenarios_expand_runs_into_their_own_folders_and_settings(tmp_path):
    """Each scenario runs every method and seed once, with its settings after [settings]."""
    suite = _checked_suite(tmp_path)
    runs = suite.runs()
    assert len(runs) == 2 * 3 * 2
    assert runs[0].folder.as_posix() == "easy/ad_cn/seed-0/m"
    assert runs[-1].folder.as_posix() == "hard/ad_cn/seed-2/r"
    config = runs[-1].resolve(default_registry())
    assert config.raw["data"]["phantom"] == {"scenario": "independent", "severity_sd": 0.5}
    assert [c.kind for c in suite.checks] == [
        "beats",
        "not_beats",
        "metric_above",
        "metric_abs_below",
        "metric_below",
    ]
    assert suite.checks[1].name == "hard: M not_beats auc" and suite.checks[1].task == "ad_cn"
    # the hash covers scenarios and checks, and a suite without them keeps its old hash
    from cdsf_bench.bench.suite import suite_from_canonical

    assert suite_from_canonical(suite.canonical()).hash == suite.hash
    assert "scenarios" not in load_suite_text(tmp_path, tiny_suite_text()).canonical()


def load_suite_text(tmp_path: Path, text: str):
    path = tmp_path / "plain.toml"
    path.write_text(text)
    return load_suite(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('kind = "beats"', 'kind = "wins"'), "field 'kind' must be one of"),
        (
            ('reference = "R"\nmetric = "auc"\nwhy', 'reference = "X"\nmetric = "auc"\nwhy'),
            "field 'reference'",
        ),
        (('metric = "pet_specific_r"\nbound = 0.3', 'metric = "pet_r"\nbound = 0.3'), "field 'metric'"),
        (('metric = "pet_specific_r"\nbound = 0.3', 'metric = "pet_specific_r"\nbound = "big"'), "'bound'"),
        (('scenario = "easy"\nkind = "beats"', 'scenario = "medium"\nkind = "beats"'), "field 'scenario'"),
        (('why = "constructed', 'because = "constructed'), "unknown field"),
        (('metric = "auc"\nwhy', 'metric = "mae"\nwhy'), "compares auc or bacc"),
        (
            ("margin = 0.05\n", ""),
            r"entry 2: a 'not_beats' check is an equivalence test and needs field 'margin'",
        ),
        (("margin = 0.1\n", "bound = 0.1\n"), "entry 4: a 'metric_abs_below' check has no 'bound'"),
        (("margin = 0.05\n", "margin = -0.05\n"), "needs field 'margin'"),
        (("bound = 0.3", "bound = 0.3\nmargin = 0.1"), "check has no 'margin'"),
        (("[scenarios.easy]", "[scenarios.'a b']"), "scenario name"),
        (('"data.phantom.severity_sd"', '"seed"'), "suite controls"),
    ],
)
def test_check_and_scenario_errors_name_the_field(tmp_path, change, message):
    old, new = change
    assert old in CHECKED_SUITE
    with pytest.raises(InputError, match=message):
        _checked_suite(tmp_path, CHECKED_SUITE.replace(old, new, 1))


def _constructed_results(tmp_path: Path):
    """A suite folder with made-up runs: under 'easy' M ranks the test subjects perfectly and
    R by chance; under 'hard' both by chance; pet_specific_r as each check expects."""
    from cdsf_bench.bench.runner import claim_folder, write_csv
    from cdsf_bench.bench.table import result_row

    suite = _checked_suite(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    claim_folder(suite, out)
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 20)
    rows = []
    for spec in suite.runs():
        good = spec.scenario == "easy" and spec.method.name == "M"
        probability = labels * 0.5 + 0.25 if good else rng.random(len(labels))
        predictions = pd.DataFrame(
            {
                "participant_id": [f"sub-{i:04d}" for i in range(len(labels))],
                "split": "test",
                "diagnosis": np.where(labels == 1, "AD", "CN"),
                "label": labels,
                "probability": probability,
                "prediction": (probability >= 0.5).astype(int),
            }
        )
        (out / spec.folder).mkdir(parents=True)
        predictions.to_csv(out / spec.folder / "predictions.csv", index=False)
        row = result_row(spec, out, "missing")
        row.update(status="done", auc=roc_auc_score(labels, probability), bacc=0.5, n_test=len(labels))
        row.update(n_train=80, n_val=20)  # a recorded design: independent replicates
        if spec.method.name == "M":
            row.update(ssim=0.8, psnr=20.0, mae=0.05, roi_mae=0.03, roi_r=0.5)
            row["pet_specific_r"] = 0.6 if spec.scenario == "easy" else 0.02 * (spec.seed - 1)
            row["pet_specific_r_real"] = 0.7
        else:
            row["roi_mae"] = 0.08  # constructed so that the last check fails
        rows.append(row)
    write_csv(out / "results.csv", results_frame(rows))
    return suite, out


def test_checks_evaluate_on_constructed_results(tmp_path):
    from cdsf_bench.bench.checks import evaluate_checks
    from cdsf_bench.bench.table import load_results

    suite, out = _constructed_results(tmp_path)
    designed = {("easy", "ad_cn"): 0.0, ("hard", "ad_cn"): 0.0}
    outcomes = evaluate_checks(out, load_results(out), suite.checks, designed)
    # three replicates of chance-level AUCs cannot see a margin of 0.05: not evaluable, not passed
    assert [o.status for o in outcomes] == ["pass", "not evaluable", "pass", "pass", "fail"]
    assert "ΔAUC" in outcomes[0].observed and "0.600" in outcomes[2].observed
    assert "exceeds the margin 0.05" in outcomes[1].detail and "TOST p" in outcomes[3].observed
    # the same checks against the other scenario's results fail: they can fail
    swapped = [
        type(c)(**{**c.canonical(), "scenario": "hard" if c.scenario == "easy" else "easy"})
        for c in suite.checks
    ]
    statuses = [o.status for o in evaluate_checks(out, load_results(out), tuple(swapped), designed)]
    assert statuses[0] == "fail" and statuses[2] == "fail" and statuses[3] == "fail"
    # a check whose method never finished is not evaluated, not passed
    results = load_results(out)
    results.loc[results["method"] == "M", "status"] = "failed"
    assert {o.status for o in evaluate_checks(out, results, suite.checks[:4], designed)} == {"not evaluated"}
    # without a recorded design the interval checks are not evaluated; the threshold ones are
    plain = evaluate_checks(out, load_results(out), suite.checks, {})
    assert [o.status for o in plain] == ["not evaluated", "not evaluated", "pass", "not evaluated", "fail"]
    assert "no design" in plain[0].detail


def test_report_prints_the_checks_table(tmp_path):
    from cdsf_bench.bench.report import write_report

    _, out = _constructed_results(tmp_path)
    write_report(out, formats=("md",), reference="R")
    text = (out / "report.md").read_text()
    assert "Expected findings (written before the suite ran)" in text
    assert "3 passed, 1 failed, 1 not evaluable at this power, 0 not evaluated, of 5" in text
    assert "Scenario easy, task ad_cn" in text and "Scenario hard, task ad_cn" in text
    assert "Disease-specific synthesis" in text
    assert "R's advantage (one-sided 95% each)" in text and "MDD (80% power) [range]" in text
    checks = pd.read_csv(out / "checks.csv")
    assert list(checks["status"]) == ["pass", "not evaluable", "pass", "pass", "fail"]
    assert checks["margin"].tolist()[1] == 0.05


def test_the_validation_suite_parses_and_checks_every_scenario():
    """benchmarks/suites/validation.toml: every run resolves and each scenario has checks."""
    from cdsf_bench.bench.suite_file import check_components

    suite = load_suite(Path(__file__).parent.parent / "benchmarks" / "suites" / "validation.toml")
    registry = default_registry()
    check_components(suite, registry)
    scenarios = [name for name, _ in suite.scenarios]
    assert scenarios == ["independent", "default", "predictable"]
    assert {c.scenario for c in suite.checks} == set(scenarios)
    configs = {spec.scenario: spec.resolve(registry) for spec in suite.runs()}
    assert configs["independent"].raw["data"]["phantom"] == {"scenario": "independent"}
