"""The CI regression has teeth: each sabotage of a method makes ``regress`` fail.

``.ci/run`` runs ``benchmarks/suites/ci.toml`` and checks it against
``benchmarks/baselines/ci.toml``; that the intact methods pass is what CI itself shows. Here
each sabotage a broken change could bring runs the affected method of that same suite (the
same cohort, preset, seed and settings) and the method's baseline entries must fail, on the
metric the sabotage breaks:

- labels shuffled for training (a label pipeline that no longer matches subjects): AUC;
- CDSF's generator without its voxel loss (``w_voxel = 0``): SSIM;
- every diagnosis term of CDSF off (its diagnoser never learns): AUC;
- the synthetic PET channel zeroed (a generator whose output never arrives): SSIM.

The zeroed channel trains one epoch instead of the suite's 20: a generator whose output is
multiplied by 0 synthesises an empty volume whatever its weights, so its synthesis metrics
are those of the empty volume against the same test subjects' PET at any epoch (SSIM, PSNR
and MAE of one epoch and of 20 are equal to the last digit), and the epochs it would train
change nothing the check reads.

A zeroed *real* PET channel (the oracle's) is not among them: on a cohort where MRI alone
reaches AUC 0.99, diagnosis cannot show what PET adds; docs/regression.md says so and
which suite guards it instead.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from click.testing import CliRunner

from cdsf_bench.bench import regress as rg
from cdsf_bench.cli import main
from cdsf_bench.data.labels import UNLABELLED
from cdsf_bench.data.pipeline import DevicePipeline
from cdsf_bench.data.splits import Splits

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "suites" / "ci.toml"
BASELINE = ROOT / "benchmarks" / "baselines" / "ci.toml"


def _shuffle_training_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    """One fixed permutation of the labelled training subjects' labels; validation and test keep
    theirs, and unlabelled training subjects (``data.synthesis_subjects``) stay unlabelled."""
    built = DevicePipeline.__init__

    def build(self: DevicePipeline, *args: object, **kwargs: object) -> None:
        built(self, *args, **kwargs)  # type: ignore[arg-type]
        train = torch.from_numpy(self.splits.train).to(self.labels.device)
        train = train[self.labels[train] != UNLABELLED]
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
        self.labels[train] = self.labels[train[order.to(train.device)]]

    monkeypatch.setattr(DevicePipeline, "__init__", build)


def _zero_synthetic_pet(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ISM generator's output multiplied by 0: the graph stays, the PET channel is empty."""
    from cdsf_plugins.ism import ISM

    forward = ISM.forward
    monkeypatch.setattr(ISM, "forward", lambda self, mri: forward(self, mri) * 0.0)


CDSF_DIAGNOSIS_TERMS = ("w_feature", "w_diag", "w_cls_real", "w_cls_synth")

#: sabotage: (the suite's method it breaks, its extra settings, a patch, the metric that must fail)
SABOTAGES: dict[str, tuple[str, dict[str, float], Callable[[pytest.MonkeyPatch], None] | None, str]] = {
    "labels shuffled for training": ("MRI only", {}, _shuffle_training_labels, "auc"),
    "w_voxel = 0": ("CDSF", {"coupling.joint.w_voxel": 0.0}, None, "ssim"),
    "CDSF's diagnosis terms off": (
        "CDSF",
        {f"coupling.joint.{term}": 0.0 for term in CDSF_DIAGNOSIS_TERMS},
        None,
        "auc",
    ),
    "synthetic PET channel zeroed": ("decoupled", {"train.epochs": 1}, _zero_synthetic_pet, "ssim"),
}


def _suite_with(folder: Path, method: str, settings: dict[str, float]) -> Path:
    """ci.toml with ``method`` alone, its settings extended by ``settings``."""
    suite = tomllib.loads(SUITE.read_text())
    (entry,) = [m for m in suite["methods"] if m["name"] == method]
    entry["settings"] = {**entry.get("settings", {}), **settings}
    suite["methods"] = [entry]
    path = folder / "ci-sabotaged.toml"
    path.write_text(tomli_w.dumps(suite))
    return path


@pytest.mark.parametrize("sabotage", list(SABOTAGES))
def test_a_sabotaged_method_fails_the_ci_regression(
    sabotage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    method, settings, patch, metric = SABOTAGES[sabotage]
    if patch is not None:
        patch(monkeypatch)
    suite = _suite_with(tmp_path, method, settings)
    ran = CliRunner().invoke(main, ["bench", str(suite), "--out", str(tmp_path / "runs")])
    assert ran.exit_code == 0, ran.output
    entries = rg.load_baseline(BASELINE)
    checks = rg.compare({method: entries[method]}, rg.read_current(tmp_path / "runs"))
    verdicts = {check.metric: check.verdict for check in checks}
    assert verdicts[metric] == "worse", checks
    assert not rg.passed(checks)


def test_the_label_sabotage_permutes_the_training_labels_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The label sabotage is what it says: a permutation of the training labels, nothing else."""
    captured: dict[str, torch.Tensor] = {}

    def original(self: DevicePipeline, *args: object, **kwargs: object) -> None:
        self.splits = kwargs["splits"]  # type: ignore[assignment]
        self.labels = torch.tensor([0, 1] * 10)
        self.labels[[3, 8]] = UNLABELLED  # two unlabelled training subjects
        captured["before"] = self.labels.clone()

    monkeypatch.setattr(DevicePipeline, "__init__", original)
    _shuffle_training_labels(monkeypatch)
    rows = np.arange(20)
    splits = Splits(train=rows[:12], val=rows[12:16], test=rows[16:])
    pipeline = DevicePipeline.__new__(DevicePipeline)
    DevicePipeline.__init__(pipeline, splits=splits)
    before, after = captured["before"], pipeline.labels
    assert torch.equal(after[12:], before[12:])
    assert after[3] == after[8] == UNLABELLED
    assert sorted(after[:12].tolist()) == sorted(before[:12].tolist())
    assert not torch.equal(after[:12], before[:12])
