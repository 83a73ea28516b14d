"""``cdsf-bench predict``, held-out phantom cohorts and suites' external validation.

The invariant: applying a finished run's model to the run's own data reproduces, on the CPU,
the predictions the run made of its test split, for a joint, a two-stage and a mean-imputing
coupling (whose input from the training data, the PET mean, must come from the checkpoint):
the same labels, PET sources and probabilities, bit for bit. That holds only because predict
batches the run's test subjects as the run did (its splits.csv, in order, apart from the rest
of the cohort): the CPU's convolutions round a subject's result differently in a batch of
another composition (seen: 2e-7 when predict batched the whole cohort). Refusals exit 2 with
a message and leave the run folder's bytes unchanged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner, Result

from cdsf_bench import config as cfg
from cdsf_bench.cli import main
from cdsf_bench.errors import InputError
from cdsf_bench.predict.apply import HELD_OUT_SEED_OFFSET
from cdsf_bench.registry import default_registry
from cdsf_bench.results import load_torch

TINY = ["--preset", "tiny", "--set", "evaluate.bootstrap=20"]
#: each method on a cohort just large enough for it (a two-stage method selects its synthesiser
#: on validation subjects with PET, which 24 subjects do not always leave)
METHODS = {
    "joint": [
        "--synth",
        "ism",
        "--diag",
        "mdm",
        "--coupling",
        "joint",
        "--epochs",
        "2",
        "--set",
        "data.subjects=24",
    ],
    "decoupled": ["--synth", "ism", "--diag", "mdm", "--coupling", "decoupled", "--epochs", "1"],
    "mean-impute": [
        *("--synth", "none", "--diag", "mdm", "--coupling", "mean-impute", "--epochs", "2"),
        *("--set", "data.subjects=24"),
    ],
}


def invoke(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_refused(result: Result, *names: str) -> None:
    text = result.output
    assert result.exit_code == 2, text
    assert isinstance(result.exception, SystemExit), f"unhandled {result.exception!r}\n{text}"
    assert "Traceback" not in text
    for name in names:
        assert name in text, f"{name!r} not in:\n{text}"


def folder_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("trained")
    out = {}
    for name, method in METHODS.items():
        result = invoke("run", *method, *TINY, "--out", root / name)
        assert result.exit_code == 0, result.output
        out[name] = root / name
    return out


def test_predict_batches_the_runs_own_test_subjects_first_and_only_on_its_own_cohort(runs):
    from cdsf_bench.predict.apply import prepare, source_config
    from cdsf_bench.predict.trained import load_trained
    from cdsf_bench.registry import default_registry

    registry = default_registry()
    model = load_trained(runs["joint"], registry)
    tested = pd.read_csv(runs["joint"] / "splits.csv", dtype={"participant_id": str}).query("split == 'test'")
    own = prepare(model, registry, source_config(model.config, "phantom", (), registry), torch.device("cpu"))
    (group,) = own.groups
    ids = own.cohort.participants["participant_id"].to_numpy()
    assert list(ids[group]) == list(tested["participant_id"])  # the run's order, all of them
    other = source_config(model.config, "phantom", ("data.phantom_seed=7",), registry)
    assert prepare(model, registry, other, torch.device("cpu")).groups == ()


def test_a_run_folder_copied_without_splits_csv_still_predicts(runs, tmp_path):
    import shutil

    copy = tmp_path / "copied"
    shutil.copytree(runs["joint"], copy)
    (copy / "splits.csv").unlink()
    result = invoke("predict", copy, "--data", "phantom", "--out", tmp_path / "p")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "p" / "predictions.csv").exists()


@pytest.mark.parametrize("coupling", list(METHODS))
def test_predict_reproduces_the_runs_own_test_predictions_exactly(runs, coupling, tmp_path):
    run = runs[coupling]
    before = folder_digest(run)
    result = invoke("predict", run, "--data", "phantom", "--out", tmp_path / "p")
    assert result.exit_code == 0, result.output
    assert folder_digest(run) == before  # applying a run never changes it
    mine = pd.read_csv(tmp_path / "p" / "predictions.csv", dtype={"participant_id": str})
    theirs = pd.read_csv(run / "predictions.csv", dtype={"participant_id": str})
    both = theirs.merge(mine, on="participant_id", suffixes=("_run", "_predict"))
    assert len(both) == len(theirs) > 0  # every test subject is among the run's own data
    assert (both["probability_run"] == both["probability_predict"]).all()  # bit for bit
    assert (both["prediction_run"] == both["prediction_predict"]).all()
    assert (both["pet_source_run"] == both["pet_source_predict"]).all()
    # training and validation subjects are predicted too: the whole cohort of the task, not the
    # other diagnoses' subjects that trained the generator unlabelled (data.synthesis_subjects)
    splits = pd.read_csv(run / "splits.csv", dtype={"participant_id": str})
    assert set(mine["participant_id"]) == set(splits.loc[splits["labelled"], "participant_id"])
    assert len(mine) < cfg.resolve(default_registry(), run / "config.toml").data.subjects  # CN, AD only
    metrics = json.loads((tmp_path / "p" / "metrics.json").read_text())
    threshold = json.loads((run / "metrics.json").read_text())["selection"]["threshold"]
    assert metrics["threshold"] == threshold
    assert (mine["prediction"] == (mine["probability"] >= threshold).astype(int)).all()
    assert metrics["n"]["test"] == len(mine)


def test_checkpoint_records_the_training_pet_mean(runs):
    """The one input a coupling takes from the training data: the mean real PET of training.

    Training is the run's training split, the other diagnoses' unlabelled subjects with PET
    included (``data.synthesis_subjects = "all_diagnoses"``, the default): their PET is real.
    """
    run = runs["mean-impute"]
    state = load_torch(run / "checkpoints" / "last.pt")
    config = cfg.resolve(default_registry(), run / "config.toml")
    from cdsf_bench.assemble import load_cohort
    from cdsf_bench.data.labels import training_cohort

    cohort, _ = load_cohort(config, default_registry())
    cohort, _ = training_cohort(cohort, config.task, config.synthesis_subjects)
    splits = pd.read_csv(run / "splits.csv", dtype={"participant_id": str})
    train = set(splits.loc[splits["split"] == "train", "participant_id"])
    rows = np.flatnonzero(cohort.participants["participant_id"].isin(train).to_numpy() & cohort.has_pet)
    expected = np.asarray(cohort.pet[rows], dtype=np.float32).mean(0)
    assert state["format"] == 2
    np.testing.assert_allclose(state["train_pet_mean"][0, 0].numpy(), expected, atol=1e-6)
    assert float(state["train_pet_mean"].abs().sum()) > 0


def test_synthetic_pet_has_the_inputs_own_affine(runs, tmp_path):
    """A file cohort on another grid (6 mm) is resampled onto the run's (8 mm) for the model, and
    each synthetic PET is written on the subject's own MRI grid: same affine, same shape."""
    cohort = tmp_path / "cohort"
    result = invoke("data", "phantom", "--out", cohort, "--subjects", 12, "--resolution", 6, "--seed", 5)
    assert result.exit_code == 0, result.output
    result = invoke("predict", runs["joint"], "--data", cohort, "--out", tmp_path / "p")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(cohort / "participants.tsv", sep="\t", dtype={"participant_id": str})
    predicted = pd.read_csv(tmp_path / "p" / "predictions.csv", dtype={"participant_id": str})
    assert len(predicted) > 0
    for participant in predicted["participant_id"]:
        mri = nib.load(cohort / table.set_index("participant_id").loc[participant, "mri"])
        synthetic = nib.load(tmp_path / "p" / "synth" / f"{participant}_space-T1w_desc-synthetic_pet.nii.gz")
        np.testing.assert_array_equal(synthetic.affine, mri.affine)
        assert synthetic.shape == mri.shape
        assert np.isfinite(synthetic.get_fdata()).all() and synthetic.get_fdata().max() > 0


