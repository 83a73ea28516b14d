"""The issue-8 performance targets and their verdicts on a ``cdsf-bench perf`` result.

Targets are a statement about this project's performance work on one kind of machine, not
something the benchmark framework measures, so they live here with the benchmark scripts
rather than in ``cdsf_bench``. ``benchmarks/perf_step.py`` prints them; any saved result
can be judged too:

    cdsf-bench perf --json > perf.json
    python benchmarks/targets.py perf.json          # the "issue targets" table
    cdsf-bench perf --json | python benchmarks/targets.py --json -
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cdsf_bench.perf.render import fmt
from cdsf_bench.progress import console

#: the configuration the targets are stated for: a 2-core AVX-512 BF16 CPU at 64^3, batch 2
TARGET_SIZE = (64, 64, 64)
TARGET_BATCH = 2
#: the synthesiser under the run's precision at least this much faster than fp32 contiguous
TARGET_SYNTH_SPEEDUP = 2.5
#: the coupling step's achieved GFLOP/s at least this share of the bf16 matmul rate
TARGET_MATMUL_SHARE = 0.40
#: the data pipeline's time per batch at most this share of the coupling step
TARGET_PIPELINE_SHARE = 0.03


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


#: each target's label, number format and unit in the table
LABELS = {
    "synthesiser_speedup_vs_fp32_contiguous": ("synthesiser speed-up vs fp32 contiguous", ".2f", "x"),
    "coupling_share_of_bf16_matmul": ("coupling GFLOP/s / bf16 matmul GFLOP/s", ".1%", ""),
    "pipeline_share_of_coupling_step": ("pipeline time / coupling step", ".2%", ""),
}


def targets_table(goals: dict[str, Any]) -> Table:
    """The targets as the table ``cdsf-bench perf`` used to print under its own figures."""
    table = Table(
        title="issue targets"
        + ("" if goals["applies"] else " (stated for CPU, 64^3, batch 2, bf16 + channels_last)")
    )
    for column in ("target", "measured", "threshold", "met"):
        table.add_column(column)
    for key, (label, spec, unit) in LABELS.items():
        goal = goals[key]
        met = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}[goal["met"]]
        sign = ">=" if goal["higher_is_better"] else "<"
        table.add_row(
            label, fmt(goal["value"], spec) + unit, f"{sign} {format(goal['threshold'], spec)}{unit}", met
        )
    return table


def render_targets(result: dict[str, Any], out: Console = console) -> None:
    """Print the verdicts on one ``measure`` result."""
    out.print(targets_table(targets(result)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("result", help="a 'cdsf-bench perf --json' result file, or - for stdin")
    parser.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    args = parser.parse_args(argv)
    text = sys.stdin.read() if args.result == "-" else Path(args.result).read_text()
    result = json.loads(text)
    if args.json:
        print(json.dumps(targets(result), indent=2))
    else:
        render_targets(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
