"""[seeds]: each source of run-to-run variance has its own seed, by default the run's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cdsf_bench import config as cfg
from cdsf_bench import protocol
from cdsf_bench.data.splits import make_splits
from cdsf_bench.errors import ConfigError
from cdsf_bench.registry import default_registry
from cdsf_bench.settings import SeedSettings

SOURCES = tuple(SeedSettings.__dataclass_fields__)


def _resolve(*assignments: str) -> cfg.RunConfig:
    return cfg.resolve(default_registry(), None, ("preset=tiny", *assignments))


def _cohort(n: int = 60) -> tuple[pd.DataFrame, np.ndarray]:
    participants = pd.DataFrame({"participant_id": [f"sub-{i:03d}" for i in range(n)]})
    return participants, np.arange(n) % 2


def test_by_default_every_source_is_the_run_seed():
    run = _resolve("seed=7")
    assert {source: run.seed_of(source) for source in SOURCES} == dict.fromkeys(SOURCES, 7)


def test_a_source_given_its_own_seed_leaves_the_others_to_the_run_seed():
    run = _resolve("seed=7", "seeds.batches=3")
    assert run.seed_of("batches") == 3
    assert [run.seed_of(s) for s in ("init", "split", "validation")] == [7, 7, 7]
    # a pinned test split leaves the validation subjects to the run's seed
    assert _resolve("seed=7", "seeds.split=4").seed_of("validation") == 7


def test_a_seed_below_minus_one_is_refused_by_name():
    with pytest.raises(ConfigError, match="seeds.init"):
        _resolve("seeds.init=-2")


def test_default_splits_are_those_of_the_seed_alone():
    participants, labels = _cohort()
    alone = make_splits(participants, labels, val=0.2, test=0.2, seed=5)
    same = make_splits(participants, labels, val=0.2, test=0.2, seed=5, val_seed=5)
    for name in ("train", "val", "test"):
        assert np.array_equal(alone.rows(name), same.rows(name))


@pytest.mark.parametrize("folds", [0, 5])
def test_the_validation_seed_moves_validation_subjects_only(folds: int):
    participants, labels = _cohort()
    base = make_splits(participants, labels, val=0.2, test=0.2, seed=5, folds=folds, fold=1)
    other = make_splits(participants, labels, val=0.2, test=0.2, seed=5, val_seed=6, folds=folds, fold=1)
    assert np.array_equal(base.test, other.test)
    assert not np.array_equal(base.val, other.val)
    pool = np.sort(np.concatenate([base.train, base.val]))
    assert np.array_equal(pool, np.sort(np.concatenate([other.train, other.val])))


def test_the_init_seed_alone_sets_the_global_generators():
    def first_draw(*assignments: str) -> float:
        protocol.seed(_resolve(*assignments), torch.device("cpu"))
        return float(torch.rand(1))

    assert first_draw("seed=7") == first_draw("seed=8", "seeds.init=7")
    assert first_draw("seed=7") != first_draw("seed=7", "seeds.init=8")
