"""Tuning that trains: the test split untouched, the best config reproduced, a killed trial
resumed, and a tuned suite (nested in its replicate, equal budgets, reported).

Tiny phantom (8 mm, 24 subjects), one epoch, two trials, except where a kill needs epochs.
Every batch a trial draws and every split it evaluates is recorded by a spy on the trial's
own pipeline, so "the test split is never predicted" is checked, not assumed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from cdsf_bench import protocol
from cdsf_bench.cli import main
from cdsf_bench.tune import trial as tune_trial

TINY = ["--preset", "tiny", "--set", "data.subjects=24", "--set", "evaluate.bootstrap=10"]


class Spy:
    """Records the rows of every batch of the trials' pipelines, their test rows and evaluated splits."""

    def __init__(self) -> None:
        self.rows: set[int] = set()
        self.test_rows: set[int] = set()
        self.val_rows: set[int] = set()
        self.splits: list[str] = []
        self.trials = 0

    @contextlib.contextmanager
    def watching(self):
        real_prepare, real_evaluate = tune_trial.prepare, tune_trial.evaluate

        def prepare(*args, **kwargs):
            prepared = real_prepare(*args, **kwargs)
            pipeline = prepared.assembly.pipeline
            self.trials += 1
            self.test_rows |= set(pipeline.rows("test").tolist())
            self.val_rows |= set(pipeline.rows("val").tolist())
            real_batch = pipeline._batch

            def batch(rows, *rest, **options):
                self.rows |= set(rows.tolist())
                return real_batch(rows, *rest, **options)

            pipeline._batch = batch  # this pipeline only: what the trial trains and validates on
            return prepared

        def evaluate(coupling, pipeline, settings, **options):
            self.splits.append(settings.split)
            return real_evaluate(coupling, pipeline, settings, **options)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(tune_trial, "prepare", prepare)
            patch.setattr(tune_trial, "evaluate", evaluate)
            yield self

    def assert_never_touched_test(self, trials: int) -> None:
        assert self.trials == trials and self.test_rows and self.val_rows <= self.rows
        assert not self.rows & self.test_rows, "a tuning batch held a test subject"
        assert set(self.splits) == {"val"}


def history(path: Path) -> pd.DataFrame:
    return pd.read_csv(path / "history.csv").drop(columns=["seconds"])


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Spy]:
    out = tmp_path_factory.mktemp("tune") / "study"
    with Spy().watching() as spy:
        result = CliRunner().invoke(
            main,
            [
                "tune",
                "--synth",
                "ism",
                "--diag",
                "mdm",
                "--joint",
                *TINY,
                "--epochs",
                "1",
                "--trials",
                "2",
                "--out",
                str(out),
            ],
        )
    assert result.exit_code == 0, result.output
    return out, spy


def test_tuning_never_predicts_or_scores_the_test_split(tuned):
    out, spy = tuned
    spy.assert_never_touched_test(trials=2)
    for folder in (out / "trials").iterdir():
        assert not (folder / "metrics.json").exists() and not (folder / "predictions.csv").exists()
        assert json.loads((folder / "validation.json").read_text())["metric"] == "auc"
        assert not (folder / "checkpoints").exists(), "a finished trial's checkpoint is deleted"


def test_the_study_writes_its_tables_figure_and_summary(tuned):
    out, _ = tuned
    table = pd.read_csv(out / "trials.csv")
    assert list(table["trial"]) == [0, 1] and set(table["state"]) == {"complete"}
    assert table["note"][0] == "the method's defaults"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"]["finished"] == 2 and summary["best"]["value"] == table["auc"].max()
    assert (out / "figures" / "history.png").stat().st_size > 1000
    assert (out / "study.db").exists()


