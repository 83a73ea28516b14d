"""A suite that asks for every peer-facing output: conventions, energy, and its splits exported.

One tiny suite (CDSF, two seeds, 8 mm, one epoch) runs once with ``evaluate.peer_psnr``,
``evaluate.ms_ssim`` and ``evaluate.carbon``; CodeCarbon is replaced by a stub tracker at
the factory seam (``cdsf_bench.cost.codecarbon_tracker``), so each run's energy.json must
hold the stub's numbers and the report must sum them.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from cdsf_bench.cli import main
from cdsf_bench.errors import InputError
from cdsf_bench.metric_conventions import CONVENTION_KEYS
from cdsf_bench.splits_export import participants_table

PEER_SUITE = """
name = "peer"
task = "ad_cn"
preset = "tiny"
seeds = [0, 1]

[settings]
"data.subjects" = 24
"train.epochs" = 1
"evaluate.bootstrap" = 10
"evaluate.peer_psnr" = true
"evaluate.ms_ssim" = true
"evaluate.carbon" = true
"evaluate.carbon_country" = "DEU"

[[methods]]
name = "CDSF"
synth = "ism"
diag = "mdm"
coupling = "joint"
"""


class _Emissions:
    def __init__(self, energy: float) -> None:
        self.energy_consumed, self.emissions, self.duration = energy, energy * 0.3, 1.0


class _StubTracker:
    """Each tracker made reports a different energy: 0.5 kWh, then 0.25, ..."""

    made: list[str] = []

    def __init__(self, country: str) -> None:
        _StubTracker.made.append(country)
        self.energy = 0.5 / len(_StubTracker.made)
        self.final_emissions_data: _Emissions | None = None

    def start(self) -> None:
        pass

    def stop(self) -> float:
        self.final_emissions_data = _Emissions(self.energy)
        return self.energy * 0.3


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("peer")
    (root / "peer.toml").write_text(PEER_SUITE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("cdsf_bench.config.require_codecarbon", lambda country: None)
        patch.setattr("cdsf_bench.cost.codecarbon_tracker", _StubTracker)
        result = invoke("bench", root / "peer.toml", "--out", root / "suite")
    assert result.exit_code == 0, result.output
    return root / "suite"


def _runs(suite: Path) -> pd.DataFrame:
    return pd.read_csv(suite / "results.csv")


def test_each_run_scores_the_conventions_and_the_table_carries_them(suite):
    results = _runs(suite)
    assert list(results.columns[results.columns.get_loc("mae") + 5 :][:3]) == list(CONVENTION_KEYS)
    for _, run in results.iterrows():
        synthesis = json.loads((suite / run["run_folder"] / "metrics.json").read_text())["synthesis"]
        assert list(synthesis)[:6] == ["psnr", "ssim", "mae", *CONVENTION_KEYS]
        assert 0 <= synthesis["ms_ssim"] < 1 and math.isfinite(synthesis["psnr_slice255"])
        assert run["psnr_pm1"] == pytest.approx(synthesis["psnr_pm1"])
    report = (suite / "report.md").read_text()
    assert "psnr_pm1" in report and "ms_ssim" in report


def test_each_run_writes_its_trackers_energy_and_the_report_sums_it(suite):
    assert _StubTracker.made == ["DEU", "DEU"]
    energies = [
        json.loads((suite / run / "energy.json").read_text())["energy_kwh"]
        for run in _runs(suite)["run_folder"]
    ]
    assert sorted(energies) == [0.25, 0.5]
    report = (suite / "report.md").read_text()
    section = report[report.index("## Compute cost") :]
    assert "| CDSF | 2 |" in section and "0.7500" in section and "0.2250" in section  # 0.75 kWh, 0.225 kg


def test_export_splits_of_the_suite_are_its_runs_splits(suite, tmp_path):
    result = invoke("export-splits", suite, "--out", tmp_path / "splits")
    assert result.exit_code == 0, result.output
    exported = pd.read_csv(tmp_path / "splits" / "splits.tsv", sep="\t", dtype={"participant_id": str})
    participants = pd.read_csv(
        tmp_path / "splits" / "participants.tsv", sep="\t", dtype=str, keep_default_na=False
    )
    assert list(participants.columns) == [
        "participant_id",
        "diagnosis",
        "split_ad_cn_seed-0",
        "split_ad_cn_seed-1",
    ]
    for _, run in _runs(suite).iterrows():
        own = pd.read_csv(suite / run["run_folder"] / "splits.csv", dtype={"participant_id": str})
        mine = exported[exported["run_folder"] == run["run_folder"]]
        assert mine["participant_id"].tolist() == own["participant_id"].tolist()
        assert mine["split"].tolist() == own["split"].tolist()
        assert set(mine["seed"]) == {run["seed"]} and set(mine["method"]) == {"CDSF"}
        column = participants.set_index("participant_id")[f"split_ad_cn_seed-{run['seed']}"]
        assert column.loc[own["participant_id"]].tolist() == own["split"].tolist()
    assert set(participants.iloc[:, 2:].stack()) <= {"train", "val", "test", "n/a"}


def test_export_splits_of_one_run_writes_its_splits_to_standard_output(suite):
    run = suite / _runs(suite)["run_folder"].iloc[0]
    result = invoke("export-splits", run)
    assert result.exit_code == 0, result.output
    exported = pd.read_csv(io.StringIO(result.output), sep="\t", dtype={"participant_id": str})
    own = pd.read_csv(run / "splits.csv", dtype={"participant_id": str})
    assert exported[["participant_id", "split"]].equals(own[["participant_id", "split"]])
    assert set(exported["method"]) == {"ism-mdm-joint"} and set(exported["seed"]) == {0}
    assert participants_table(exported).columns.tolist() == ["participant_id", "diagnosis", "split"]


def test_export_splits_refuses_a_folder_that_is_neither_a_run_nor_a_suite(tmp_path):
    result = invoke("export-splits", tmp_path)
    assert result.exit_code == 2
    assert "neither a run folder" in result.output


def test_a_replicate_whose_runs_disagree_is_refused():
    splits = pd.DataFrame(
        {
            "run_folder": ["t/seed-0/A", "t/seed-0/B"],
            "participant_id": ["sub-01", "sub-01"],
            "diagnosis": ["AD", "AD"],
            "split": ["train", "test"],
        }
    )
    with pytest.raises(InputError, match="sub-01 in different splits"):
        participants_table(splits)
