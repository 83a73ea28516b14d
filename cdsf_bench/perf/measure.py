"""``measure``: build every part as a run builds it, time them together, report one dict.

The order matters and is kept in one place here: every part is built and prepared first
(warm-up, FLOP count, peak memory), in a fixed order that also fixes what the random number
generators produce, then all parts are timed together, one step of each per round
(``time_interleaved``), and only then summarised, so ratios between parts are comparable.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from cdsf_bench.compiling import compile_blocker
from cdsf_bench.errors import InputError
from cdsf_bench.host import cpu_flags, device_name
from cdsf_bench.perf.cohort import batch_stream, synthetic_cohort
from cdsf_bench.perf.harness import Part, load_average, time_interleaved
from cdsf_bench.perf.parts import (
    coupling_parts,
    diag_step,
    layout,
    layout_census,
    matmul_part,
    matmul_summary,
    param_dtypes,
    synth_step,
)
from cdsf_bench.perf.settings import COMPILE_EXTRA_WARMUP, PerfSettings, check, resolve_config
from cdsf_bench.registry import Registry, default_registry
from cdsf_bench.settings import RunConfig

#: a 1-minute load average above this share of the cores means other processes compete
BUSY_LOAD_SHARE = 0.75
#: the result's keys, in the order the JSON reports them
RESULT_KEYS = (
    "settings",
    "synthesiser",
    "diagnoser",
    "coupling",
    "pipeline",
    "synthesiser_fp32_reference",
    "reference_rates",
    "memory",
    "warnings",
)


@dataclass
class _Run:
    """What every part is built from: the settings, their configuration and the device."""

    settings: PerfSettings
    registry: Registry
    config: RunConfig
    device: torch.device
    mixed: bool

    @property
    def size(self) -> tuple[int, int, int]:
        depth, height, width = (int(side) for side in self.settings.size)
        return depth, height, width


@dataclass
class _Parts:
    """The parts of one measurement, by role; ``timed`` is the order they are timed in."""

    pipeline: Part
    synth: Part | None = None
    reference: Part | None = None
    diag: Part | None = None
    stages: list[Part] = field(default_factory=list)
    matmuls: list[Part] = field(default_factory=list)

    def timed(self) -> list[Part]:
        networks = [p for p in (self.synth, self.reference, self.diag) if p is not None]
        return [self.pipeline, *networks, *self.stages, *self.matmuls]


def measure(settings: PerfSettings, registry: Registry | None = None) -> dict[str, Any]:
    """Measure everything ``cdsf-bench perf`` reports and return it as one JSON-ready dict.

    Every part is built and prepared first (warm-up, FLOP count, peak memory), then all
    parts are timed together, one step of each per round (``time_interleaved``).
    """
    from cdsf_bench.assemble import assemble, build_method, configure_backends, resolve_device
    from cdsf_bench.host import bf16_supported

    check(settings)
    load_before = load_average()
    registry = registry or default_registry()
    config = resolve_config(settings, registry)
    device = resolve_device(config.device)
    run = _Run(settings, registry, config, device, settings.bf16 and bf16_supported(device))
    torch.manual_seed(settings.seed)
    deterministic = configure_backends(device)  # as a run does: the kernels timed are a run's

    # the pipeline, context and coupling exactly as a run builds them, on random volumes
    cohort, labels, splits = synthetic_cohort(run.size, settings.batch, settings.seed)
    assembly = assemble(config, registry, cohort, labels, splits, device)
    parts = _Parts(_pipeline_part(run, assembly.pipeline))
    mri, pet = _random_batches(run)
    parts.synth, parts.reference = _synth_parts(run, mri, pet)
    parts.diag = _diag_part(run, mri, pet)
    # the coupling's real steps; FLOPs are counted on the plain form of the method (Part.count_with)
    counting = None
    if settings.channels_last:
        counting = build_method(config, registry, assembly.context, channels_last=False)
    parts.stages = coupling_parts(
        assembly.coupling, assembly.pipeline, device, run.size, settings.batch, settings.warmup, counting
    )
    # bf16 matrix work without a hardware path (an AVX2 CPU) is emulated, hundreds of times
    # slower than fp32 there: no reference for anything a run does, and minutes to time
    dtypes = [torch.bfloat16, torch.float32] if bf16_supported(device) else [torch.float32]
    parts.matmuls = [matmul_part(dtype, device, settings.matmul_side) for dtype in dtypes]
    for part in parts.matmuls:
        part.prepare(device, warmup=2)

    timed = parts.timed()
    if settings.compile:
        blocker = compile_blocker(device.type)
        if blocker is not None:
            raise InputError(f"--compile: torch.compile cannot compile on this machine ({blocker}).")
        _compile_parts(timed, settings.warmup)
    time_interleaved(timed, device, settings.repeats)
    return _result(run, parts, load_before, deterministic)


def _pipeline_part(run: _Run, pipeline: Any) -> Part:
    """Drawing one augmented training batch, as the engine draws it."""
    part = Part(
        "pipeline",
        partial(next, batch_stream(pipeline)),
        run.settings.batch,
        {
            "augment": run.config.augment.enabled,
            "volumes_per_subject": 2 + len(pipeline.hidden.names),
        },
        count=False,
    )
    part.prepare(run.device, run.settings.warmup)
    return part


def _random_batches(run: _Run) -> tuple[torch.Tensor, torch.Tensor]:
    """An MRI and a PET batch in [-1, 1], on the device and in the run's memory format."""
    generator = torch.Generator().manual_seed(run.settings.seed)
    shape = (run.settings.batch, 1, *run.size)
    channels_last = run.settings.channels_last
    mri = layout((torch.rand(shape, generator=generator) * 2 - 1).to(run.device), channels_last)
    pet = layout((torch.rand(shape, generator=generator) * 2 - 1).to(run.device), channels_last)
    return mri, pet


