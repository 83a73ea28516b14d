"""The default command end to end on a tiny phantom: the run folder, its schema, determinism."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from cdsf_bench.cli import main
from cdsf_bench.metrics import DIAGNOSIS_KEYS, DISEASE_SYNTHESIS_KEYS, SYNTHESIS_KEYS


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "joint"
    args = [
        "run",
        "--synth",
        "ism",
        "--diag",
        "mdm",
        "--joint",
        "--preset",
        "tiny",
        "--set",
        "data.subjects=24",
        "--epochs",
        "2",
        "--set",
        "evaluate.bootstrap=20",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    # what each stream carried, for test_results_go_to_stdout_and_progress_to_stderr
    (out.parent / "stdout.txt").write_text(result.stdout)
    (out.parent / "stderr.txt").write_text(result.stderr)
    return out


def test_run_folder_has_every_file(joint_run: Path):
    for name in (
        "config.toml",
        "environment.json",
        "data.json",
        "splits.csv",
        "metrics.json",
        "predictions.csv",
        "history.csv",
        "log.txt",
        "checkpoints/last.pt",
        "figures/roc.png",
        "figures/learning_curves.png",
        "figures/montage.png",
    ):
        assert (joint_run / name).is_file(), name
    assert list((joint_run / "synth").glob("*_desc-synthetic_pet.nii.gz"))
    assert not list(joint_run.rglob(".*.tmp")), "no temporary file may be left behind"


def test_metrics_schema(joint_run: Path):
    metrics = json.loads((joint_run / "metrics.json").read_text())
    assert set(DIAGNOSIS_KEYS) <= set(metrics["diagnosis"])
    assert {*SYNTHESIS_KEYS, *DISEASE_SYNTHESIS_KEYS} == set(metrics["synthesis"])  # the phantom has latents
    assert set(metrics["selection"]) == {"best_epoch", "metric", "value", "threshold"}
    assert metrics["selection"]["metric"] == "auc"
    assert set(metrics["n"]) == {"train", "val", "test"}
    assert metrics["task"] == "ad_cn"
    assert metrics["method"] == {"synth": "ism", "diag": "mdm", "coupling": "joint"}
    assert 0 <= metrics["diagnosis"]["auc"] <= 1


def test_predictions_cover_the_test_split_once(joint_run: Path):
    predictions = pd.read_csv(joint_run / "predictions.csv")
    splits = pd.read_csv(joint_run / "splits.csv")
    test_ids = set(splits.loc[splits["split"] == "test", "participant_id"])
    assert set(predictions["participant_id"]) == test_ids
    assert predictions["participant_id"].is_unique
    assert set(predictions["pet_source"]) <= {"real", "synthetic"}
    assert {"label", "probability", "prediction", "diagnosis", "split"} <= set(predictions.columns)
    data = json.loads((joint_run / "data.json").read_text())
    assert data["leak_check"]["passed"] is True


def test_history_has_losses_and_validation(joint_run: Path):
    history = pd.read_csv(joint_run / "history.csv")
    assert list(history["epoch"]) == [0, 1]
    assert {"train_G", "train_D", "train_voxel", "val_auc"} <= set(history.columns)
    # validation scores synthesis against acquired PET only, never the phantom's withheld PET
    with_pet = json.loads((joint_run / "data.json").read_text())["with_pet"]["val"]
    assert ("val_mae" in history.columns) == (with_pet > 0)


def test_synthetic_pet_has_the_cohort_affine(joint_run: Path):
    data = json.loads((joint_run / "data.json").read_text())
    image = nib.load(next((joint_run / "synth").glob("*.nii.gz")))
    assert np.allclose(image.affine, np.array(data["affine"]))
    assert image.shape == tuple(data["shape"])
    assert float(image.get_fdata().min()) >= 0 and float(image.get_fdata().max()) <= 2.5 + 1e-4


def test_synthetic_pet_is_marked_mni(joint_run: Path):
    image = nib.load(next((joint_run / "synth").glob("*.nii.gz")))
    assert int(image.header["sform_code"]) == 4 and int(image.header["qform_code"]) == 4
    assert np.allclose(image.get_qform(), image.affine)


def test_results_go_to_stdout_and_progress_to_stderr(joint_run: Path):
    stdout = (joint_run.parent / "stdout.txt").read_text()
    stderr = (joint_run.parent / "stderr.txt").read_text()
    assert "test metrics" in stdout and "AUC" in stdout and f"run folder: {joint_run}" in stdout
    assert "test metrics" not in stderr and "run folder:" not in stderr
    assert "data: phantom" in stderr


def test_data_json_and_log_say_whether_the_cache_served(joint_run: Path):
    data = json.loads((joint_run / "data.json").read_text())
    assert isinstance(data["cache_hit"], bool) and Path(data["cache_entry"]).is_dir()
    said = "read from the cache" if data["cache_hit"] else "preprocessed and cached"
    assert said in (joint_run / "log.txt").read_text()


def test_config_repeats_the_run_exactly(joint_run: Path, tmp_path: Path):
    """config.toml alone reproduces the run: identical metrics.json on the CPU."""
    again = tmp_path / "again"
    result = CliRunner().invoke(
        main, ["run", "--config", str(joint_run / "config.toml"), "--out", str(again)]
    )
    assert result.exit_code == 0, result.output
    assert (again / "metrics.json").read_text() == (joint_run / "metrics.json").read_text()
    assert (again / "config.toml").read_text() == (joint_run / "config.toml").read_text()


def test_existing_folder_of_the_same_config_points_to_resume(joint_run: Path):
    result = CliRunner().invoke(
        main, ["run", "--config", str(joint_run / "config.toml"), "--out", str(joint_run)]
    )
    assert result.exit_code == 2
    assert "already holds a finished run" in result.output


def _run_processes(nproc: int, out: Path) -> subprocess.CompletedProcess:
    args = [
        "run",
        "--synth",
        "none",
        "--diag",
        "mdm",
        "--preset",
        "tiny",
        "--set",
        "data.subjects=24",
        "--epochs",
        "2",
        "--set",
        "evaluate.bootstrap=10",
        "--set",
        "diag.mdm.norm=group",
        "--set",
        "precision.mixed=false",
        "--set",
        "augment.enabled=false",
        "--out",
        str(out),
        "--nproc",
        str(nproc),
    ]
    return subprocess.run([sys.executable, "-m", "cdsf_bench", *args], capture_output=True, text=True)


def test_two_gloo_processes_match_one_process(tmp_path: Path):
    """torchrun with 2 CPU processes (gloo, a free port picked by torchrun's --standalone)
    gives the 1-process metrics; probabilities agree within 1e-3 (float summation order
    and per-process batch shares differ, nothing else)."""
    one, two = tmp_path / "one", tmp_path / "two"
    for nproc, out in ((1, one), (2, two)):
        done = _run_processes(nproc, out)
        assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((two / "environment.json").read_text())["processes"] == 2
    first = json.loads((one / "metrics.json").read_text())
    second = json.loads((two / "metrics.json").read_text())
    assert first["n"] == second["n"]
    assert first["diagnosis"]["auc"] == pytest.approx(second["diagnosis"]["auc"], abs=1e-6)
    # the operating point is a validation probability, so it moves with them (within 1e-3);
    # threshold-dependent metrics (acc, bacc) can then flip on a tiny validation split
    assert first["selection"]["threshold"] == pytest.approx(second["selection"]["threshold"], abs=1e-3)
    p1 = pd.read_csv(one / "predictions.csv")
    p2 = pd.read_csv(two / "predictions.csv")
    assert list(p1["participant_id"]) == list(p2["participant_id"])  # every subject once, none twice
    assert np.allclose(p1["probability"], p2["probability"], atol=1e-3)


@pytest.mark.parametrize("coupling, synth", [("joint", "ism"), ("oracle", "none")])
@pytest.mark.parametrize("compile_modules", [False, True])
def test_assemble_builds_what_a_run_trains(coupling: str, synth: str, compile_modules: bool):
    from cdsf_bench import config as cfg
    from cdsf_bench.assemble import assemble
    from cdsf_bench.perf import synthetic_cohort
    from cdsf_bench.registry import default_registry

    registry = default_registry()
    flags = {"method.synth": synth, "method.coupling": coupling, "precision.compile": compile_modules}
    config = cfg.resolve(registry, None, [], flags)
    cohort, labels, splits = synthetic_cohort((8, 8, 8), 2, 0)
    assembly = assemble(config, registry, cohort, labels, splits, torch.device("cpu"))
    # only a method that trains on the withheld PET gets it (and pays for augmenting it)
    assert assembly.pipeline.hidden.pet_truth is (coupling == "oracle")
    modules = [m for stage in assembly.coupling.stages() for m in stage.modules.values()]
    assert modules
    # compiled in place (compilation itself happens at the first call, not tested here)
    assert all((m._compiled_call_impl is not None) is compile_modules for m in modules)
    assert (assembly.compiled, assembly.eager_because) == (compile_modules, None)


def test_a_machine_that_cannot_compile_runs_eager_and_says_why(monkeypatch, tmp_path: Path):
    from cdsf_bench import compiling

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no working C++ compiler\nlong compiler output")

    compiling.compile_blocker.cache_clear()
    monkeypatch.setattr(compiling.torch, "compile", broken)
    try:
        out = tmp_path / "eager"
        args = ["run", "--synth", "none", "--diag", "mdm", "--preset", "tiny", "--epochs", "1"]
        args += ["--set", "data.subjects=24", "--set", "evaluate.bootstrap=20"]
        args += ["--set", "precision.compile=true"]
        result = CliRunner().invoke(main, [*args, "--out", str(out)])
    finally:
        compiling.compile_blocker.cache_clear()
    assert result.exit_code == 0, result.output
    log = (out / "log.txt").read_text()
    assert "torch.compile cannot compile here (RuntimeError: no working C++ compiler)" in log
    assert json.loads((out / "environment.json").read_text())["torch_compile"] is False


def test_withheld_pet_scores_the_test_split_only():
    """Selection sees synthesis scored against acquired PET; the hidden PET only at the test."""
    from cdsf_bench.engine import _batch_records
    from cdsf_bench.interfaces import Batch, Prediction

    shape = (4, 4, 4)
    truth = torch.rand(3, 1, *shape)
    has_pet = torch.tensor([True, False, False])
    batch = Batch(
        mri=torch.rand(3, 1, *shape),
        pet=torch.where(has_pet.view(-1, 1, 1, 1, 1), truth, torch.zeros_like(truth)),
        has_pet=has_pet,
        label=torch.tensor([0, 1, 0]),
        index=torch.arange(3),
        pet_truth=truth,
    )
    prediction = Prediction(torch.tensor([0.2, 0.7, 0.4]), ["real", "synthetic", "synthetic"], truth * 0.9)
    mask = np.ones(shape, dtype=bool)
    selection = _batch_records(prediction, batch, mask, False, False, False, {})
    final = _batch_records(prediction, batch, mask, False, False, True, {})
    assert ["synth_mae" in r for r in selection] == [True, False, False]
    assert ["synth_mae" in r for r in final] == [True, True, True]
    assert selection[0]["synth_mae"] == pytest.approx(final[0]["synth_mae"])
