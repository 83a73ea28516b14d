"""``cdsf-bench perf``: how fast one training step is, and why, on this machine.

A benchmark suite multiplies every second of a training step by methods x seeds x epochs x
batches, so the step is worth measuring on its own, away from data loading and evaluation.
The package builds the same pieces a run builds (the method through ``assemble.build_method``,
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
over fp32, share of the matmul rate, pipeline share) see the same background load. FLOPs
are counted once per step with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions
and matrix multiplies, forward and backward; norms, pooling and activations are
memory-bound and not counted) and divided by the median time.

Precision, as in a run: with mixed precision, forward passes run under bf16 autocast while
every parameter stays float32 (fp32 master weights, updated by float32 optimisers) and every
loss is computed in float32; ``channels_last_3d`` puts modules and batches in NDHWC memory.
Each switch can be turned off, so their effect is measured rather than assumed.

Modules, one job each: ``harness`` (timing, FLOP counting, peak memory; also used by the
scripts in ``benchmarks/``), ``settings`` (what to measure, and the run configuration it
means), ``cohort`` (the random cohort and its batches), ``parts`` (the timed steps),
``measure`` (building and timing them together), ``render`` (tables and JSON) and
``command`` (the click command). Performance targets are not the core's business: they
live with the benchmarks (``benchmarks/targets.py``).
"""

from __future__ import annotations

from cdsf_bench.perf.cohort import synthetic_cohort
from cdsf_bench.perf.command import perf_command
from cdsf_bench.perf.harness import Part, Timing, count_flops, time_calls, time_interleaved
from cdsf_bench.perf.measure import measure
from cdsf_bench.perf.parts import layout_census
from cdsf_bench.perf.render import render, to_json
from cdsf_bench.perf.settings import PerfSettings

__all__ = [
    "Part",
    "PerfSettings",
    "Timing",
    "count_flops",
    "layout_census",
    "measure",
    "perf_command",
    "render",
    "synthetic_cohort",
    "time_calls",
    "time_interleaved",
    "to_json",
]
