"""``cdsf-bench perf``: how fast one training step is, and why, on this machine.

A benchmark suite multiplies every second of a training step by methods x seeds x epochs x
batches, so the step is worth measuring on its own, away from data loading and evaluation.
This module builds the same pieces a run builds (the method through ``assemble.build_method``,
the core's device pipeline, the run's precision settings) on a synthetic in-memory cohort
of random volumes, and times, after warm-up:

- the synthesiser alone: forward and backward of an L1 loss on an MRI batch;
- the diagnoser alone: forward and backward of a cross-entropy on a 2-channel batch;
- each stage of the coupling: the stage's real ``step`` (both networks, losses, optimisers);
- the data pipeline: one augmented training batch;
- the synthesiser again in plain float32 with contiguous memory (the speed-up reference);
- a large matrix multiply in bf16 and in fp32: what this device can do at best.

Times are medians over ``repeats`` steps with their interquartile range, because on a
shared machine the mean is pulled by whoever else is running. The parts are timed in
rounds, one step of each per round, so that the ratios reported between them (speed-up
over fp32, share of the matmul rate, pipeline share) see the same background load. FLOPs are counted once per
step with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix multiplies,
forward and backward; norms, pooling and activations are memory-bound and not counted) and
divided by the median time.

Precision, as in a run: with mixed precision, forward passes run under bf16 autocast while
every parameter stays float32 (fp32 master weights, updated by float32 optimisers) and every
loss is computed in float32; ``channels_last_3d`` puts modules and batches in NDHWC memory.
Each switch can be turned off, so their effect is measured rather than assumed.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import click
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cdsf_bench import config as cfg
from cdsf_bench.data.splits import Splits
from cdsf_bench.errors import InputError
from cdsf_bench.interfaces import Batch, Cohort, Coupling
from cdsf_bench.progress import console
from cdsf_bench.registry import Registry, default_registry

#: The issue's targets, for a 2-core AVX-512 BF16 CPU at 64^3 and batch 2 (issue 8).
TARGET_SIZE = (64, 64, 64)
TARGET_BATCH = 2
#: the synthesiser under the run's precision at least this much faster than fp32 contiguous
TARGET_SYNTH_SPEEDUP = 2.5
#: the coupling step's achieved GFLOP/s at least this share of the bf16 matmul rate
TARGET_MATMUL_SHARE = 0.40
#: the data pipeline's time per batch at most this share of the coupling step
TARGET_PIPELINE_SHARE = 0.03
#: side of the square matrices of the reference multiply (large enough to be compute-bound)
MATMUL_SIDE = 2048
#: training subjects of the synthetic cohort, in batches: enough for several distinct batches
TRAIN_BATCHES = 4
#: extra warm-up steps under --compile, which compiles (and may recompile) on first calls
COMPILE_EXTRA_WARMUP = 3
MIB = 2**20


@dataclass(frozen=True)
class PerfSettings:
    """What to measure and how; ``None`` method names take the run's defaults."""

    synth: str | None = None
    diag: str | None = None
    coupling: str | None = None
    size: tuple[int, int, int] = TARGET_SIZE
    batch: int = TARGET_BATCH
    device: str = "auto"
    repeats: int = 5
    warmup: int = 2
    bf16: bool = True
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    threads: int | None = None  # torch CPU threads; None keeps torch's default (one per core)
    assignments: tuple[str, ...] = ()


@dataclass
class Timing:
    """Seconds of repeated calls after warm-up, summarised robustly."""

    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def quartiles(self) -> tuple[float, float]:
        if len(self.seconds) < 2:
            return self.seconds[0], self.seconds[0]
        q1, _, q3 = statistics.quantiles(self.seconds, n=4, method="inclusive")
        return q1, q3

    def summary(self, subjects: int, flops: float | None) -> dict[str, Any]:
        """Median, IQR, throughput and achieved rate, as the JSON reports them."""
        q1, q3 = self.quartiles()
        median = self.median
        return {
            "median_s": median,
            "iqr_s": q3 - q1,
            "q1_s": q1,
            "q3_s": q3,
            "min_s": min(self.seconds),
            "times_s": list(self.seconds),
            "subjects_per_s": subjects / median,
            "gflop": None if flops is None else flops / 1e9,
            "gflop_per_s": None if flops is None else flops / median / 1e9,
        }


