"""Shared fixtures: quiet progress bars and a private cache for every test session."""

from __future__ import annotations

import os

import pytest

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
