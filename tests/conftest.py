"""Shared fixtures: quiet progress bars, a private cache for every test session, and one
finished tiny suite and one finished tiny MRI-only run for every module that reads one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from support import TINY_RUN, tiny_suite_text

os.environ.setdefault("CDSF_BENCH_QUIET", "1")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep test cohorts out of the user's cache; one cache shared by the whole session."""
    os.environ["CDSF_BENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture
def tiny_args() -> list[str]:
    """Options for a seconds-long run on a tiny phantom."""
    return [
        "--preset",
        "tiny",
        "--set",
        "data.subjects=24",
        "--epochs",
        "1",
        "--set",
        "evaluate.bootstrap=20",
    ]


@pytest.fixture(scope="session")
def tiny_suite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """support.TINY_SUITE written to a file."""
    path = tmp_path_factory.mktemp("tiny-suite") / "tiny.toml"
    path.write_text(tiny_suite_text())
    return path


@pytest.fixture(scope="session")
def tiny_suite(tiny_suite_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The suite folder of ``tiny_suite_file``, run once per session. Shared: a test that
    changes a suite folder copies this one first (shutil.copytree keeps the files' times)."""
    from cdsf_bench.cli import main

    out = tmp_path_factory.mktemp("tiny-bench") / "tiny"
    result = CliRunner().invoke(main, ["bench", str(tiny_suite_file), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run folder of support.TINY_RUN, trained once per session. Shared: a module that
    changes a run folder copies this one first."""
    from cdsf_bench.cli import main

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    result = CliRunner().invoke(main, ["run", *TINY_RUN, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out
