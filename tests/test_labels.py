"""Training subjects whose labels must not be used: which subjects train, how they are split and drawn.

A cohort's optional ``labelled`` column and ``data.synthesis_subjects = "all_diagnoses"`` give
training subjects without a usable label. The invariants: they never reach validation or
test; the labelled subjects' splits and batches are what they would be without them; a stage
that needs labels never meets them; and with every subject labelled nothing changes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cdsf_bench.data.check import class_problems, table_problems
from cdsf_bench.data.labels import UNLABELLED, labelled_flags, read_labelled, training_cohort
from cdsf_bench.data.pipeline import DevicePipeline
from cdsf_bench.data.splits import Splits, make_splits
from cdsf_bench.data.summary import cohort_summary
from cdsf_bench.errors import InputError, RunFailed
from cdsf_bench.interfaces import Cohort
from cdsf_bench.settings import AugmentSettings

SHAPE = (8, 8, 8)
#: a cohort of every diagnosis in a shuffled order (CN and AD make task ad_cn)
DIAGNOSES = ["CN", "AD", "sMCI", "pMCI"] * 15


def _cohort(labelled: list[bool] | None = None, split: list[str] | None = None) -> Cohort:
    rng = np.random.default_rng(4)
    order = rng.permutation(len(DIAGNOSES))
    n = len(order)
    has_pet = rng.random(n) < 0.6
    table = pd.DataFrame(
        {
            "participant_id": [f"sub-{i:03d}" for i in range(n)],
            "diagnosis": [DIAGNOSES[i] for i in order],
            "has_pet": has_pet,
        }
    )
    if labelled is not None:
        table["labelled"] = labelled
    if split is not None:
        table["split"] = split
    mri = rng.uniform(-1, 1, (n, *SHAPE)).astype(np.float16)
    pet = np.where(has_pet[:, None, None, None], rng.uniform(-1, 1, (n, *SHAPE)), 0).astype(np.float16)
    return Cohort(table, mri, pet, has_pet, np.eye(4), np.ones(SHAPE, bool))


def _pipeline(cohort: Cohort, labels: np.ndarray, splits: Splits | None = None, **kw) -> DevicePipeline:
    splits = splits or make_splits(cohort.participants, labels, val=0.2, test=0.2, seed=0)
    options = {"device": torch.device("cpu"), "seed": 0, "batch_size": 4, "augment": {"enabled": False}}
    return DevicePipeline(cohort, labels, splits, **{**options, **kw})


# -- the column and the subjects a run keeps -------------------------------------------------


def test_labelled_cells_read_as_booleans_and_bad_ones_are_named():
    assert [read_labelled(v) for v in (True, "TRUE", " yes ", 1, "0", 0.0, "No", np.bool_(False))] == [
        True, True, True, True, False, False, False, False,
    ]  # fmt: skip
    assert read_labelled("maybe") is None and read_labelled("") is None and read_labelled(2) is None
    table = pd.DataFrame(
        {"participant_id": ["a", "b", "c"], "diagnosis": ["CN"] * 3, "labelled": ["1", "x", ""]}
    )
    with pytest.raises(InputError, match=r"b \('x'\), c \(''\)"):
        labelled_flags(table)
    messages = [str(p) for p in table_problems(table)]
    assert any("b: has labelled 'x'" in m for m in messages) and any(
        m.startswith("c: has labelled") for m in messages
    )
    assert labelled_flags(table.drop(columns="labelled")).all()


def test_task_subjects_only_by_default_and_unlabelled_ones_get_no_label():
    flags = [i % 3 != 0 for i in range(len(DIAGNOSES))]
    cohort = _cohort(labelled=flags)
    kept, labels = training_cohort(cohort, "ad_cn")
    diagnosis = kept.participants["diagnosis"]
    assert set(diagnosis) == {"CN", "AD"}
    unlabelled = ~kept.participants["labelled"].to_numpy()
    assert (labels[unlabelled] == UNLABELLED).all()
    assert np.array_equal(labels[~unlabelled], (diagnosis[~unlabelled] == "AD").to_numpy().astype(int))


def test_all_diagnoses_adds_the_other_diagnoses_with_pet_as_unlabelled_training_subjects():
    split = ["train"] * len(DIAGNOSES)
    split[:8] = ["val", "test"] * 4  # the table holds these out
    cohort = _cohort(split=split)
    task, task_labels = training_cohort(cohort, "ad_cn", "task")
    every, labels = training_cohort(cohort, "ad_cn", "all_diagnoses")
    table, full = every.participants, cohort.participants
    others = ~table["diagnosis"].isin(["CN", "AD"]).to_numpy()
    assert others.any() and (labels[others] == UNLABELLED).all()
    assert table.loc[others, "has_pet"].all() and (table.loc[others, "split"] == "train").all()
    expected = full[~full["diagnosis"].isin(["CN", "AD"]) & full["has_pet"] & (full["split"] == "train")]
    assert sorted(table.loc[others, "participant_id"]) == sorted(expected["participant_id"])
    # the task's subjects, their labels and their order are those of the task alone
    assert list(table.loc[~others, "participant_id"]) == list(task.participants["participant_id"])
    assert np.array_equal(labels[~others], task_labels)
    with pytest.raises(InputError, match="synthesis_subjects"):
        training_cohort(cohort, "ad_cn", "everything")


def test_class_counts_for_the_preflight_count_labelled_subjects_only():
    table = pd.DataFrame(
        {
            "participant_id": [f"s{i}" for i in range(12)],
            "diagnosis": ["CN", "AD"] * 6,
            "mri": ["x"] * 12,
            "labelled": [True, True, True, True] + [False] * 8,
        }
    )
    messages = " ".join(str(p) for p in class_problems(table, "ad_cn"))
    assert "2 CN subject(s)" in messages and "2 AD subject(s)" in messages
    assert not class_problems(table.drop(columns="labelled"), "ad_cn")
    table["split"] = ["train"] * 4 + ["val"] + ["train"] * 7
    assert any("s4: is unlabelled but its split is val" in str(p) for p in class_problems(table, "ad_cn"))
    assert "labelled: 4 of 12 subjects" in cohort_summary(table)


# -- splits ------------------------------------------------------------------------------------


def test_unlabelled_subjects_only_train_and_leave_the_labelled_splits_unchanged():
    cohort = _cohort()
    task, task_labels = training_cohort(cohort, "ad_cn", "task")
    every, labels = training_cohort(cohort, "ad_cn", "all_diagnoses")
    ids = every.participants["participant_id"].to_numpy()
    task_ids = task.participants["participant_id"].to_numpy()
    for folds, fold in ((0, 0), (3, 1)):
        with_them = make_splits(every.participants, labels, val=0.2, test=0.2, seed=5, folds=folds, fold=fold)
        without = make_splits(
            task.participants, task_labels, val=0.2, test=0.2, seed=5, folds=folds, fold=fold
        )
        for name in ("val", "test"):
            assert (labels[with_them.rows(name)] != UNLABELLED).all()
            assert sorted(ids[with_them.rows(name)]) == sorted(task_ids[without.rows(name)])
        unlabelled = set(np.flatnonzero(labels == UNLABELLED))
        assert unlabelled <= set(with_them.train)
        assert sorted(ids[sorted(set(with_them.train) - unlabelled)]) == sorted(task_ids[without.train])
    table = with_them.table(every.participants, labels)
    assert set(table.loc[~table["labelled"], "split"]) == {"train"}


def test_an_explicit_split_may_not_validate_or_test_an_unlabelled_subject():
    table = pd.DataFrame({"participant_id": [f"s{i}" for i in range(8)], "diagnosis": ["CN", "AD"] * 4})
    table["split"] = ["train", "train", "train", "train", "val", "val", "test", "test"]
    labels = np.array([0, 1, UNLABELLED, 0, 0, UNLABELLED, 0, 1])
    with pytest.raises(InputError, match="unlabelled subjects in val or test \\(s5\\)"):
        make_splits(table, labels, val=0.2, test=0.2, seed=0)
    labels[5] = 1
    assert list(make_splits(table, labels, val=0.2, test=0.2, seed=0).val) == [4, 5]


def test_validation_and_test_never_score_an_unlabelled_subject():
    """The selection reads validation predictions: an unlabelled subject there is refused."""
    cohort = _cohort(labelled=[i % 2 == 0 for i in range(len(DIAGNOSES))])
    kept, labels = training_cohort(cohort, "ad_cn")
    pipe = _pipeline(kept, labels)
    for split in ("val", "test"):
        scored = np.concatenate([b.index.numpy() for b in pipe.eval_batches(split)])
        assert (labels[scored] != UNLABELLED).all()
    wrong = Splits(pipe.splits.train[:-2], np.flatnonzero(labels == UNLABELLED)[:2], pipe.splits.test)
    with pytest.raises(RunFailed, match="val split holds subjects without a usable label"):
        next(_pipeline(kept, labels, wrong).eval_batches("val"))


# -- batches -----------------------------------------------------------------------------------


def _rows(batches) -> list[np.ndarray]:
    return [b.index.numpy() for b in batches]


@pytest.mark.parametrize("augment", [False, True])
def test_labelled_batches_are_the_same_whether_unlabelled_subjects_come_along(augment: bool):
    cohort = _cohort(labelled=[i % 3 != 1 for i in range(len(DIAGNOSES))])
    kept, labels = training_cohort(cohort, "ad_cn", "all_diagnoses")
    settings = AugmentSettings(enabled=augment, rotate_deg=5.0, translate_vox=1.0, intensity=0.05)
    pipe = _pipeline(kept, labels, augment=settings)
    unlabelled = set(np.flatnonzero(labels == UNLABELLED)) & set(pipe.splits.train)
    required = list(pipe.train_batches(2, "all", "required"))
    known = list(pipe.train_batches(2, "all", "where_known"))
    assert len(required) == len(known) == pipe.n_train_batches("all", "required")
    seen: list[int] = []
    for alone, mixed in zip(required, known, strict=True):
        assert bool(alone.labelled.all()) and (alone.label >= 0).all()
        n = len(alone)
        assert torch.equal(mixed.index[:n], alone.index) and torch.equal(mixed.mri[:n], alone.mri)
        assert torch.equal(mixed.pet[:n], alone.pet) and torch.equal(mixed.label[:n], alone.label)
        assert not mixed.labelled[n:].any() and (mixed.label[n:] == UNLABELLED).all()
        seen += mixed.index[n:].tolist()
    assert sorted(seen) == sorted(unlabelled)  # each unlabelled training subject once an epoch
    unused = _rows(pipe.train_batches(2, "with_pet", "unused"))
    assert sorted(np.concatenate(unused)) == sorted(pipe.rows("train", "with_pet"))
    assert len(unused) == pipe.n_train_batches("with_pet", "unused")


def test_with_every_subject_labelled_every_way_of_drawing_is_the_same():
    """What keeps a run on a fully labelled cohort as it was before unlabelled subjects existed."""
    cohort = _cohort()
    kept, labels = training_cohort(cohort, "ad_cn")
    pipe = _pipeline(
        kept, labels, augment=AugmentSettings(enabled=True, rotate_deg=5.0, translate_vox=1.0, intensity=0.05)
    )
    assert np.array_equal(pipe.train_order(3, labelled=True), pipe.train_order(3, labelled=None))
    draws = [
        list(pipe.train_batches(3, "all", labels_mode))
        for labels_mode in ("required", "where_known", "unused")
    ]
    for first, *others in zip(*draws, strict=True):
        for other in others:
            assert torch.equal(first.index, other.index) and torch.equal(first.mri, other.mri)
            assert torch.equal(first.pet, other.pet) and bool(other.labelled.all())


# -- a run -------------------------------------------------------------------------------------


def test_a_label_scarce_run_keeps_unlabelled_subjects_in_training(tmp_path):
    """The phantom's label_scarce regime with every diagnosis's paired scans, end to end."""
    import json

    from click.testing import CliRunner

    from cdsf_bench.cli import main

    out = tmp_path / "run"
    args = ["run", "--synth", "ism", "--diag", "mdm", "--joint", "--preset", "tiny", "--epochs", "1"]
    args += ["--set", "data.phantom.labelled_fraction=0.5", "--set", "data.synthesis_subjects=all_diagnoses"]
    args += ["--set", "evaluate.bootstrap=10", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    splits = pd.read_csv(out / "splits.csv")
    assert set(splits.loc[~splits["labelled"], "split"]) == {"train"}
    unlabelled = splits[~splits["labelled"]]
    assert {"sMCI", "pMCI"} <= set(unlabelled["diagnosis"]) and {"CN", "AD"} & set(unlabelled["diagnosis"])
    data = json.loads((out / "data.json").read_text())
    assert data["unlabelled"]["val"] == data["unlabelled"]["test"] == 0
    assert data["unlabelled"]["train"] == len(unlabelled) and data["synthesis_subjects"] == "all_diagnoses"
    predictions = pd.read_csv(out / "predictions.csv")
    labelled_test = splits.loc[(splits["split"] == "test") & splits["labelled"], "participant_id"]
    assert set(predictions["participant_id"]) == set(labelled_test)


@pytest.mark.parametrize("cells", [("True", "False"), ("1", "0"), ("yes", "NO")])
def test_a_manifests_labelled_column_reads_as_the_phantom_writes_it(tmp_path, cells: tuple[str, str]):
    """``data phantom`` writes True / False; people write 1 / 0 or yes / no."""
    from cdsf_bench.data.manifest import read_manifest

    rows = [f"sub-{i}\tCN\tmri{i}.nii.gz\t{cells[i % 2]}" for i in range(4)]
    (tmp_path / "m.tsv").write_text("participant_id\tdiagnosis\tmri\tlabelled\n" + "\n".join(rows) + "\n")
    table = read_manifest(tmp_path / "m.tsv")
    assert list(labelled_flags(table)) == [True, False, True, False]
