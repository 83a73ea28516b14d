"""One writer per folder: a second process is refused naming the holder; a dead holder holds nothing.

The fault tests use two real processes: a helper process takes a folder's lock (as a run, suite
or prediction holds it) and sleeps; the command under test runs here and must be refused with
exit 2, naming the helper's pid, with nothing in the folder changed. Once the helper is killed
(SIGKILL: no clean-up runs), the same command proceeds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from support import TINY_RUN

from cdsf_bench.cli import main
from cdsf_bench.errors import InputError
from cdsf_bench.locking import LOCK_FILE, folder_lock, lock_name
from cdsf_bench.run_folder import RunFolder


def invoke(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time (ns)."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in files}


class Holder:
    """A helper process holding a folder's lock until it is killed."""

    def __init__(self, folder: Path, lock_file: Path | None = None) -> None:
        script = textwrap.dedent(
            f"""
            import sys, time
            from pathlib import Path
            from cdsf_bench.locking import folder_lock
            lock = None if {str(lock_file)!r} == "None" else Path({str(lock_file)!r})
            with folder_lock(Path({str(folder)!r}), "folder", lock_file=lock, hint="wait"):
                print("locked", flush=True)
                time.sleep(600)
            """
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "locked"

    @property
    def pid(self) -> int:
        return self.process.pid

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for holder in started:
        if holder.process.poll() is None:
            holder.kill()


@pytest.fixture(scope="module")
def finished_run(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's copy of the session's tiny MRI-only run (conftest.py)."""
    return Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("locks") / "run"))


def assert_refused_naming(result: Result, pid: int) -> None:
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exc_info
    assert f"process {pid} on host" in result.output, result.output
    assert "being written" in result.output


def test_resume_of_a_run_another_process_writes_is_refused_and_proceeds_once_it_died(
    finished_run: Path, holders: list[Holder]
) -> None:
    holder = Holder(finished_run)
    holders.append(holder)
    before = tree(finished_run)
    assert_refused_naming(invoke("run", "--resume", finished_run), holder.pid)
    assert tree(finished_run) == before
    holder.kill()
    result = invoke("run", "--resume", finished_run)
    assert result.exit_code == 0, result.output
    assert not (finished_run / LOCK_FILE).exists()  # a lock released in order leaves no file


def test_a_live_run_is_not_offered_to_resume(finished_run: Path, holders: list[Holder]) -> None:
    holder = Holder(finished_run)
    holders.append(holder)
    before = tree(finished_run)
    result = invoke("run", "--config", finished_run / "config.toml", "--out", finished_run)
    assert_refused_naming(result, holder.pid)
    assert "--resume" not in result.output
    assert tree(finished_run) == before


def test_a_second_run_into_a_new_folder_another_process_locked_is_refused(
    tmp_path: Path, holders: list[Holder]
) -> None:
    out = tmp_path / "new"
    holder = Holder(out)
    holders.append(holder)
    assert_refused_naming(invoke("run", *TINY_RUN, "--out", out), holder.pid)
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]


def test_a_second_prediction_into_one_folder_is_refused(
    finished_run: Path, tmp_path: Path, holders: list[Holder]
) -> None:
    out = tmp_path / "predicted"
    holder = Holder(out, lock_file=tmp_path / lock_name(out.name))
    holders.append(holder)
    assert_refused_naming(invoke("predict", finished_run, "--data", "phantom", "--out", out), holder.pid)
    assert not out.exists()


def test_a_suite_table_another_process_writes_is_refused(tmp_path: Path, holders: list[Holder]) -> None:
    suite = tmp_path / "suite.toml"
    suite.write_text(
        'name = "locked"\ntask = "ad_cn"\npreset = "tiny"\nseeds = [0]\n'
        '[settings]\n"data.subjects" = 24\n"train.epochs" = 1\n'
        '[[methods]]\nname = "A"\nsynth = "none"\ndiag = "mdm"\ncoupling = "single"\n'
    )
    out = tmp_path / "out"
    holder = Holder(out, lock_file=out / lock_name("results.csv"))
    holders.append(holder)
    assert_refused_naming(invoke("bench", suite, "--out", out), holder.pid)
    assert sorted(p.name for p in out.iterdir()) == [lock_name("results.csv")]


def test_a_dead_holders_lock_file_is_no_lock(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_FILE).write_text("process 1 on host gone since 2000-01-01 00:00 UTC\n")
    with folder_lock(folder, "Run folder", hint="wait") as lock:
        assert f"process {os.getpid()} " in lock.read_text()
    assert not (folder / LOCK_FILE).exists()


def test_a_process_may_hold_its_own_lock_twice_and_other_locks_beside_it(tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    with folder_lock(suite, "Suite folder", lock_file=suite / lock_name("results.csv"), hint="wait"):
        with RunFolder.lock(suite / "run"), RunFolder.lock(suite / "run"):
            assert (suite / "run" / LOCK_FILE).exists()
        assert not (suite / "run").exists()  # created by the lock, empty again: removed
    assert not suite.exists()


def test_a_refused_lock_leaves_the_holders_file_alone(tmp_path: Path, holders: list[Holder]) -> None:
    holder = Holder(tmp_path / "run")
    holders.append(holder)
    with pytest.raises(InputError, match=f"process {holder.pid} "), RunFolder.lock(tmp_path / "run"):
        pass
    assert (tmp_path / "run" / LOCK_FILE).exists()  # the holder's, untouched
