"""Committed results that re-render: ``cdsf-bench export`` keeps what ``report`` reads.

The session's tiny suite (conftest.py; two methods, two seeds, 8 mm, one epoch) is copied, the
copy exported and deleted, and ``report`` on the export must write report.md byte for byte
as ``bench`` wrote it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from cdsf_bench.cli import main


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def exported(tiny_suite: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """The export of a finished tiny suite whose original folder is gone, and its report.md."""
    root = tmp_path_factory.mktemp("rerender")
    suite = Path(shutil.copytree(tiny_suite, root / "suite"))
    assert list(suite.glob("*/*/*/checkpoints/last.pt"))  # what the export must leave behind
    result = invoke("export", suite, root / "export")
    assert result.exit_code == 0, result.output
    written = (suite / "report.md").read_bytes()
    shutil.rmtree(suite)
    return root / "export", written


def test_an_export_keeps_what_the_report_reads_and_nothing_heavy(exported):
    folder, _ = exported
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    runs = pd.read_csv(folder / "results.csv")["run_folder"]
    assert len(runs) == 4
    for run in runs:
        for name in ("metrics.json", "predictions.csv", "environment.json"):
            assert f"{run}/{name}" in names
    assert {"results.csv", "suite.json", "report.md", "report.html", "comparisons.csv"} <= names
    assert not [n for n in names if n.endswith((".pt", ".nii.gz", "log.txt", "history.csv"))]
    assert sum((folder / n).stat().st_size for n in names) < 5_000_000


def test_report_re_renders_an_export_byte_for_byte(exported):
    folder, written = exported
    result = invoke("report", folder, "--format", "md")
    assert result.exit_code == 0, result.output
    assert (folder / "report.md").read_bytes() == written
    started = json.loads((folder / "ad_cn/seed-0/cdsf/environment.json").read_text())["time_utc"]
    assert f"Date: runs started {started[:10]}" in written.decode()  # from the runs, not the clock


def test_report_names_a_missing_per_run_file(exported, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(exported[0], folder)
    gone = folder / "ad_cn/seed-1/cdsf/predictions.csv"
    gone.unlink()
    for fmt in ("md", "html"):
        result = invoke("report", folder, "--format", fmt)
        assert result.exit_code == 2, result.output
        assert str(gone) in result.output and "Traceback" not in result.output
    refused = invoke("export", folder, tmp_path / "again")
    assert refused.exit_code == 2 and str(gone) in refused.output
    assert not (tmp_path / "again").exists()


def test_export_refuses_a_folder_that_holds_files(exported, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    result = invoke("export", exported[0], tmp_path / "taken")
    assert result.exit_code == 2 and "not an empty folder" in result.output
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
