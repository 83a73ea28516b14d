"""Your own data on the first try (issue 24): NIfTI written the ways scanners and pipelines
differ are read alike, a scan not in MNI space is refused, every cheap check comes before
preprocessing, a refused run leaves nothing, a run folder reproduces itself from anywhere,
and what a run and ``data check`` print is readable.

Volumes are small blobs on coarse grids in MNI space, written with nibabel in ``tmp_path``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result

from cdsf_bench import config as cfg
from cdsf_bench import figures
from cdsf_bench.cli import main
from cdsf_bench.data import sources
from cdsf_bench.data.check import Needs, class_problems
from cdsf_bench.data.manifest import read_manifest, select_session
from cdsf_bench.data.nifti import to_native
from cdsf_bench.data.sources import ManifestSource, absolute_spec
from cdsf_bench.interfaces import DataSettings
from cdsf_bench.registry import default_registry

TINY = ["--preset", "tiny", "--set", "evaluate.bootstrap=10", "--epochs", "1"]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("CDSF_BENCH_QUIET", "1")
    monkeypatch.delenv("CDSF_BENCH_DEBUG", raising=False)


@pytest.fixture
def settings(tmp_path) -> DataSettings:
    return DataSettings(resolution_mm=8.0, cache_dir=str(tmp_path / "cache"))


def invoke(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def _ras(voxel_mm: tuple[float, float, float]) -> tuple[np.ndarray, tuple[int, int, int]]:
    """An affine and shape covering the MNI brain box (and some head) at ``voxel_mm``."""
    low, high = np.array([-80.0, -116.0, -80.0]), np.array([80.0, 80.0, 88.0])
    size = np.asarray(voxel_mm)
    shape = tuple(int(n) for n in np.floor((high - low) / size) + 1)
    affine = np.diag([*voxel_mm, 1.0])
    affine[:3, 3] = low
    return affine, (shape[0], shape[1], shape[2])


def _brain(affine: np.ndarray, shape: tuple[int, int, int], level: float) -> np.ndarray:
    """An ellipsoidal 'brain' at the MNI brain's place, whatever the grid stores."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    radius = np.sqrt((((xyz - (0.0, -17.0, 5.0)) / (68.0, 88.0, 74.0)) ** 2).sum(-1))
    # structure that differs left from right and front from back, so a flipped read shows
    ridge = (
        0.2 * np.sin((xyz[..., 0] + 5.0) / 9.0) * np.cos((xyz[..., 1] - 3.0) / 11.0) + 0.1 * xyz[..., 0] / 70
    )
    return (level * np.clip(1.2 - radius, 0, 1) * (1 + ridge)).astype(np.float32)


