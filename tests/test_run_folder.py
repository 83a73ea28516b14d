"""The run folder reads back what it writes, and refuses a missing or damaged file by name."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cdsf_bench.errors import InputError
from cdsf_bench.registry import default_registry
from cdsf_bench.run_folder import RunFolder


@pytest.fixture
def folder(tmp_path: Path) -> RunFolder:
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    return run


def test_what_is_written_reads_back(folder: RunFolder) -> None:
    folder.write_metrics({"diagnosis": {"auc": 0.75}, "selection": {"threshold": 0.4}})
    folder.write_environment({"time_utc": "2026-12-07T10:00:00+00:00"})
    folder.write_timing(12.5, 1.25)
    ids = ["007", "NA", "sub-01"]  # text ids: leading zeros kept, "NA" is an id, not missing
    folder.write_splits(pd.DataFrame({"participant_id": ids, "split": ["test", "train", "test"]}))
    predictions = pd.DataFrame({"participant_id": ["007", "sub-01"], "probability": [0.2, 0.9]})
    folder.write_predictions(predictions)
    folder.write_predictions(predictions.iloc[:1], test_split=True)
    assert folder.finished
    assert folder.metrics()["selection"]["threshold"] == 0.4
    assert folder.environment()["time_utc"].startswith("2026-12-07")
    assert folder.timing() == {"wall_seconds": 12.5, "data_seconds": 1.25}
    assert folder.splits()["participant_id"].tolist() == ids
    assert folder.test_participants() == ["007", "sub-01"]
    pd.testing.assert_frame_equal(folder.predictions(), predictions)
    assert folder.predictions(test_split=True)["participant_id"].tolist() == ["007"]


def test_optional_records_read_as_empty_and_required_files_are_refused_by_name(folder: RunFolder) -> None:
    assert folder.environment() == {} and folder.timing() == {} and folder.test_participants() == []
    assert not folder.finished
    for read, name in (
        (folder.metrics, "metrics.json"),
        (folder.config_text, "config.toml"),
        (folder.predictions, "predictions.csv"),
        (folder.splits, "splits.csv"),
        (lambda: folder.config(default_registry()), "config.toml"),
    ):
        with pytest.raises(InputError, match=name.replace(".", r"\.")):
            read()


def test_a_damaged_file_is_refused_by_name(folder: RunFolder) -> None:
    folder.metrics_path.write_text('{"diagnosis": ')
    with pytest.raises(InputError, match=r"metrics\.json cannot be read"):
        folder.metrics()
    folder.environment_path.write_text("[1, 2]")
    with pytest.raises(InputError, match=r"environment\.json holds no JSON object"):
        folder.environment()
    folder.config_path.write_text("[train]\nepochs = 'many'\n")
    with pytest.raises(InputError, match=r"config\.toml cannot be read by this version"):
        folder.config(default_registry())
