"""Assembly: everything a run trains, built from its config in one place.

``cdsf-bench run`` and ``cdsf-bench perf`` both build through :func:`assemble`, so perf times
exactly what a run trains: the same device placement, memory layout, precision, data
pipeline, augmentation and coupling.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch

from cdsf_bench.compiling import compile_in_place
from cdsf_bench.data.conventions import TASKS
from cdsf_bench.data.labels import training_cohort
from cdsf_bench.data.pipeline import DevicePipeline, HiddenVolumes
from cdsf_bench.data.sources import detect_source
from cdsf_bench.data.splits import Splits, check_no_leak, make_splits
from cdsf_bench.distributed import SINGLE_PROCESS, Cluster, global_sum
from cdsf_bench.errors import InputError
from cdsf_bench.host import bf16_supported
from cdsf_bench.interfaces import Cohort, Coupling, DataSource, TrainingContext
from cdsf_bench.recipe import NO_RECIPE, Recipe
from cdsf_bench.registry import Registry
from cdsf_bench.settings import RunConfig


def split_cohort(run: RunConfig, cohort: Cohort) -> tuple[Cohort, np.ndarray, Splits, dict]:
    """The subjects a run keeps, their labels and the subject-level split, leak-checked.

    ``run`` and ``tune`` both split here, so a study's trials train and validate on exactly
    the subjects the run of the same config would.
    """
    cohort, labels = training_cohort(cohort, run.task, run.synthesis_subjects)
    split = run.split
    splits = make_splits(
        cohort.participants,
        labels,
        val=split.val,
        test=split.test,
        seed=run.seed_of("split"),
        val_seed=run.seed_of("validation"),
        folds=split.folds,
        fold=split.fold,
        class_names=TASKS[run.task],
    )
    return cohort, labels, splits, check_no_leak(cohort.participants, splits)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            "--device cuda was asked for, but torch sees no CUDA device; use --device cpu or auto."
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise InputError(
            f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s), numbered from 0."
        )
    return device


def data_source(spec: str, registry: Registry) -> DataSource:
    """The first installed data source that recognises ``spec``."""
    sources = [c.factory() for c in registry.components.get("data_source", {}).values()]
    return detect_source(spec, sources)


def load_cohort(run: RunConfig, registry: Registry) -> tuple[Cohort, str]:
    """Read the cohort named by ``data.spec`` (the ``--data`` option) and its source's name."""
    source = data_source(run.data_spec, registry)
    return source.load(run.data_spec, run.data), source.name


def place(module: torch.nn.Module, device: torch.device, channels_last: bool) -> torch.nn.Module:
    """Put a module on the run's device, in channels-last-3D memory when asked."""
    module = module.to(device)
    if channels_last:  # torch's stubs lack Module.to's memory_format keyword, which exists
        module = module.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
    return module


def method_mismatch(run: RunConfig, registry: Registry) -> str | None:
    """Why the run's synthesiser and coupling cannot go together (its coupling declares whether
    it trains a synthesiser), or None; ``data check`` reports what ``run`` would refuse."""
    synth_name, coupling_name = run.method.synth, run.method.coupling
    needs = registry.coupling_class(coupling_name).needs_synthesiser
    if synth_name == "none" and needs is True:
        defaults = registry.method_defaults()
        return (
            f"Coupling '{coupling_name}' trains a synthesiser; --synth none is single-modality. "
            f"Choose a synthesiser (--synth {defaults.method.synth}) or the coupling "
            f"'{defaults.mri_only_coupling}'."
        )
    if synth_name != "none" and needs is False:
        return f"Coupling '{coupling_name}' uses no synthesiser; pass --synth none."
    return None


def build_method(
    run: RunConfig,
    registry: Registry,
    context: TrainingContext,
    channels_last: bool,
    diagnosers: list[torch.nn.Module] | None = None,
) -> Coupling:
    """Instantiate the coupling with factories for the chosen synthesiser and diagnoser.

    Every module the diagnoser factory builds is appended to ``diagnosers`` when given: a
    reader of a trained model (``cdsf-bench interpret``) finds them there, whatever the
    coupling calls them or wraps them in.
    """
    device = context.device
    synth_name, synth_params = run.plugin("synth")
    diag_name, diag_params = run.plugin("diag")
    coupling_name, coupling_params = run.plugin("coupling")
    coupling_class = registry.coupling_class(coupling_name)
    mismatch = method_mismatch(run, registry)
    if mismatch is not None:
        raise InputError(mismatch)

    build_synth = None
    if synth_name != "none":
        synth_component = registry.get("synthesiser", synth_name)

        def build_synth() -> torch.nn.Module:
            return place(synth_component.factory(**synth_params), device, channels_last)

    diag_component = registry.get("diagnoser", diag_name)
    # the grid's placement goes to a diagnoser that names it (an atlas reader; docs/plugins.md)
    takes_affine = "affine" in inspect.signature(diag_component.factory).parameters
    placement = {"affine": context.affine} if takes_affine else {}

    def build_diag(in_channels: int, num_classes: int | None = None) -> torch.nn.Module:
        built = place(
            diag_component.factory(
                in_channels=in_channels,
                input_shape=context.input_shape,
                num_classes=num_classes or context.num_classes,
                **placement,
                **diag_params,
            ),
            device,
            channels_last,
        )
        if diagnosers is not None:
            diagnosers.append(built)
        return built

    try:
        return coupling_class(context, build_synth, build_diag, **coupling_params)
    except ValueError as error:  # a plugin refusing a setting's value is the user's to fix
        raise InputError(f"Coupling '{coupling_name}' refused its settings: {error}.") from None


