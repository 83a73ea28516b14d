"""The issue-8 performance targets, measured: ``python benchmarks/perf_step.py``.

Runs ``cdsf-bench perf``'s measurement (cdsf_bench/perf/measure.py) at the issue's size,
64^3 and batch 2, for the default method (ISM + MDM, joint), and prints the three figures
the targets are about:

1. the ISM's forward + backward under the run's precision (bf16 autocast, channels_last_3d)
   against the same network in plain float32 with contiguous memory: the speed-up ratio
   (target >= 2.5x);
2. the joint training step's achieved GFLOP/s against this CPU's own bf16 matrix-multiply
   rate, both measured in the same process (target >= 40%);
3. the data pipeline's time per augmented batch as a share of the joint step (target < 3%).

A shared machine makes single timings unreliable, so ``--rounds`` repeats the whole
measurement and reports the median and the best round of each figure, with the load
average before each round. ``--plain`` also measures the whole step with both switches off
(``--no-bf16 --no-channels-last``). ``--out`` writes every round's full JSON, each with
its ``targets`` verdicts. The targets and their thresholds are in ``benchmarks/targets.py``;
the "issue targets" table of every round is printed after the summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from targets import (
    TARGET_BATCH,
    TARGET_MATMUL_SHARE,
    TARGET_PIPELINE_SHARE,
    TARGET_SIZE,
    TARGET_SYNTH_SPEEDUP,
    render_targets,
    targets,
)

from cdsf_bench.perf import PerfSettings, measure
from cdsf_bench.perf.harness import load_average


def figures(result: dict[str, Any]) -> dict[str, float]:
    """The handful of numbers the targets are stated in, from one ``measure`` result."""
    synth = result["synthesiser"]
    reference = result["synthesiser_fp32_reference"]
    coupling = result["coupling"]
    rates = result["reference_rates"]
    values = {
        "ism_mixed_s": synth["median_s"],
        "ism_fp32_plain_s": reference["median_s"],
        "ism_speedup": reference["speedup_of_synthesiser"],
        "joint_step_s": coupling["median_s"],
        "joint_gflop": coupling["gflop"],
        "joint_gflop_per_s": coupling["gflop_per_s"],
        "fp32_matmul_gflop_per_s": rates["fp32_matmul"]["gflop_per_s"],
        "joint_share_of_fp32_matmul": coupling["share_of_fp32_matmul"],
        "pipeline_batch_s": result["pipeline"]["median_s"],
        "pipeline_share": result["pipeline"]["share_of_coupling_step"],
        "subjects_per_s": coupling["subjects_per_s"],
        "peak_mib": result["memory"]["peak_mib"],
    }
    if rates["bf16_matmul"] is not None:  # timed only where bf16 has a hardware path
        values["bf16_matmul_gflop_per_s"] = rates["bf16_matmul"]["gflop_per_s"]
        values["joint_share_of_bf16_matmul"] = coupling["share_of_bf16_matmul"]
    return values


#: which figures are better when larger (for "best round")
HIGHER_IS_BETTER = {
    "ism_speedup",
    "joint_gflop_per_s",
    "bf16_matmul_gflop_per_s",
    "fp32_matmul_gflop_per_s",
    "joint_share_of_bf16_matmul",
    "joint_share_of_fp32_matmul",
    "subjects_per_s",
}


def summarise(rounds: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Median and best value of each figure over the rounds."""
    out = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        best = max(values) if key in HIGHER_IS_BETTER else min(values)
        out[key] = {"median": statistics.median(values), "best": best}
    return out


def _verdict(value: float, threshold: float, higher: bool) -> str:
    met = value >= threshold if higher else value < threshold
    return "met" if met else "NOT met"