def _synth_parts(run: _Run, mri: torch.Tensor, pet: torch.Tensor) -> tuple[Part | None, Part | None]:
    """The synthesiser alone, and the same network in plain fp32 (the speed-up reference).

    Neither exists without a synthesiser. The reference is None when the synthesiser is
    already plain (no autocast, contiguous, eager): it would time the same thing twice.
    """
    from cdsf_bench.assemble import place

    settings, device, mixed = run.settings, run.device, run.mixed
    synth_name, synth_params = run.config.plugin("synth")
    if synth_name == "none":
        return None, None
    plain = not mixed and not settings.channels_last and not settings.compile
    factory = run.registry.get("synthesiser", synth_name).factory
    module = place(factory(**synth_params), device, settings.channels_last)
    layouts, output = layout_census(module, mri, device, mixed)
    reference_step = None
    if not plain:
        reference_module = factory(**synth_params).to(device)
        reference_module.load_state_dict(module.state_dict())
        reference_step = synth_step(reference_module, mri.contiguous(), pet.contiguous(), False, device)
    synth = Part(
        "synthesiser",
        synth_step(module, mri, pet, mixed, device),
        settings.batch,
        {
            "name": synth_name,
            "layer_output_layouts": layouts,
            "output_dtype": str(output.dtype).removeprefix("torch."),
            "param_dtypes": param_dtypes([module]),
        },
        count_with=reference_step,
        modules=[module],
    )
    synth.prepare(device, settings.warmup)
    if reference_step is None:
        return synth, None
    reference = Part("synthesiser_fp32_reference", reference_step, settings.batch)
    reference.prepare(device, settings.warmup)
    return synth, reference


def _diag_part(run: _Run, mri: torch.Tensor, pet: torch.Tensor) -> Part:
    """The diagnoser alone, on MRI and PET stacked."""
    from cdsf_bench.assemble import place

    settings, device, mixed = run.settings, run.device, run.mixed
    diag_name, diag_params = run.config.plugin("diag")
    factory = run.registry.get("diagnoser", diag_name).factory
    module = place(
        factory(in_channels=2, input_shape=run.size, num_classes=2, **diag_params),
        device,
        settings.channels_last,
    )
    inputs = layout(torch.cat([mri, pet], dim=1), settings.channels_last)
    labels = (torch.arange(settings.batch) % 2).to(device)
    part = Part(
        "diagnoser",
        diag_step(module, inputs, labels, mixed, device),
        settings.batch,
        {
            "name": diag_name,
            "param_dtypes": param_dtypes([module]),
            "layer_output_layouts": layout_census(module, inputs, device, mixed)[0],
        },
        modules=[module],
    )
    part.prepare(device, settings.warmup)
    return part


