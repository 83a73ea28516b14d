"""The suite report's "Compute cost" section: wall time, devices, energy and CO2 per method.

Read from what the finished runs recorded, never from the machine that renders: the wall
seconds of results.csv (each run's timing.json), the device of each run's environment.json
(:func:`cdsf_bench.cost.device_name`) and, where a run measured them (``evaluate.carbon``),
the energy and CO2-equivalent of its energy.json. Each method's runs are summed, then all
runs; energy and CO2 are summed over the runs that measured them, and the table says how
many did, so a partial sum is never read as a total.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from cdsf_bench.bench.inputs import method_order
from cdsf_bench.bench.render import Block, Heading, Paragraph, Table
from cdsf_bench.cost import ENERGY_KEYS, device_name
from cdsf_bench.run_folder import RunFolder

TOTAL = "all runs"
COST_NOTE = (
    "Wall time: each run's timing.json, from its start to its last file, summed over the runs. "
    "Device: each run's environment.json (GPU name on CUDA, else the CPU model). Energy (kWh) and "
    "CO2-equivalent (kg): CodeCarbon's offline estimate (evaluate.carbon, for the electricity mix of "
    "evaluate.carbon_country) summed over the runs that measured them ('measured' counts them); a "
    "dash where none did."
)


def run_costs(folder: Path, done: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run: method, wall seconds, device, and energy and CO2 (NaN where unmeasured)."""
    rows = []
    for _, run in done.iterrows():
        record = RunFolder(Path(folder) / run["run_folder"])
        energy = record.energy()
        rows.append(
            {
                "method": run["method"],
                "wall_seconds": float(run["wall_seconds"]),
                "device": device_name(record.environment()),
                **{key: float(energy.get(key, math.nan)) for key in ENERGY_KEYS},
            }
        )
    return pd.DataFrame(rows, columns=["method", "wall_seconds", "device", *ENERGY_KEYS])


def cost_summary(costs: pd.DataFrame, methods: list[str]) -> pd.DataFrame:
    """Per method (in ``methods``' order) and over all runs: runs, wall seconds (sum), devices,
    the runs that measured energy, and their energy and CO2 summed (NaN where none did)."""

    def summed(part: pd.DataFrame, name: str) -> dict[str, object]:
        measured = part["energy_kwh"].notna()
        return {
            "method": name,
            "runs": len(part),
            "wall_seconds": float(part["wall_seconds"].sum(min_count=1)),
            "devices": "; ".join(dict.fromkeys(part["device"])),
            "measured": int(measured.sum()),
            **{
                key: float(part.loc[measured, key].sum()) if measured.any() else math.nan
                for key in ENERGY_KEYS
            },
        }

    rows = [summed(costs[costs["method"] == m], m) for m in methods if (costs["method"] == m).any()]
    rows.append(summed(costs, TOTAL))
    return pd.DataFrame(rows)


def _number(value: float, digits: int) -> str:
    return "-" if not math.isfinite(value) else f"{value:.{digits}f}"


def cost_blocks(folder: Path, done: pd.DataFrame) -> list[Block]:
    """The "Compute cost" section of the finished runs ``done`` (none without a finished run)."""
    if done.empty:
        return []
    summary = cost_summary(run_costs(folder, done), method_order(done))
    rows = tuple(
        (
            str(r["method"]),
            str(r["runs"]),
            _number(r["wall_seconds"] / 3600, 3),
            str(r["devices"]),
            str(r["measured"]),
            _number(r["energy_kwh"], 4),
            _number(r["co2eq_kg"], 4),
        )
        for _, r in summary.iterrows()
    )
    columns = ("method", "runs", "wall time (h)", "device", "measured", "energy (kWh)", "CO2eq (kg)")
    return [Heading(2, "Compute cost"), Table(columns, rows), Paragraph(COST_NOTE)]
