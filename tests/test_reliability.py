"""Reliability (issue 10): bad input is refused clearly, a killed run resumes exactly, writes
are atomic, a NaN loss stops the run cleanly, checkpoints and plugins load safely.

Bad inputs go through the command line as a user meets them: each must end with exit code 2,
a message naming the file, field or subject, and no traceback. Volumes are small blobs on an
8 mm grid in MNI space, written with nibabel by each test. Runs use the ``tiny`` preset.
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner, Result

from cdsf_bench import config as cfg
from cdsf_bench.cli import main
from cdsf_bench.data.pipeline import DevicePipeline
from cdsf_bench.errors import InputError
from cdsf_bench.progress import console
from cdsf_bench.registry import default_registry
from cdsf_bench.results import load_torch, remove_leftover_temporaries, save_torch, write_json

TINY = ["--preset", "tiny", "--set", "data.subjects=24", "--set", "evaluate.bootstrap=10"]
VOXEL_MM = 8.0
SHAPE = (20, 24, 22)


@pytest.fixture(autouse=True)
def _plain_console(monkeypatch):
    """Quiet, never in debug mode, and wide enough that no path in a message is wrapped."""
    monkeypatch.setenv("CDSF_BENCH_QUIET", "1")
    monkeypatch.delenv("CDSF_BENCH_DEBUG", raising=False)
    monkeypatch.setattr(console, "_width", 4000)


def invoke(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def _problem_lines(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if line.strip().startswith("- ")]


def assert_refused(result: Result, *names: str, code: int = 2) -> str:
    """The command ended with ``code`` through the CLI's own handling, naming every ``names``."""
    text = result.output
    assert result.exit_code == code, text
    assert isinstance(result.exception, SystemExit), f"unhandled {result.exception!r}\n{text}"
    assert "Traceback" not in text
    for name in names:
        assert name in text, f"{name!r} not in:\n{text}"
    return text


def cdsf(*args: object, env: dict | None = None, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """``python -m cdsf_bench ARGS`` in a real process."""
    return subprocess.run(
        [sys.executable, "-m", "cdsf_bench", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "CDSF_BENCH_QUIET": "1", "COLUMNS": "4000", **(env or {})},
        **kw,
    )


# -- volumes and manifests ----------------------------------------------------------------


def _affine(shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    affine = np.diag([VOXEL_MM, VOXEL_MM, VOXEL_MM, 1.0])
    affine[:3, 3] = np.array((-76.0, -112.0, -76.0)) + shift_mm
    return affine


def _brain(shape: tuple[int, ...] = SHAPE, level: float = 300.0, seed: int = 0) -> np.ndarray:
    """An ellipsoid of tissue filling most of the box, with a little noise."""
    index = np.indices(shape[:3]).astype(np.float32)
    centre = (np.array(shape[:3]) - 1) / 2
    radius = np.sqrt(sum(((index[i] - centre[i]) / (0.4 * shape[i])) ** 2 for i in range(3)))
    noise = np.random.default_rng(seed).random(shape[:3], dtype=np.float32)
    return (level * np.clip(1.2 - radius, 0, 1) + 0.02 * level * noise).astype(np.float32)


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, _affine() if affine is None else affine), str(path))
    return path


def _subject(folder: Path, sid: str, label: str = "CN", pet: bool = True, seed: int = 0) -> dict:
    mri = _save(folder / f"{sid}_T1w.nii.gz", _brain(seed=seed))
    row = {"participant_id": sid, "diagnosis": label, "mri": mri.name, "pet": ""}
    if pet:
        row["pet"] = _save(folder / f"{sid}_pet.nii.gz", _brain(level=1.6, seed=seed + 50)).name
    return row


def _manifest(folder: Path, rows: list[dict], name: str = "cohort.csv") -> Path:
    path = folder / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _huge_nifti2(path: Path) -> Path:
    """A NIfTI-2 header claiming 100000^3 float32 voxels (4 PB) in front of 64 bytes of data."""
    header = nib.Nifti2Header()
    header.set_data_shape((100_000, 100_000, 100_000))
    header.set_data_dtype(np.float32)
    header.set_sform(_affine(), code=1)
    header["vox_offset"] = 544  # 540-byte header plus the 4-byte extension flag
    path.write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 64)
    return path


