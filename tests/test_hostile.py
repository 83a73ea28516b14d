"""Hostile and careless input: every case exits 2 with a message naming the culprit, no traceback,
and writes nothing, neither outside the folders involved nor inside them.

The table holds one row per case: how to spoil a good cohort, the command, and what the message
must name. A case passes only if the command refuses (exit 2 through the CLI's error path, not an
exception), the words that identify the culprit are in the message, and the file tree is as it was.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cdsf_bench.cli import main

SHAPE = (26, 32, 27)


def _affine() -> np.ndarray:
    affine = np.diag([6.0, 6.0, 6.0, 1.0])
    affine[:3, 3] = (-76.0, -112.0, -76.0)
    return affine


def _brain(level: float, seed: int) -> np.ndarray:
    """An ellipsoidal 'brain' centred in MNI space, with a little noise."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1)
    affine = _affine()
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    radius = np.sqrt((((xyz - (0.0, -17.0, 5.0)) / (70.0, 90.0, 75.0)) ** 2).sum(-1))
    noise = np.random.default_rng(seed).random(SHAPE)
    return (level * np.clip(1.2 - radius, 0, 1) + 0.02 * level * noise).astype(np.float32)


def _save(path: Path, data: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, _affine()), str(path))
    return str(path)


@dataclass
class Cohort:
    """A good cohort of 8 subjects (4 CN, 4 AD, half with PET) and its manifest."""

    folder: Path
    rows: list[dict[str, str]]

    @property
    def manifest(self) -> Path:
        return self.folder / "cohort.csv"

    def write(self) -> Path:
        pd.DataFrame(self.rows).to_csv(self.manifest, index=False)
        return self.manifest


def _cohort(folder: Path) -> Cohort:
    rows = []
    for i in range(8):
        sid = f"sub-{i:02d}"
        pet = _save(folder / "scans" / f"{sid}_pet.nii.gz", _brain(1.6, 100 + i)) if i % 2 else ""
        mri = _save(folder / "scans" / f"{sid}_T1w.nii.gz", _brain(300.0, i))
        rows.append({"participant_id": sid, "diagnosis": "AD" if i < 4 else "CN", "mri": mri, "pet": pet})
    return Cohort(folder, rows)


def _header_claiming(path: Path, dims: tuple[int, int, int], dtype_code: int, bitpix: int) -> str:
    """A 1 KB .nii whose header claims ``dims`` voxels of the given NIfTI data type."""
    image = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), _affine())
    image.header.set_data_dtype(np.float32)
    nib.save(image, str(path))
    header = bytearray(path.read_bytes())
    struct.pack_into("<4h", header, 40, 3, *dims)  # dim[0..3]
    struct.pack_into("<2h", header, 70, dtype_code, bitpix)  # datatype, bitpix
    path.write_bytes(bytes(header[:1024]))
    return str(path)


def _in_row(row: int, **values: str) -> Callable[[Cohort], None]:
    def spoil(cohort: Cohort) -> None:
        cohort.rows[row].update(values)

    return spoil


def _mri_of(row: int, make: Callable[[Path], str]) -> Callable[[Cohort], None]:
    def spoil(cohort: Cohort) -> None:
        cohort.rows[row]["mri"] = make(cohort.folder / "bad")

    return spoil


def _complex(folder: Path) -> str:
    return _save(folder.with_suffix(".nii.gz"), _brain(300.0, 7).astype(np.complex64))


def _rgb(folder: Path) -> str:
    rgb = np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    return _save(folder.with_suffix(".nii.gz"), rgb)


def _constant(folder: Path) -> str:
    return _save(folder.with_suffix(".nii.gz"), np.full(SHAPE, 5.0, np.float32))


def _empty_gz(folder: Path) -> str:
    path = folder.with_suffix(".nii.gz")
    path.write_bytes(b"")
    return str(path)


def _huge_float64(folder: Path) -> str:
    return _header_claiming(folder.with_suffix(".nii"), (1000, 1000, 1000), 64, 64)  # float64


def _slope_overflow(folder: Path) -> str:
    image = nib.Nifti1Image((_brain(300.0, 3)).astype(np.int16), _affine())
    image.header.set_slope_inter(1e38, 0.0)
    path = folder.with_suffix(".nii.gz")
    nib.save(image, str(path))
    return str(path)


def _pet_is_mri(cohort: Cohort) -> None:
    cohort.rows[2]["pet"] = cohort.rows[2]["mri"]


def _one_mri_twice(cohort: Cohort) -> None:
    cohort.rows[5]["mri"] = cohort.rows[4]["mri"]


def _column_twice(cohort: Cohort) -> None:
    text = cohort.manifest.read_text().splitlines()
    cohort.manifest.write_text(
        "\n".join([text[0] + ",diagnosis"] + [line + ",CN" for line in text[1:]]) + "\n"
    )


@dataclass(frozen=True)
class Case:
    name: str
    spoil: Callable[[Cohort], None]
    expected: tuple[str, ...]
    #: applied after the manifest is written (to spoil the file itself)
    after_write: bool = False