def test_phantom_predictions_are_on_the_cohorts_grid(runs, tmp_path):
    result = invoke(
        "predict", runs["joint"], "--data", "phantom", "--set", "data.phantom_seed=3", "--out", tmp_path / "p"
    )
    assert result.exit_code == 0, result.output
    affine = np.asarray(json.loads((runs["joint"] / "data.json").read_text())["affine"])
    files = sorted((tmp_path / "p" / "synth").glob("*_desc-synthetic_pet.nii.gz"))
    assert len(files) == len(pd.read_csv(tmp_path / "p" / "predictions.csv"))
    for path in files:
        np.testing.assert_array_equal(nib.load(path).affine, affine)
    record = json.loads((tmp_path / "p" / "prediction.json").read_text())
    assert record["data"]["settings"] == ["data.phantom_seed=3"]
    assert (
        record["checkpoint_sha256"]
        == hashlib.sha256((runs["joint"] / "checkpoints" / "last.pt").read_bytes()).hexdigest()
    )


class _Payload:
    """Unpickling this would run ``os.mkdir(marker)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.mkdir, (str(self.marker),))


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def _old_format(run: Path) -> None:
    path = run / "checkpoints" / "last.pt"
    state = load_torch(path)
    del state["format"], state["train_pet_mean"]
    torch.save(state, path)


def _hostile(run: Path) -> None:
    torch.save({"format": 2, "hook": _Payload(run / "pwned")}, run / "checkpoints" / "last.pt")


def _changed_network(run: Path) -> None:
    path = run / "checkpoints" / "last.pt"
    state = load_torch(path)
    modules = state["stages"][0]["modules"]
    name = next(iter(modules))
    modules[name] = {key: value for key, value in list(modules[name].items())[1:]}
    torch.save(state, path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda run: (run / "checkpoints" / "last.pt").unlink(), "has no weights"),
        (lambda run: (run / "metrics.json").unlink(), "has not finished"),
        (lambda run: (run / "config.toml").unlink(), "is not a cdsf-bench run folder"),
        (_old_format, "was written by another version of cdsf-bench"),
        (_hostile, "cannot be loaded safely"),
        (_changed_network, "weights do not fit"),
    ],
    ids=["no-weights", "unfinished", "not-a-run", "old-checkpoint", "pickled-object", "changed-network"],
)
def test_a_bad_run_folder_is_refused_and_left_as_it_was(runs, tmp_path, damage, message):
    run = _copy(runs["joint"], tmp_path / "run")
    damage(run)
    before = folder_digest(run)
    result = invoke("predict", run, "--data", "phantom", "--out", tmp_path / "p")
    assert_refused(result, message, str(run))
    assert folder_digest(run) == before
    assert not (tmp_path / "p").exists()
    assert not (run / "pwned").exists()


def test_bad_options_and_cohorts_are_refused_before_anything_is_written(runs, tmp_path):
    run = runs["joint"]
    before = folder_digest(run)
    out = tmp_path / "p"
    cases = [
        (("--data", "phantom", "--set", "train.epochs=3"), "only the data.* settings"),
        (("--data", "phantom", "--set", "data.resolution_mm=4"), "the run's preprocessing"),
        (("--data", "phantom", "--set", "data.phantom.site=nowhere"), "site must be one of"),
        (("--data", tmp_path / "missing"), "could not tell what --data"),
        (("--data", "phantom", "--out", run / "inside"), "lies inside the run folder"),
    ]
    for options, message in cases:
        arguments = options if "--out" in options else (*options, "--out", out)
        assert_refused(invoke("predict", run, *arguments), message)
        assert not out.exists() and not (run / "inside").exists()
    # a cohort whose subject has no MRI
    cohort = tmp_path / "cohort"
    assert invoke("data", "phantom", "--out", cohort, "--subjects", 6, "--resolution", 8).exit_code == 0
    table = pd.read_csv(cohort / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)
    table.loc[0, "mri"] = ""
    table.to_csv(cohort / "manifest.tsv", sep="\t", index=False)
    result = invoke("predict", run, "--data", cohort / "manifest.tsv", "--out", out)
    assert_refused(result, "has no MRI path", table.loc[0, "participant_id"])
    assert not out.exists()
    (out / "old").mkdir(parents=True)
    (out / "old" / "file.txt").write_text("x")
    assert_refused(invoke("predict", run, "--data", "phantom", "--out", out), "already holds files")
    assert folder_digest(run) == before


def test_a_held_out_phantom_cohort_is_the_test_set_and_predict_repeats_it(tmp_path):
    run = tmp_path / "run"
    result = invoke(
        "run", *METHODS["joint"], *TINY, "--set", "evaluate.phantom_test_subjects=30", "--out", run
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    seed = HELD_OUT_SEED_OFFSET  # the training cohort's seed is 0
    assert metrics["test_set"] == {"cohort": "held_out", "subjects": 30, "phantom_seed": seed}
    held = pd.read_csv(run / "predictions.csv", dtype={"participant_id": str})
    split = pd.read_csv(run / "predictions_test_split.csv", dtype={"participant_id": str})
    assert (held["split"] == "held_out").all() and (split["split"] == "test").all()
    assert metrics["n"]["test"] == len(held) == 18  # the AD and CN subjects of 30
    assert metrics["n"]["test_split"] == len(split)
    # the same cohort through cdsf-bench predict: the same numbers, bit for bit
    result = invoke(
        "predict",
        run,
        "--data",
        "phantom",
        "--set",
        "data.subjects=30",
        "--set",
        f"data.phantom_seed={seed}",
        "--out",
        tmp_path / "p",
    )
    assert result.exit_code == 0, result.output
    again = pd.read_csv(tmp_path / "p" / "predictions.csv", dtype={"participant_id": str})
    assert again["participant_id"].tolist() == held["participant_id"].tolist()
    assert (again["probability"] == held["probability"]).all()
    repeated = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert repeated["diagnosis"] == metrics["diagnosis"]
    # a run tested on a held-out phantom cohort still applies to a cohort of files
    files = tmp_path / "files"
    assert invoke("data", "phantom", "--out", files, "--subjects", 8, "--resolution", 8).exit_code == 0
    result = invoke("predict", run, "--data", files, "--out", tmp_path / "files-p")
    assert result.exit_code == 0, result.output


def test_the_held_out_cohort_is_other_people():
    from cdsf_bench.data.phantom import phantom_settings, plan_phantom

    training = next(plan_phantom(phantom_settings(subjects=1, resolution_mm=8.0, seed=0)).subjects())
    held = next(
        plan_phantom(phantom_settings(subjects=1, resolution_mm=8.0, seed=HELD_OUT_SEED_OFFSET)).subjects()
    )
    assert training.row["age"] != held.row["age"]
    assert not np.array_equal(training.mri, held.mri)


def test_held_out_cohorts_need_the_phantom(tmp_path):
    registry = default_registry()
    with pytest.raises(InputError, match="not the phantom"):
        cfg.resolve(
            registry,
            None,
            ("evaluate.phantom_test_subjects=100",),
            flags={"data.spec": str(tmp_path / "x.csv")},
        )
    with pytest.raises(InputError, match=r"'evaluate.phantom_test_subjects' must be in \[0, "):
        cfg.resolve(registry, None, ("evaluate.phantom_test_subjects=-1",))


EXTERNAL_SUITE = """
name = "external-tiny"
task = "ad_cn"
data = "phantom"
preset = "tiny"
seeds = [0]
test_data = "phantom"

