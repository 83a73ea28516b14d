"""What this machine is (its processor's model and features, read once) and how many threads
a process trains with.

Runs need to know whether bf16 autocast pays off here; ``cdsf-bench perf`` and every run's
environment.json report the processor (:func:`machine_record`). Both read it from here, so
/proc/cpuinfo is parsed in one place. Every command that trains sets its thread count here
(:func:`use_threads`), once per process before any work, and warns when the machine is busier
than its cores (:func:`load_warning`); the rule is docs/scaling.md's "Threads on a shared machine".
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable
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
    run's floating-point reductions, hence its AUC, may differ with either. The OpenMP wait
    policy (set by the CLI unless the user set one) changes speed only, and is recorded so a
    timing can be read with it.
    """
    return {
        "cpu_model": cpu_model(),
        "cpu_features": cpu_flags(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
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


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask: a scheduler's or ``taskset``'s)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks on this platform (macOS)
        return os.cpu_count() or 1


def default_threads() -> int:
    """Torch's own count (``OMP_NUM_THREADS``, else one per core), never more than the usable cores."""
    return max(1, min(torch.get_num_threads(), usable_cores()))


def use_threads(threads: int | None) -> int:
    """Train with ``threads`` intra-op threads (None: :func:`default_threads`); the count set.

    The inter-op pool gets the same count; torch accepts it only before its first parallel
    work, so a process that already worked (a test session, a second command in one
    process) keeps the pool it has.
    """
    count = default_threads() if threads is None else threads
    torch.set_num_threads(count)
    if torch.get_num_interop_threads() != count:
        with contextlib.suppress(RuntimeError):  # the inter-op pool already started: it stays
            torch.set_num_interop_threads(count)
    return count


def load_warning(
    threads: int,
    load: Callable[[], tuple[float, float, float]] = os.getloadavg,
    cores: Callable[[], int] = usable_cores,
) -> str | None:
    """What to tell a user who starts training on a machine busier than its cores, or None.

    A one-minute load average above the usable cores means other processes want the cores
    too: an OpenMP team of several threads then waits on whichever of them is preempted.
    """
    current, usable = load()[0], cores()
    if current <= usable:
        return None
    advice = (
        "every step can wait on a preempted thread; if training is slow, use --threads 1."
        if threads > 1
        else "times include waiting for the other processes."
    )
    return (
        f"the machine is busy: load average {current:.1f} on {usable} usable core(s), and this command "
        f"trains with {threads} thread(s); {advice}"
    )