def _huge_nifti1(path: Path) -> Path:
    """A NIfTI-1 file whose header claims 1500^3 voxels: under 2048 per axis, 13.5 GB of float32."""
    image = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), _affine())
    image.header.set_data_shape((1500, 1500, 1500))
    path.write_bytes(image.header.binaryblock + b"\0" * 4 + b"\0" * 256)
    return path


def _bad_mri(folder: Path, case: str, monkeypatch) -> tuple[Path, list[str]]:
    """A broken MRI file for ``case`` and the words its refusal must contain."""
    good = _brain()
    if case == "missing":
        return folder / "nowhere_T1w.nii.gz", ["does not exist"]
    if case == "truncated":
        whole = gzip.compress(nib.Nifti1Image(good, _affine()).to_bytes())
        path = folder / "cut_T1w.nii.gz"
        path.write_bytes(whole[: len(whole) // 2])
        return path, ["truncated"]
    if case == "truncated-plain":
        whole = nib.Nifti1Image(good, _affine()).to_bytes()
        path = folder / "cut_T1w.nii"
        path.write_bytes(whole[: len(whole) // 2])
        return path, ["truncated"]
    if case == "corrupt-gzip":
        path = folder / "noise_T1w.nii.gz"
        path.write_bytes(b"\x1f\x8b" + np.random.default_rng(0).bytes(400))
        return path, ["cannot be read as NIfTI"]
    if case == "unreadable":
        path = _save(folder / "locked_T1w.nii.gz", good)
        path.chmod(0)
        if os.access(path, os.R_OK):  # root reads anything: fail the open as it fails for a user
            real_open = Path.open

            def deny(self, *args, **kwargs):
                if Path(self) == path:
                    raise PermissionError(13, "Permission denied", str(self))
                return real_open(self, *args, **kwargs)

            monkeypatch.setattr(Path, "open", deny)
        return path, ["cannot be read", "Permission denied", "check its permissions"]
    if case == "text":
        path = folder / "notes_T1w.nii"
        path.write_text("participant notes, not an image\n" * 30)
        return path, ["cannot be read as NIfTI"]
    if case == "png":
        path = folder / "slice_T1w.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
        return path, ["is not NIfTI (expected .nii or .nii.gz)"]
    if case == "gz-not-gzip":
        plain = nib.Nifti1Image(good, _affine()).to_bytes()
        path = folder / "plain_T1w.nii.gz"
        path.write_bytes(plain)
        return path, ["named .gz but is not gzip-compressed"]
    if case == "2d":
        return _save(folder / "flat_T1w.nii.gz", good[:, :, 10]), ["2D"]
    if case == "4d":
        return _save(folder / "frames_T1w.nii.gz", np.stack([good, good], -1)), ["4D", "(20, 24, 22, 2)"]
    if case in ("nan", "inf"):
        broken = good.copy()
        broken[3, 4, 5] = np.nan if case == "nan" else np.inf
        return _save(folder / f"{case}_T1w.nii.gz", broken), ["1 NaN or infinite voxels"]
    if case == "all-zero":
        return _save(folder / "zero_T1w.nii.gz", np.zeros(SHAPE, np.float32)), ["all zeros"]
    if case == "huge-nifti2":
        return _huge_nifti2(folder / "huge_T1w.nii"), ["(100000, 100000, 100000)", "header is corrupt"]
    if case == "huge-nifti1":
        return _huge_nifti1(folder / "huge_T1w.nii"), ["(1500, 1500, 1500)", "over the budget of"]
    raise AssertionError(case)


FILE_CASES = [
    "missing",
    "truncated",
    "truncated-plain",
    "corrupt-gzip",
    "unreadable",
    "text",
    "png",
    "gz-not-gzip",
    "2d",
    "4d",
    "nan",
    "inf",
    "all-zero",
    "huge-nifti2",
    "huge-nifti1",
]


@pytest.mark.parametrize("case", FILE_CASES)
def test_bad_volume_is_refused_by_run_and_by_data_check(tmp_path, monkeypatch, case):
    # enough subjects that the task is feasible: the broken file is then the only problem
    good = [_subject(tmp_path, f"sub-ok{i}", label) for i, label in enumerate(("CN", "AD") * 3 + ("AD",))]
    mri, words = _bad_mri(tmp_path, case, monkeypatch)
    bad = {"participant_id": "sub-bad", "diagnosis": "CN", "mri": mri.name, "pet": ""}
    manifest = _manifest(tmp_path, [*good, bad])

    started = time.perf_counter()
    text = assert_refused(
        invoke("run", *TINY, "--data", manifest, "--out", tmp_path / "run"), "sub-bad", mri.name, *words
    )
    assert "sub-ok" not in text  # only the broken subject is blamed
    listed = assert_refused(invoke("data", "check", manifest), "sub-bad", mri.name, *words)
    assert "1 problem(s)" in listed
    assert not list((tmp_path / "run").glob("metrics.json"))
    if case.startswith("huge"):  # refused from the header, before any voxel is read
        assert time.perf_counter() - started < 30


def test_absurd_header_fails_fast_in_a_memory_limited_process(tmp_path):
    """A header claiming 13.5 GB is refused from the header alone: a 4 GB address-space limit
    would turn any attempt to allocate it into a MemoryError, and a traceback."""

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    huge = _huge_nifti1(tmp_path / "huge_T1w.nii")
    manifest = _manifest(tmp_path, [{"participant_id": "sub-huge", "diagnosis": "AD", "mri": huge.name}])
    started = time.perf_counter()
    done = cdsf("data", "check", manifest, preexec_fn=limit_memory, timeout=120)
    assert done.returncode == 2, done.stderr
    assert time.perf_counter() - started < 60
    assert "Traceback" not in done.stderr and "MemoryError" not in done.stderr
    assert "sub-huge" in done.stdout and "(1500, 1500, 1500)" in done.stdout  # the report is stdout


def test_a_t1_with_a_moved_origin_is_refused_by_run_and_by_data_check(tmp_path):
    """A T1 whose origin moved 25 mm and 40 mm (as a scanner-space export's would) is named,
    with its offset from the MNI template in mm and the threshold; the others are not."""
    rows = [_subject(tmp_path, f"sub-ok{i}", label) for i, label in enumerate(("CN", "AD") * 3 + ("CN",))]
    mri = _save(tmp_path / "sub-moved_T1w.nii.gz", _brain(), _affine((25.0, 40.0, 0.0)))
    rows.append({"participant_id": "sub-moved", "diagnosis": "AD", "mri": mri.name, "pet": ""})
    manifest = _manifest(tmp_path, rows)
    for result in (
        invoke("run", *TINY, "--data", manifest, "--out", tmp_path / "run"),
        invoke("data", "check", manifest),
    ):
        text = assert_refused(
            result, "sub-moved", mri.name, "from the MNI template", "data.max_offset_mm = 12 mm"
        )
        assert "sub-ok" not in text
        offset = text.split("(x ")[1].split(" mm)")[0]  # "+25, y +40, z +0", give or take a few mm
        x, y = (float(part.split()[-1]) for part in offset.split(",")[:2])
        assert abs(x - 25) < 5 and abs(y - 40) < 5, offset
    assert not (tmp_path / "run").exists()
    # the documented setting relaxes the check
    relaxed = invoke("data", "check", manifest, "--set", "data.max_offset_mm=0")
    assert relaxed.exit_code == 0, relaxed.output


def test_a_left_right_flipped_mri_on_the_pet_grid_is_accepted(tmp_path):
    """Storage order is not a grid mismatch: the same voxel centres stored LAS and RAS pass."""
    good = [_subject(tmp_path, f"sub-ok{i}", label) for i, label in enumerate(("CN", "AD"))]
    flipped = _affine()
    flipped[0, 0], flipped[0, 3] = -VOXEL_MM, -76.0 + VOXEL_MM * (SHAPE[0] - 1)
    mri = _save(tmp_path / "sub-las_T1w.nii.gz", _brain()[::-1].copy(), flipped)
    pet = _save(tmp_path / "sub-las_pet.nii.gz", _brain(level=1.6))
    good.append({"participant_id": "sub-las", "diagnosis": "AD", "mri": mri.name, "pet": pet.name})
    result = invoke("data", "check", _manifest(tmp_path, good))
    # three subjects are too few to split, and nothing else is wrong: the flipped MRI is read
    problems = _problem_lines(result.output)
    assert problems and all(line.startswith("- task ad_cn has") for line in problems), result.output


def _table_case(folder: Path, case: str) -> tuple[Path, list[str], list[str], list[str]]:
    """A manifest with a row-level problem, the words ``run`` and ``data check`` must show, and
    the extra arguments ``data check`` needs to see it."""
    rows = [_subject(folder, f"sub-{i}", label) for i, label in enumerate(("CN", "AD", "CN", "AD"))]
    if case == "unknown-label":
        rows[1]["diagnosis"] = "Dementia"
        words = ["sub-1", "has diagnosis 'Dementia'", "allowed: CN"]
        return _manifest(folder, rows), words, words, []
    if case == "bare-mci":
        rows[2]["diagnosis"] = "MCI"
        words = ["sub-2", "has diagnosis 'MCI'", "sMCI or pMCI"]
        return _manifest(folder, rows), words, words, []
    if case == "duplicate":
        rows.append(dict(rows[0]))
        return (
            _manifest(folder, rows),
            ["sub-0: appears 2 times", "keep one row per participant"],
            ["sub-0", "appears 2 times"],
            [],
        )
    if case == "empty":
        path = folder / "empty.csv"
        path.write_text("")
        words = [str(path), "is empty", "header row"]
        return path, words, words, []
    if case == "header-only":
        path = folder / "header.tsv"
        path.write_text("participant_id\tdiagnosis\tmri\n")
        words = [str(path), "has a header but no subjects"]
        return path, words, words, []
    if case == "no-mri-column":
        path = _manifest(folder, [{k: v for k, v in row.items() if k != "mri"} for row in rows])
        words = [str(path), "lacks the column(s) mri", "found: participant_id, diagnosis, pet"]
        return path, words, words, []
    if case == "too-few":  # 4 CN and 2 AD: ad_cn cannot put an AD subject in each split
        rows = [_subject(folder, f"sub-{i}", label) for i, label in enumerate(("CN",) * 4 + ("AD",) * 2)]
        return (
            _manifest(folder, rows),
            ["task ad_cn has 2 AD subject(s)", "at least 3"],  # run refuses before preprocessing
            ["task ad_cn has 2 AD subject(s)", "at least 3"],
            ["--task", "ad_cn"],
        )
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case", ["unknown-label", "bare-mci", "duplicate", "empty", "header-only", "no-mri-column", "too-few"]
)
def test_bad_manifest_is_refused_by_run_and_by_data_check(tmp_path, case):
    manifest, run_words, check_words, check_args = _table_case(tmp_path, case)
    assert_refused(invoke("run", *TINY, "--data", manifest, "--out", tmp_path / "run"), *run_words)
    assert_refused(invoke("data", "check", manifest, *check_args), *check_words)


# -- options and config ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--synth", "nosuch"], ["Unknown synthesiser 'nosuch'", "Known synthesisers: diffusion, ism"]),
        (["--diag", "mdn"], ["Unknown diagnoser 'mdn'", "Did you mean 'mdm'?"]),
        (["--coupling", "jiont"], ["Unknown coupling 'jiont'", "Did you mean 'joint'?"]),
        (["--set", "train.epoch=3"], ["Unknown setting 'train.epoch'", "Did you mean epochs?", "[train]"]),
        (["--set", "nosuch.key=1"], ["Unknown top-level setting(s): nosuch"]),
        (["--set", "synth.ism.depth=3"], ["Unknown setting 'synth.ism.depth'", "[synth.ism]"]),
        (["--set", "train.epochs=many"], ["Setting 'train.epochs' must be int", "'many'"]),
        (["--set", "train.learning_rate=true"], ["Setting 'train.learning_rate' must be float", "True"]),
        (["--set", "augment.enabled=1"], ["Setting 'augment.enabled' must be bool", "got 1"]),
        (["--set", "train=3"], ["Setting 'train' is a section", "--set train.epochs="]),
        (["--set", "synth=3"], ["[synth] must be a table"]),
        (["--set", "epochs"], ["--set 'epochs' is not KEY=VALUE"]),
        (["--set", "split.folds=1"], ["split.folds must be 0"]),
    ],
)
def test_bad_option_is_refused(tmp_path, args, words):
    assert_refused(invoke("run", *TINY, *args, "--out", tmp_path / "run"), *words)
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_toml_syntax_error_names_the_file_and_line(tmp_path):
    config = tmp_path / "broken.toml"
    config.write_text('preset = "tiny"\n[train]\nepochs = = 3\n')
    text = assert_refused(invoke("run", "--config", config, "--out", tmp_path / "run"), str(config))
    assert "is not valid TOML" in text and "line 3" in text


def test_config_file_keys_and_types_are_checked(tmp_path):
    config = tmp_path / "typo.toml"
    config.write_text('preset = "tiny"\n[train]\nepochs = "ten"\n')
    assert_refused(invoke("run", "--config", config), "Setting 'train.epochs' must be int", "'ten'")
    config.write_text('preset = "tiny"\n[trian]\nepochs = 3\n')
    assert_refused(invoke("run", "--config", config), "Unknown top-level setting(s): trian")


def test_output_folder_of_another_kind_or_config_is_refused(tmp_path):
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("not a run")
    assert_refused(invoke("run", *TINY, "--out", other), str(other), "is not a cdsf-bench run")
    assert (other / "todo.txt").read_text() == "not a run" and not (other / "config.toml").exists()

    a_file = tmp_path / "results.txt"
    a_file.write_text("keep me")
    assert_refused(invoke("run", *TINY, "--out", a_file), str(a_file), "is a file, not a folder")
    assert a_file.read_text() == "keep me"

    # a run refused for its data leaves no folder, so the same command runs once the data are fixed
    manifest = _manifest(tmp_path, [{"participant_id": "sub-x", "diagnosis": "AD", "mri": "gone.nii.gz"}])
    run = tmp_path / "run"
    for _ in range(2):
        assert_refused(invoke("run", *TINY, "--data", manifest, "--out", run), "gone.nii.gz")
        assert not run.exists()
    # a folder given empty stays as it was
    run.mkdir()
    assert_refused(invoke("run", *TINY, "--data", manifest, "--out", run), "gone.nii.gz")
    assert run.is_dir() and not any(run.iterdir())
    # a folder holding another config's run is never reused
    (run / "config.toml").write_text("seed = 7\n")
    text = assert_refused(
        invoke("run", *TINY, "--data", manifest, "--out", run), "holds a run of a different config"
    )
    assert f"--config {run / 'config.toml'}" in text
    assert (run / "config.toml").read_text() == "seed = 7\n"


def test_resume_refuses_extra_settings(tmp_path):
    for extra in (["--epochs", "5"], ["--set", "train.epochs=5"], ["--seed", "1"], ["--preset", "tiny"]):
        text = assert_refused(invoke("run", "--resume", tmp_path, *extra))
        assert "--resume continues a run with its own config; give no other settings" in text
    assert_refused(invoke("run", "--resume", tmp_path), "config.toml does not exist")


def test_errors_in_a_real_process_have_no_traceback_unless_debug(tmp_path):
    plain = cdsf("run", *TINY, "--set", "train.epoch=3", "--out", tmp_path / "a")
    assert plain.returncode == 2
    assert "Traceback" not in plain.stderr + plain.stdout
    assert "error: Unknown setting 'train.epoch'" in plain.stderr
    debug = cdsf("--debug", "run", *TINY, "--set", "train.epoch=3", "--out", tmp_path / "b")
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr
    assert "ConfigError: Unknown setting 'train.epoch'" in debug.stderr


# -- crashes and resume ---------------------------------------------------------------------


def _rows(history: Path) -> int:
    return len(pd.read_csv(history)) if history.exists() else 0


#: Put on PYTHONPATH of the run to be killed: after the first training step of the second
#: epoch it says so in a file and waits, so the SIGKILL lands mid-epoch however loaded the
#: machine is. It only observes and waits; what the run computes is untouched.
_MID_EPOCH_HOOK = """
import os, time
from pathlib import Path
from cdsf_bench.data import pipeline

_draw = pipeline.DevicePipeline.train_batches

def train_batches(self, epoch, *args, **kwargs):
    for index, batch in enumerate(_draw(self, epoch, *args, **kwargs)):
        yield batch
        if epoch == 1 and index == 0:  # the engine asks for batch 2: step 1 of epoch 2 is done
            Path(os.environ["CDSF_TEST_MID_EPOCH"]).write_text("epoch 2, after step 1")
            time.sleep(600)

pipeline.DevicePipeline.train_batches = train_batches
"""


def test_run_killed_mid_epoch_resumes_to_the_same_metrics(tmp_path):
    """SIGKILL in the middle of epoch 2 of 3, ``--resume``, and the run ends exactly as an
    uninterrupted one: same metrics.json, history and predictions (CPU, deterministic)."""
    args = ["run", *TINY, "--epochs", "3"]
    env = {**os.environ, "CDSF_BENCH_QUIET": "1"}
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_MID_EPOCH_HOOK)
    marker = tmp_path / "mid-epoch"
    path = os.pathsep.join(p for p in (str(hook), env.get("PYTHONPATH", "")) if p)
    killed, whole = tmp_path / "A", tmp_path / "B"
    history = killed / "history.csv"

    # the uninterrupted run B goes on beside A: nothing of A's kill depends on timing
    with open(tmp_path / "A.log", "w") as log_a, open(tmp_path / "B.log", "w") as log_b:
        run_b = subprocess.Popen(
            [sys.executable, "-m", "cdsf_bench", *args, "--out", str(whole)],
            stdout=log_b,
            stderr=log_b,
            env=env,
        )
        run_a = subprocess.Popen(
            [sys.executable, "-m", "cdsf_bench", *args, "--out", str(killed)],
            stdout=log_a,
            stderr=log_a,
            env={**env, "PYTHONPATH": path, "CDSF_TEST_MID_EPOCH": str(marker)},
        )
        try:
            deadline = time.monotonic() + 400
            while _rows(history) < 1 or not marker.exists():
                assert run_a.poll() is None, (tmp_path / "A.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "run A never reached its second epoch"
                time.sleep(0.02)
            first = pd.read_csv(history)
            run_a.send_signal(signal.SIGKILL)
            assert run_a.wait(30) == -signal.SIGKILL
        finally:
            run_a.kill()
            run_a.wait(30)
        # killed in epoch 2: one epoch recorded, its checkpoint whole, nothing half-written
        assert len(first) == 1 and len(pd.read_csv(history)) == 1
        checkpoint = load_torch(killed / "checkpoints" / "last.pt")
        assert (checkpoint["stage_index"], checkpoint["next_epoch"], len(checkpoint["history"])) == (0, 1, 1)
        tomllib.loads((killed / "config.toml").read_text())
        for name in ("data.json", "environment.json"):
            json.loads((killed / name).read_text())
        assert not (killed / "metrics.json").exists()

        stale = killed / "checkpoints" / ".last.pt.killed.tmp"  # as a write cut short leaves it
        stale.write_bytes(b"half a checkpoint")
        resumed = cdsf("run", "--resume", killed, timeout=500)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert not list(killed.rglob(".*.tmp"))
        assert run_b.wait(500) == 0, (tmp_path / "B.log").read_text()[-3000:]

    metrics = json.loads((killed / "metrics.json").read_text())
    assert metrics == json.loads((whole / "metrics.json").read_text())
    a, b = pd.read_csv(history), pd.read_csv(whole / "history.csv")
    assert len(a) == 3
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))
    # the first epoch came from the checkpoint (its timing kept), it was not trained again
    assert a["seconds"].iloc[0] == first["seconds"].iloc[0]
    pd.testing.assert_frame_equal(
        pd.read_csv(killed / "predictions.csv"), pd.read_csv(whole / "predictions.csv")
    )


