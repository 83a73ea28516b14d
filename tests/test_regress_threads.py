"""A baseline says at how many torch threads its runs trained, and ``regress`` compares only
runs at that count: on a CPU one and two threads give different metrics (each repeating bit
for bit), so a thread count other than the baseline's would fail or pass the check for a
reason that is no regression. Fake suite folders: a results.csv and each run's
environment.json, as ``bench`` writes them."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner, Result
from support import load_benchmark

from cdsf_bench.bench.regress import recorded_threads
from cdsf_bench.bench.table import COLUMNS, results_frame
from cdsf_bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
CI_BASELINE = ROOT / "benchmarks" / "baselines" / "ci.toml"

RUNS = {"ad_cn/seed-0/a": 0.8, "ad_cn/seed-1/a": 0.9}  # run folder -> its test AUC
ENTRY = "[methods.A.auc]\nvalue = 0.85\nabs_tol = 0.01\n"


def invoke(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def _suite(folder: Path, threads: dict[str, int | None]) -> Path:
    """A suite folder of method A's two runs, each run's environment.json recording its
    ``torch_threads`` (None: a record without the count)."""
    rows = []
    for seed, (run, auc) in enumerate(RUNS.items()):
        identity = {"suite": "s", "task": "ad_cn", "seed": seed, "method": "A", "status": "done"}
        rows.append({**dict.fromkeys(COLUMNS), **identity, "auc": auc, "run_folder": run})
        (folder / run).mkdir(parents=True)
        record = {"torch": "2"} | ({} if threads[run] is None else {"torch_threads": threads[run]})
        (folder / run / "environment.json").write_text(json.dumps(record))
    results_frame(rows).to_csv(folder / "results.csv", index=False)
    return folder


def _baseline(folder: Path, text: str) -> Path:
    path = folder / "baseline.toml"
    path.write_text(text)
    return path


def test_runs_at_the_baselines_thread_count_are_compared(tmp_path: Path) -> None:
    suite = _suite(tmp_path, dict.fromkeys(RUNS, 2))
    baseline = _baseline(tmp_path, "threads = 2\n" + ENTRY)
    for results in (suite, suite / "results.csv"):
        result = invoke("regress", results, "--baseline", baseline, "--json")
        assert result.exit_code == 0, result.output
        assert [c["verdict"] for c in json.loads(result.stdout)["checks"]] == ["ok"]
    # the count matches, so a regression fails as it would without the field
    worse = _baseline(tmp_path, "threads = 2\n[methods.A.auc]\nvalue = 0.95\nabs_tol = 0.01\n")
    assert invoke("regress", suite, "--baseline", worse).exit_code == 1


def test_runs_at_another_thread_count_are_refused_naming_both_counts(tmp_path: Path) -> None:
    suite = _suite(tmp_path, {"ad_cn/seed-0/a": 2, "ad_cn/seed-1/a": 1})
    baseline = _baseline(tmp_path, "threads = 2\n" + ENTRY)
    for extra in ((), ("--json",)):
        result = invoke("regress", suite, "--baseline", baseline, *extra)
        assert result.exit_code == 2, result.output
        words = " ".join(result.output.split())
        assert "1 thread(s) in ad_cn/seed-1/a" in words and "seed-0" not in words
        assert "threads = 2" in words and "--threads 2" in words and "CDSF_BENCH_THREADS=2" in words
        assert "Traceback" not in result.output


def test_a_baseline_without_a_thread_count_compares_runs_at_any_count(tmp_path: Path) -> None:
    suite = _suite(tmp_path, {"ad_cn/seed-0/a": 1, "ad_cn/seed-1/a": 4})
    result = invoke("regress", suite, "--baseline", _baseline(tmp_path, ENTRY))
    assert result.exit_code == 0, result.output


def test_a_run_without_a_recorded_count_is_not_counted(tmp_path: Path) -> None:
    suite = _suite(tmp_path, {"ad_cn/seed-0/a": 2, "ad_cn/seed-1/a": None})
    assert invoke("regress", suite, "--baseline", _baseline(tmp_path, "threads = 2\n" + ENTRY)).exit_code == 0
    assert invoke("regress", suite, "--baseline", _baseline(tmp_path, "threads = 1\n" + ENTRY)).exit_code == 2


def test_a_single_run_folder_is_checked_against_the_thread_count(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    method = {"synth": "none", "diag": "mdm", "coupling": "single"}
    (run / "metrics.json").write_text(json.dumps({"method": method, "diagnosis": {"auc": 0.85}}))
    (run / "environment.json").write_text(json.dumps({"torch_threads": 1}))
    entry = '[methods."none+mdm+single".auc]\nvalue = 0.85\n'
    assert invoke("regress", run, "--baseline", _baseline(tmp_path, "threads = 1\n" + entry)).exit_code == 0
    refused = invoke("regress", run, "--baseline", _baseline(tmp_path, "threads = 2\n" + entry))
    assert refused.exit_code == 2 and "1 thread(s) in run" in refused.output


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_update_records_the_runs_thread_count(tmp_path: Path, suffix: str) -> None:
    suite = _suite(tmp_path, dict.fromkeys(RUNS, 3))
    baseline = tmp_path / f"baseline{suffix}"
    spec = {"abs_tol": 0.01}
    if suffix == ".json":
        baseline.write_text(json.dumps({"threads": 1, "methods": {"A": {"auc": spec}}}))
    else:
        baseline.write_text("threads = 1\n[methods.A.auc]\nabs_tol = 0.01\n")
    assert invoke("regress", suite, "--baseline", baseline, "--update").exit_code == 0
    text = baseline.read_text()
    written = json.loads(text) if suffix == ".json" else tomllib.loads(text)
    assert written["threads"] == 3 and written["methods"]["A"]["auc"]["value"] == pytest.approx(0.85)
    assert invoke("regress", suite, "--baseline", baseline).exit_code == 0


def test_update_refuses_runs_at_several_thread_counts(tmp_path: Path) -> None:
    suite = _suite(tmp_path, {"ad_cn/seed-0/a": 1, "ad_cn/seed-1/a": 2})
    baseline = _baseline(tmp_path, ENTRY)
    result = invoke("regress", suite, "--baseline", baseline, "--update")
    assert result.exit_code == 2 and "several thread counts" in result.output
    assert baseline.read_text() == ENTRY


@pytest.mark.parametrize("value", ["0", '"two"', "true", "1.5"])
def test_a_bad_thread_count_is_refused_naming_the_field(tmp_path: Path, value: str) -> None:
    suite = _suite(tmp_path, dict.fromkeys(RUNS, 1))
    result = invoke("regress", suite, "--baseline", _baseline(tmp_path, f"threads = {value}\n" + ENTRY))
    assert result.exit_code == 2 and "threads must be the positive whole number" in result.output


def test_the_ci_baseline_claims_no_thread_count_its_runs_did_not_train_with() -> None:
    """The runs behind the committed CI baseline (named in its opening comment) trained at one
    thread count; a ``threads`` field, where the baseline has one, is that count, and .ci/run
    then runs the suite at it. Without the field .ci/run sets no count, and the baseline's
    header says why."""
    text = CI_BASELINE.read_text()
    (source,) = re.findall(r"^# Derived by benchmarks/ci_tolerances.py from (\S+) on ", text, re.M)
    results = pd.read_csv(ROOT / source)
    recorded = recorded_threads((ROOT / source).parent, list(results["run_folder"]))
    assert len(recorded) == len(results) and len(set(recorded.values())) == 1
    ci_script = (ROOT / ".ci" / "run").read_text()
    baseline = tomllib.loads(text)
    if "threads" in baseline:
        assert set(recorded.values()) == {baseline["threads"]}
        assert "--threads" in ci_script
    else:
        assert "--threads" not in ci_script and "No 'threads' field" in text


def test_the_ci_derivation_writes_the_thread_count_it_is_given() -> None:
    tolerances = load_benchmark("ci_tolerances")
    table = pd.DataFrame({"seed": range(3), "method": "A", "status": "done", "auc": [0.9, 0.8, 0.85]})
    table = table.assign(bacc=0.7, ssim=None, psnr=None, mae=None)
    assert tomllib.loads(tolerances.baseline_text(table, "spread.csv", 2))["threads"] == 2
    assert "threads" not in tomllib.loads(tolerances.baseline_text(table, "spread.csv"))