def _matmul_line(m: dict[str, float]) -> str:
    """The joint step's share of the bf16 matmul rate (the target), or of fp32's without bf16 hardware."""
    if "joint_share_of_bf16_matmul" not in m:
        return (
            f"  joint step {m['joint_gflop_per_s']:.1f} GFLOP/s vs fp32 matmul"
            f" {m['fp32_matmul_gflop_per_s']:.1f} GFLOP/s = {m['joint_share_of_fp32_matmul']:.1%}"
            " (the bf16 target cannot be measured: this machine has no bf16 hardware path)"
        )
    return (
        f"  joint step {m['joint_gflop_per_s']:.1f} GFLOP/s vs bf16 matmul"
        f" {m['bf16_matmul_gflop_per_s']:.1f} GFLOP/s = {m['joint_share_of_bf16_matmul']:.1%}"
        f" (target >= {TARGET_MATMUL_SHARE:.0%}: "
        f"{_verdict(m['joint_share_of_bf16_matmul'], TARGET_MATMUL_SHARE, True)})"
    )


def report(summary: dict[str, dict[str, float]], loads: list[list[float] | None], plain: dict | None) -> str:
    """The figures as text: one line per figure, then the three targets on the median round."""
    lines = [f"load average (1, 5, 15 min) before each round: {loads}"]
    for key, value in summary.items():
        lines.append(f"  {key:28s} median {value['median']:10.4g}   best {value['best']:10.4g}")
    m = {key: value["median"] for key, value in summary.items()}
    lines += [
        "targets (median over rounds):",
        f"  ISM bf16+channels_last vs fp32 contiguous: {m['ism_fp32_plain_s']:.3f} s"
        f" / {m['ism_mixed_s']:.3f} s = {m['ism_speedup']:.2f}x (target >= {TARGET_SYNTH_SPEEDUP}x: "
        f"{_verdict(m['ism_speedup'], TARGET_SYNTH_SPEEDUP, True)})",
        _matmul_line(m),
        f"  pipeline {m['pipeline_batch_s'] * 1e3:.1f} ms per batch vs joint step {m['joint_step_s']:.3f} s "
        f"= {m['pipeline_share']:.2%} (target < {TARGET_PIPELINE_SHARE:.0%}: "
        f"{_verdict(m['pipeline_share'], TARGET_PIPELINE_SHARE, False)})",
    ]
    if plain is not None:
        p = {key: value["median"] for key, value in plain.items()}
        lines.append(
            f"  whole joint step, fp32 contiguous: {p['joint_step_s']:.3f} s"
            f" ({p['joint_gflop_per_s']:.1f} GFLOP/s) vs bf16+channels_last {m['joint_step_s']:.3f} s:"
            f" {p['joint_step_s'] / m['joint_step_s']:.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=list(TARGET_SIZE), metavar=("D", "H", "W"))
    parser.add_argument("--batch", type=int, default=TARGET_BATCH)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core)")
    parser.add_argument("--plain", action="store_true", help="also measure with bf16 and channels_last off")
    parser.add_argument("--out", type=Path, help="write every round's full JSON here")
    args = parser.parse_args(argv)

    def run(bf16: bool, channels_last: bool) -> tuple[list[dict], list[dict], list]:
        results, rounds, loads = [], [], []
        for index in range(args.rounds):
            loads.append(load_average())
            settings = PerfSettings(
                size=tuple(args.size),
                batch=args.batch,
                device="cpu",
                repeats=args.repeats,
                bf16=bf16,
                channels_last=channels_last,
                threads=args.threads,
            )
            result = measure(settings)
            result["targets"] = targets(result)
            results.append(result)
            rounds.append(figures(result))
            print(
                f"round {index + 1}/{args.rounds} ({'bf16+CL' if bf16 else 'fp32 plain'}): "
                f"joint step {rounds[-1]['joint_step_s']:.3f} s, load {loads[-1]}",
                file=sys.stderr,
            )
        return results, rounds, loads

    results, rounds, loads = run(True, True)
    plain_summary = None
    plain_results: list[dict] = []
    if args.plain:
        plain_results, plain_rounds, _ = run(False, False)
        plain_summary = summarise(plain_rounds)
    settings = results[0]["settings"]
    print(
        f"cdsf-bench perf targets: {settings['device_name']}, {settings['threads']} threads, "
        f"torch {settings['torch']}, size {settings['size']}, batch {settings['batch']}, "
        f"{args.rounds} round(s) x {args.repeats} steps"
    )
    print(report(summarise(rounds), loads, plain_summary))
    for result in results:
        render_targets(result)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"mixed": results, "plain": plain_results}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
