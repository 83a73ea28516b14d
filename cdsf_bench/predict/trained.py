"""A finished run's trained model, read back from its folder and rebuilt for another cohort.

A run folder holds what applying its model needs: ``config.toml`` (the resolved
configuration: method, settings, preprocessing), ``checkpoints/last.pt`` (the selected
modules of every stage and the training PET mean, ``checkpoints.CHECKPOINT_FORMAT``) and
``metrics.json`` (the operating point chosen on validation). The model is rebuilt through
``assemble``, the function a run trains with, so precision, memory layout and the coupling
are those of the run; its modules then take the selected weights. The core names no method:
whatever coupling the config names is built, and every coupling predicts through
``Coupling.predict``.

Everything is read and checked before anything is written anywhere, and the run folder
is only ever read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdsf_bench.assemble import Assembly, assemble
from cdsf_bench.checkpoints import check_finite, check_format, load_modules
from cdsf_bench.data.splits import Splits
from cdsf_bench.errors import InputError
from cdsf_bench.interfaces import Cohort
from cdsf_bench.registry import Registry
from cdsf_bench.results import load_torch
from cdsf_bench.run_folder import RunFolder
from cdsf_bench.settings import RunConfig


@dataclass(frozen=True)
class TrainedModel:
    """A trained run as ``predict`` needs it: config, operating point, checkpoint."""

    folder: Path
    config: RunConfig  # the run's resolved configuration
    threshold: float  # the validation-chosen operating point of the run
    state: dict[str, Any]  # the checkpoint: every stage's selected modules, the training PET mean

    @property
    def shape(self) -> tuple[int, ...]:
        """The grid the model was trained on (of its training PET mean, [1, 1, D, H, W])."""
        return tuple(int(n) for n in self.state["train_pet_mean"].shape[2:])


def load_trained(folder: Path, registry: Registry, threshold: float | None = None) -> TrainedModel:
    """Read the trained model of the run in ``folder``; refuse, naming what is wrong, anything else.

    ``threshold`` is the run's operating point when the run itself asks (its metrics.json is
    written last, after its held-out cohort is predicted); otherwise it is read from
    metrics.json, and a run without one has not finished.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"Run folder {folder} {'is not a folder' if folder.exists() else 'does not exist'}.")
    paths = RunFolder(folder)
    paths.config_text()  # refuses a folder that is not a run
    if threshold is None:
        threshold = _threshold(paths)
    if not paths.checkpoint_path.is_file():
        raise InputError(
            f"Run folder {folder} has no weights: {paths.checkpoint_path} is missing (a run keeps it; "
            "an exported results folder does not). Apply a run folder that still holds its checkpoint."
        )
    config = paths.config(registry)
    state = load_torch(paths.checkpoint_path)  # tensors and plain containers only (weights_only)
    _check_checkpoint(state, paths.checkpoint_path)
    return TrainedModel(folder, config, float(threshold), state)


def _threshold(folder: RunFolder) -> float:
    try:
        value = folder.metrics()["selection"]["threshold"]
        return float(value)
    except (ValueError, KeyError, TypeError) as error:
        raise InputError(
            f"{folder.metrics_path} has no operating point (selection.threshold): {type(error).__name__} "
            f"{error}. It was not written by a finished cdsf-bench run."
        ) from None


def _check_checkpoint(state: Any, path: Path) -> None:
    """A checkpoint of finished training in the layout this version writes, or an InputError."""
    check_format(state, path)
    stages = state["stages"]
    if state.get("stage_index") != len(stages):
        raise InputError(
            f"Checkpoint {path} is of unfinished training (stage {state.get('stage_index')} of "
            f"{len(stages)}); "
            f"finish the run with 'cdsf-bench run --resume {path.parent.parent}'."
        )
    check_finite(state, path)


def rebuild(
    model: TrainedModel,
    registry: Registry,
    cohort: Cohort,
    labels: np.ndarray,
    device: torch.device,
) -> Assembly:
    """The run's coupling, with its selected weights, and a pipeline over every subject of ``cohort``.

    Built by ``assemble`` from the run's config and seed, like the run itself, with every
    subject in the test split and the training PET mean of the run's own training data.
    """
    if cohort.shape != model.shape:
        raise InputError(
            f"The cohort is on a grid of shape {cohort.shape}, but the model of {model.folder} was trained "
            f"on {model.shape}; it must be preprocessed as the run's data were (data.resolution_mm)."
        )
    run = model.config
    # as the run did before building: any parameter a stage left untouched
    torch.manual_seed(run.seed_of("init"))
    rows = np.arange(len(cohort))
    everyone = Splits(train=rows[:0], val=rows[:0], test=rows)
    assembly = assemble(
        run, registry, cohort, labels, everyone, device, train_pet_mean=model.state["train_pet_mean"]
    )
    load_modules(assembly.coupling.stages(), model.state, RunFolder(model.folder).checkpoint_path)
    return assembly
