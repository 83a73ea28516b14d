"""One trial: train a configuration on the training split and score it on validation.

A trial follows the run protocol (:mod:`cdsf_bench.protocol`) up to the test and nothing
after: the same preflight, cohort, subject-level split (leak-checked), seeding, assembly,
engine and selection on validation; then the selected model predicts the validation split
once more for the trial's score. The test
split is never predicted or scored here (``evaluate`` is only ever asked for "val"), so a
study may read every number a trial writes. The cohort and split are loaded once per study
(:class:`StudyData`): a study never searches a data, split or seed setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cdsf_bench.assemble import resolve_device
from cdsf_bench.engine import EpochCallback, EvaluationSettings, evaluate
from cdsf_bench.errors import InputError, RunFailed
from cdsf_bench.metrics import SYNTHESIS_KEYS
from cdsf_bench.protocol import CohortSplit, load, prepare, train
from cdsf_bench.registry import Registry
from cdsf_bench.results import write_json
from cdsf_bench.run_folder import RunFolder
from cdsf_bench.settings import RunConfig

#: a finished trial's validation scores, in its folder
VALIDATION = "validation.json"


@dataclass
class StudyData:
    """What every trial of a study shares: the task's cohort, labels and split, and the device."""

    data: CohortSplit
    device: torch.device


def load_study_data(run: RunConfig, registry: Registry) -> StudyData:
    """The cohort and split of ``run`` (the study's base), checked and read as ``run`` reads them."""
    device = resolve_device(run.device)
    return StudyData(load(run, registry), device)


@dataclass
class TrialResult:
    """A trial's score on ``metric`` and everything its validation produced."""

    value: float
    validation: dict[str, float]
    epochs: int
    selections: list[dict[str, Any]]


def train_and_validate(
    run: RunConfig,
    registry: Registry,
    study: StudyData,
    folder: Path,
    metric: str,
    *,
    resume: bool = False,
    on_epoch: EpochCallback | None = None,
) -> TrialResult:
    """Train ``run`` into the run folder ``folder`` and score its selected model on validation.

    ``resume`` continues a killed trial from its checkpoint (the folder's config must be
    this one), first showing ``on_epoch`` the epochs the checkpoint holds. A metric the
    method's validation does not produce is the user's error (``InputError``); a score that
    is not a number fails the trial (``RunFailed``). The caller holds the folder's lock
    (``RunFolder.lock``) while it runs.
    """
    run_folder = RunFolder.prepare(run.toml(), folder, resume)
    assembly = prepare(run, registry, study.device, data=study.data).assembly
    splits = study.data.splits
    run_folder.log(
        f"trial on {study.data.source}: {len(splits.rows('train'))} training and "
        f"{len(splits.rows('val'))} validation subjects; the test split is not predicted",
        echo=False,
    )
    trainer = train(assembly, run_folder, resume=resume, on_epoch=on_epoch, replay=True)
    history = trainer.history
    validation = EvaluationSettings("val", with_ssim=metric == "ssim")
    result = evaluate(assembly.coupling, assembly.pipeline, validation)
    scores = {**result.diagnosis, **(result.synthesis or {})}
    if metric not in scores:
        raise InputError(
            f"--metric {metric}: method {run.name} reports no {metric} on validation"
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