[settings]
"data.subjects" = 24
"train.epochs" = 1
"evaluate.bootstrap" = 20

[test_settings]
"data.phantom.site" = "legacy"
"data.phantom_seed" = 9
"data.subjects" = 20

[[methods]]
name = "CDSF"
synth = "ism"
diag = "mdm"
coupling = "joint"

[[methods]]
name = "MRI only"
synth = "none"
diag = "mdm"
coupling = "single"
"""


def test_test_data_tests_every_runs_model_on_the_external_cohort(tmp_path):
    (tmp_path / "suite.toml").write_text(EXTERNAL_SUITE)
    suite = tmp_path / "suite"
    result = invoke("bench", tmp_path / "suite.toml", "--out", suite)
    assert result.exit_code == 0, result.output
    external = pd.read_csv(suite / "external.csv")
    results = pd.read_csv(suite / "results.csv")
    assert external["run_folder"].tolist() == results["run_folder"].tolist()
    assert (external["status"] == "done").all()
    tables = {
        run: pd.read_csv(suite / "external" / run / "predictions.csv", dtype={"participant_id": str})
        for run in external["run_folder"]
    }
    # paired: every method's model predicted the same external subjects
    ids = [sorted(table["participant_id"]) for table in tables.values()]
    assert ids[0] == ids[1] and len(ids[0]) == 12
    # the external predictions are what cdsf-bench predict makes of the same run and cohort
    first = external["run_folder"].iloc[0]
    result = invoke(
        "predict",
        suite / first,
        "--data",
        "phantom",
        *("--set", "data.phantom.site=legacy", "--set", "data.phantom_seed=9", "--set", "data.subjects=20"),
        "--out",
        tmp_path / "again",
    )
    assert result.exit_code == 0, result.output
    again = pd.read_csv(tmp_path / "again" / "predictions.csv", dtype={"participant_id": str})
    assert (again["probability"] == tables[first]["probability"]).all()
    for row in external.itertuples():
        metrics = json.loads((suite / "external" / row.run_folder / "metrics.json").read_text())
        assert row.auc == pytest.approx(metrics["diagnosis"]["auc"])
    report = (suite / "report.md").read_text()
    assert "External validation on phantom (data.phantom.site = legacy" in report
    assert "AUC external" in report and (suite / "figures" / "ad_cn_external.png").is_file()
    # an export keeps the external predictions and re-renders the same report
    assert invoke("export", suite, tmp_path / "export").exit_code == 0
    assert (tmp_path / "export" / "external.csv").is_file()
    assert (tmp_path / "export" / "external" / first / "predictions.csv").is_file()
    assert invoke("report", tmp_path / "export", "--format", "md").exit_code == 0
    assert (tmp_path / "export" / "report.md").read_text() == report
    # resumed, the external predictions are read back, not redone
    stamp = (suite / "external" / first / "metrics.json").stat().st_mtime_ns
    assert invoke("bench", tmp_path / "suite.toml", "--out", suite, "--resume").exit_code == 0
    assert (suite / "external" / first / "metrics.json").stat().st_mtime_ns == stamp


TEST_SETTINGS = (
    '[test_settings]\n"data.phantom.site" = "legacy"\n"data.phantom_seed" = 9\n"data.subjects" = 20\n'
)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (TEST_SETTINGS, '[test_settings]\n"train.epochs" = 3\n', "only the data.* settings"),
        (TEST_SETTINGS, '[test_settings]\n"data.resolution_mm" = 4.0\n', "the run's preprocessing"),
        ('test_data = "phantom"', 'test_data = ""', "must be a data spec string"),
    ],
)
def test_bad_test_data_is_refused_when_the_suite_is_read(tmp_path, old, new, message):
    from cdsf_bench.bench.suite_file import load_suite

    assert old in EXTERNAL_SUITE
    path = tmp_path / "suite.toml"
    path.write_text(EXTERNAL_SUITE.replace(old, new))
    with pytest.raises(InputError, match=message):
        load_suite(path)


def test_test_settings_without_test_data_are_refused(tmp_path):
    from cdsf_bench.bench.suite_file import load_suite

    path = tmp_path / "suite.toml"
    path.write_text(EXTERNAL_SUITE.replace('test_data = "phantom"\n', ""))
    with pytest.raises(InputError, match="which the suite does not give"):
        load_suite(path)


def test_external_data_is_part_of_the_suites_identity(tmp_path):
    from cdsf_bench.bench.suite import suite_from_canonical
    from cdsf_bench.bench.suite_file import load_suite

    path = tmp_path / "suite.toml"
    path.write_text(EXTERNAL_SUITE)
    suite = load_suite(path)
    assert suite_from_canonical(suite.canonical()).hash == suite.hash
    assert suite.test_assignments == (
        'data.phantom.site="legacy"',
        "data.phantom_seed=9",
        "data.subjects=20",
    )
    path.write_text(EXTERNAL_SUITE.replace('"data.phantom_seed" = 9', '"data.phantom_seed" = 10'))
    assert load_suite(path).hash != suite.hash
