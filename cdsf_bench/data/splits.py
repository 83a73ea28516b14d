"""Subject-level, label-stratified, seeded splits, and the leak check every run records.

Splitting is by participant, never by scan, so no subject's anatomy can inform both the
model and its evaluation. An explicit ``split`` column in the cohort's table wins.
Subjects without a usable label (``cdsf_bench.data.labels.UNLABELLED``) are training
subjects only: nothing can validate or test on a subject whose diagnosis it may not read.
The labelled subjects are split exactly as they would be without the others, so adding
unlabelled subjects to a cohort leaves its validation and test splits unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from cdsf_bench.data.labels import UNLABELLED
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

    def table(self, participants: pd.DataFrame, labels: np.ndarray) -> pd.DataFrame:
        """participant_id, diagnosis, split and whether its label was used, for the run folder."""
        parts = []
        for name in SPLITS:
            rows = self.rows(name)
            chunk = participants.iloc[rows][["participant_id", "diagnosis"]].copy()
            chunk["split"] = name
            chunk["labelled"] = labels[rows] != UNLABELLED
            parts.append(chunk)
        return pd.concat(parts, ignore_index=True)


def make_splits(
    participants: pd.DataFrame,
    labels: np.ndarray,
    *,
    val: float,
    test: float,
    seed: int,
    val_seed: int | None = None,
    folds: int = 0,
    fold: int = 0,
    class_names: tuple[str, str] = ("label 0", "label 1"),
) -> Splits:
    """Split subjects into train / val / test, stratified by label and seeded.

    ``seed`` draws the test split; ``val_seed`` (default ``seed``) which of the other
    subjects validate, so that it varies the validation subjects alone.

    With ``folds`` >= 2, fold ``fold`` of a stratified k-fold is the test split and the
    validation split is drawn (stratified) from the remaining subjects with fraction ``val``.
    Subjects labelled ``UNLABELLED`` join the training split. ``class_names`` (negative,
    positive) name the classes in errors.
    """
    if "split" in participants.columns and participants["split"].notna().all() and folds == 0:
        return _explicit(participants, labels)
    known = np.flatnonzero(labels != UNLABELLED)
    counts = np.bincount(labels[known], minlength=2)
    if counts.min() < MIN_PER_CLASS:
        raise InputError(
            f"The task's classes have {counts[0]} {class_names[0]} and {counts[1]} {class_names[1]} "
            f"subjects; each needs at least {MIN_PER_CLASS} for a stratified train / validation / "
            "test split. Add subjects or choose the other task."
        )
    try:
        train, val_rows, test_rows = _stratified(
            labels[known],
            val=val,
            test=test,
            seed=seed,
            val_seed=seed if val_seed is None else val_seed,
            folds=folds,
            fold=fold,
        )
    except ValueError as error:  # scikit-learn's word for a split too small to stratify
        raise InputError(
            f"The task's {len(known)} labelled subjects cannot be split "
            f"(split.val = {val:g}, split.test = {test:g}"
            f"{f', {folds} folds' if folds else ''}): {error}. Add subjects or change the split settings."
        ) from None
    unlabelled = np.flatnonzero(labels == UNLABELLED)
    splits = Splits(
        np.sort(np.concatenate([known[train], unlabelled])),
        np.sort(known[val_rows]),
        np.sort(known[test_rows]),
    )
    check_no_leak(participants, splits)
    return splits


def _stratified(
    labels: np.ndarray, *, val: float, test: float, seed: int, val_seed: int, folds: int, fold: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions in ``labels`` of the train, val and test subjects."""
    rows = np.arange(len(labels))
    if folds:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        rest, test_rows = list(splitter.split(rows, labels))[fold]
        train_rows, val_rows = train_test_split(
            rest, test_size=val / (1 - 1 / folds), stratify=labels[rest], random_state=val_seed
        )
    else:
        rest, test_rows = train_test_split(rows, test_size=test, stratify=labels, random_state=seed)
        train_rows, val_rows = train_test_split(
            rest, test_size=val / (1 - test), stratify=labels[rest], random_state=val_seed
        )
    return train_rows, val_rows, test_rows


def _explicit(participants: pd.DataFrame, labels: np.ndarray) -> Splits:
    values = participants["split"].astype(str).str.lower().replace({"validation": "val"})
    bad = sorted(set(values) - set(SPLITS))
    if bad:
        raise InputError(f"The split column has values {bad}; use train, val or test.")
    held_out = (values.to_numpy() != "train") & (labels == UNLABELLED)
    if held_out.any():
        ids = participants["participant_id"].astype(str).to_numpy()[held_out]
        raise InputError(
            f"The split column puts unlabelled subjects in val or test ({', '.join(ids[:10])}"
            f"{' ...' if len(ids) > 10 else ''}); a subject whose label may not be used can only "
            "train. Put them in train, or mark them labelled."
        )
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