CASES = [
    Case("id-with-parent", _in_row(0, participant_id="../../escaped"), ("row 1", "participant_id", "../../")),
    Case("id-absolute", _in_row(1, participant_id="/tmp/abs"), ("row 2", "participant_id", "'/tmp/abs'")),
    Case("id-control-char", _in_row(2, participant_id="sub\x07x"), ("row 3", "participant_id")),
    Case("session-with-slash", _in_row(3, session_id="ses/1"), ("row 4", "session_id", "'/'")),
    Case("header-claims-8gb", _mri_of(0, _huge_float64), ("bad.nii", "MiB", "CDSF_BENCH_MAX_VOLUME_MB")),
    Case("complex-mri", _mri_of(1, _complex), ("bad.nii.gz", "complex64")),
    Case("rgb-mri", _mri_of(2, _rgb), ("bad.nii.gz", "RGB")),
    Case("constant-mri", _mri_of(3, _constant), ("bad.nii.gz", "same value")),
    Case("zero-byte-gz", _mri_of(4, _empty_gz), ("bad.nii.gz", "empty (0 bytes)")),
    Case("slope-overflow", _mri_of(5, _slope_overflow), ("bad.nii.gz", "scl_slope")),
    Case("pet-is-the-mri", _pet_is_mri, ("sub-02", "same file as its own MRI")),
    Case("one-mri-two-subjects", _one_mri_twice, ("sub-05", "same file as sub-04's MRI")),
    Case("column-twice", _column_twice, ("cohort.csv", "repeats the columns", "diagnosis"), after_write=True),
]


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``folder`` with its size and modification time."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_data_check_refuses_hostile_input(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CDSF_BENCH_DEBUG", raising=False)
    cohort = _cohort(tmp_path / "data")
    if not case.after_write:
        case.spoil(cohort)
    cohort.write()
    if case.after_write:
        case.spoil(cohort)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    before = _tree(tmp_path)

    result = CliRunner().invoke(main, ["data", "check", str(cohort.manifest)])

    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), f"not refused through the CLI: {result.exc_info}"
    message = " ".join(result.output.split())
    for word in case.expected:
        assert word in message, f"{word!r} not named in:\n{result.output}"
    assert _tree(tmp_path) == before, "the refused command wrote or changed files"


def _refused_in_a_subprocess(args: list[str], cwd: Path) -> str:
    """Run cdsf-bench in a subprocess with a time limit (a hang fails instead of blocking the
    suite); assert exit 2 without a traceback; return the output on one line."""
    result = subprocess.run(
        [sys.executable, "-m", "cdsf_bench.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CDSF_BENCH_QUIET": "1", "CDSF_BENCH_DEBUG": "0"},
        cwd=cwd,
    )
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 2, output
    assert "Traceback" not in output
    return output


@pytest.mark.parametrize("special", ["fifo", "/dev/zero", "folder", "latin-1"])
def test_a_table_that_is_no_regular_utf8_file_is_refused_at_once(special: str, tmp_path: Path) -> None:
    """A FIFO would block a reader forever and /dev/zero never ends: both are refused by their
    kind before a byte is read (a subprocess with a time limit, so a hang fails the test)."""
    if special == "fifo":
        path = tmp_path / "cohort.csv"
        os.mkfifo(path)
        expected = "not a regular file"
    elif special == "folder":
        path = tmp_path / "cohort.csv"
        path.mkdir()
        expected = "is a folder"
    elif special == "latin-1":
        path = tmp_path / "cohort.csv"
        path.write_bytes("participant_id,diagnosis,mri\nsub-\xe9,AD,x.nii\n".encode("latin-1"))
        expected = "cohort.csv"
    else:  # not a table by its name: refused by the source detection, which names it
        path = Path(special)
        expected = "could not tell what --data /dev/zero is"
    output = _refused_in_a_subprocess(["data", "check", str(path)], tmp_path)
    assert expected in output and str(path.name) in output


