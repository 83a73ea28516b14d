"""``cdsf-bench interpret`` end to end on tiny runs of CDSF and MRI only, and its refusals.

The run is read as ``predict`` reads it, the maps land on the run's own grid (the affine of
the synthetic PET the run wrote), each of the run's test subjects gets a map per channel
its diagnoser read, the maps repeat bit for bit, and every refusal exits 2 with its reason
and no traceback. A suite folder gets interpret.csv, which its report shows.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result

from cdsf_bench.bench.render import Table
from cdsf_bench.bench.table import COLUMNS
from cdsf_bench.cli import main
from cdsf_bench.data.grid import reference_grid
from cdsf_bench.interpret.suite import interpretation_blocks

TINY = ["--preset", "tiny", "--set", "data.subjects=24", "--epochs", "1", "--set", "evaluate.bootstrap=20"]
METHODS = {"cdsf": [], "mri-only": ["--synth", "none"]}
FAST = ["--ig-steps", "4"]


def invoke(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_refused(result: Result, *names: str) -> None:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), f"unhandled {result.exception!r}\n{result.output}"
    assert "Traceback" not in result.output
    for name in names:
        assert name in result.output, f"{name!r} not in:\n{result.output}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trained")
    for name, method in METHODS.items():
        result = invoke("run", *method, *TINY, "--out", root / name)
        assert result.exit_code == 0, result.output
    return {name: root / name for name in METHODS}


def test_every_test_subject_gets_a_map_per_channel_on_the_runs_grid(runs, tmp_path):
    for name, channels in (("cdsf", {"mri", "pet"}), ("mri-only", {"mri"})):
        result = invoke("interpret", runs[name], *FAST, "--out", tmp_path / name, "--json")
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        splits = pd.read_csv(runs[name] / "splits.csv", dtype={"participant_id": str})
        tested = sorted(splits.loc[splits["split"] == "test", "participant_id"])
        assert sorted(p.name for p in (tmp_path / name / "maps").iterdir()) == tested
        assert summary["subjects"] == len(tested)
        files = sorted((tmp_path / name / "maps").rglob("*.nii.gz"))
        assert {f.name.split("_")[-1].removesuffix(".nii.gz") for f in files} == channels
        # the run's grid: the affine of the synthetic PET it wrote, or the phantom's 8 mm grid
        written = sorted((runs[name] / "synth").glob("*.nii.gz")) if name == "cdsf" else []
        affine = nib.load(written[0]).affine if written else reference_grid(8.0).affine
        for file in files:
            assert np.array_equal(nib.load(file).affine, affine), file
        truths = {"mri": "atrophy", "pet": "hypometabolism"}
        assert {(s["channel"], s["truth"]) for s in summary["scores"]} == {(c, truths[c]) for c in channels}
        for row in summary["scores"]:
            assert 0 < row["chance_share"] < row["chance_hit"] < 1
        assert (tmp_path / name / "figures").is_dir() and (tmp_path / name / "scores.csv").is_file()


def test_maps_repeat_bit_for_bit(runs, tmp_path):
    for out in ("first", "second"):
        result = invoke("interpret", runs["cdsf"], *FAST, "--method", "ig,gradcam", "--out", tmp_path / out)
        assert result.exit_code == 0, result.output
    first = sorted((tmp_path / "first").rglob("*.nii.gz"))
    assert first
    for path in first:
        again = tmp_path / "second" / path.relative_to(tmp_path / "first")
        assert np.array_equal(np.asanyarray(nib.load(path).dataobj), np.asanyarray(nib.load(again).dataobj))


def test_named_subjects_only_and_an_unknown_one_refused(runs, tmp_path):
    splits = pd.read_csv(runs["mri-only"] / "splits.csv", dtype={"participant_id": str})
    one = splits.loc[splits["split"] == "train", "participant_id"].iloc[0]
    result = invoke("interpret", runs["mri-only"], *FAST, "--subjects", one, "--out", tmp_path / "one")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "one" / "maps").iterdir()] == [one]
    assert_refused(
        invoke("interpret", runs["mri-only"], "--subjects", "sub-9999", "--out", tmp_path / "x"), "sub-9999"
    )


def test_refusals_exit_2_with_the_reason(runs, tmp_path, monkeypatch):
    run = runs["mri-only"]
    assert_refused(invoke("interpret", run, "--method", "lime", "--out", tmp_path / "a"), "lime", "ig")
    assert_refused(invoke("interpret", run, "--out", run / "inside"), "inside the run folder")
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / "checkpoints" / "last.pt").unlink()
    assert_refused(invoke("interpret", copy, "--out", tmp_path / "b"), "has no weights")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "captum" else real(name, *a)
    )
    assert_refused(invoke("interpret", run, "--out", tmp_path / "c"), "cdsf-bench[interpret]")
    assert not any((tmp_path / name).exists() for name in "abc")


def test_gradcam_is_refused_for_a_regional_diagnoser(tmp_path):
    result = invoke("run", "--synth", "none", "--diag", "regional", *TINY, "--out", tmp_path / "regional")
    assert result.exit_code == 0, result.output
    refused = invoke("interpret", tmp_path / "regional", "--method", "gradcam", "--out", tmp_path / "i")
    assert_refused(refused, "no nn.Conv3d", "ig or occlusion")
    assert not (tmp_path / "i").exists()


def test_a_suite_gets_interpret_csv_and_its_report_a_table_per_method(runs, tmp_path):
    suite = tmp_path / "suite"
    rows = []
    for name in METHODS:
        shutil.copytree(runs[name], suite / "runs" / name)
        row = dict.fromkeys(COLUMNS, "")
        row.update(task="ad_cn", seed=0, method=name, status="done", run_folder=f"runs/{name}")
        rows.append(row)
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(suite / "results.csv", index=False)
    result = invoke("interpret", suite, *FAST)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(suite / "interpret.csv")
    assert set(table["method"]) == set(METHODS) and set(table["attribution"]) == {"ig"}
    assert (suite / "interpret" / "runs" / "cdsf" / "metrics.json").is_file()
    (tables,) = [b for b in interpretation_blocks(suite) if isinstance(b, Table)]
    assert {row[0] for row in tables.rows} == set(METHODS)
    assert invoke("report", suite, "--format", "md").exit_code == 0
    assert "### Attribution by ig" in (suite / "report.md").read_text()