# -- environment ---------------------------------------------------------------------------


def cpu_flags() -> dict[str, bool]:
    """The CPU features that decide whether bf16 is fast here (Linux /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return {name: name in flags for name in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")}


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _sync(device: torch.device) -> None:
    """Wait for queued device work, so a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _process_peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / MIB


@contextlib.contextmanager
def _peak_memory(device: torch.device, record: dict[str, Any]) -> Iterator[None]:
    """Record the phase's peak memory in ``record['peak_memory_mib']``.

    On CUDA this is the allocator's peak during the phase. On CPU only the process's peak
    RSS is available (Python's allocators do not see torch's), and it never goes down, so
    the CPU figure is the process peak up to the end of the phase, not the phase's own.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield
    finally:
        if device.type == "cuda":
            record["peak_memory_mib"] = torch.cuda.max_memory_allocated(device) / MIB
        else:
            record["peak_memory_mib"] = _process_peak_rss_mib()


def count_flops(step: Callable[[], object]) -> float:
    """FLOPs of one call of ``step`` as torch's flop counter sees them (conv and matmul)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


@dataclass
class Part:
    """One thing that is timed: its step, the subjects it handles and what preparing it found.

    ``flops`` is None for steps that do no counted arithmetic (the data pipeline);
    ``modules`` are the modules ``--compile`` compiles for this part. ``count_with`` is the
    same step on the plain (float32, contiguous) form of the same networks, whose FLOPs are
    counted instead: a layout-dependent reformulation (the plugins' space-to-depth output
    convolution multiplies by zeros) must not count as useful work in GFLOP/s.
    """

    name: str
    step: Callable[[], object]
    subjects: int
    record: dict[str, Any] = field(default_factory=dict)
    flops: float | None = None
    count: bool = True
    count_with: Callable[[], object] | None = None
    modules: list[nn.Module] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def prepare(self, device: torch.device, warmup: int) -> None:
        """Warm up, then count one step's FLOPs, noting the peak memory meanwhile.

        Warm-up comes first so one-off costs (oneDNN primitive creation, first touch of
        buffers) stay out of the count, and so a step that cannot run fails early.
        """
        with _peak_memory(device, self.record):
            for _ in range(warmup):
                self.step()
            if self.count:
                self.flops = count_flops(self.count_with or self.step)
            _sync(device)

    def summary(self) -> dict[str, Any]:
        return {**Timing(self.seconds).summary(self.subjects, self.flops), **self.record}


def time_interleaved(parts: list[Part], device: torch.device, repeats: int) -> None:
    """Time one call of every part per round, ``repeats`` rounds, appending to ``part.seconds``.

    Interleaving gives every part the same share of whatever else the machine is doing, so
    ratios between parts (speed-up over fp32, share of the matmul rate, pipeline share)
    compare like with like even when the load changes during the measurement.
    """
    for _ in range(repeats):
        for part in parts:
            _sync(device)
            started = time.perf_counter()
            part.step()
            _sync(device)
            part.seconds.append(time.perf_counter() - started)


def _matmul_part(dtype: torch.dtype, device: torch.device, side: int = MATMUL_SIDE) -> Part:
    """A ``side`` x ``side`` matrix multiply in ``dtype``: the device's practical peak rate.

    A square multiply this large is compute-bound and runs in the vendor library's best
    kernel (oneDNN/MKL on CPU, cuBLAS on GPU), so its rate is what convolutions could reach
    at best in that dtype on the same cores, under the same background load.
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(side, side, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(side, side, generator=generator).to(device=device, dtype=dtype)
    name = str(dtype).removeprefix("torch.")
    part = Part(f"{name}_matmul", partial(torch.mm, a, b), 1, {"dtype": name, "side": side}, count=False)
    part.flops = 2.0 * side**3
    return part


def _matmul_summary(part: Part) -> dict[str, Any]:
    """A matmul part's median time and rate, and its best rate (the least disturbed call)."""
    timing = Timing(part.seconds)
    flops = part.flops or 0.0
    return {
        **part.record,
        "median_s": timing.median,
        "gflop_per_s": flops / timing.median / 1e9,
        "best_gflop_per_s": flops / min(timing.seconds) / 1e9,
    }