def configure_backends(device: torch.device) -> bool:
    """Choose the kernels of a run (perf calls it too); returns whether they are deterministic.

    CPU: deterministic algorithms, so that a run repeats bit for bit, without deterministic
    mode's NaN filling of every new tensor (about 5% of a joint step, measured by
    ``cdsf-bench perf``; correct kernels never read uninitialised memory). CUDA:
    ``cudnn.benchmark`` picks the fastest algorithm per convolution shape; GPU runs are not
    bitwise repeatable anyway (atomic adds), and the batch shapes of a run are few.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        return False
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    return True


@dataclass
class Assembly:
    """What trains: the data pipeline, the context the plugins see and the coupling."""

    pipeline: DevicePipeline
    context: TrainingContext
    coupling: Coupling
    channels_last: bool
    #: whether the networks were compiled (``precision.compile``), and if asked but not, why
    compiled: bool = False
    eager_because: str | None = None
    #: what the engine adds around the coupling's steps (``[train]`` and ``[evaluate]``)
    recipe: Recipe = NO_RECIPE
    #: every module the coupling built with its diagnoser factory, in the order it built them
    diagnosers: tuple[torch.nn.Module, ...] = ()


def assemble(
    run: RunConfig,
    registry: Registry,
    cohort: Cohort,
    labels: np.ndarray,
    splits: Splits,
    device: torch.device,
    cluster: Cluster = SINGLE_PROCESS,
    train_pet_mean: torch.Tensor | None = None,
) -> Assembly:
    """Build the pipeline, context and coupling of a run from its configuration.

    The one place where they are put together, so that ``cdsf-bench perf`` times exactly
    what ``cdsf-bench run`` trains (same precision, layout, augmentation, volumes drawn),
    and ``cdsf-bench predict`` rebuilds what it trained: a trained model applied to another
    cohort passes the ``train_pet_mean`` of its own training data (from its checkpoint)
    instead of the mean of the cohort's training split.
    """
    precision, train = run.precision, run.train
    mixed = precision.mixed and bf16_supported(device)
    channels_last = precision.channels_last
    coupling_class = registry.coupling_class(run.method.coupling)
    hidden = HiddenVolumes.declared_by(coupling_class)
    unmet = hidden.unmet(cohort)
    if unmet:  # refused before anything is held or trained
        raise InputError(f"Coupling '{run.method.coupling}' needs {'; and '.join(unmet)}.")
    pipeline = DevicePipeline(
        cohort,
        labels,
        splits,
        device=device,
        seed=run.seed_of("batches"),
        batch_size=train.batch_size,
        augment=run.augment,
        channels_last=channels_last,
        shard=(cluster.rank, cluster.world),
        # batches carry (and augment) what a study never acquires only for a method that needs it
        hidden=hidden,
    )
    context = TrainingContext(
        device=device,
        input_shape=cohort.shape,
        num_classes=2,
        epochs=train.epochs,
        learning_rate=train.learning_rate,
        patience=train.patience or None,
        select_on=train.select_on,
        train_pet_mean=(
            pipeline.train_pet_mean() if train_pet_mean is None else train_pet_mean.to(device).float()
        ),
        has_pet_truth=cohort.pet_truth is not None,
        mixed_precision=mixed,
        world=cluster.world,
        global_sum=global_sum(cluster),
        affine=cohort.affine,
    )
    diagnosers: list[torch.nn.Module] = []
    coupling = build_method(run, registry, context, channels_last, diagnosers)
    eager_because = None
    if precision.compile:
        eager_because = compile_in_place(coupling.modules().values(), device)
    compiled = precision.compile and eager_because is None
    return Assembly(
        pipeline, context, coupling, channels_last, compiled, eager_because, Recipe.of(run), tuple(diagnosers)
    )
