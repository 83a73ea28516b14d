"""Subject-level splits: stratified, seeded, leak-free, explicit columns honoured."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cdsf_bench.data.splits import Splits, check_no_leak, make_splits
from cdsf_bench.errors import InputError


def _cohort(n: int = 60) -> tuple[pd.DataFrame, np.ndarray]:
    labels = np.array([0, 1] * (n // 2))
    table = pd.DataFrame({"participant_id": [f"sub-{i:03d}" for i in range(n)], "diagnosis": labels})
    return table, labels


def test_three_way_split_is_disjoint_complete_and_stratified():
    table, labels = _cohort()
    splits = make_splits(table, labels, val=0.2, test=0.2, seed=1)
    everything = np.concatenate([splits.train, splits.val, splits.test])
    assert sorted(everything) == list(range(len(labels)))
    for rows in (splits.train, splits.val, splits.test):
        assert abs(labels[rows].mean() - 0.5) < 0.1


def test_same_seed_same_split_other_seed_other_split():
    table, labels = _cohort()
    a = make_splits(table, labels, val=0.2, test=0.2, seed=1)
    b = make_splits(table, labels, val=0.2, test=0.2, seed=1)
    c = make_splits(table, labels, val=0.2, test=0.2, seed=2)
    assert np.array_equal(a.test, b.test)
    assert not np.array_equal(a.test, c.test)


def test_kfold_test_sets_partition_the_cohort():
    table, labels = _cohort()
    tests = [make_splits(table, labels, val=0.2, test=0.2, seed=0, folds=5, fold=f).test for f in range(5)]
    assert sorted(np.concatenate(tests)) == list(range(len(labels)))


def test_explicit_split_column_is_honoured():
    table, labels = _cohort(12)
    table["split"] = ["train"] * 8 + ["val"] * 2 + ["test"] * 2
    splits = make_splits(table, labels, val=0.2, test=0.2, seed=0)
    assert list(splits.test) == [10, 11]


def test_leak_check_catches_a_participant_in_two_splits():
    table, _ = _cohort(6)
    table.loc[5, "participant_id"] = "sub-000"  # the same person under two rows
    splits = Splits(np.array([0, 1, 2]), np.array([3, 4]), np.array([5]))
    with pytest.raises(InputError, match="sub-000"):
        check_no_leak(table, splits)


def test_too_small_class_is_refused():
    table, labels = _cohort(6)
    labels = np.array([0, 0, 0, 0, 1, 1])
    with pytest.raises(InputError, match="at least 3"):
        make_splits(table, labels, val=0.2, test=0.2, seed=0)