def test_data_phantom_never_writes_into_an_existing_dataset(tmp_path: Path) -> None:
    """A BIDS dataset's own participants.tsv is never replaced by ``data phantom --out``."""
    dataset = tmp_path / "bids"
    dataset.mkdir()
    (dataset / "participants.tsv").write_text("participant_id\tage\nsub-01\t70\n")
    before = _tree(tmp_path)
    args = ["data", "phantom", "--out", str(dataset), "--subjects", "4", "--resolution", "8"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "exists and is not empty" in result.output and "bids" in result.output
    assert _tree(tmp_path) == before


def test_a_failed_phantom_write_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cohort is written into a staging folder, moved into place only once complete."""
    from cdsf_bench.data import phantom

    written: list[Path] = []

    def fail_on_the_third(image: nib.Nifti1Image, path: Path) -> None:
        if len(written) == 2:
            raise OSError(28, "No space left on device")
        written.append(path)
        nib.save(image, str(path))

    monkeypatch.setattr(phantom, "save_nifti", fail_on_the_third)
    settings = phantom.phantom_settings({}, subjects=3, resolution_mm=8.0, missing_pet=0.5, seed=0)
    with pytest.raises(OSError):
        phantom.write_phantom(phantom.generate_phantom(settings), settings, tmp_path / "out")
    assert written and not any(tmp_path.iterdir()), list(tmp_path.iterdir())


def _deep_key() -> str:
    return "a" + ".b" * 3000


#: settings that must be refused before anything is read or written: (arguments, words named)
SETTING_CASES = {
    "seed-2**70": (["--seed", str(2**70)], ("'seed'", "[0, 4294967295]")),
    "seed-negative": (["--seed", "-1"], ("'seed'",)),
    "lr-1e300": (["--set", "train.learning_rate=1e300"], ("train.learning_rate", "(0, 10]")),
    "lr-negative": (["--set", "train.learning_rate=-0.1"], ("train.learning_rate",)),
    "resolution-inf": (["--set", "data.resolution_mm=inf"], ("data.resolution_mm", "finite")),
    "resolution-0.05": (["--set", "data.resolution_mm=0.05"], ("data.resolution_mm", "[1, 16]")),
    "resolution-200": (["--set", "data.resolution_mm=200"], ("data.resolution_mm", "[1, 16]")),
    "rotate-nan": (["--set", "augment.rotate_deg=nan"], ("augment.rotate_deg", "finite")),
    "suvr-max-negative": (["--set", "data.pet_suvr_max=-1"], ("data.pet_suvr_max",)),
    "suvr-max-zero": (["--set", "data.pet_suvr_max=0"], ("data.pet_suvr_max",)),
    "plugin-weight-nan": (["--set", "coupling.joint.w_voxel=nan"], ("coupling.joint.w_voxel", "finite")),
    "epochs-zero": (["--epochs", "0"], ("train.epochs",)),
    "bootstrap-negative": (["--set", "evaluate.bootstrap=-5"], ("evaluate.bootstrap",)),
    "device-cuda-abc": (["--device", "cuda:abc"], ("'cuda:abc'", "cuda:N")),
    "deep-set-key": (["--set", f"{_deep_key()}=1"], ("3001 levels deep",)),
    "two-coupling-flags": (["--joint", "--decoupled"], ("--joint", "--decoupled")),
}


@pytest.mark.parametrize("case", list(SETTING_CASES), ids=list(SETTING_CASES))
def test_run_refuses_a_setting_out_of_range_before_writing(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CDSF_BENCH_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    args, expected = SETTING_CASES[case]
    result = CliRunner().invoke(main, ["run", "--preset", "tiny", *args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), f"not refused through the CLI: {result.exc_info}"
    message = " ".join(result.output.split())
    for word in expected:
        assert word in message, f"{word!r} not named in:\n{result.output}"
    assert not any(tmp_path.iterdir()), "a refused run wrote files"


def _config_file(kind: str, folder: Path) -> Path:
    path = folder / "config.toml"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "latin-1":
        path.write_bytes('[train]\nnote = "caf\xe9"\n'.encode("latin-1"))
    elif kind == "deep-tables":
        path.write_text(f"{_deep_key()} = 1\n")
    elif kind == "dev-zero":
        return Path("/dev/zero")
    return path


CONFIG_CASES = {
    "fifo": "not a regular file",
    "dev-zero": "not a regular file",
    "latin-1": "not UTF-8 text",
    "deep-tables": "nests tables 9 deep",
}


@pytest.mark.parametrize("kind", list(CONFIG_CASES), ids=list(CONFIG_CASES))
def test_a_config_file_that_cannot_be_one_is_refused_at_once(kind: str, tmp_path: Path) -> None:
    """A FIFO would block the reader forever and /dev/zero never ends: a subprocess with a time
    limit, so that a hang fails the test instead of stopping the suite."""
    path = _config_file(kind, tmp_path)
    output = _refused_in_a_subprocess(
        ["run", "--config", str(path), "--out", str(tmp_path / "run")], tmp_path
    )
    assert CONFIG_CASES[kind] in output and path.name in output
    assert not (tmp_path / "run").exists()


def test_a_bom_at_the_start_of_a_config_is_read(tmp_path: Path) -> None:
    """Editors on Windows write a byte-order mark; it is no syntax error."""
    from cdsf_bench.config import read_toml

    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf[train]\nepochs = 3\n")
    assert read_toml(path) == {"train": {"epochs": 3}}


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount small tmpfs file systems (as root only): a full disk and a read-only one."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        point = tmp_path / f"fs{len(mounted)}"
        point.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not root'})")
        mounted.append(point)
        return point

    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


@pytest.mark.parametrize(
    ("options", "expected"),
    [("size=96k", "the disk is full"), ("ro,size=64k", "read-only")],
    ids=["full-disk", "read-only"],
)
def test_a_full_or_read_only_disk_is_a_message_not_a_traceback(
    options: str,
    expected: str,
    small_filesystem: Callable[[str], Path],
    tiny_args: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CDSF_BENCH_DEBUG", raising=False)
    out = small_filesystem(options) / "run"
    result = CliRunner().invoke(main, ["run", *tiny_args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), f"a traceback: {result.exc_info}"
    assert expected in " ".join(result.output.split()).lower() and str(out.parent) in result.output