def _compile_parts(parts: list[Part], warmup: int) -> None:
    """Compile each part's modules in place, once each, and warm the compiled steps up.

    ``nn.Module.compile`` keeps the parameters, so the optimisers still update them; the
    extra warm-up absorbs compilation (and recompilation) so it is not timed.
    """
    compiled: set[int] = set()
    for part in parts:
        fresh = [m for m in part.modules if id(m) not in compiled]
        for module in fresh:
            module.compile()
        compiled.update(id(m) for m in fresh)
        for _ in range(warmup + COMPILE_EXTRA_WARMUP if part.modules else 0):
            part.step()


def _result(run: _Run, parts: _Parts, load_before: list[float] | None, deterministic: bool) -> dict[str, Any]:
    """The timed parts summarised, with the ratios between them and how they were measured."""
    result: dict[str, Any] = {"pipeline": parts.pipeline.summary()}
    result["synthesiser"] = None if parts.synth is None else parts.synth.summary()
    assert parts.diag is not None
    result["diagnoser"] = parts.diag.summary()
    stages = [part.summary() for part in parts.stages]
    result["coupling"] = {**stages[0], "name": run.config.method.coupling, "stages": stages}
    result["synthesiser_fp32_reference"] = _reference_summary(result["synthesiser"], parts.reference)
    rates = {part.name: matmul_summary(part) for part in parts.matmuls}
    result["reference_rates"] = {
        "bf16_matmul": rates.get("bfloat16_matmul"),
        "fp32_matmul": rates["float32_matmul"],
    }
    first = result["coupling"]
    for name, rate in result["reference_rates"].items():  # None: no bf16 hardware path here
        first[f"share_of_{name}"] = None if rate is None else first["gflop_per_s"] / rate["gflop_per_s"]
    result["pipeline"]["share_of_coupling_step"] = result["pipeline"]["median_s"] / first["median_s"]
    result["memory"] = _memory(parts.timed(), run.device)
    result["settings"] = _settings_record(run, deterministic)
    result["settings"]["load_average_before"] = load_before
    # observed, not assumed: the parameters' dtype after the coupling's optimiser steps
    result["settings"]["master_weights"] = "/".join(result["coupling"]["param_dtypes"])
    result["warnings"] = _warnings(load_before, run.device)
    return {key: result[key] for key in RESULT_KEYS}


def _reference_summary(synthesiser: dict[str, Any] | None, reference: Part | None) -> dict[str, Any] | None:
    """The fp32 reference's record and the synthesiser's speed-up over it.

    Without a reference part the synthesiser was already plain, so it is its own reference.
    """
    if synthesiser is None:
        return None
    record = dict(synthesiser) if reference is None else reference.summary()
    record["reused_from_synthesiser"] = reference is None
    record["speedup_of_synthesiser"] = record["median_s"] / synthesiser["median_s"]
    return record


def _memory(parts: list[Part], device: torch.device) -> dict[str, Any]:
    """The highest peak over all parts, and what kind of peak it is on this device."""
    measured = [part.record["peak_memory_mib"] for part in parts if "peak_memory_mib" in part.record]
    return {
        "peak_mib": max(measured),
        "kind": "cuda max_memory_allocated while preparing each part"
        if device.type == "cuda"
        else "process peak RSS (ru_maxrss), cumulative: each part's figure is the peak up to it",
    }


def _settings_record(run: _Run, deterministic: bool) -> dict[str, Any]:
    """Everything that decides the figures, so two measurements can be compared fairly."""
    settings, config, device = run.settings, run.config, run.device
    return {
        "device": str(device),
        "device_name": device_name(device),
        "size": list(settings.size),
        "batch": settings.batch,
        "repeats": settings.repeats,
        "warmup": settings.warmup + (COMPILE_EXTRA_WARMUP if settings.compile else 0),
        "method": dict(config.raw["method"]),
        "plugin_settings": {s: config.raw[s] for s in ("synth", "diag", "coupling")},
        "bf16_requested": settings.bf16,
        "bf16_autocast": run.mixed,
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
        "cpu_flags": cpu_flags(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "flops_counted": "convolutions and matrix multiplies, forward + backward (torch.utils.flop_counter)",
        "load_average_after": load_average(),
        "seed": settings.seed,
        "matmul_side": settings.matmul_side,
    }


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