_SLOW_WRITER = """
import sys, time
from pathlib import Path
from cdsf_bench.results import atomic_write

def write(handle):
    handle.write(b'{"partial": "' + b"x" * 100000)
    handle.flush()
    print("writing", flush=True)
    time.sleep(120)
    handle.write(b'"}')

atomic_write(Path(sys.argv[1]), write)
"""


def test_writer_killed_mid_write_leaves_the_previous_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"auc": 0.75})
    before = target.read_bytes()
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITER, str(target)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline().strip() == "writing"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(30)
    assert process.returncode == -signal.SIGKILL
    assert target.read_bytes() == before and json.loads(before) == {"auc": 0.75}
    leftovers = [p for p in tmp_path.iterdir() if p != target]
    assert leftovers, "the killed writer's temporary file should be there"
    for path in leftovers:  # a hidden temporary beside the target, never the target's own name
        assert path.name.startswith(".metrics.json.") and path.name.endswith(".tmp")
        assert path.stat().st_size >= 100000
    write_json(target, {"auc": 0.8})  # the next write still succeeds over it
    assert json.loads(target.read_text()) == {"auc": 0.8}
    # what a resumed run does first: the leftovers go, the results stay
    assert sorted(remove_leftover_temporaries(tmp_path)) == sorted(leftovers)
    assert list(tmp_path.iterdir()) == [target]


