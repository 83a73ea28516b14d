"""Model selection on validation: the best epoch by the stage's metric, ties broken by Brier.

The validation scores are scripted (the engine's own validation is replaced), so the test
states which epoch must be kept whatever the tiny network happens to learn.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from cdsf_bench.cli import main
from cdsf_bench.engine import Trainer

#: per epoch: validation AUC and Brier score. Epochs 1-3 tie at AUC 1.0 (a saturated rank
#: metric); epoch 2 has the lowest Brier among them; epoch 4 has an even lower Brier score but a
#: lower AUC, so the selection metric still decides first.
SCRIPT = [(0.8, 0.30), (1.0, 0.25), (1.0, 0.12), (1.0, 0.20), (0.9, 0.10)]


@pytest.fixture()
def scripted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    calls = iter(SCRIPT)

    def validate(self, stage):
        auc, brier = next(calls)
        return {"val_auc": auc, "val_bacc": auc, "val_mcc": 0.0, "val_brier": brier}

    monkeypatch.setenv("CDSF_BENCH_QUIET", "1")
    monkeypatch.setattr(Trainer, "_validate", validate)
    out = tmp_path / "run"
    args = [
        "run",
        "--synth",
        "none",
        "--diag",
        "mdm",
        "--coupling",
        "single",
        "--preset",
        "tiny",
        "--set",
        "data.subjects=24",
    ]
    args += [
        "--set",
        "evaluate.bootstrap=10",
        "--set",
        "train.patience=10",
        "--epochs",
        "5",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


def test_a_tie_in_the_selection_metric_is_broken_by_the_lower_brier_score(scripted_run: Path):
    stage = json.loads((scripted_run / "metrics.json").read_text())["stages"][-1]
    assert (stage["best_epoch"], stage["value"]) == (2, 1.0)
    assert (stage["tie_break"], stage["tie_break_value"]) == ("brier", 0.12)
    history = pd.read_csv(scripted_run / "history.csv")
    # epoch 3 ties on AUC with a worse Brier score; epoch 4's Brier cannot outweigh its AUC
    assert history["selected"].tolist() == [True, True, True, False, False]
    assert history["val_brier"].tolist() == [brier for _, brier in SCRIPT]
