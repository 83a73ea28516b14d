"""The whole plugin contract: every type a plugin receives, returns or subclasses.

The core knows no model. It hands plugins tensors in the shapes described here and
asks them for modules, training stages and predictions; everything a method does lives
behind these types. A plugin author reads this module (and ``hookspecs``) and nothing else
of the core. Tensor shapes use B for the batch and (D, H, W) for the volume.
"""

from __future__ import annotations

import contextlib
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from cdsf_bench.ranges import MAX_SEED, within
from cdsf_bench.rows import take_rows

#: constructor arguments the core supplies itself; they are not user settings (``affine`` only
#: to a diagnoser that names it: the voxel-to-MNI placement of the grid, for an atlas)
CORE_ARGUMENTS = frozenset(
    {"self", "in_channels", "input_shape", "affine", "num_classes", "context"}
    | {"build_synthesiser", "build_diagnoser"}
)


@dataclass(frozen=True)
class FloatRange:
    """A real setting searched between ``low`` and ``high``, on a log scale with ``log``."""

    low: float
    high: float
    log: bool = False


@dataclass(frozen=True)
class IntRange:
    """An integer setting searched from ``low`` to ``high`` inclusive, on a log scale with ``log``."""

    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class Choice:
    """A setting searched among ``values`` (TOML values: numbers, strings, booleans, lists)."""

    values: tuple[Any, ...]


#: how one setting is searched by ``cdsf-bench tune`` (docs/plugins.md, "Search spaces")
SearchParam = FloatRange | IntRange | Choice


@dataclass(frozen=True)
class Flag:
    """A command-line flag that chooses a coupling: ``--NAME`` means ``--coupling COMPONENT``.

    ``run``, ``data check`` and ``tune`` offer one flag per coupling that declares one, with
    ``help`` as its help text. ``name`` is lowercase letters, digits and dashes, starting
    with a letter, and must not be an option the command has already (``--data``); two
    flags on one command line are refused.
    """

    name: str
    help: str


@dataclass(frozen=True)
class Component:
    """A named thing a plugin provides: a factory (a function or class) and a description.

    Every hook returns a list of these. The registry adds where each came from (``plugin``,
    ``distribution``, ``version``) when it collects them; plugins leave those empty.
    ``space`` is the search space of the component's own settings, by parameter name, that
    ``cdsf-bench tune`` samples (the core adds the training settings); settings it leaves
    out keep their value. Leave it empty to have only the training settings tuned.
    ``flag`` is the command-line flag that chooses the component; couplings only.
    """

    name: str
    factory: Callable[..., Any]
    description: str
    plugin: str = ""
    distribution: str = ""
    version: str = ""
    space: Mapping[str, SearchParam] = field(default_factory=dict, compare=False)
    flag: Flag | None = None

    def parameters(self) -> dict[str, Any]:
        """The factory's settings: its parameters with defaults, less those the core supplies."""
        target = self.factory.__init__ if inspect.isclass(self.factory) else self.factory
        return {
            p.name: p.default
            for p in inspect.signature(target).parameters.values()
            if p.name not in CORE_ARGUMENTS
            and p.default is not inspect.Parameter.empty
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        }


@dataclass(frozen=True)
class Method:
    """A method as the user names it: ``--synth SYNTH --diag DIAG --coupling COUPLING``."""

    synth: str
    diag: str
    coupling: str


@dataclass(frozen=True)
class MethodDefaults:
    """What a plugin proposes where the user names no method (the ``cdsf_bench_defaults`` hook).

    ``method`` is what ``cdsf-bench run`` trains without flags and the method a report compares
    the others with; ``mri_only_coupling`` is the coupling used for ``--synth none`` when no
    coupling is named. The core names no method itself: these come from the plugins.
    """

    method: Method
    mri_only_coupling: str


