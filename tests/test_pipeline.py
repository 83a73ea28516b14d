"""The device pipeline: seeded, paired batch order; augmentation that keeps MRI and PET aligned."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from cdsf_bench.data.pipeline import DevicePipeline, HiddenVolumes
from cdsf_bench.data.splits import make_splits
from cdsf_bench.interfaces import Cohort
from cdsf_bench.rows import RowView
from cdsf_bench.settings import AugmentSettings

AUGMENT = AugmentSettings(enabled=True, rotate_deg=5.0, translate_vox=1.0, intensity=0.05)


def _cohort(n: int = 30, shape=(12, 12, 12)) -> tuple[Cohort, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * (n // 2))
    has_pet = rng.random(n) < 0.5
    mri = rng.uniform(-1, 1, (n, *shape)).astype(np.float16)
    truth = rng.uniform(-1, 1, (n, *shape)).astype(np.float16)
    pet = np.where(has_pet[:, None, None, None], truth, np.float16(0))
    table = pd.DataFrame(
        {"participant_id": [f"sub-{i:02d}" for i in range(n)], "diagnosis": labels, "has_pet": has_pet}
    )
    cohort = Cohort(table, mri, pet, has_pet, np.eye(4), np.ones(shape, bool), pet_truth=truth)
    return cohort, labels


def _memmapped(cohort: Cohort, folder) -> Cohort:
    """The cohort with its volumes memory-mapped read-only, as the cache loads them."""
    volumes = {}
    for name in ("mri", "pet", "pet_truth"):
        np.save(folder / f"{name}.npy", getattr(cohort, name))
        volumes[name] = np.load(folder / f"{name}.npy", mmap_mode="r")
    return Cohort(
        cohort.participants,
        **volumes,
        has_pet=cohort.has_pet,
        affine=cohort.affine,
        brain_mask=cohort.brain_mask,
    )


def test_subset_of_a_memory_mapped_cohort_stays_on_disk_with_the_same_values(tmp_path):
    cohort, labels = _cohort()
    mapped = _memmapped(cohort, tmp_path)
    scattered = np.flatnonzero(np.arange(len(cohort)) % 3 != 1)  # like a task's classes
    contiguous = np.arange(4, 17)
    for rows in (scattered, contiguous):
        subset, expected = mapped.subset(rows), cohort.subset(rows)
        for name in ("mri", "pet", "pet_truth"):
            lazy, eager = getattr(subset, name), getattr(expected, name)
            assert isinstance(lazy, np.memmap if rows is contiguous else RowView), name
            assert lazy.shape == eager.shape and lazy.dtype == eager.dtype and lazy.size == eager.size
            assert len(lazy) == len(eager)
            assert np.array_equal(np.asarray(lazy), eager)
            assert np.array_equal(np.asarray(lazy[3], dtype=np.float32), eager[3].astype(np.float32))
            assert isinstance(lazy[3], np.memmap)  # one row is read from the file, not the subset
            assert np.array_equal(lazy[2:5, 1], eager[2:5, 1])
        assert np.array_equal(subset.has_pet, expected.has_pet)
        assert subset.participants.equals(expected.participants)
    # a subset of a subset composes the rows
    twice = mapped.subset(scattered).subset(np.array([0, 2, 5]))
    assert np.array_equal(np.asarray(twice.mri), cohort.mri[scattered[[0, 2, 5]]])
    # the device pipeline holds the same tensors and draws the same batches
    sub_labels = labels[scattered]
    splits = make_splits(cohort.subset(scattered).participants, sub_labels, val=0.2, test=0.2, seed=0)
    pipes = [
        DevicePipeline(
            c.subset(scattered),
            sub_labels,
            splits,
            device=torch.device("cpu"),
            seed=0,
            batch_size=4,
            augment=replace(AUGMENT, enabled=True),
            hidden=HiddenVolumes(pet_truth=True),
        )
        for c in (mapped, cohort)
    ]
    for name in ("mri", "pet", "pet_truth"):
        assert torch.equal(getattr(pipes[0], name), getattr(pipes[1], name))
    for x, y in zip(pipes[0].train_batches(1), pipes[1].train_batches(1), strict=True):
        assert (
            torch.equal(x.mri, y.mri) and torch.equal(x.pet, y.pet) and torch.equal(x.pet_truth, y.pet_truth)
        )


def _pipeline(seed: int = 0, augment=None, batch_size: int = 4) -> DevicePipeline:
    cohort, labels = _cohort()
    splits = make_splits(cohort.participants, labels, val=0.2, test=0.2, seed=0)
    return DevicePipeline(
        cohort,
        labels,
        splits,
        device=torch.device("cpu"),
        seed=seed,
        batch_size=batch_size,
        augment=augment or replace(AUGMENT, enabled=False),
    )


def test_same_seed_same_batches_and_fingerprint():
    a, b = _pipeline(), _pipeline()
    assert a.fingerprint() == b.fingerprint()
    for x, y in zip(a.train_batches(3), b.train_batches(3), strict=True):
        assert torch.equal(x.index, y.index)
    assert _pipeline(seed=1).fingerprint()["batch_order_sha256"] != a.fingerprint()["batch_order_sha256"]


def test_with_pet_subset_keeps_the_order_of_all_subjects():
    pipe = _pipeline()
    everyone = pipe.train_order(2)
    with_pet = pipe.train_order(2, "with_pet")
    assert list(with_pet) == [row for row in everyone if pipe.has_pet_np[row]]


def test_every_training_subject_once_per_epoch_and_no_batch_of_one():
    pipe = _pipeline(batch_size=4)
    rows = np.concatenate([b.index.numpy() for b in pipe.train_batches(0)])
    assert sorted(rows) == sorted(pipe.splits.train)
    assert min(len(b) for b in pipe.train_batches(0)) >= 4


def test_augmentation_is_seeded_and_keeps_missing_pet_zero():
    a, b = _pipeline(augment=AUGMENT), _pipeline(augment=AUGMENT)
    for x, y in zip(a.train_batches(1), b.train_batches(1), strict=True):
        assert torch.equal(x.mri, y.mri)
        missing = ~x.has_pet
        assert torch.all(x.pet[missing] == 0)
        assert x.mri.min() >= -1 and x.mri.max() <= 1


def test_augmentation_moves_mri_and_pet_together():
    """With PET equal to MRI, one shared rigid transform must leave them equal."""
    cohort, labels = _cohort()
    cohort.pet = cohort.mri.copy()
    cohort.has_pet[:] = True
    splits = make_splits(cohort.participants, labels, val=0.2, test=0.2, seed=0)
    pipe = DevicePipeline(
        cohort,
        labels,
        splits,
        device=torch.device("cpu"),
        seed=0,
        batch_size=4,
        augment=replace(AUGMENT, intensity=0.0),
    )
    batch = next(iter(pipe.train_batches(0)))
    original = torch.from_numpy(cohort.mri[batch.index.numpy()]).float().unsqueeze(1)
    assert not torch.allclose(batch.mri, original)  # it did move
    assert torch.allclose(batch.mri, batch.pet, atol=1e-6)


def test_eval_batches_cover_the_split_in_order():
    pipe = _pipeline()
    rows = np.concatenate([b.index.numpy() for b in pipe.eval_batches("test")])
    assert list(rows) == list(pipe.splits.test)


def test_eval_batches_batch_each_group_apart_then_the_rest():
    pipe = _pipeline()
    test = pipe.splits.test
    assert len(test) > pipe.batch_size + 1
    group = test[[2, 0, 1]]  # a group's own order, not the split's
    batches = [b.index.numpy() for b in pipe.eval_batches("test", groups=[group])]
    assert list(batches[0]) == list(group)  # its own batch though the batch size is larger
    assert list(np.concatenate(batches[1:])) == [r for r in test if r not in group]
    assert max(len(b) for b in batches) <= pipe.batch_size
    assert pipe.n_eval_batches("test", groups=[group]) == len(batches)
    others = np.concatenate([pipe.splits.train[:2], group])  # rows outside the split are ignored
    again = [b.index.numpy() for b in pipe.eval_batches("test", groups=[others])]
    assert [list(b) for b in again] == [list(b) for b in batches]


def test_train_pet_mean_uses_training_subjects_with_pet_only():
    pipe = _pipeline()
    rows = pipe.rows("train", "with_pet")
    expected = pipe.pet[torch.from_numpy(rows)].float().mean(0)
    assert torch.allclose(pipe.train_pet_mean()[0, 0], expected, atol=1e-3)


def test_separable_affine_grid_equals_torch_affine_grid():
    from cdsf_bench.data.pipeline import _affine_grid, _rigid_theta

    generator = torch.Generator().manual_seed(0)
    angles = (torch.rand(3, 3, generator=generator) * 2 - 1) * 0.2
    shifts = (torch.rand(3, 3, generator=generator) * 2 - 1) * 2
    shape = torch.Size((7, 10, 6))
    theta = _rigid_theta(angles, shifts, shape)
    expected = torch.nn.functional.affine_grid(theta, [3, 2, *shape], align_corners=False)
    torch.testing.assert_close(_affine_grid(theta, shape), expected, rtol=0, atol=1e-6)
