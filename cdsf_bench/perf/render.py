"""How a ``measure`` result is shown: rich tables for a person, one JSON object for a program.

Rendering reads only the result dict, never the live parts, so a result saved as JSON
(``--json``, benchmark outputs) can be shown again the same way.
"""

from __future__ import annotations

import json
import math
from typing import Any

from rich.console import Console
from rich.table import Table

from cdsf_bench.progress import console
from cdsf_bench.results import json_safe


def fmt(value: float | None, spec: str) -> str:
    """``value`` formatted by ``spec``, or ``-`` where there is no finite value to show."""
    return (
        "-"
        if value is None or (isinstance(value, float) and not math.isfinite(value))
        else format(value, spec)
    )


def to_json(result: dict[str, Any]) -> str:
    """The result as one indented JSON object, NaN and infinity written as null."""
    return json.dumps(json_safe(result), indent=2)


def _parts_table(result: dict[str, Any]) -> Table:
    """One row per timed part: median, spread, throughput, FLOPs, rate and peak memory."""
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
            fmt(record["median_s"], ".4f"),
            fmt(record["iqr_s"], ".4f"),
            fmt(record["subjects_per_s"], ".2f"),
            fmt(record["gflop"], ".2f"),
            fmt(record["gflop_per_s"], ".1f"),
            fmt(record.get("peak_memory_mib"), ".0f"),
        )
    return table


def render(result: dict[str, Any], out: Console = console) -> None:
    """Print the measurement as tables, with the settings they were taken under."""
    s = result["settings"]
    out.print(_parts_table(result))
    rates, coupling = result["reference_rates"], result["coupling"]
    fp32 = rates["fp32_matmul"]
    bf16 = rates["bf16_matmul"]
    bf16_text = (
        "bf16 not timed (no bf16 hardware path here)"
        if bf16 is None
        else f"bf16 {bf16['gflop_per_s']:.1f} GFLOP/s (step {coupling['share_of_bf16_matmul']:.1%})"
    )
    out.print(
        f"reference: {fp32['side']}^2 matmul {bf16_text}, fp32 {fp32['gflop_per_s']:.1f} "
        f"GFLOP/s (step {coupling['share_of_fp32_matmul']:.1%}); memory: {result['memory']['kind']}",
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
    for warning in result["warnings"]:
        out.print(f"[yellow]warning:[/] {warning}", highlight=False)
