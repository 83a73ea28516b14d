"""What this machine is: its processor's model and features, read once.

Runs need to know whether bf16 autocast pays off here; ``cdsf-bench perf`` and every run's
environment.json report the processor (:func:`machine_record`). Both read it from here, so
/proc/cpuinfo is parsed in one place.
"""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

#: the processor features that decide whether bf16 matrix work is fast on a CPU
BF16_FEATURES = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


@lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """The first processor's model name and feature flags (Linux); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", frozenset()
    model, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if model and flags:
            break
    return model, flags


def cpu_flags() -> dict[str, bool]:
    """Which of :data:`BF16_FEATURES` this CPU has."""
    flags = _cpuinfo()[1]
    return {name: name in flags for name in BF16_FEATURES}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform calls the processor."""
    return _cpuinfo()[0] or platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def machine_record() -> dict[str, Any]:
    """What environment.json records of this machine beyond versions: what sets a run's speed
    and, through bf16 autocast and the thread count, its numbers.

    Torch's intra-op count is ``torch_threads``; the inter-op count sits beside it, because a
    run's floating-point reductions, hence its AUC, may differ with either.
    """
    return {
        "cpu_model": cpu_model(),
        "cpu_features": cpu_flags(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
    }


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast is fast here: CUDA with bf16, or a CPU with AVX-512 BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    flags = cpu_flags()
    return flags["avx512_bf16"] or flags["amx_bf16"]


def cpu_workers() -> int:
    """How many threads CPU-side data work (the phantom's simulation) may use.

    Torch's intra-op thread count, so that ``OMP_NUM_THREADS=1`` shards of a suite, each
    given one core, keep to it in their data work too.
    """
    return max(1, torch.get_num_threads())