def _reorient(data: np.ndarray, affine: np.ndarray, flips: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The same voxels stored with axes ``flips`` reversed (LPS is flips (0, 1))."""
    out, new = data, affine.copy()
    for axis in flips:
        out = np.flip(out, axis=axis)
        new[:, axis] = -affine[:, axis]
        new[:3, 3] += affine[:3, axis] * (data.shape[axis] - 1)
    return np.ascontiguousarray(out), new


def _save(path: Path, image: nib.Nifti1Image) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return str(path)


def _variants(folder: Path) -> list[dict]:
    """Six subjects (CN, AD alternating), each stored another way; MRI and PET on their own grids."""
    rows = []
    mri_affine, mri_shape = _ras((4.0, 4.0, 4.0))
    t1 = _brain(mri_affine, mri_shape, 300.0)
    pet_affine, pet_shape = _ras((6.0, 5.0, 5.0))
    pet = _brain(pet_affine, pet_shape, 1.6)
    theta = np.deg2rad(8.0)  # an oblique grid: rotated about the MNI origin, same world content
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    oblique_affine = rotation @ pet_affine
    ways = {
        "ras-float32": lambda: nib.Nifti1Image(t1, mri_affine),
        "lps-int16-scaled": lambda: _scaled(*_reorient(t1, mri_affine, (0, 1))),
        "sagittal-uint8": lambda: nib.Nifti1Image(
            np.transpose(np.clip(t1 / 2, 0, 255).astype(np.uint8), (1, 2, 0)).copy(),
            mri_affine[:, [1, 2, 0, 3]],
        ),
        "one-frame-4d": lambda: nib.Nifti1Image(t1[..., None], mri_affine),
        "plain nii": lambda: nib.Nifti1Image(t1, mri_affine),
        "späces ünicode": lambda: nib.Nifti1Image(t1, mri_affine),
    }
    for i, (way, make) in enumerate(ways.items()):
        sid = f"sub-{i:02d}"
        suffix = ".nii" if way == "plain nii" else ".nii.gz"
        row = {"participant_id": sid, "diagnosis": "AD" if i % 2 else "CN", "pet": ""}
        row["mri"] = _save(folder / f"{way} dir" / f"{sid}_T1w{suffix}", make())
        if i % 2 == 0:
            pet_image = nib.Nifti1Image(_brain(oblique_affine, pet_shape, 1.6), oblique_affine)
            row["pet"] = _save(
                folder / f"{way} dir" / f"{sid}_pet.nii.gz",
                pet_image if i == 2 else nib.Nifti1Image(pet, pet_affine),
            )
        rows.append(row)
    return rows


def _scaled(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    image = nib.Nifti1Image(np.round((data - 10.0) / 0.05).astype(np.int16), affine)
    image.header.set_slope_inter(0.05, 10.0)
    return image


def test_storage_variants_and_own_pet_grids_are_read(tmp_path, settings):
    """RAS, LPS, sagittal and oblique affines; float32, scaled int16, uint8; a one-frame 4D;
    .nii and .nii.gz; spaces and non-ASCII in paths; PET on its own 6 x 5 x 5 mm grid."""
    rows = _variants(tmp_path)
    manifest = tmp_path / "cohort.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    cohort = ManifestSource().load(str(manifest), settings)
    assert len(cohort) == 6 and cohort.has_pet.tolist() == [True, False, True, False, True, False]
    mri = np.asarray(cohort.mri, dtype=np.float32)
    for i in range(1, 6):  # the same anatomy whatever the storage (uint8 loses a little to rounding)
        assert np.abs(mri[i] - mri[0]).mean() < 0.02, rows[i]["mri"]
    result = invoke("data", "check", manifest)
    # six subjects are too few to split at 0.2 / 0.2, and nothing else is wrong: every file is read
    problems = _problem_lines(result.output)
    assert problems and all(line.startswith("- task ad_cn has") for line in problems), result.output


def test_an_lps_copy_gives_the_same_cohort_arrays(tmp_path, settings):
    affine, shape = _ras((4.0, 4.0, 4.0))
    t1 = _brain(affine, shape, 300.0)
    pet = _brain(affine, shape, 1.6)
    tables = {}
    for name, flips in (("ras", ()), ("lps", (0, 1))):
        rows = []
        for i in range(2):
            sid = f"sub-{i}"
            mri_path = _save(
                tmp_path / name / f"{sid}_T1w.nii.gz", nib.Nifti1Image(*_reorient(t1, affine, flips))
            )
            pet_path = _save(
                tmp_path / name / f"{sid}_pet.nii.gz", nib.Nifti1Image(*_reorient(pet, affine, flips))
            )
            rows.append({"participant_id": sid, "diagnosis": "CN", "mri": mri_path, "pet": pet_path})
        tables[name] = tmp_path / f"{name}.csv"
        pd.DataFrame(rows).to_csv(tables[name], index=False)
    ras = ManifestSource().load(str(tables["ras"]), settings)
    lps = ManifestSource().load(str(tables["lps"]), settings)
    np.testing.assert_allclose(np.asarray(ras.mri, np.float32), np.asarray(lps.mri, np.float32), atol=1e-3)
    np.testing.assert_allclose(np.asarray(ras.pet, np.float32), np.asarray(lps.pet, np.float32), atol=1e-3)


def _cohort(folder: Path, labels: tuple[str, ...], name: str = "cohort.csv") -> Path:
    affine, shape = _ras((8.0, 8.0, 8.0))
    rows = []
    for i, label in enumerate(labels):
        sid = f"sub-{i:02d}"
        mri = _save(folder / f"{sid}_T1w.nii.gz", nib.Nifti1Image(_brain(affine, shape, 300.0 + i), affine))
        pet = (
            _save(folder / f"{sid}_pet.nii.gz", nib.Nifti1Image(_brain(affine, shape, 1.6), affine))
            if i % 3
            else ""
        )
        rows.append({"participant_id": sid, "diagnosis": label, "mri": mri, "pet": pet})
    path = folder / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_task_feasibility_is_checked_before_preprocessing(tmp_path, monkeypatch):
    manifest = _cohort(tmp_path, ("CN", "AD") * 3)
    monkeypatch.setattr(sources, "cohort_from_table", lambda *a: pytest.fail("preprocessed before refusing"))
    result = invoke("run", *TINY, "--data", manifest, "--task", "pmci_smci", "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert "task pmci_smci has 0 sMCI subject(s)" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_task_feasibility_covers_folds_splits_and_pet():
    table = pd.DataFrame(
        {
            "participant_id": [f"s{i}" for i in range(8)],
            "diagnosis": ["CN", "AD"] * 4,
            "pet": ["p", "", "", "", "", "", "", ""],
            "split": ["train"] * 6 + ["val"] * 2,
        }
    )
    text = "\n".join(str(p) for p in class_problems(table, "ad_cn", folds=5))
    assert "4 CN subject(s); it needs at least 5 per class for 5-fold cross-validation" in text
    text = "\n".join(str(p) for p in class_problems(table, "ad_cn", needs=Needs(pet_to_learn_from=True)))
    assert "1 subject(s) with PET" in text and "synthesiser" in text
    assert "puts no CN or AD subject in test" in text
    text = "\n".join(str(p) for p in class_problems(table, "ad_cn", needs=Needs(pet_in_every_class=True)))
    assert "0 AD subject(s) with PET" in text
    text = "\n".join(str(p) for p in class_problems(table, "ad_cn", needs=Needs(pet_truth=True)))
    assert "needs every subject's real PET" in text
    six = table.drop(columns="split").iloc[:6]
    text = "\n".join(str(p) for p in class_problems(six, "ad_cn"))
    assert "task ad_cn has 6 subjects" in text and "leave validation 1" in text


def test_config_stores_the_data_path_absolute(tmp_path, monkeypatch):
    registry = default_registry()
    data = tmp_path / "data"
    manifest = _cohort(data, ("CN", "AD") * 2)
    monkeypatch.chdir(data)
    given = cfg.resolve(registry, None, (), {"data.spec": manifest.name})
    assert given.raw["data"]["spec"] == str(manifest)
    caps = cfg.resolve(registry, None, (f"data.spec={data.name}::{manifest.name}",), {})
    assert caps.raw["data"]["spec"] == f"{data.name}::{manifest}"  # no such CAPS folder here: kept as given
    assert cfg.resolve(registry, None, (), {}).data_spec == "phantom"
    # a config file's relative path is read from the file's folder, wherever the command runs
    (data / "run.toml").write_text('[data]\nspec = "cohort.csv"\n')
    monkeypatch.chdir(tmp_path)
    from_file = cfg.resolve(registry, data / "run.toml")
    assert from_file.raw["data"]["spec"] == str(manifest)
    assert tomllib.loads(from_file.toml())["data"]["spec"] == str(manifest)
    assert absolute_spec("phantom", tmp_path) == "phantom"


def test_the_cache_hit_is_reported(tmp_path, settings):
    manifest = _cohort(tmp_path, ("CN", "AD"))
    first = ManifestSource().load(str(manifest), settings)
    second = ManifestSource().load(str(manifest), settings)
    assert first.extra["cache_hit"] is False and second.extra["cache_hit"] is True
    assert Path(second.extra["cache_entry"]).parent == Path(settings.cache_dir)


def test_sessions_are_selected_in_a_manifest(tmp_path):
    rows = []
    for sid in ("sub-a", "sub-b"):
        for session in ("M00", "ses-M12"):
            rows.append(
                {"participant_id": sid, "session_id": session, "diagnosis": "CN", "mri": f"{sid}.nii.gz"}
            )
    rows = rows[:-1]  # sub-b has no M12
    path = tmp_path / "long.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    table = read_manifest(path, strict=False)
    chosen, problems = select_session(table, "ses-M12", path)
    assert not problems and chosen["participant_id"].tolist() == ["sub-a"]
    assert select_session(table, "M00", path)[0]["session_id"].tolist() == ["ses-M00", "ses-M00"]
    missing = select_session(table, "M24", path)[1]
    assert "no row for session ses-M24 (sessions there: ses-M00, ses-M12)" in str(missing[0])
    result = invoke("data", "check", path)
    assert result.exit_code == 2
    assert "sub-a: appears 2 times; sessions M00, ses-M12; pick one with --set data.session" in result.output


def test_data_check_summarises_and_groups_without_splitting_paths(tmp_path):
    deep = tmp_path / ("a folder with a long name " * 3).strip()
    manifest = _cohort(deep, ("CN", "AD") * 5)
    result = invoke("data", "check", manifest)
    assert result.exit_code == 0, result.output
    assert "10 subjects, no problems found" in result.stdout
    assert "CN 5 (3 with PET, 2 without)" in result.stdout and "AD 5 (3 with PET, 2 without)" in result.stdout
    assert "task ad_cn: 10 subjects" in result.stdout
    table = pd.read_csv(manifest)
    table["mri"] = [str(deep / f"gone-{i}.nii.gz") for i in range(len(table))]
    table.to_csv(manifest, index=False)
    result = invoke("data", "check", manifest)
    assert result.exit_code == 2
    assert "10 subjects (sub-00, sub-01, sub-02, sub-03, sub-04, sub-05" in result.stdout
    assert result.stdout.count("does not exist") == 1  # one example, not six paragraphs
    assert str(deep / "gone-0.nii.gz") in result.stdout  # the path in one piece, off a terminal


def test_native_space_is_refused_for_a_generated_cohort(tmp_path):
    result = invoke("run", *TINY, "--set", "evaluate.native_space=true", "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert "evaluate.native_space = true" in result.output and "has no MRI files" in result.output
    assert not (tmp_path / "run").exists()


def test_to_native_puts_a_volume_on_the_subjects_own_grid(tmp_path):
    grid_affine, grid_shape = _ras((8.0, 8.0, 8.0))
    volume = _brain(grid_affine, grid_shape, 1.5)
    own_affine, own_shape = _ras((4.0, 5.0, 4.0))
    data, lps = _reorient(np.zeros(own_shape, np.float32), own_affine, (0, 1))
    mri = nib.Nifti1Image(data, lps)
    mri.set_qform(lps, code=1)
    mri.set_sform(lps, code=1)
    path = _save(tmp_path / "sub-1_T1w.nii.gz", mri)
    native = to_native(volume, grid_affine, path)
    assert native.shape == own_shape and np.allclose(native.affine, lps)
    assert int(native.header["sform_code"]) == 1 and int(native.header["qform_code"]) == 1
    # every voxel holds the value at its own world position (the 8 mm grid smooths a little)
    inside = _brain(lps, own_shape, 1.0) > 0.3
    expected = _brain(lps, own_shape, 1.5)
    error = np.abs(native.get_fdata() - expected)[inside].mean()
    flipped = np.abs(native.get_fdata()[::-1] - expected)[inside].mean()
    assert error < 0.08 and flipped > 2 * error


def _captured(monkeypatch) -> list[plt.Figure]:
    shown: list[plt.Figure] = []

    def keep(figure: plt.Figure, path: Path) -> Path:
        shown.append(figure)
        return path

    monkeypatch.setattr(figures, "save_figure", keep)
    return shown


def test_learning_curves_keep_diagnosis_metrics_on_a_unit_axis(tmp_path, monkeypatch):
    shown = _captured(monkeypatch)
    history = pd.DataFrame(
        {
            "stage": ["joint"] * 3,
            "epoch": [0, 1, 2],
            "train_loss": [1.0, 0.8, 0.7],
            "val_auc": [0.6, 0.7, 0.8],
            "val_mcc": [0.1, 0.3, 0.4],
            "val_psnr": [22.0, 24.0, 25.0],
            "val_ssim": [0.5, 0.6, 0.7],
            "selected": [False, False, True],
        }
    )
    figures.learning_curves(history, tmp_path / "curves.png")
    axes = {axis.get_title(): axis for axis in shown[0].axes}
    diagnosis = axes["joint: validation diagnosis"]
    assert diagnosis.get_ylim()[1] <= 1.05
    assert {line.get_label() for line in diagnosis.get_lines()} >= {"auc", "mcc"}
    assert "psnr" not in {line.get_label() for line in diagnosis.get_lines()}
    synthesis = axes["joint: validation synthesis"]
    assert "psnr" in {line.get_label() for line in synthesis.get_lines()}
    assert synthesis.get_ylabel() == "PSNR (dB)"


def test_montage_shows_slice_position_orientation_and_suvr(tmp_path, monkeypatch):
    shown = _captured(monkeypatch)
    affine, shape = _ras((8.0, 8.0, 8.0))
    volume = _brain(affine, shape, 1.0) - 0.5
    subjects = [
        {"title": "sub-1 (AD, PET acquired)", "mri": volume, "pet": volume, "synthetic": volume * 0.9}
    ]
    figures.slice_montage(subjects, tmp_path / "montage.png", affine, suvr_max=2.5)
    figure = shown[0]
    texts = {text.get_text() for axis in figure.axes for text in axis.texts}
    assert {"L", "R", "A", "P"} <= texts
    z = int(round(0.6 * (shape[2] - 1)))
    assert f"z = {affine[2, 3] + 8.0 * z:+.0f} mm" in figure.axes[0].get_xlabel()
    labels = [axis.get_ylabel() for axis in figure.axes]
    assert labels.count("SUVR") == 3  # real, synthetic and difference colour bars
    bar = next(axis for axis in figure.axes if axis.get_ylabel() == "SUVR")
    assert bar.get_ylim()[1] == pytest.approx(2.5)


def test_a_file_cohort_run_writes_native_space_pet_and_reproduces_from_anywhere(tmp_path, monkeypatch):
    """A phantom folder (files, MNI codes) with evaluate.native_space: each test subject's
    synthetic PET also on its own MRI's grid; config.toml names the data absolutely."""
    folder = tmp_path / "cohort"
    made = invoke("data", "phantom", "--out", folder, "--subjects", "20", "--resolution", "8")
    assert made.exit_code == 0, made.output
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    args = [*TINY, "--synth", "ism", "--diag", "mdm", "--joint", "--data", "cohort"]
    result = invoke("run", *args, "--set", "evaluate.native_space=true", "--out", run)
    assert result.exit_code == 0, result.output
    assert tomllib.loads((run / "config.toml").read_text())["data"]["spec"] == str(folder)
    native = sorted((run / "synth").glob("*_space-T1w_desc-synthetic_pet.nii.gz"))
    assert native
    participant = native[0].name.split("_")[0]
    mri = nib.load(folder / participant / f"{participant}_T1w.nii.gz")
    image = nib.load(native[0])
    assert image.shape == mri.shape and np.allclose(image.affine, mri.affine)
    assert int(image.header["sform_code"]) == int(mri.header["sform_code"])


# -- one set of checks: data check refuses what run refuses (issue #18) --------------------


class _Preprocessing(Exception):
    """Raised where ``run`` starts reading volumes: it got past every data check."""


def _run_reaches_preprocessing(monkeypatch, *args: object) -> Result:
    from cdsf_bench import protocol

    def stop(*_args, **_kwargs):
        raise _Preprocessing

    monkeypatch.setattr(protocol, "load_cohort", stop)
    return invoke("run", *TINY, *args)


def _problem_lines(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.strip().startswith("- ")]


def test_data_check_and_run_refuse_15_cn_and_1_ad_alike(tmp_path, monkeypatch):
    manifest = _cohort(tmp_path, ("CN",) * 15 + ("AD",))
    checked = invoke("data", "check", manifest, "--task", "ad_cn")
    refused = _run_reaches_preprocessing(monkeypatch, "--data", manifest, "--out", tmp_path / "run")
    assert checked.exit_code == 2 and refused.exit_code == 2, (checked.output, refused.output)
    assert not isinstance(refused.exception, _Preprocessing) and "Traceback" not in refused.output
    lines = _problem_lines(checked.output)
    assert lines == _problem_lines(refused.output)
    assert lines == [
        "- task ad_cn has 1 AD subject(s); it needs at least 3 per class so that a stratified train / "
        "validation / test split can put one in each split. Add subjects or choose another task."
    ]
    assert "checked as 'run' would, for task ad_cn and method" in checked.output
    default = invoke("data", "check", manifest)  # without --task: run's own task, named
    assert default.exit_code == 2 and _problem_lines(default.output) == lines
    assert "for task ad_cn (the default; --task for another)" in default.output


def test_data_check_refuses_the_method_run_refuses(tmp_path, monkeypatch):
    manifest = _cohort(tmp_path, ("CN", "AD") * 5)
    checked = invoke("data", "check", manifest, "--synth", "none", "--joint")
    refused = _run_reaches_preprocessing(
        monkeypatch, "--data", manifest, "--synth", "none", "--joint", "--out", tmp_path / "run"
    )
    assert checked.exit_code == 2 and refused.exit_code == 2, (checked.output, refused.output)
    assert "trains a synthesiser; --synth none is single-modality" in checked.output
    assert "trains a synthesiser; --synth none is single-modality" in refused.output


def test_data_check_applies_runs_split_settings_and_method_needs(tmp_path, monkeypatch):
    manifest = _cohort(tmp_path, ("CN", "AD") * 5)
    folds = invoke("data", "check", manifest, "--task", "ad_cn", "--set", "split.folds=6")
    assert folds.exit_code == 2 and "it needs at least 6 per class for 6-fold" in folds.output
    if "complete-case" not in default_registry().names("coupling"):
        pytest.skip("the complete-case baseline plugin is not installed")
    table = pd.read_csv(manifest)
    table.loc[table["diagnosis"] == "AD", "pet"] = ""
    table.to_csv(manifest, index=False)
    method = ("--synth", "none", "--coupling", "complete-case")
    checked = invoke("data", "check", manifest, "--task", "ad_cn", *method)
    refused = _run_reaches_preprocessing(monkeypatch, "--data", manifest, *method, "--out", tmp_path / "r")
    assert checked.exit_code == 2 and refused.exit_code == 2, (checked.output, refused.output)
    assert _problem_lines(checked.output) == _problem_lines(refused.output)
    assert "0 AD subject(s) with PET" in checked.output
    assert "method none + " in checked.output and "complete-case coupling)" in checked.output


def test_a_feasible_manifest_passes_data_check_and_runs_checks(tmp_path, monkeypatch):
    manifest = _cohort(tmp_path, ("CN", "AD") * 5)
    checked = invoke("data", "check", manifest, "--task", "ad_cn")
    assert checked.exit_code == 0, checked.output
    assert "10 subjects, no problems found" in checked.output
    accepted = _run_reaches_preprocessing(monkeypatch, "--data", manifest, "--out", tmp_path / "run")
    assert isinstance(accepted.exception, _Preprocessing), accepted.output