# -- numerical guard ------------------------------------------------------------------------


def test_nan_loss_in_the_first_epoch_stops_without_claiming_a_checkpoint(tmp_path, monkeypatch):
    from cdsf_plugins.cdsf import JointCoupling

    step = JointCoupling.step

    def poisoned_step(self, batch):  # a loss that is NaN from the first batch on
        return {**dict(step(self, batch)), "voxel": torch.tensor(float("nan"))}

    monkeypatch.setattr(JointCoupling, "step", poisoned_step)
    run = tmp_path / "run"
    result = invoke("run", *TINY, "--epochs", "2", "--out", run)
    text = assert_refused(result, "became nan", "stage 'joint', epoch 0", code=1)
    assert "No epoch finished before it, so there is no checkpoint to keep" in text
    assert "kept at" not in text
    failure = json.loads((run / "failure.json").read_text())
    assert failure["stage"] == "joint" and failure["epoch"] == 0 and failure["checkpoint"] is None
    assert failure["value"] == "nan" and f"Loss '{failure['loss']}' became nan" in text
    assert not (run / "checkpoints" / "last.pt").exists() and not (run / "metrics.json").exists()


def test_nan_loss_later_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from cdsf_plugins.cdsf import JointCoupling

    epoch_now = {"epoch": -1}
    draw, step = DevicePipeline.train_batches, JointCoupling.step

    def train_batches(self, epoch, *args, **kwargs):
        epoch_now["epoch"] = epoch
        return draw(self, epoch, *args, **kwargs)

    def poisoned_step(self, batch):
        losses = dict(step(self, batch))
        if epoch_now["epoch"] == 1:
            losses["voxel"] = torch.tensor(float("inf"))
        return losses

    monkeypatch.setattr(DevicePipeline, "train_batches", train_batches)
    monkeypatch.setattr(JointCoupling, "step", poisoned_step)
    run = tmp_path / "run"
    text = assert_refused(
        invoke("run", *TINY, "--epochs", "3", "--out", run),
        "Loss 'voxel' became inf in stage 'joint', epoch 1, step 0",
        f"The checkpoint of the last good epoch is kept at {run / 'checkpoints' / 'last.pt'}",
        str(run / "failure.json"),
        code=1,
    )
    assert "learning_rate" in text
    failure = json.loads((run / "failure.json").read_text())
    assert (failure["epoch"], failure["loss"], failure["value"]) == (1, "voxel", "inf")
    assert failure["checkpoint"] == str(run / "checkpoints" / "last.pt")
    kept = load_torch(run / "checkpoints" / "last.pt")
    assert (kept["stage_index"], kept["next_epoch"], len(kept["history"])) == (0, 1, 1)
    assert len(pd.read_csv(run / "history.csv")) == 1 and not (run / "metrics.json").exists()