@dataclass(frozen=True)
class DataSettings:
    """How a source reads and preprocesses a cohort (the ``[data]`` config section).

    Everything here is part of the cache key: change any of it and the cache is rebuilt.
    """

    # the grid's voxel size: below 1 mm no benchmark fits in memory; above 16 mm no brain is left
    resolution_mm: float = field(default=4.0, metadata=within(1.0, 16.0))
    subjects: int = field(default=200, metadata=within(1, 1_000_000))  # phantom only
    missing_pet: float = field(default=0.5, metadata=within(0.0, 1.0, high_open=True))  # phantom only
    missing_mechanism: str = "mcar"  # phantom only: "mcar" or "class"
    # phantom only: the cohort's seed, independent of the run's seed
    phantom_seed: int = field(default=0, metadata=within(0, MAX_SEED))
    # phantom only: the ``data.phantom.*`` generative settings (scenario, severity_correlation,
    # ...; docs/data.md) as sorted (name, value) pairs, so that they are in the cache key
    phantom: tuple[tuple[str, Any], ...] = ()
    session: str = ""  # CAPS: the session to read (empty: each participant's first)
    tracer: str = "18FFDG"  # CAPS: the PET tracer entity
    suvr_reference: str = ""  # CAPS: the SUVR reference region entity (empty: any)
    # PET SUVR mapped to +1 (0 SUVR to -1)
    pet_suvr_max: float = field(default=2.5, metadata=within(0.0, 100.0, low_open=True))
    # files: refuse a brain this far from the MNI template's (0: no check)
    max_offset_mm: float = field(default=12.0, metadata=within(0.0, 1000.0))
    cache_dir: str = ""  # empty: $CDSF_BENCH_CACHE or ~/.cache/cdsf-bench


@dataclass
class Cohort:
    """A preprocessed cohort on one grid, intensities in [-1, 1] (docs/data.md).

    ``participants`` has one row per subject, in the order of the arrays, with at least
    ``participant_id``, ``diagnosis`` and ``has_pet``; an optional ``split`` column
    (train / val / test) is honoured by the splitter. ``pet`` is zero where ``has_pet`` is
    False. ``pet_truth`` holds the real PET of every subject when the source knows it.
    ``pet_expected`` holds E[PET | what the MRI shows] for every subject when the source knows
    it (the phantom): the output of a perfect generator, the ceiling of what synthesis can add.
    """

    participants: pd.DataFrame
    mri: np.ndarray  # [N, D, H, W] float16
    pet: np.ndarray  # [N, D, H, W] float16
    has_pet: np.ndarray  # [N] bool
    affine: np.ndarray  # [4, 4] voxel to MNI mm
    brain_mask: np.ndarray  # [D, H, W] bool
    pet_truth: np.ndarray | None = None  # [N, D, H, W] float16
    pet_expected: np.ndarray | None = None  # [N, D, H, W] float16; E[PET | MRI] where the source knows it
    source: str = ""  # what was read, for logs and environment.json
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.participants)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.mri.shape[1:])  # type: ignore[return-value]

    def subset(self, rows: np.ndarray) -> Cohort:
        """The cohort restricted to ``rows`` (for a task's classes), arrays shared where possible.

        Memory-mapped volumes (a cached cohort) stay on disk: a slice or a lazy row view
        (``cdsf_bench.rows.take_rows``), read when the pipeline converts them.
        """
        return Cohort(
            participants=self.participants.iloc[rows].reset_index(drop=True),
            mri=take_rows(self.mri, rows),
            pet=take_rows(self.pet, rows),
            has_pet=self.has_pet[rows],
            affine=self.affine,
            brain_mask=self.brain_mask,
            pet_truth=None if self.pet_truth is None else take_rows(self.pet_truth, rows),
            pet_expected=None if self.pet_expected is None else take_rows(self.pet_expected, rows),
            source=self.source,
            extra=self.extra,
        )


#: Where the PET that a prediction used came from, per subject (written to predictions.csv).
PetSource = Literal["real", "synthetic", "mean", "none"]


