"""The synthetic cohort ``cdsf-bench perf`` measures on, and how it draws batches from it.

``measure`` needs a cohort at run time (the pipeline and the coupling are built on it as a
run builds them on real data), so the cohort lives here rather than in test support; the
tests and ``benchmarks/perf_conv_s2d.py`` reuse it to build methods without reading data.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from cdsf_bench.data.regions import brain_box_affine
from cdsf_bench.data.splits import Splits
from cdsf_bench.interfaces import Batch, Cohort

#: training subjects of the synthetic cohort, in batches: enough for several distinct batches
TRAIN_BATCHES = 4


def synthetic_cohort(size: tuple[int, int, int], batch: int, seed: int) -> tuple[Cohort, np.ndarray, Splits]:
    """Random volumes in [-1, 1], half with PET, split so that training batches are full.

    ``TRAIN_BATCHES`` batches of training subjects, half of them with PET, so that a stage
    on all subjects and a stage on subjects with PET both draw batches of exactly ``batch``;
    labels alternate so every batch can hold both classes. Two validation and two test
    subjects make the splits well formed; they are never used. The PET of every subject is
    kept as ``pet_truth`` and, as its own E[PET | MRI], as ``pet_expected``, as on the
    phantom, so methods that need them can be measured.
    """
    n_train = 2 * batch * TRAIN_BATCHES
    n = n_train + 4
    rng = np.random.default_rng(seed)
    mri = (rng.random((n, *size), dtype=np.float32) * 2 - 1).astype(np.float16)
    truth = (rng.random((n, *size), dtype=np.float32) * 2 - 1).astype(np.float16)
    has_pet = np.arange(n) % 2 == 0
    pet = np.where(has_pet[:, None, None, None], truth, np.float16(0))
    labels = (np.arange(n) // 2 % 2).astype(np.int64)
    participants = pd.DataFrame(
        {
            "participant_id": [f"sub-perf{i:04d}" for i in range(n)],
            "diagnosis": np.where(labels == 1, "AD", "CN"),
            "has_pet": has_pet,
        }
    )
    cohort = Cohort(
        participants=participants,
        mri=mri,
        pet=pet,
        has_pet=has_pet,
        affine=brain_box_affine(size),  # on the MNI brain box, so an atlas reader finds its regions
        brain_mask=np.ones(size, dtype=bool),
        pet_truth=truth,
        pet_expected=truth,
        source="perf: random volumes",
    )
    rows = np.arange(n)
    splits = Splits(rows[:n_train], rows[n_train : n_train + 2], rows[n_train + 2 :])
    return cohort, labels, splits


def typical_batches(batches: list[Batch]) -> list[Batch]:
    """Batches ordered by how close their share of subjects with PET is to half (the cohort's)."""
    return sorted(batches, key=lambda b: (abs(int(b.has_pet.sum()) * 2 - len(b)), -len(b)))


def batch_stream(pipeline: Any) -> Iterator[Batch]:
    """Augmented training batches drawn as the engine draws them, epoch after epoch."""
    epoch = 0
    while True:
        yield from pipeline.train_batches(epoch)
        epoch += 1