# -- safe loading ---------------------------------------------------------------------------


class _Payload:
    """Unpickling this runs ``os.mkdir(marker)``: what a hostile checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_load_torch_refuses_pickled_objects(tmp_path):
    import torch

    marker = tmp_path / "payload-ran"
    save_torch(tmp_path / "good.pt", {"weights": torch.ones(3), "epoch": 2, "history": [{"auc": 0.5}]})
    assert load_torch(tmp_path / "good.pt")["epoch"] == 2
    torch.save({"weights": torch.ones(3), "hook": _Payload(marker)}, tmp_path / "hostile.pt")
    with pytest.raises(InputError, match=r"hostile\.pt cannot be loaded safely .*posix\.mkdir"):
        load_torch(tmp_path / "hostile.pt")
    assert not marker.exists()
    (tmp_path / "cut.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:200])
    with pytest.raises(InputError, match=r"cut\.pt cannot be loaded safely"):
        load_torch(tmp_path / "cut.pt")


def test_resume_refuses_a_hostile_checkpoint(tmp_path):
    import torch

    run = tmp_path / "run"
    config = cfg.resolve(
        default_registry(),
        None,
        ("data.subjects=24", "evaluate.bootstrap=10"),
        {"preset": "tiny", "train.epochs": 1},
    )
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.toml").write_text(config.toml())
    marker = tmp_path / "payload-ran"
    torch.save({"stage_index": 0, "next_epoch": 1, "hook": _Payload(marker)}, run / "checkpoints" / "last.pt")
    assert_refused(
        invoke("run", "--resume", run), "last.pt cannot be loaded safely", "posix.mkdir", "Delete it"
    )
    assert not marker.exists() and not (run / "metrics.json").exists()


_ALLOWLIST_PROBE = """
import json, sys
from cdsf_bench.registry import build_registry
registry = build_registry()
names = {kind: sorted(components) for kind, components in registry.components.items()}
imported = sorted(m for m in sys.modules if m.startswith("cdsf_plugins."))
print(json.dumps({"names": names, "imported": imported}))
"""


def test_plugin_allowlist_keeps_unlisted_plugins_out(tmp_path):
    allow = {"CDSF_BENCH_PLUGINS": "data,trackers"}
    probe = subprocess.run(
        [sys.executable, "-c", _ALLOWLIST_PROBE],
        capture_output=True,
        text=True,
        env={**os.environ, **allow},
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    assert found["names"]["coupling"] == [] and found["names"]["synthesiser"] == []
    assert "manifest" in found["names"]["data_source"] and found["names"]["tracker"]
    assert "cdsf_plugins.trackers" in found["imported"]
    assert "cdsf_plugins.hooks" not in found["imported"]  # an unlisted plugin is never imported
    refused = cdsf(
        "run",
        *TINY,
        "--synth",
        "ism",
        "--diag",
        "mdm",
        "--coupling",
        "joint",
        "--out",
        tmp_path / "run",
        env=allow,
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "No installed plugin proposes a default method" in refused.stderr


def test_a_coupling_setting_with_a_bad_value_exits_2(tmp_path):
    from click.testing import CliRunner

    from cdsf_bench.cli import main

    result = CliRunner().invoke(
        main,
        [
            "run",
            "--preset",
            "tiny",
            "--set",
            "coupling.joint.synthetic_pairs=some",
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 2
    assert "synthetic_pairs" in result.output and "Traceback" not in result.output


def test_a_split_without_usable_subjects_exits_2(tmp_path):
    """complete-case on a tiny cohort whose validation split has no real PET."""
    from click.testing import CliRunner

    from cdsf_bench.cli import main

    result = CliRunner().invoke(
        main,
        [
            "run",
            "--synth",
            "none",
            "--diag",
            "mdm",
            "--coupling",
            "complete-case",
            "--preset",
            "tiny",
            "--set",
            "data.subjects=24",
            "--set",
            "data.missing_pet=0.9",
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "has no subject that this method can use" in result.output
    assert "Traceback" not in result.output
