"""On a GPU, a training step makes the host wait only once: when the engine reads its losses.

Each test watches CUDA's synchronising calls with ``torch.cuda.set_sync_debug_mode`` (in
"warn" mode, so that every synchronisation is listed with the line that made it, not only
the first) around what a training step does, and fails on any. The engine's one read of
the losses (``engine._to_floats``) stays outside the watched region. Skipped without CUDA;
``benchmarks/gpu/run.sh`` runs them on a lent GPU (``pytest -m cuda``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

from cdsf_bench.data import pipeline as pipeline_module
from cdsf_bench.data.labels import UNLABELLED
from cdsf_bench.data.pipeline import DevicePipeline, HiddenVolumes, Labels
from cdsf_bench.engine import _to_floats
from cdsf_bench.perf.cohort import synthetic_cohort
from cdsf_bench.registry import default_registry
from cdsf_bench.settings import RunConfig

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SIZE = (20, 24, 24)  # the 8 mm grid
BATCH = 4
LABELS: tuple[Labels, ...] = ("required", "where_known", "unused")
AUGMENT = {"enabled": True, "rotate_deg": 8.0, "translate_vox": 2.0, "intensity": 0.1}


def syncs(action: Callable[[], object]) -> list[str]:
    """The synchronising CUDA calls ``action`` makes, each as 'file:line' of its Python caller."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            action()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [f"{w.filename}:{w.lineno}" for w in caught if "synchronizing" in str(w.message)]


def _pipeline(device: str = "cuda", resident: bool = True) -> DevicePipeline:
    cohort, labels, splits = synthetic_cohort(SIZE, BATCH, seed=0)
    labels = labels.copy()
    labels[splits.train[::5]] = UNLABELLED  # so that "where_known" batches carry unlabelled subjects
    share = pipeline_module.DEVICE_MEMORY_SHARE
    pipeline_module.DEVICE_MEMORY_SHARE = share if resident else 0.0
    try:
        return DevicePipeline(
            cohort,
            labels,
            splits,
            device=torch.device(device),
            seed=0,
            batch_size=BATCH,
            augment=AUGMENT,
            channels_last=True,
            hidden=HiddenVolumes(pet_truth=True),  # so that the withheld PET's path is drawn too
        )
    finally:
        pipeline_module.DEVICE_MEMORY_SHARE = share


def _draw(pipeline: DevicePipeline, epoch: int) -> list:
    return [batch for labels in LABELS for batch in pipeline.train_batches(epoch, "all", labels)]


@pytest.mark.parametrize("resident", [True, False], ids=["cohort-on-gpu", "cohort-in-pinned-host-memory"])
def test_training_batches_are_drawn_without_waiting_for_the_gpu(resident: bool) -> None:
    pipeline = _pipeline(resident=resident)
    assert pipeline.on_device is resident
    _draw(pipeline, 0)  # first calls (pinned allocator, kernels) out of the way
    drawn: list = []
    assert syncs(lambda: drawn.extend(_draw(pipeline, 1))) == []
    assert drawn and all(b.mri.device.type == "cuda" and b.label.device.type == "cuda" for b in drawn)


def test_batches_on_the_gpu_are_the_cpu_batches() -> None:
    """The same subjects, labels and augmentation on either device, up to float32 rounding."""
    gpu, cpu = _pipeline("cuda"), _pipeline("cpu")
    host = _pipeline("cuda", resident=False)
    for ours, theirs, pinned in zip(_draw(gpu, 2), _draw(cpu, 2), _draw(host, 2), strict=True):
        assert torch.equal(ours.index, theirs.index)
        for key in ("label", "has_pet", "labelled"):
            assert torch.equal(getattr(ours, key).cpu(), getattr(theirs, key))
        for key in ("mri", "pet", "pet_truth"):
            torch.testing.assert_close(getattr(ours, key).cpu(), getattr(theirs, key), atol=1e-4, rtol=0)
            assert torch.equal(getattr(ours, key), getattr(pinned, key))


def test_losses_on_two_devices_are_read_in_one_synchronisation() -> None:
    """A step may return a host flag beside its GPU losses (``skipped_single``)."""
    losses = {
        "cls": torch.tensor(0.5, device="cuda"),
        "skipped_single": torch.tensor(1.0),
        "g": torch.ones(1, 1).cuda(),
    }
    read: dict[str, float] = {}
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            read.update(_to_floats(losses))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert read == {"cls": 0.5, "skipped_single": 1.0, "g": 1.0}
    assert len([w for w in caught if "synchronizing" in str(w.message)]) == 1


#: the switches that change what a step computes, each on a coupling's defaults:
#: (coupling, diagnoser or None for the default, --set assignments)
SWITCHES: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "decoupled-cross-fitted": ("decoupled", None, ("coupling.decoupled.synthetic_pairs=cross_fitted",)),
    "joint-pet-indicator": ("joint", None, ("coupling.joint.pet_indicator=true",)),
    "decoupled-pet-indicator": ("decoupled", None, ("coupling.decoupled.pet_indicator=true",)),
    "mean-impute-pet-indicator": ("mean-impute", None, ("coupling.mean-impute.pet_indicator=true",)),
    "single-regional": ("single", "regional", ()),
    "joint-regional": ("joint", "regional", ()),
}


def _cases() -> Iterator[tuple[str, str | None, tuple[str, ...]]]:
    """Every shipped coupling with its defaults, then each switch."""
    for coupling in default_registry().names("coupling"):
        yield coupling, None, ()
    yield from SWITCHES.values()


def _config(coupling: str, diag: str | None, assignments: tuple[str, ...], device: str) -> RunConfig:
    from cdsf_bench.perf.settings import PerfSettings, resolve_config

    registry = default_registry()
    synth = "none" if registry.coupling_class(coupling).needs_synthesiser is False else None
    settings = PerfSettings(
        synth=synth,
        diag=diag,
        coupling=coupling,
        size=SIZE,
        batch=BATCH,
        device=device,
        assignments=assignments,
    )
    return resolve_config(settings, registry)


CASES = list(_cases())
CASE_NAMES = [*default_registry().names("coupling"), *SWITCHES]


@pytest.mark.parametrize(("coupling", "diag", "assignments"), CASES, ids=CASE_NAMES)
def test_a_training_step_waits_for_the_gpu_only_to_read_its_losses(
    coupling: str, diag: str | None, assignments: tuple[str, ...]
) -> None:
    """Every stage of every shipped coupling and switch: batches drawn and steps taken, losses left unread."""
    from cdsf_bench.assemble import assemble

    registry = default_registry()
    config = _config(coupling, diag, assignments, "cuda")
    cohort, labels, splits = synthetic_cohort(SIZE, BATCH, seed=0)
    assembly = assemble(config, registry, cohort, labels, splits, torch.device("cuda"))
    found: dict[str, list[str]] = {}
    for stage in assembly.coupling.stages():
        for module in stage.modules.values():
            module.train()
        if stage.begin_epoch is not None:
            stage.begin_epoch(10**6)  # past every warm-up: every loss term is on
        batches = iter(assembly.pipeline.train_batches(0, stage.subjects, stage.labels))
        _to_floats(stage.step(next(batches)))  # first step: lazy initialisation, cuDNN's search
        returned: list = []
        sites = syncs(lambda: returned.extend([stage.step(next(batches)), stage.step(next(batches))]))  # noqa: B023
        for losses in returned:
            values = _to_floats(losses)
            assert all(np.isfinite(v) for v in values.values()), values
        if sites:
            found[stage.name] = sorted(set(sites))
    assert not found, f"host synchronisations inside training steps of '{coupling}': {found}"