def _batch_stream(pipeline: Any) -> Iterator[Batch]:
    """Augmented training batches drawn as the engine draws them, epoch after epoch."""
    epoch = 0
    while True:
        yield from pipeline.train_batches(epoch)
        epoch += 1


# -- the synthetic cohort ------------------------------------------------------------------


def synthetic_cohort(size: tuple[int, int, int], batch: int, seed: int) -> tuple[Cohort, np.ndarray, Splits]:
    """Random volumes in [-1, 1], half with PET, split so that training batches are full.

    ``TRAIN_BATCHES`` batches of training subjects, half of them with PET, so that a stage
    on all subjects and a stage on subjects with PET both draw batches of exactly ``batch``;
    labels alternate so every batch can hold both classes. Two validation and two test
    subjects make the splits well formed; they are never used. The PET of every subject is
    kept as ``pet_truth``, as on the phantom, so methods that need it can be measured and
    the pipeline augments the same three volumes as in a default run.
    """
    n_train = 2 * batch * TRAIN_BATCHES
    n = n_train + 4
    rng = np.random.default_rng(seed)
    mri = (rng.random((n, *size), dtype=np.float32) * 2 - 1).astype(np.float16)
    truth = (rng.random((n, *size), dtype=np.float32) * 2 - 1).astype(np.float16)
    has_pet = np.arange(n) % 2 == 0
    pet = np.where(has_pet[:, None, None, None], truth, np.float16(0))
    labels = (np.arange(n) // 2 % 2).astype(np.int64)
    participants = pd.DataFrame(
        {
            "participant_id": [f"sub-perf{i:04d}" for i in range(n)],
            "diagnosis": np.where(labels == 1, "AD", "CN"),
            "has_pet": has_pet,
        }
    )
    cohort = Cohort(
        participants=participants,
        mri=mri,
        pet=pet,
        has_pet=has_pet,
        affine=np.eye(4),
        brain_mask=np.ones(size, dtype=bool),
        pet_truth=truth,
        source="perf: random volumes",
    )
    rows = np.arange(n)
    splits = Splits(rows[:n_train], rows[n_train : n_train + 2], rows[n_train + 2 :])
    return cohort, labels, splits


def _typical_batches(batches: list[Batch]) -> list[Batch]:
    """Batches ordered by how close their share of subjects with PET is to half (the cohort's)."""
    return sorted(batches, key=lambda b: (abs(int(b.has_pet.sum()) * 2 - len(b)), -len(b)))


# -- the measurement -----------------------------------------------------------------------


def _resolve(settings: PerfSettings, registry: Registry) -> dict:
    """The run configuration these settings stand for (defaults, --set, method names)."""
    coupling = settings.coupling
    if settings.synth == "none" and coupling is None:
        coupling = "single"
    flags = {
        "method.synth": settings.synth,
        "method.diag": settings.diag,
        "method.coupling": coupling,
        "device": settings.device,
        "seed": settings.seed,
        "precision.mixed": settings.bf16,
        "precision.channels_last": settings.channels_last,
        "train.batch_size": settings.batch,
    }
    return cfg.resolve(registry, None, settings.assignments, flags)


def _check(settings: PerfSettings) -> None:
    if len(settings.size) != 3 or min(settings.size) < 1:
        raise InputError(f"--size needs three positive sides (D H W), got {settings.size}.")
    if settings.batch < 1:
        raise InputError(f"--batch must be at least 1, got {settings.batch}.")
    if settings.repeats < 1 or settings.warmup < 0:
        raise InputError("--repeats must be at least 1 and --warmup at least 0.")
    if settings.threads is not None and settings.threads < 1:
        raise InputError(f"--threads must be at least 1, got {settings.threads}.")


def _place(module: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """As the core places a module: on the device, in NDHWC memory when asked."""
    module = module.to(device)
    return module.to(memory_format=torch.channels_last_3d) if channels_last else module


def _layout(tensor: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return tensor.contiguous(
        memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format
    )


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _compile_modules(modules: list[nn.Module]) -> None:
    """Compile each module in place (``nn.Module.compile``): optimisers keep their parameters."""
    for module in modules:
        module.compile()


def _synth_step(
    module: nn.Module, mri: torch.Tensor, target: torch.Tensor, mixed: bool, device: torch.device
) -> Callable[[], None]:
    """Forward and backward of an L1 loss on the synthesiser; the loss in float32."""

    def step() -> None:
        module.zero_grad(set_to_none=True)
        with _autocast(device, mixed):
            output = module(mri)
        F.l1_loss(output.float(), target).backward()

    return step


def _diag_step(
    module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, mixed: bool, device: torch.device
) -> Callable[[], None]:
    """Forward and backward of a cross-entropy on the diagnoser's logits, in float32."""

    def step() -> None:
        module.zero_grad(set_to_none=True)
        with _autocast(device, mixed):
            output = module(inputs)
        logits = output.logits if hasattr(output, "logits") else output
        F.cross_entropy(logits.float(), labels).backward()

    return step


def _layout_of(tensor: torch.Tensor) -> str:
    """``channels_last``, ``contiguous``, ``either`` (a 1-voxel map fits both) or ``other``."""
    plain = tensor.is_contiguous()
    last = tensor.is_contiguous(memory_format=torch.channels_last_3d)
    if plain and last:
        return "either"
    return "contiguous" if plain else "channels_last" if last else "other"


def layout_census(
    module: nn.Module, inputs: torch.Tensor, device: torch.device, mixed: bool
) -> tuple[dict[str, int], Any]:
    """How many layer outputs of one forward pass are in each memory layout, and the output.

    Only 5D maps with more than one channel are counted (with one channel both layouts are
    the same strides). Under channels_last_3d every ``contiguous`` or ``other`` count is a
    layer whose output left NDHWC, so the next layer pays a layout conversion.
    """
    counts = {"channels_last": 0, "contiguous": 0, "either": 0, "other": 0}

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == 5 and output.shape[1] > 1:
            counts[_layout_of(output)] += 1

    leaves = [m for m in module.modules() if not list(m.children())]
    handles = [leaf.register_forward_hook(hook) for leaf in leaves]
    try:
        with torch.no_grad(), _autocast(device, mixed):
            output = module(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return counts, output


def _param_dtypes(modules: list[nn.Module]) -> list[str]:
    return sorted({str(p.dtype).removeprefix("torch.") for m in modules for p in m.parameters()})


def measure(settings: PerfSettings, registry: Registry | None = None) -> dict[str, Any]:
    """Measure everything ``cdsf-bench perf`` reports and return it as one JSON-ready dict.

    Every part is built and prepared first (warm-up, FLOP count, peak memory), then all
    parts are timed together, one step of each per round (``time_interleaved``).
    """
    from cdsf_bench.assemble import assemble, build_method, configure_backends, resolve_device
    from cdsf_bench.host import bf16_supported

    _check(settings)
    load_before = _load_average()
    registry = registry or default_registry()
    config = _resolve(settings, registry)
    device = resolve_device(config["device"])
    mixed = settings.bf16 and bf16_supported(device)
    channels_last = settings.channels_last
    seed = settings.seed
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(seed)
    deterministic = configure_backends(device)  # as a run does: the kernels timed are a run's
    size = tuple(int(s) for s in settings.size)
    batch = settings.batch
    warmup = settings.warmup

    # the pipeline, context and coupling exactly as a run builds them, on random volumes
    cohort, labels, splits = synthetic_cohort(size, batch, seed)
    assembly = assemble(config, registry, cohort, labels, splits, device)
    pipeline, coupling = assembly.pipeline, assembly.coupling
    stream = _batch_stream(pipeline)
    pipeline_part = Part(
        "pipeline",
        partial(next, stream),
        batch,
        {
            "augment": bool(config["augment"].get("enabled", True)),
            "volumes_per_subject": 3 if pipeline.train_with_pet_truth else 2,
        },
        count=False,
    )
    pipeline_part.prepare(device, warmup)
    parts = [pipeline_part]

    # the synthesiser alone, and the same network in plain fp32 (the speed-up reference)
    generator = torch.Generator().manual_seed(seed)
    mri = _layout((torch.rand(batch, 1, *size, generator=generator) * 2 - 1).to(device), channels_last)
    pet = _layout((torch.rand(batch, 1, *size, generator=generator) * 2 - 1).to(device), channels_last)
    synth_name, synth_params = cfg.plugin_settings(config, "synth")
    synth_part: Part | None = None
    reference_part: Part | None = None
    plain = not mixed and not channels_last and not settings.compile
    if synth_name != "none":
        factory = registry.get("synthesiser", synth_name).factory
        synth_module = _place(factory(**synth_params), device, channels_last)
        layouts, output = layout_census(synth_module, mri, device, mixed)
        reference_step = None
        if not plain:
            reference_module = factory(**synth_params).to(device)
            reference_module.load_state_dict(synth_module.state_dict())
            reference_step = _synth_step(reference_module, mri.contiguous(), pet.contiguous(), False, device)
        synth_part = Part(
            "synthesiser",
            _synth_step(synth_module, mri, pet, mixed, device),
            batch,
            {
                "name": synth_name,
                "layer_output_layouts": layouts,
                "output_dtype": str(output.dtype).removeprefix("torch."),
                "param_dtypes": _param_dtypes([synth_module]),
            },
            count_with=reference_step,
            modules=[synth_module],
        )
        synth_part.prepare(device, warmup)
        parts.append(synth_part)
        if reference_step is not None:
            reference_part = Part("synthesiser_fp32_reference", reference_step, batch)
            reference_part.prepare(device, warmup)
            parts.append(reference_part)

    # the diagnoser alone, on MRI and PET stacked
    diag_name, diag_params = cfg.plugin_settings(config, "diag")
    diag_factory = registry.get("diagnoser", diag_name).factory
    diag_module = _place(
        diag_factory(in_channels=2, input_shape=size, num_classes=2, **diag_params), device, channels_last
    )
    inputs = _layout(torch.cat([mri, pet], dim=1), channels_last)
    batch_labels = (torch.arange(batch) % 2).to(device)
    diag_part = Part(
        "diagnoser",
        _diag_step(diag_module, inputs, batch_labels, mixed, device),
        batch,
        {
            "name": diag_name,
            "param_dtypes": _param_dtypes([diag_module]),
            "layer_output_layouts": layout_census(diag_module, inputs, device, mixed)[0],
        },
        modules=[diag_module],
    )
    diag_part.prepare(device, warmup)
    parts.append(diag_part)

    # the coupling's real steps; FLOPs are counted on the plain form of the method (Part.count_with)
    counting = None
    if channels_last:
        counting = build_method(config, registry, assembly.context, channels_last=False)
    stage_parts = _coupling_parts(coupling, pipeline, device, settings, counting)
    parts += stage_parts

    matmuls = [_matmul_part(torch.bfloat16, device), _matmul_part(torch.float32, device)]
    for part in matmuls:
        part.prepare(device, warmup=2)
    parts += matmuls

    if settings.compile:
        compiled: set[int] = set()
        for part in parts:
            fresh = [m for m in part.modules if id(m) not in compiled]
            _compile_modules(fresh)
            compiled.update(id(m) for m in fresh)
            for _ in range(warmup + COMPILE_EXTRA_WARMUP if part.modules else 0):
                part.step()

    time_interleaved(parts, device, settings.repeats)

    result: dict[str, Any] = {"pipeline": pipeline_part.summary()}
    result["synthesiser"] = None if synth_part is None else synth_part.summary()
    result["diagnoser"] = diag_part.summary()
    stages = [part.summary() for part in stage_parts]
    result["coupling"] = {**stages[0], "name": config["method"]["coupling"], "stages": stages}
    result["synthesiser_fp32_reference"] = None
    if synth_part is not None:
        reference = dict(result["synthesiser"]) if reference_part is None else reference_part.summary()
        reference["reused_from_synthesiser"] = reference_part is None
        reference["speedup_of_synthesiser"] = reference["median_s"] / result["synthesiser"]["median_s"]
        result["synthesiser_fp32_reference"] = reference
    result["reference_rates"] = {
        "bf16_matmul": _matmul_summary(matmuls[0]),
        "fp32_matmul": _matmul_summary(matmuls[1]),
    }
    first = result["coupling"]
    first["share_of_bf16_matmul"] = (
        first["gflop_per_s"] / result["reference_rates"]["bf16_matmul"]["gflop_per_s"]
    )
    result["pipeline"]["share_of_coupling_step"] = result["pipeline"]["median_s"] / first["median_s"]
    measured = [part.record["peak_memory_mib"] for part in parts if "peak_memory_mib" in part.record]
    result["memory"] = {
        "peak_mib": max(measured),
        "kind": "cuda max_memory_allocated while preparing each part"
        if device.type == "cuda"
        else "process peak RSS (ru_maxrss), cumulative: each part's figure is the peak up to it",
    }
    result["settings"] = _settings_record(settings, config, device, mixed, deterministic)
    result["settings"]["load_average_before"] = load_before
    # observed, not assumed: the parameters' dtype after the coupling's optimiser steps
    result["settings"]["master_weights"] = "/".join(result["coupling"]["param_dtypes"])
    result["warnings"] = _warnings(load_before, device)
    result["targets"] = targets(result)
    ordered = (
        "settings",
        "synthesiser",
        "diagnoser",
        "coupling",
        "pipeline",
        "synthesiser_fp32_reference",
        "reference_rates",
        "memory",
        "targets",
        "warnings",
    )
    return {key: result[key] for key in ordered}


def _coupling_parts(
    coupling: Coupling,
    pipeline: Any,
    device: torch.device,
    settings: PerfSettings,
    counting: Coupling | None = None,
) -> list[Part]:
    """One part per stage, each on a typical batch; the first stage's figures are the headline.

    The typical batch is the one whose share of subjects with PET is closest to half. On
    very small volumes a batch whose PET subset is a single subject can leave batch norm
    one value per channel, which training refuses (ValueError); the next closest batch is
    then used, and ``batch_with_pet`` and ``batches_refused`` say so. ``counting`` is the
    same method built plain; its stages' steps on the same batches give the FLOP counts.
    """
    modules = [value for value in vars(coupling).values() if isinstance(value, nn.Module)]
    parts: list[Part] = []
    stages = coupling.stages()
    counting_stages = stages if counting is None else counting.stages()
    for stage, counting_stage in zip(stages, counting_stages, strict=True):
        for module in [*stage.modules.values(), *counting_stage.modules.values()]:
            module.train()
        refused: list[str] = []
        chosen: Part | None = None
        for batch in _typical_batches(list(pipeline.train_batches(0, stage.subjects))):
            part = Part(
                f"coupling:{stage.name}",
                partial(stage.step, batch),
                len(batch),
                {
                    "stage": stage.name,
                    "batch_subjects": len(batch),
                    "batch_with_pet": int(batch.has_pet.sum()),
                },
                count_with=None if counting is None else partial(counting_stage.step, batch),
                modules=modules,
            )
            try:
                part.prepare(device, settings.warmup)
            except ValueError as error:
                refused.append(f"{int(batch.has_pet.sum())} of {len(batch)} with PET: {error}")
                continue
            chosen = part
            break
        if chosen is None:
            raise InputError(
                f"Stage '{stage.name}' cannot train on any batch of size {settings.batch} at "
                f"{'x'.join(map(str, settings.size))}: {refused[0]}. Use a larger --size or --batch."
            )
        chosen.record["batches_refused"] = refused
        chosen.record["param_dtypes"] = _param_dtypes(list(stage.modules.values()))
        parts.append(chosen)
    return parts


def _settings_record(
    settings: PerfSettings, config: dict, device: torch.device, mixed: bool, deterministic: bool
) -> dict[str, Any]:
    flags = cpu_flags()
    return {
        "device": str(device),
        "device_name": device_name(device),
        "size": list(settings.size),
        "batch": settings.batch,
        "repeats": settings.repeats,
        "warmup": settings.warmup + (COMPILE_EXTRA_WARMUP if settings.compile else 0),
        "method": dict(config["method"]),
        "plugin_settings": {s: config[s] for s in ("synth", "diag", "coupling")},
        "bf16_requested": settings.bf16,
        "bf16_autocast": mixed,
        "channels_last_3d": settings.channels_last,
        "compile": settings.compile,
        # perf's own steps compute their losses in float32, as the built-in couplings do
        "loss_dtype": "float32",
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if device.type == "cuda" else None,
        "deterministic_algorithms": deterministic,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": flags,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "flops_counted": "convolutions and matrix multiplies, forward + backward (torch.utils.flop_counter)",
        "load_average_after": _load_average(),
        "seed": settings.seed,
    }


#: a 1-minute load average above this share of the cores means other processes compete
BUSY_LOAD_SHARE = 0.75


def _warnings(load_before: list[float] | None, device: torch.device) -> list[str]:
    """What makes these figures less trustworthy than they look, in words."""
    cores = os.cpu_count() or 1
    out = []
    if load_before is not None and load_before[0] > BUSY_LOAD_SHARE * cores:
        out.append(
            f"the machine was busy (load average {load_before[0]:.1f} on {cores} cores): times include "
            "waiting for other processes, and with one OpenMP thread per core every parallel region can "
            "stall on a preempted thread. Measure again when it is idle, or use --threads 1 for "
            "repeatable ratios."
        )
    if device.type == "cpu" and not torch.backends.mkldnn.is_available():
        out.append("this torch has no oneDNN (mkldnn): CPU convolutions use slow reference kernels.")
    return out


def _load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: other processes slow a shared CPU down."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's three targets, measured values against thresholds.

    They are stated for a 2-core AVX-512 BF16 CPU at 64^3 and batch 2; ``applies`` says
    whether this measurement is that configuration (device, size, batch, precision on).
    """
    settings = result["settings"]
    applies = (
        settings["device"] == "cpu"
        and tuple(settings["size"]) == TARGET_SIZE
        and settings["batch"] == TARGET_BATCH
        and settings["bf16_autocast"]
        and settings["channels_last_3d"]
    )
    reference = result["synthesiser_fp32_reference"]
    speedup = None if reference is None else reference["speedup_of_synthesiser"]
    share = result["coupling"]["share_of_bf16_matmul"]
    pipeline_share = result["pipeline"]["share_of_coupling_step"]

    def target(value: float | None, threshold: float, higher: bool) -> dict[str, Any]:
        met = None if value is None else (value >= threshold if higher else value < threshold)
        return {"value": value, "threshold": threshold, "higher_is_better": higher, "met": met}

    return {
        "applies": applies,
        "synthesiser_speedup_vs_fp32_contiguous": target(speedup, TARGET_SYNTH_SPEEDUP, True),
        "coupling_share_of_bf16_matmul": target(share, TARGET_MATMUL_SHARE, True),
        "pipeline_share_of_coupling_step": target(pipeline_share, TARGET_PIPELINE_SHARE, False),
    }


# -- output ---------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and not math.isfinite(value))
        else format(value, spec)
    )


def _finite(value: Any) -> Any:
    """NaN and infinity are not JSON: report them as null so every reader can parse the object."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def render(result: dict[str, Any], out: Console = console) -> None:
    """Print the measurement as tables, with the settings they were taken under."""
    s = result["settings"]
    title = (
        f"perf: {s['method']['synth']} + {s['method']['diag']} ({s['method']['coupling']}), "
        f"{'x'.join(map(str, s['size']))}, batch {s['batch']}, {s['device']} ({s['device_name']})"
    )
    table = Table(
        title=title,
        caption="synthesiser and diagnoser: forward + backward; coupling: a full training "
        "step; plain: float32, contiguous, eager",
    )
    for column in ("step", "median s", "IQR s", "subjects/s", "GFLOP", "GFLOP/s", "peak MiB"):
        table.add_column(column, justify="right" if column != "step" else "left", no_wrap=column == "step")
    rows: list[tuple[str, dict | None]] = [
        (f"synthesiser {s['method']['synth']}", result["synthesiser"]),
        (f"diagnoser {s['method']['diag']}", result["diagnoser"]),
    ]
    rows += [(f"coupling {stage['stage']}", stage) for stage in result["coupling"]["stages"]]
    rows += [
        ("pipeline batch", result["pipeline"]),
        (f"{s['method']['synth']} fp32 plain", result["synthesiser_fp32_reference"]),
    ]
    for label, record in rows:
        if record is None:
            continue
        table.add_row(
            label,
            _fmt(record["median_s"], ".4f"),
            _fmt(record["iqr_s"], ".4f"),
            _fmt(record["subjects_per_s"], ".2f"),
            _fmt(record["gflop"], ".2f"),
            _fmt(record["gflop_per_s"], ".1f"),
            _fmt(record.get("peak_memory_mib"), ".0f"),
        )
    out.print(table)
    rates = result["reference_rates"]
    out.print(
        f"reference: {MATMUL_SIDE}^2 matmul bf16 {rates['bf16_matmul']['gflop_per_s']:.1f} GFLOP/s, "
        f"fp32 {rates['fp32_matmul']['gflop_per_s']:.1f} GFLOP/s; memory: {result['memory']['kind']}",
        highlight=False,
    )
    out.print(
        f"precision: bf16 autocast {'on' if s['bf16_autocast'] else 'off'}"
        f"{' (requested, not supported here)' if s['bf16_requested'] and not s['bf16_autocast'] else ''}, "
        f"channels_last_3d {'on' if s['channels_last_3d'] else 'off'}, "
        f"compile {'on' if s['compile'] else 'off'}; "
        f"fp32 master weights and losses; torch {s['torch']}, {s['threads']} threads, "
        f"load {s['load_average_before']} before, {s['load_average_after']} after",
        highlight=False,
    )
    goals = result["targets"]
    targets_table = Table(
        title="issue targets"
        + ("" if goals["applies"] else " (stated for CPU, 64^3, batch 2, bf16 + channels_last)")
    )
    for column in ("target", "measured", "threshold", "met"):
        targets_table.add_column(column)
    labels = {
        "synthesiser_speedup_vs_fp32_contiguous": ("synthesiser speed-up vs fp32 contiguous", ".2f", "x"),
        "coupling_share_of_bf16_matmul": ("coupling GFLOP/s / bf16 matmul GFLOP/s", ".1%", ""),
        "pipeline_share_of_coupling_step": ("pipeline time / coupling step", ".2%", ""),
    }
    for key, (label, spec, unit) in labels.items():
        goal = goals[key]
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}[goal["met"]]
        sign = ">=" if goal["higher_is_better"] else "<"
        targets_table.add_row(
            label, _fmt(goal["value"], spec) + unit, f"{sign} {format(goal['threshold'], spec)}{unit}", met
        )
    out.print(targets_table)
    for warning in result["warnings"]:
        out.print(f"[yellow]warning:[/] {warning}", highlight=False)


@click.command("perf")
@click.option("--synth", help="Synthesiser name, or 'none' (default: the run's default).")
@click.option("--diag", help="Diagnoser name.")
@click.option("--coupling", help="Coupling name.")
@click.option(
    "--size", nargs=3, type=int, default=TARGET_SIZE, show_default=True, metavar="D H W", help="Volume size."
)
@click.option("--batch", type=int, default=TARGET_BATCH, show_default=True, help="Subjects per batch.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--repeats", type=int, default=5, show_default=True, help="Timed steps per measurement.")
@click.option("--warmup", type=int, default=2, show_default=True, help="Untimed steps before timing.")
@click.option("--no-bf16", "no_bf16", is_flag=True, help="Plain float32 instead of bf16 autocast.")
@click.option("--no-channels-last", "no_channels_last", is_flag=True, help="Contiguous (NCDHW) memory.")
@click.option(
    "--compile", "use_compile", is_flag=True, help="Wrap modules with torch.compile (slow first steps)."
)
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Plugin settings, e.g. synth.ism.norm=batch.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's, one per core).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def perf_command(
    synth: str | None,
    diag: str | None,
    coupling: str | None,
    size: tuple[int, int, int],
    batch: int,
    device: str,
    repeats: int,
    warmup: int,
    no_bf16: bool,
    no_channels_last: bool,
    use_compile: bool,
    assignments: tuple[str, ...],
    seed: int,
    threads: int | None,
    as_json: bool,
) -> None:
    """Time one training step of synthesiser, diagnoser and coupling, and the data pipeline.

    Random volumes of --size stand in for a cohort; the method is built as a run builds it.
    Medians over --repeats steps after --warmup; FLOPs counted with torch's flop counter.
    """
    import json

    if use_compile:
        click.echo(
            "warning: --compile compiles each module on its first steps (and again for new "
            "batch shapes); that time is in the warm-up, not in the figures.",
            err=True,
        )
    settings = PerfSettings(
        synth=synth,
        diag=diag,
        coupling=coupling,
        size=tuple(size),
        batch=batch,
        device=device,
        repeats=repeats,
        warmup=warmup,
        bf16=not no_bf16,
        channels_last=not no_channels_last,
        compile=use_compile,
        seed=seed,
        threads=threads,
        assignments=assignments,
    )
    result = measure(settings)
    if as_json:
        click.echo(json.dumps(_finite(result), indent=2))
    else:
        render(result)
