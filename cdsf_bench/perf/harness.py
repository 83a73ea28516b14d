"""The timing harness: how a step is timed, its FLOPs counted and its memory noted.

Kept apart from what is measured so that ``cdsf-bench perf`` and the scripts in
``benchmarks/`` time things the same way: device work is waited for before and after each
call (a timer must see the work, not its launch), times are summarised by median and
quartiles (a shared machine's background load pulls the mean), and parts measured together
are interleaved so that ratios between them see the same load.
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

MIB = 2**20
CPU = torch.device("cpu")


@dataclass
class Timing:
    """Seconds of repeated calls after warm-up, summarised robustly."""

    seconds: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def best(self) -> float:
        """The least disturbed call: the most load-robust figure for a microbenchmark."""
        return min(self.seconds)

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


def sync(device: torch.device) -> None:
    """Wait for queued device work, so a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def process_peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / MIB


@contextlib.contextmanager
def peak_memory(device: torch.device, record: dict[str, Any]) -> Iterator[None]:
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
            record["peak_memory_mib"] = process_peak_rss_mib()


def count_flops(step: Callable[[], object]) -> float:
    """FLOPs of one call of ``step`` as torch's flop counter sees them (conv and matmul)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: other processes slow a shared CPU down."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


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
        with peak_memory(device, self.record):
            for _ in range(warmup):
                self.step()
            if self.count:
                self.flops = count_flops(self.count_with or self.step)
            sync(device)

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
            sync(device)
            started = time.perf_counter()
            part.step()
            sync(device)
            part.seconds.append(time.perf_counter() - started)


def time_calls(
    step: Callable[[], object], repeats: int, device: torch.device = CPU, warmup: int = 1
) -> Timing:
    """``warmup`` untimed calls of ``step``, then ``repeats`` timed ones, each as a part is timed.

    The benchmark scripts time single layers and steps with this, so they share the
    harness's synchronisation and summary instead of keeping their own loops.
    """
    for _ in range(warmup):
        step()
    part = Part("step", step, 1, count=False)
    time_interleaved([part], device, repeats)
    return Timing(part.seconds)