def test_run_config_best_toml_repeats_the_best_trial(tuned, tmp_path):
    out, _ = tuned
    summary = json.loads((out / "summary.json").read_text())
    best = out / "trials" / f"{summary['best']['trial']:04d}"
    result = CliRunner().invoke(
        main, ["run", "--config", str(out / "best.toml"), "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "config.toml").read_text() == (best / "config.toml").read_text()
    pd.testing.assert_frame_equal(history(tmp_path / "run"), history(best))  # trained exactly as the trial
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["selection"]["value"] == pytest.approx(summary["best"]["value"])


def test_a_killed_trial_is_failed_and_its_retry_continues_its_checkpoint(tmp_path):
    out = tmp_path / "study"
    args = [
        "tune",
        "--synth",
        "none",
        "--diag",
        "mdm",
        *TINY,
        "--epochs",
        "2",
        "--trials",
        "1",
        "--out",
        str(out),
    ]
    worker = subprocess.Popen([sys.executable, "-m", "cdsf_bench", *args], env=os.environ.copy())
    checkpoint = out / "trials" / "0000" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 600
    while not checkpoint.exists() and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.kill()  # SIGKILL mid-trial: no handler runs, the trial stays "running" in the storage
    worker.wait()
    assert checkpoint.exists(), "the worker ended before its first epoch was checkpointed"
    assert len(protocol.earlier_history(out / "trials" / "0000")) == 1  # killed after one of two epochs

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "trials.csv")
    assert list(table["state"]) == ["fail", "complete"]
    assert table["note"][0] == "killed; re-run as trial 1"
    assert table["note"][1] == "resumed trial 0's checkpoint"
    # the retry continued the killed epochs: the same history as one uninterrupted run of that config
    trial = out / "trials" / "0000"
    ran = CliRunner().invoke(
        main, ["run", "--config", str(trial / "config.toml"), "--out", str(tmp_path / "run")]
    )
    assert ran.exit_code == 0, ran.output
    pd.testing.assert_frame_equal(history(trial), history(tmp_path / "run"))


TUNED_SUITE = """
name = "tuned"
task = "ad_cn"
preset = "tiny"
seeds = [0]

[settings]
"data.subjects" = 24
"train.epochs" = 1
"evaluate.bootstrap" = 10

[tune]
trials = 2

[[methods]]
name = "CDSF"
synth = "ism"
diag = "mdm"
coupling = "joint"

[[methods]]
name = "MRI only"
synth = "none"
diag = "mdm"
coupling = "single"
settings = { "coupling.single.weight_decay" = 0.001 }
"""


def test_a_tuned_suite_tunes_every_method_alike_inside_the_replicate_then_tests(tmp_path):
    suite = tmp_path / "tuned.toml"
    suite.write_text(TUNED_SUITE)
    out = tmp_path / "suite"
    with Spy().watching() as spy:
        result = CliRunner().invoke(main, ["bench", str(suite), "--out", str(out)])
    assert result.exit_code == 0, result.output
    spy.assert_never_touched_test(trials=4)  # two studies of two trials; the final runs are not trials
    results = pd.read_csv(out / "results.csv")
    assert list(results["status"]) == ["done", "done"]
    for method, run in zip(results["method"], results["run_folder"], strict=True):
        study = out / "tuning" / run
        summary = json.loads((study / "summary.json").read_text())
        assert summary["budget"] == 2 and summary["trials"]["finished"] == 2, method  # equal budgets
        best_config = (study / "best.toml").read_text()
        assert best_config.endswith((out / run / "config.toml").read_text()), (
            "the run is the best trial's config"
        )
    mri_only = json.loads((out / "tuning" / results["run_folder"][1] / "summary.json").read_text())
    assert not any(key.endswith("weight_decay") for key in mri_only["best"]["settings"]), (
        "the method's own setting is fixed"
    )
    report = (out / "report.md").read_text()
    assert "## Tuning" in report and "given 2 trials in every replicate" in report
    assert "train.learning_rate = " in report

    exported = tmp_path / "exported"
    assert CliRunner().invoke(main, ["export", str(out), str(exported)]).exit_code == 0
    assert (exported / "tuning" / results["run_folder"][0] / "summary.json").exists()
    assert CliRunner().invoke(main, ["report", str(exported)]).exit_code == 0
    assert (exported / "report.md").read_text() == report  # a committed tuned suite re-renders
