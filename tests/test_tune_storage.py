"""A study's storage: a torn journal repaired (its original kept), a damaged storage refused.

Opening a study is all these need (no trial trains): a study is opened, given trials by
ask-and-tell, damaged as a killed writer, a full disk or a careless user would, and opened again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner

from cdsf_bench.cli import main
from cdsf_bench.errors import InputError
from cdsf_bench.registry import default_registry
from cdsf_bench.tune.plan import plan_study
from cdsf_bench.tune.study import StudyFolder, open_study


@pytest.fixture(scope="module")
def plan():
    return plan_study(default_registry(), assignments=("preset=tiny",))


def with_trials(plan, out: Path, storage: Path | None, n: int = 2) -> optuna.Study:
    """The plan's study in ``out`` with ``n`` more complete trials."""
    study = open_study(plan, StudyFolder(out), storage)
    for _ in range(n):
        trial = study.ask()
        study.tell(trial, trial.suggest_float("x", 0.0, 1.0))
    return study


def test_a_torn_last_journal_record_is_dropped_its_original_kept_and_the_study_resumes(
    plan, tmp_path, capsys
):
    journal = tmp_path / "study.journal"
    with_trials(plan, tmp_path, journal)
    whole = journal.read_bytes()
    torn = whole + b'{"op_code":8,"worker_id":"a-1","trial_id":1,"user_attr":{"heartb'
    journal.write_bytes(torn)
    study = with_trials(plan, tmp_path, journal)  # opens, repairs, and appends two more trials
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert (tmp_path / "study.journal.torn").read_bytes() == torn
    assert journal.read_bytes().startswith(whole) and journal.read_bytes().endswith(b"\n")
    assert "its last record was torn" in capsys.readouterr().err
    reopened = open_study(plan, StudyFolder(tmp_path), journal)
    assert len(reopened.trials) == 4
    journal.write_bytes(journal.read_bytes() + b'{"op_code":4')
    open_study(plan, StudyFolder(tmp_path), journal)
    assert (tmp_path / "study.journal.torn.2").exists()  # a second repair keeps the first copy


@pytest.mark.parametrize(
    ("content", "culprit"),
    [
        (b"hello", "line 1 is not an Optuna journal record"),  # one line, no newline: no journal
        (b"not a journal\nat all\n", "line 1 is not an Optuna journal record"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "line 1 is not an Optuna journal record"),
        (b'{"op_code":0,"worker_id":"a","study_name":"s","directions":[1]}\n[1, 2]\n{"op_c', "line 2"),
    ],
)
def test_a_file_that_is_no_journal_is_refused_and_left_alone(plan, tmp_path, content, culprit):
    storage = tmp_path / "elsewhere.txt"
    storage.write_bytes(content)
    with pytest.raises(InputError, match=culprit) as refused:
        open_study(plan, StudyFolder(tmp_path / "out"), storage)
    assert str(storage) in str(refused.value) and "Restore it from a backup" in str(refused.value)
    assert storage.read_bytes() == content and not list(tmp_path.glob("*.torn*"))


def test_garbage_in_the_middle_of_a_journal_is_refused_naming_the_line(plan, tmp_path):
    journal = tmp_path / "study.journal"
    with_trials(plan, tmp_path, journal)
    lines = journal.read_bytes().splitlines(keepends=True)
    damaged = b"".join([*lines[:3], b"\x00\x00garbage\n", *lines[3:]])
    journal.write_bytes(damaged)
    with pytest.raises(InputError, match=f"{journal}: line 4 is not an Optuna journal record"):
        open_study(plan, StudyFolder(tmp_path), journal)
    assert journal.read_bytes() == damaged


def test_journal_records_that_do_not_replay_are_refused(plan, tmp_path):
    journal = tmp_path / "study.journal"
    journal.write_text(json.dumps({"op_code": 99, "worker_id": "a"}) + "\n")
    with pytest.raises(InputError, match="cannot be read as a study's Optuna storage"):
        open_study(plan, StudyFolder(tmp_path / "out"), journal)


def test_a_storage_that_is_no_regular_file_is_refused(plan, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="is not a regular file"):
        open_study(plan, StudyFolder(tmp_path / "out"), fifo)


def test_an_unreadable_sqlite_study_exits_2_naming_the_file(plan, tmp_path):
    with_trials(plan, tmp_path, None)
    (tmp_path / "study.db").write_bytes(b"this is no SQLite database" * 100)
    result = CliRunner().invoke(main, ["tune", "--preset", "tiny", "--trials", "3", "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "study.db cannot be read as a study's Optuna storage" in result.output
    assert "Traceback" not in result.output


def test_a_damaged_study_record_is_refused(plan, tmp_path):
    with_trials(plan, tmp_path, tmp_path / "study.journal")
    (tmp_path / "study.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(InputError, match="study.json cannot be read"):
        open_study(plan, StudyFolder(tmp_path), tmp_path / "study.journal")
