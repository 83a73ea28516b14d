"""A held-out validation cohort on the phantom (``evaluate.phantom_val_subjects``).

Selection (the epoch and the threshold) must read the fresh validation cohort and nothing
else: its subjects are other people than the training subjects, the test split and the
held-out test cohort (ids and seeds), the split's training and test subjects stay exactly
the split's, and the recorded validation AUC is the AUC of the validation cohort itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner, Result
from sklearn.metrics import roc_auc_score

from cdsf_bench import config as cfg
from cdsf_bench.cli import main
from cdsf_bench.errors import InputError
from cdsf_bench.metrics import youden_threshold
from cdsf_bench.predict.apply import HELD_OUT_SEED_OFFSET, VALIDATION_SEED_OFFSET, prepare, validation_config
from cdsf_bench.predict.trained import load_trained
from cdsf_bench.protocol import VALIDATION_ID_PREFIX
from cdsf_bench.ranges import MAX_SEED
from cdsf_bench.registry import default_registry

TINY = ["--preset", "tiny", "--set", "data.subjects=24", "--epochs", "1", "--set", "evaluate.bootstrap=10"]
METHOD = ["--synth", "none", "--diag", "mdm"]
VALIDATION = 30
TEST = 20


def invoke(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def splits_of(run: Path) -> dict[str, list[str]]:
    table = pd.read_csv(run / "splits.csv", dtype={"participant_id": str})
    return {
        name: table.loc[table["split"] == name, "participant_id"].tolist()
        for name in ("train", "val", "test")
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same tiny run on the split's validation subjects and on a held-out validation cohort
    (with a held-out test cohort too, so that all three cohorts meet)."""
    root = tmp_path_factory.mktemp("validation-cohort")
    plain, held = root / "plain", root / "held"
    result = invoke("run", *METHOD, *TINY, "--out", plain)
    assert result.exit_code == 0, result.output
    result = invoke(
        "run",
        *METHOD,
        *TINY,
        "--set",
        f"evaluate.phantom_val_subjects={VALIDATION}",
        "--set",
        f"evaluate.phantom_test_subjects={TEST}",
        "--out",
        held,
    )
    assert result.exit_code == 0, result.output
    return plain, held


def test_the_validation_cohort_is_other_people_than_training_and_every_test(runs: tuple[Path, Path]) -> None:
    plain, held = runs
    before, after = splits_of(plain), splits_of(held)
    # the split's training and test subjects are untouched; its validation subjects are unused
    assert after["train"] == before["train"] and after["test"] == before["test"]
    assert not set(before["val"]) & set(after["train"] + after["val"] + after["test"])
    # every validating subject comes from the held-out cohort, none is a training or test id
    assert all(p.startswith(VALIDATION_ID_PREFIX) for p in after["val"])
    assert not set(after["val"]) & set(after["train"] + after["test"])
    predictions = pd.read_csv(held / "predictions.csv", dtype={"participant_id": str})
    assert (predictions["split"] == "held_out").all()
    assert not set(after["val"]) & set(predictions["participant_id"])
    # three cohorts, three seeds
    data = json.loads((held / "data.json").read_text())
    metrics = json.loads((held / "metrics.json").read_text())
    record = data["validation_cohort"]
    assert record == {
        "subjects": VALIDATION,
        "phantom_seed": VALIDATION_SEED_OFFSET,
        "validating": len(after["val"]),
        "split_val_unused": len(before["val"]),
    }
    seeds = {data["phantom_seed"], metrics["test_set"]["phantom_seed"], record["phantom_seed"]}
    assert seeds == {0, HELD_OUT_SEED_OFFSET, VALIDATION_SEED_OFFSET}
    # no training seed a user may give, and no held-out test seed, reaches a validation seed
    assert MAX_SEED < VALIDATION_SEED_OFFSET and HELD_OUT_SEED_OFFSET + MAX_SEED < VALIDATION_SEED_OFFSET
    assert data["subjects"]["val"] == len(after["val"]) > len(before["val"])
    assert data["leak_check"]["passed"]


def test_training_is_the_splits_and_selection_reads_only_the_validation_cohort(
    runs: tuple[Path, Path],
) -> None:
    plain, held = runs
    history = {run: pd.read_csv(run / "history.csv") for run in runs}
    # the same subjects trained in the same batches from the same weights: the same loss
    assert history[held]["train_cls"].tolist() == history[plain]["train_cls"].tolist()
    # the one epoch's validation AUC and the threshold are those of the validation cohort,
    # predicted again from the checkpoint through predict's path, on the cohort the run drew
    model = load_trained(held, default_registry())
    application = prepare(model, default_registry(), validation_config(model.config), torch.device("cpu"))
    evaluation = application.predict()
    again = application.table(evaluation, "val")
    assert [VALIDATION_ID_PREFIX + p for p in again["participant_id"]] == splits_of(held)["val"]
    labels, scores = again["label"].to_numpy(), again["probability"].to_numpy()
    assert history[held]["val_auc"].iloc[0] == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    selection = json.loads((held / "metrics.json").read_text())["selection"]
    assert selection["threshold"] == pytest.approx(youden_threshold(labels, scores), rel=1e-5)
    assert history[held]["val_auc"].iloc[0] != history[plain]["val_auc"].iloc[0]


def test_a_run_validated_on_a_held_out_cohort_applies_to_a_cohort_of_files(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    _, held = runs
    files = tmp_path / "files"
    assert invoke("data", "phantom", "--out", files, "--subjects", 8, "--resolution", 8).exit_code == 0
    result = invoke("predict", held, "--data", files, "--out", tmp_path / "p")
    assert result.exit_code == 0, result.output


def test_a_validation_cohort_needs_the_phantom_and_both_classes(tmp_path: Path) -> None:
    registry = default_registry()
    with pytest.raises(InputError, match="evaluate.phantom_val_subjects draws a fresh validation cohort"):
        cfg.resolve(
            registry,
            None,
            ("evaluate.phantom_val_subjects=100",),
            flags={"data.spec": str(tmp_path / "x.csv")},
        )
    with pytest.raises(InputError, match=r"'evaluate.phantom_val_subjects' must be in \[0, "):
        cfg.resolve(registry, None, ("evaluate.phantom_val_subjects=-1",))
    result = invoke(
        "run", *METHOD, *TINY, "--set", "evaluate.phantom_val_subjects=1", "--out", tmp_path / "r"
    )
    assert result.exit_code == 2, result.output
    assert "validation needs both" in result.output and not (tmp_path / "r").exists()