@dataclass
class Batch:
    """A batch drawn by the core's device pipeline; every tensor is on the run's device.

    Intensities are in [-1, 1] (see docs/data.md for the mapping of each modality).
    ``pet`` is zero where ``has_pet`` is False. ``pet_truth`` is the PET of every subject,
    including those whose PET is "missing"; ``pet_expected`` is E[PET | what the MRI shows]
    for every subject, the output of a perfect generator. Neither is something a study
    acquires: each exists only where the data source knows it (the phantom) and only in the
    batches of a coupling that declares it needs it (``Coupling.needs_pet_truth``,
    ``Coupling.needs_pet_expected``), in training, validation and test alike; both are
    augmented and laid out exactly as ``pet`` is.
    ``labelled`` is False for a training subject whose label must not be used (an
    unlabelled subject, or one of another diagnosis than the task's, there for its PET);
    its ``label`` is -1. Only a stage that asks for them (``TrainingStage.labels``) meets
    such subjects; it trains them on the terms that need no label. Every subject is
    labelled when it is not given.
    """

    mri: Tensor  # [B, 1, D, H, W]
    pet: Tensor  # [B, 1, D, H, W]
    has_pet: Tensor  # [B] bool
    label: Tensor  # [B] long, 0 = negative class (CN / sMCI), 1 = positive (AD / pMCI), -1 unlabelled
    index: Tensor  # [B] long, the subjects' rows in the cohort
    pet_truth: Tensor | None = None  # [B, 1, D, H, W]
    labelled: Tensor = None  # type: ignore[assignment]  # [B] bool; every subject when not given
    pet_expected: Tensor | None = None  # [B, 1, D, H, W]

    def __post_init__(self) -> None:
        if self.labelled is None:
            self.labelled = torch.ones_like(self.has_pet)

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def take(self, rows: Tensor | slice) -> Batch:
        """The subjects ``rows`` (a slice, indices or a [B] bool mask) of this batch."""
        return Batch(
            mri=self.mri[rows],
            pet=self.pet[rows],
            has_pet=self.has_pet[rows],
            label=self.label[rows],
            index=self.index[rows],
            pet_truth=None if self.pet_truth is None else self.pet_truth[rows],
            labelled=self.labelled[rows],
            pet_expected=None if self.pet_expected is None else self.pet_expected[rows],
        )


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
    #: one update on a batch; returns the loss terms as 0-d tensors (the engine syncs them once)
    step: Callable[[Batch], Mapping[str, Tensor]]
    epochs: int
    select_on: SelectionMetric = "auc"
    subjects: Literal["all", "with_pet"] = "all"
    patience: int | None = None
    #: which training subjects' labels the step needs. "required" (the default: a stage that
    #: knows nothing of labels never meets an unlabelled subject): labelled subjects only.
    #: "where_known": the same batches of labelled subjects, each followed by its share of
    #: the unlabelled ones (``Batch.labelled`` tells them apart), for a step that uses a
    #: label where there is one and learns from every subject otherwise. "unused": every
    #: subject alike, for a step that reads no label (a synthesis stage).
    labels: Literal["required", "where_known", "unused"] = "required"
    schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = field(default_factory=dict)
    #: called with the epoch index before each epoch's first step (a schedule of loss weights,
    #: say); it depends on the epoch alone, so a resumed run continues the same schedule
    begin_epoch: Callable[[int], None] | None = None


