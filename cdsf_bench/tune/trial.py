"""One trial: train a configuration on the training split and score it on validation.

A trial is what ``run`` does up to the test and nothing after: the same preflight, cohort,
subject-level split (leak-checked), assembly, engine and selection on validation; then the
selected model predicts the validation split once more for the trial's score. The test
split is never predicted or scored here (``evaluate`` is only ever asked for "val"), so a
study may read every number a trial writes. The cohort and split are loaded once per study
(:class:`StudyData`): a study never searches a data, split or seed setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdsf_bench.assemble import assemble, configure_backends, load_cohort, resolve_device, split_cohort
from cdsf_bench.config import RunConfig
from cdsf_bench.data.splits import Splits
from cdsf_bench.engine import EpochCallback, Trainer, evaluate
from cdsf_bench.errors import InputError, RunFailed
from cdsf_bench.interfaces import Cohort
from cdsf_bench.metrics import SYNTHESIS_KEYS
from cdsf_bench.preflight import refuse_early
from cdsf_bench.registry import Registry
from cdsf_bench.results import load_torch, write_json
from cdsf_bench.run_folder import RunFolder

#: a finished trial's validation scores, in its folder
VALIDATION = "validation.json"


@dataclass
class StudyData:
    """What every trial of a study shares: the task's cohort, labels and split, and the device."""

    cohort: Cohort
    labels: np.ndarray
    splits: Splits
    device: torch.device
    source: str


def load_study_data(config: dict, registry: Registry) -> StudyData:
    """The cohort and split of ``config`` (the study's base), checked as ``run`` checks them."""
    run = RunConfig(config)
    device = resolve_device(run.device)
    refuse_early(run, registry)
    cohort, source = load_cohort(config, registry)
    cohort, labels, splits, _ = split_cohort(run, cohort)
    return StudyData(cohort, labels, splits, device, source)


@dataclass
class TrialResult:
    """A trial's score on ``metric`` and everything its validation produced."""

    value: float
    validation: dict[str, float]
    epochs: int
    selections: list[dict[str, Any]]


def earlier_history(folder: Path) -> list[dict[str, Any]]:
    """The epochs a killed trial's checkpoint holds, which its retry continues from."""
    path = RunFolder(folder).checkpoint_path
    return list(load_torch(path)["history"]) if path.exists() else []


def train_and_validate(
    config: dict,
    registry: Registry,
    data: StudyData,
    folder: Path,
    metric: str,
    *,
    resume: bool = False,
    on_epoch: EpochCallback | None = None,
) -> TrialResult:
    """Train ``config`` into the run folder ``folder`` and score its selected model on validation.

    ``resume`` continues a killed trial from its checkpoint (the folder's config must be
    this one), first showing ``on_epoch`` the epochs the checkpoint holds. A metric the
    method's validation does not produce is the user's error (``InputError``); a score that
    is not a number fails the trial (``RunFailed``).
    """
    run = RunConfig(config)
    method = run.method
    name = f"{method.synth}-{method.diag}-{method.coupling}"
    run_folder = RunFolder.prepare(run.toml(), folder, name, resume)
    torch.manual_seed(run.seed)
    np.random.seed(run.seed % 2**32)
    configure_backends(data.device)
    assembly = assemble(config, registry, data.cohort, data.labels, data.splits, data.device)
    run_folder.log(
        f"trial on {data.source}: {len(data.splits.rows('train'))} training and "
        f"{len(data.splits.rows('val'))} validation subjects; the test split is not predicted",
        echo=False,
    )
    trainer = Trainer(assembly.coupling, assembly.pipeline, run_folder, on_epoch=on_epoch)
    if resume and on_epoch is not None:  # the epochs the checkpoint holds, as if they ran now
        stages = {stage.name: stage for stage in trainer.stages}
        for row in earlier_history(folder):
            on_epoch(stages[row["stage"]], row)
    history = trainer.fit(resume=resume)
    result = evaluate(assembly.coupling, assembly.pipeline, "val", with_ssim=metric == "ssim")
    scores = {**result.diagnosis, **(result.synthesis or {})}
    if metric not in scores:
        raise InputError(
            f"--metric {metric}: method {name} reports no {metric} on validation"
            + (
                " (synthesis metrics need a synthesiser and validation subjects with acquired PET)."
                if metric in SYNTHESIS_KEYS
                else "."
            )
        )
    value = float(scores[metric])
    write_json(
        folder / VALIDATION,
        {"metric": metric, "value": value, "validation": scores, "stages": trainer.selections},
    )
    run_folder.log(f"validation {metric} {value:.4f} after {len(history)} epochs", echo=False)
    if not math.isfinite(value):
        raise RunFailed(f"validation {metric} of the selected model is {value}, not a number")
    return TrialResult(value, scores, len(history), trainer.selections)
