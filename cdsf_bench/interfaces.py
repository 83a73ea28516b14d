"""The contracts between the core and the method plugins.

The core knows no model. It hands plugins tensors in the shapes described here and
asks them for modules, training stages and predictions; everything a method does lives
behind these types. Tensor shapes use B for the batch and (D, H, W) for the volume.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NamedTuple

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    import pandas as pd

    from cdsf_bench.data.cohort import Cohort, DataSettings

#: Where the PET that a prediction used came from, per subject (written to predictions.csv).
PetSource = Literal["real", "synthetic", "mean", "none"]


@dataclass
class Batch:
    """A batch drawn by the core's device pipeline; every tensor is on the run's device.

    Intensities are in [-1, 1] (see docs/data.md for the mapping of each modality).
    ``pet`` is zero where ``has_pet`` is False. ``pet_truth`` is the PET of every subject,
    including those whose PET is "missing", and exists only where the data source knows
    it (the phantom); methods must not train on it except the oracle reference.
    """

    mri: Tensor  # [B, 1, D, H, W]
    pet: Tensor  # [B, 1, D, H, W]
    has_pet: Tensor  # [B] bool
    label: Tensor  # [B] long, 0 = negative class (CN / sMCI), 1 = positive (AD / pMCI)
    index: Tensor  # [B] long, the subjects' rows in the cohort
    pet_truth: Tensor | None = None  # [B, 1, D, H, W]

    def __len__(self) -> int:
        return int(self.label.shape[0])


class DiagnoserOutput(NamedTuple):
    """What a diagnoser returns: raw logits (never softmax) and the features behind them."""

    logits: Tensor  # [B, num_classes]
    features: Tensor  # [B, F]; the representation used by feature-consistency losses


class Prediction(NamedTuple):
    """A coupling's prediction for one batch."""

    probability: Tensor  # [B] probability of the positive class
    pet_source: list[PetSource]  # per subject
    synthetic: Tensor | None = None  # [B, 1, D, H, W] synthetic PET where the method makes one


SelectionMetric = Literal["auc", "bacc", "mcc", "ssim", "psnr", "mae"]


@dataclass
class TrainingStage:
    """One stage of training, run by the core's engine.

    The engine draws batches from the training subjects named by ``subjects``, calls
    ``step`` on each, evaluates the coupling's predictions on validation after every
    epoch, keeps the best state of ``modules`` by ``select_on`` (early stopping after
    ``patience`` epochs without improvement) and restores it when the stage ends.
    Modules and optimisers are checkpointed every epoch so a killed run can resume.
    """

    name: str
    modules: dict[str, nn.Module]
    optimisers: dict[str, torch.optim.Optimizer]
    step: Callable[[Batch], Mapping[str, float]]
    epochs: int
    select_on: SelectionMetric = "auc"
    subjects: Literal["all", "with_pet"] = "all"
    patience: int | None = None
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = field(default_factory=dict)


@dataclass
class TrainingContext:
    """What the core tells a coupling about the run it is part of."""

    device: torch.device
    input_shape: tuple[int, int, int]
    num_classes: int
    epochs: int
    batch_size: int
    learning_rate: float
    patience: int | None
    select_on: SelectionMetric
    train_pet_mean: Tensor  # [1, 1, D, H, W] mean real PET over training subjects with PET
    has_pet_truth: bool  # every subject's real PET is known (the phantom)
    mixed_precision: bool = False  # bf16 autocast for forward passes; losses stay fp32

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast for forward passes: bf16 when mixed precision is on, a no-op otherwise."""
        if not self.mixed_precision:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


SynthesiserFactory = Callable[[], nn.Module]
#: ``build_diagnoser(in_channels, num_classes=None)``; None means the task's class count
DiagnoserFactory = Callable[..., nn.Module]


class Coupling(ABC):
    """How a synthesiser and a diagnoser are trained together and how they predict.

    A coupling receives factories rather than modules, because it alone knows how many
    diagnosers it needs and with how many input channels (MRI only, or MRI and PET).
    The core builds each module on the run's device and memory format.
    Subclasses take their own settings as keyword-only arguments with defaults; those
    are the keys a user sets with ``--set coupling.NAME=VALUE``.
    """

    #: whether a synthesiser is required (True), refused (False) or optional (None)
    needs_synthesiser: bool | None = True
    #: which subjects of every split the method sees: complete-case uses real PET only
    subjects: Literal["all", "with_pet"] = "all"
    #: whether the method needs every subject's real PET (the oracle reference)
    needs_pet_truth: bool = False

    def __init__(
        self,
        context: TrainingContext,
        build_synthesiser: SynthesiserFactory | None,
        build_diagnoser: DiagnoserFactory,
    ) -> None:
        self.context = context
        self.build_synthesiser = build_synthesiser
        self.build_diagnoser = build_diagnoser

    @abstractmethod
    def stages(self) -> list[TrainingStage]:
        """The training stages, in order (one for joint training, two for two-stage)."""

    @abstractmethod
    def predict(self, batch: Batch) -> Prediction:
        """Predict a batch in evaluation mode; called under ``torch.no_grad``."""


class DataSource(ABC):
    """Turns a ``--data`` spec into a cohort (see ``cdsf_bench.data.cohort.Cohort``)."""

    name: str = ""
    description: str = ""

    @abstractmethod
    def detect(self, spec: str) -> bool:
        """Whether this source reads ``spec`` (a name, file or directory)."""

    @abstractmethod
    def load(self, spec: str, settings: DataSettings) -> Cohort:
        """Read the cohort; raise ``cdsf_bench.errors.InputError`` naming the bad file or field."""

    def subject_table(self, spec: str, settings: DataSettings) -> tuple[pd.DataFrame, list] | None:
        """The subject table behind a file-based cohort and problems found while building it.

        ``cdsf-bench data check`` validates this table (columns as in a manifest: participant_id,
        diagnosis, mri, pet, ...). Sources that generate their data return None.
        """
        return None