@dataclass
class TrainingContext:
    """What the core tells a coupling about the run it is part of."""

    device: torch.device
    input_shape: tuple[int, int, int]
    num_classes: int
    epochs: int
    learning_rate: float
    patience: int | None
    select_on: SelectionMetric
    train_pet_mean: Tensor  # [1, 1, D, H, W] mean real PET over training subjects with PET
    has_pet_truth: bool  # every subject's real PET is known (the phantom)
    mixed_precision: bool = False  # bf16 autocast for forward passes; losses stay fp32
    #: data-parallel processes, each holding a share of every training batch (1: one process)
    world: int = 1
    #: the sum of a tensor over those processes (the identity in one process)
    global_sum: Callable[[Tensor], Tensor] = field(default=lambda tensor: tensor)
    #: [4, 4] voxel to MNI mm of the grid ``input_shape`` lies on (None: a grid of unknown placement)
    affine: np.ndarray | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast for forward passes: bf16 when mixed precision is on, a no-op otherwise."""
        return bf16_autocast(self.device, self.mixed_precision)

    def mean(self, values: Tensor) -> Tensor:
        """The mean of per-subject ``values`` over the whole batch, as this process's share.

        Under data parallelism each process holds part of the batch, and part of any subset
        of it (the subjects with PET, say): a process's own mean is not the batch's. This
        returns ``world * local sum / global count``, so that averaging gradients over the
        processes gives exactly the one-process gradient. Every process must call it the
        same number of times (it communicates); ``values`` may be empty. Zero, with no
        gradient, when no process has a value.
        """
        # filled on the device: a tensor built from a host value would make the host wait
        count = self.global_sum(torch.full((), float(values.numel()), device=values.device))
        return values.float().sum() * self.world / count.clamp(min=1.0)


def bf16_autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``enabled``, else a no-op: every forward pass's precision."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


SynthesiserFactory = Callable[[], nn.Module]
#: ``build_diagnoser(in_channels, num_classes=None)``; None means the task's class count
DiagnoserFactory = Callable[..., nn.Module]


class Coupling(ABC):
    """How a synthesiser and a diagnoser are trained together and how they predict.

    The core constructs a coupling as ``Coupling(context, build_synthesiser, build_diagnoser,
    **settings)``: it receives factories rather than modules, because it alone knows how
    many diagnosers it needs and with how many input channels (MRI only, or MRI and PET);
    each factory builds its module on the run's device and memory format.
    Subclasses take their own settings as keyword-only arguments with defaults; those
    are the keys a user sets with ``--set coupling.NAME=VALUE``.

    A coupling may depend on the training data only through its modules' state (parameters
    and persistent buffers) and ``context.train_pet_mean``: a finished run's checkpoint holds
    both, and ``cdsf-bench predict`` rebuilds the coupling from its settings and that state to
    apply it to another cohort.
    """

    #: whether a synthesiser is required (True), refused (False) or optional (None)
    needs_synthesiser: bool | None = True
    #: which subjects of every split the method sees: complete-case uses real PET only
    subjects: Literal["all", "with_pet"] = "all"
    #: whether the method needs every subject's real PET (the oracle reference): only then do
    #: its batches carry ``Batch.pet_truth``, and a cohort without it is refused before training
    needs_pet_truth: bool = False
    #: whether the method needs every subject's E[PET | what the MRI shows] (the oracle
    #: synthesiser): only then do its batches carry ``Batch.pet_expected``, and a cohort
    #: without it is refused before training
    needs_pet_expected: bool = False

    def __init__(
        self,
        context: TrainingContext,
        build_synthesiser: SynthesiserFactory | None,
        build_diagnoser: DiagnoserFactory,
    ) -> None:
        # the factories are the subclass's to call (as many times as it needs); the base keeps none
        del build_synthesiser, build_diagnoser
        self.context = context

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Every network the coupling trains or predicts with, by a stable name.

        The engine switches these between training and evaluation mode around predictions,
        and ``precision.compile`` compiles them; stages name the subsets each stage trains.
        """

    @abstractmethod
    def stages(self) -> list[TrainingStage]:
        """The training stages, in order (one for joint training, two for two-stage)."""

    @abstractmethod
    def predict(self, batch: Batch) -> Prediction:
        """Predict a batch in evaluation mode; called under ``torch.no_grad``."""


class DataSource(ABC):
    """Turns a ``--data`` spec into a :class:`Cohort`."""

    name: str = ""
    description: str = ""

    @abstractmethod
    def detect(self, spec: str) -> bool:
        """Whether this source reads ``spec`` (a name, file or directory)."""

    @abstractmethod
    def load(self, spec: str, settings: DataSettings) -> Cohort:
        """Read the cohort; raise ``cdsf_bench.errors.InputError`` naming the bad file or field."""

    def check_settings(self, settings: DataSettings) -> None:
        """Raise ``cdsf_bench.errors.ConfigError`` naming a setting this source cannot use.

        The preflight asks it before anything is read, so that a bad setting costs nothing;
        it reads no file. A source without settings of its own accepts any.
        """
        return None

    def subject_table(self, spec: str, settings: DataSettings) -> tuple[pd.DataFrame, list] | None:
        """The subject table behind a file-based cohort and problems found while building it.

        ``cdsf-bench data check`` validates this table (columns as in a manifest: participant_id,
        diagnosis, mri, pet, ...). Sources that generate their data return None.
        """
        return None
