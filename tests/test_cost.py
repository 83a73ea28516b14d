"""Compute cost: the energy meter around a run, the device's name, the report's sums.

CodeCarbon is not a test dependency (its import pulls in a web stack), so the meter is
driven by a stub tracker through the factory seam; the values written must be the stub's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest

from cdsf_bench.bench.cost_report import TOTAL, cost_blocks, cost_summary, run_costs
from cdsf_bench.bench.render import Table
from cdsf_bench.cost import device_name, energy_meter, require_codecarbon
from cdsf_bench.errors import ConfigError


@dataclass
class Emissions:
    energy_consumed: float
    emissions: float
    duration: float


@dataclass
class StubTracker:
    """Records its calls; its final record is set by stop, as CodeCarbon's is."""

    energy: float
    calls: list[str] = field(default_factory=list)
    final_emissions_data: Emissions | None = None

    def start(self) -> None:
        self.calls.append("start")

    def stop(self) -> float | None:
        self.calls.append("stop")
        self.final_emissions_data = Emissions(self.energy, self.energy * 0.4, 12.5)
        return self.energy * 0.4


def test_the_meter_records_what_the_tracker_measured():
    made: list[tuple[str, StubTracker]] = []

    def make(country: str) -> StubTracker:
        made.append((country, StubTracker(0.125)))
        return made[-1][1]

    with energy_meter(True, "DEU", make_tracker=make) as meter:
        assert made[0][1].calls == ["start"]
        record = meter.record()
    country, tracker = made[0]
    assert country == "DEU" and tracker.calls == ["start", "stop"]  # stopped once
    assert record is not None
    assert (record["energy_kwh"], record["co2eq_kg"], record["duration_seconds"]) == (0.125, 0.05, 12.5)
    assert record["country_iso_code"] == "DEU" and record["tracking_mode"] == "process"


def test_the_meter_stops_its_tracker_when_the_run_fails():
    tracker = StubTracker(1.0)
    with pytest.raises(RuntimeError), energy_meter(True, "FRA", make_tracker=lambda _: tracker):
        raise RuntimeError("the run failed")
    assert tracker.calls == ["start", "stop"]


def test_without_carbon_or_on_another_rank_nothing_is_measured():
    def refuse(_: str) -> StubTracker:
        raise AssertionError("no tracker may be made")

    for carbon, measures in ((False, True), (True, False)):
        with energy_meter(carbon, "DEU", measures=measures, make_tracker=refuse) as meter:
            assert meter.record() is None


def test_carbon_needs_a_country_and_codecarbon():
    with pytest.raises(ConfigError, match="evaluate.carbon_country"):
        require_codecarbon("")
    try:
        import codecarbon  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"cdsf-bench\[carbon\]"):
            require_codecarbon("DEU")


def test_the_device_is_named_by_its_gpu_else_its_cpu():
    assert (
        device_name({"device": "cuda:0", "gpu": "NVIDIA H100", "cpu_model": "Xeon"}) == "NVIDIA H100 (cuda:0)"
    )
    assert device_name({"device": "cpu", "cpu_model": "AMD EPYC 7B13"}) == "AMD EPYC 7B13 (cpu)"
    assert device_name({}) == "unknown"


def _fake_suite(root: Path, energies: dict[str, float | None]) -> pd.DataFrame:
    """Finished runs with environment.json and, where given, energy.json; their results rows."""
    rows = []
    for index, (run, energy) in enumerate(energies.items()):
        folder = root / run
        folder.mkdir(parents=True)
        (folder / "environment.json").write_text(json.dumps({"device": "cpu", "cpu_model": "Xeon"}))
        if energy is not None:
            (folder / "energy.json").write_text(json.dumps({"energy_kwh": energy, "co2eq_kg": energy / 2}))
        rows.append({"method": run.split("/")[-1], "run_folder": run, "wall_seconds": 1800.0 * (index + 1)})
    return pd.DataFrame(rows)


def test_the_report_sums_cost_per_method_and_in_total(tmp_path):
    done = _fake_suite(
        tmp_path,
        {"t/seed-0/A": 0.5, "t/seed-0/B": None, "t/seed-1/A": 0.25, "t/seed-1/B": None},
    )
    summary = cost_summary(run_costs(tmp_path, done), ["A", "B"]).set_index("method")
    assert summary.loc["A", "runs"] == 2 and summary.loc["A", "measured"] == 2
    assert summary.loc["A", "wall_seconds"] == 1800.0 + 5400.0
    assert summary.loc["A", "energy_kwh"] == 0.75 and summary.loc["A", "co2eq_kg"] == 0.375
    assert summary.loc["B", "measured"] == 0 and math.isnan(summary.loc["B", "energy_kwh"])
    assert summary.loc[TOTAL, "runs"] == 4 and summary.loc[TOTAL, "measured"] == 2
    assert summary.loc[TOTAL, "wall_seconds"] == 1800.0 * (1 + 2 + 3 + 4)
    assert summary.loc[TOTAL, "energy_kwh"] == 0.75  # the measured runs only, and the table says so
    assert summary.loc["A", "devices"] == "Xeon (cpu)"

    table = next(block for block in cost_blocks(tmp_path, done) if isinstance(block, Table))
    by_method = {row[0]: row for row in table.rows}
    assert by_method["A"] == ("A", "2", "2.000", "Xeon (cpu)", "2", "0.7500", "0.3750")
    assert by_method["B"][-3:] == ("0", "-", "-")
    assert by_method[TOTAL][2] == "5.000"  # 18000 s


def test_no_finished_run_no_cost_section(tmp_path):
    assert cost_blocks(tmp_path, pd.DataFrame(columns=["method", "run_folder", "wall_seconds"])) == []
