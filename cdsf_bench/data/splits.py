"""Subject-level, label-stratified, seeded splits, and the leak check every run records.

Splitting is by participant, never by scan, so no subject's anatomy can inform both the
model and its evaluation. An explicit ``split`` column in the cohort's table wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from cdsf_bench.errors import InputError

SPLITS = ("train", "val", "test")
#: Fewest subjects of a class that a stratified three-way split can place in every split.
MIN_PER_CLASS = 3


@dataclass(frozen=True)
class Splits:
    """Row indices of the cohort for each split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def rows(self, name: str) -> np.ndarray:
        return getattr(self, name)

    def table(self, participants: pd.DataFrame) -> pd.DataFrame:
        """participant_id, diagnosis and split of every subject, for the run folder."""
        parts = []
        for name in SPLITS:
            chunk = participants.iloc[self.rows(name)][["participant_id", "diagnosis"]].copy()
            chunk["split"] = name
            parts.append(chunk)
        return pd.concat(parts, ignore_index=True)


def make_splits(
    participants: pd.DataFrame,
    labels: np.ndarray,
    *,
    val: float,
    test: float,
    seed: int,
    folds: int = 0,
    fold: int = 0,
    class_names: tuple[str, str] = ("label 0", "label 1"),
) -> Splits:
    """Split subjects into train / val / test, stratified by label and seeded.

    With ``folds`` >= 2, fold ``fold`` of a stratified k-fold is the test split and the
    validation split is drawn (stratified) from the remaining subjects with fraction ``val``.
    ``class_names`` (negative, positive) name the classes in errors.
    """
    if "split" in participants.columns and participants["split"].notna().all() and folds == 0:
        return _explicit(participants)
    counts = np.bincount(labels, minlength=2)
    if counts.min() < MIN_PER_CLASS:
        raise InputError(
            f"The task's classes have {counts[0]} {class_names[0]} and {counts[1]} {class_names[1]} "
            f"subjects; each needs at least {MIN_PER_CLASS} for a stratified train / validation / "
            "test split. Add subjects or choose the other task."
        )
    try:
        return _stratified(participants, labels, val=val, test=test, seed=seed, folds=folds, fold=fold)
    except ValueError as error:  # scikit-learn's word for a split too small to stratify
        raise InputError(
            f"The task's {len(labels)} subjects cannot be split (split.val = {val:g}, split.test = {test:g}"
            f"{f', {folds} folds' if folds else ''}): {error}. Add subjects or change the split settings."
        ) from None


def _stratified(
    participants: pd.DataFrame,
    labels: np.ndarray,
    *,
    val: float,
    test: float,
    seed: int,
    folds: int,
    fold: int,
) -> Splits:
    rows = np.arange(len(labels))
    if folds:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        rest, test_rows = list(splitter.split(rows, labels))[fold]
        train_rows, val_rows = train_test_split(
            rest, test_size=val / (1 - 1 / folds), stratify=labels[rest], random_state=seed
        )
    else:
        rest, test_rows = train_test_split(rows, test_size=test, stratify=labels, random_state=seed)
        train_rows, val_rows = train_test_split(
            rest, test_size=val / (1 - test), stratify=labels[rest], random_state=seed
        )
    splits = Splits(np.sort(train_rows), np.sort(val_rows), np.sort(test_rows))
    check_no_leak(participants, splits)
    return splits


def _explicit(participants: pd.DataFrame) -> Splits:
    values = participants["split"].astype(str).str.lower().replace({"validation": "val"})
    bad = sorted(set(values) - set(SPLITS))
    if bad:
        raise InputError(f"The split column has values {bad}; use train, val or test.")
    rows = {name: np.flatnonzero(values.to_numpy() == name) for name in SPLITS}
    empty = [name for name, r in rows.items() if len(r) == 0]
    if empty:
        raise InputError(f"The split column puts no subject in {', '.join(empty)}.")
    splits = Splits(rows["train"], rows["val"], rows["test"])
    check_no_leak(participants, splits)
    return splits


def check_no_leak(participants: pd.DataFrame, splits: Splits) -> dict:
    """Fail if any participant appears in two splits; return the check's record."""
    ids = {name: set(participants["participant_id"].iloc[splits.rows(name)]) for name in SPLITS}
    leaks = sorted((ids["train"] & ids["val"]) | (ids["train"] & ids["test"]) | (ids["val"] & ids["test"]))
    if leaks:
        raise InputError(
            f"Participants appear in more than one split: {', '.join(leaks[:10])}"
            f"{' ...' if len(leaks) > 10 else ''}. Give each participant one split."
        )
    return {"passed": True, "participants": {name: len(v) for name, v in ids.items()}}
