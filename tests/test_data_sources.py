"""The real-data layer: manifests, CAPS trees, bad inputs and the cohort cache.

Every dataset here is built on the fly with nibabel: tiny brain-like blobs already in MNI
space (what Clinica's linear pipelines deliver), at 8 mm so the whole file runs quickly.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cdsf_bench.data import sources
from cdsf_bench.data.cache import DATA_PACKAGE, code_fingerprint, cohort_key, load_or_build
from cdsf_bench.data.caps import scan_caps
from cdsf_bench.data.check import check_table
from cdsf_bench.data.grid import reference_grid
from cdsf_bench.data.manifest import read_manifest
from cdsf_bench.data.nifti import read_volume, save_nifti
from cdsf_bench.data.sources import (
    CapsSource,
    ManifestSource,
    PhantomFolderSource,
    PhantomSource,
    detect_source,
)
from cdsf_bench.errors import InputError
from cdsf_bench.interfaces import DataSettings

RESOLUTION = 8.0


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("CDSF_BENCH_QUIET", "1")


@pytest.fixture
def settings(tmp_path) -> DataSettings:
    return DataSettings(resolution_mm=RESOLUTION, cache_dir=str(tmp_path / "cache"))


def _mni_affine(voxel_mm: float, flip_x: bool = False) -> np.ndarray:
    """An affine covering the MNI brain box at ``voxel_mm``, optionally left-right flipped (LAS)."""
    affine = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    affine[:3, 3] = (-76.0, -112.0, -76.0)
    if flip_x:
        affine[0, 0] = -voxel_mm
        affine[0, 3] = 76.0
    return affine


def _blob(affine: np.ndarray, shape: tuple[int, int, int], level: float, seed: int) -> np.ndarray:
    """An ellipsoidal 'brain' centred in MNI space, with a little noise."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    radius = np.sqrt((((xyz - (0.0, -17.0, 5.0)) / (70.0, 90.0, 75.0)) ** 2).sum(-1))
    rng = np.random.default_rng(seed)
    return (level * np.clip(1.2 - radius, 0, 1) + 0.02 * level * rng.random(shape)).astype(np.float32)


def _write(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _scan(path: Path, kind: str, seed: int, voxel_mm: float = 6.0, flip_x: bool = False) -> Path:
    """A subject's MRI (arbitrary units) or PET (SUVR) on a 6 mm grid, so resampling is exercised."""
    affine = _mni_affine(voxel_mm, flip_x)
    shape = (26, 32, 27)
    return _write(path, _blob(affine, shape, 300.0 if kind == "mri" else 1.6, seed), affine)


def _good_rows(folder: Path, n: int = 6) -> list[dict]:
    """Subjects alternating CN / AD (lower-case labels on purpose), every other one without PET."""
    rows = []
    for i in range(n):
        sid = f"sub-{i:02d}"
        _scan(folder / "scans" / f"{sid}_T1w.nii.gz", "mri", i, flip_x=(i == 0))
        pet = ""
        if i % 2 == 0:
            _scan(folder / "scans" / f"{sid}_pet.nii.gz", "pet", 100 + i)
            pet = f"scans/{sid}_pet.nii.gz"
        rows.append(
            {
                "participant_id": sid,
                "diagnosis": "cn" if i % 2 else "ad",
                "mri": f"scans/{sid}_T1w.nii.gz",
                "pet": pet,
                "age": 70 + i,
            }
        )
    return rows


def _messages(problems) -> str:
    return "\n".join(str(p) for p in problems)


# -- manifests ------------------------------------------------------------------------


def test_manifest_csv_loads_into_a_cohort(tmp_path, settings):
    rows = _good_rows(tmp_path)
    pd.DataFrame(rows).to_csv(tmp_path / "cohort.csv", index=False)

    table = read_manifest(tmp_path / "cohort.csv")
    assert list(table["diagnosis"]) == ["AD", "CN"] * 3
    assert Path(table["mri"][0]).is_absolute() and Path(table["mri"][0]).is_file()
    assert table["pet"][1] == ""
    assert table["age"].dtype.kind in "if"

    cohort = ManifestSource().load(str(tmp_path / "cohort.csv"), settings)
    grid = reference_grid(RESOLUTION)
    assert cohort.mri.shape == (6, *grid.shape) and cohort.mri.dtype == np.float16
    assert np.array_equal(cohort.has_pet, [True, False] * 3)
    assert np.all(np.asarray(cohort.pet[1]) == 0) and np.asarray(cohort.pet[0]).max() > 0
    assert cohort.pet_truth is None
    assert float(np.min(cohort.mri)) >= -1.0 and float(np.max(cohort.mri)) <= 1.0
    np.testing.assert_allclose(cohort.affine, grid.affine)
    # a left-right flipped file lands like the others once reoriented
    brain = cohort.brain_mask
    assert np.corrcoef(np.asarray(cohort.mri[0])[brain], np.asarray(cohort.mri[2])[brain])[0, 1] > 0.9


def test_manifest_tsv_with_aliases_and_split(tmp_path):
    rows = _good_rows(tmp_path, 3)
    table = pd.DataFrame(rows).rename(
        columns={"mri": "MRI_path", "pet": "PET_Path", "diagnosis": "Diagnosis"}
    )
    table["Split"] = ["train", "Validation", "test"]
    table.to_csv(tmp_path / "cohort.tsv", sep="\t", index=False)
    read = read_manifest(tmp_path / "cohort.tsv")
    assert {"mri", "pet", "diagnosis", "split"} <= set(read.columns)
    assert list(read["split"]) == ["train", "val", "test"]
    # a .txt is sniffed
    table.to_csv(tmp_path / "cohort.txt", sep="\t", index=False)
    assert read_manifest(tmp_path / "cohort.txt")["mri"].tolist() == read["mri"].tolist()


def test_manifest_errors_name_the_file_and_column(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputError, match="empty.csv is empty"):
        read_manifest(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("participant_id,diagnosis,mri\n")
    with pytest.raises(InputError, match="header.csv has a header but no subjects"):
        read_manifest(tmp_path / "header.csv")
    (tmp_path / "nomri.csv").write_text("participant_id,diagnosis\nsub-1,AD\n")
    with pytest.raises(
        InputError, match=r"nomri.csv lacks the column\(s\) mri \(found: participant_id, diagnosis\)"
    ):
        read_manifest(tmp_path / "nomri.csv")
    (tmp_path / "rows.csv").write_text(
        "participant_id,diagnosis,mri,split\nsub-1,MCI,a.nii.gz,train\nsub-1,AD,b.nii.gz,holdout\n"
    )
    with pytest.raises(InputError) as error:
        read_manifest(tmp_path / "rows.csv")
    message = str(error.value)
    assert "sub-1: has diagnosis 'MCI'" in message and "sMCI or pMCI" in message
    assert "sub-1: appears 2 times" in message
    assert "split 'holdout'" in message


def test_phantom_folder_keeps_the_hidden_pet(tmp_path, settings):
    from cdsf_bench.data.phantom import PhantomSettings, generate_phantom, write_phantom

    phantom_settings = PhantomSettings(subjects=6, resolution_mm=RESOLUTION, seed=3)
    write_phantom(generate_phantom(phantom_settings), phantom_settings, tmp_path / "phantom")
    source = detect_source(
        str(tmp_path / "phantom"), [PhantomSource(), PhantomFolderSource(), ManifestSource()]
    )
    assert source.name == "phantom-folder"
    cohort = source.load(str(tmp_path / "phantom"), settings)
    assert cohort.pet_truth is not None and not cohort.has_pet.all()
    hidden = ~cohort.has_pet
    assert np.all(np.asarray(cohort.pet)[hidden] == 0) and np.asarray(cohort.pet_truth)[hidden].max() > 0
    direct = PhantomSource()._build(DataSettings(resolution_mm=RESOLUTION, subjects=6, phantom_seed=3))
    np.testing.assert_allclose(
        np.asarray(cohort.pet_truth, np.float32), direct.pet_truth.astype(np.float32), atol=1e-2
    )


# -- CAPS -----------------------------------------------------------------------------

SPACE = "space-MNI152NLin2009cSym"


def _caps(root: Path) -> Path:
    """A CAPS tree: current names with desc-Crop, older names (T1w/pet inside, acq-, rec-), gaps."""
    subjects = root / "caps" / "subjects"
    s1 = subjects / "sub-01" / "ses-M000"
    _scan(s1 / "t1_linear" / f"sub-01_ses-M000_T1w_{SPACE}_desc-Crop_res-1x1x1_T1w.nii.gz", "mri", 1)
    _scan(s1 / "t1_linear" / f"sub-01_ses-M000_T1w_{SPACE}_res-1x1x1_T1w.nii.gz", "mri", 2)
    _write(
        s1 / "t1_linear" / f"sub-01_ses-M000_T1w_{SPACE}_desc-Crop_res-1x1x1_T1w_brain_mask.nii.gz",
        np.ones((4, 4, 4), np.float32),
        np.eye(4),
    )
    pet_dir = s1 / "pet_linear"
    _scan(pet_dir / f"sub-01_ses-M000_trc-18FFDG_{SPACE}_desc-Crop_res-1x1x1_suvr-pons2_pet.nii.gz", "pet", 3)
    _scan(pet_dir / f"sub-01_ses-M000_trc-18FFDG_{SPACE}_res-1x1x1_suvr-pons2_pet.nii.gz", "pet", 4)
    _scan(pet_dir / "sub-01_ses-M000_trc-18FFDG_space-T1w_pet.nii.gz", "pet", 5)
    _scan(
        pet_dir / f"sub-01_ses-M000_trc-18FAV45_{SPACE}_desc-Crop_res-1x1x1_suvr-pons2_pet.nii.gz", "pet", 6
    )
    # older Clinica: sessions not zero-padded (M6 sorts before M12), acq- and rec- entities
    (subjects / "sub-02" / "ses-M6").mkdir(parents=True)
    s2 = subjects / "sub-02" / "ses-M12"
    _scan(s2 / "t1_linear" / f"sub-02_ses-M12_T1w_{SPACE}_desc-Crop_res-1x1x1_T1w.nii.gz", "mri", 7)
    _scan(
        s2
        / "pet_linear"
        / f"sub-02_ses-M12_acq-fdg_rec-uniform_pet_{SPACE}_desc-Crop_res-1x1x1_suvr-pons_pet.nii.gz",
        "pet",
        8,
    )
    s3 = subjects / "sub-03" / "ses-M000"
    _scan(s3 / "t1_linear" / f"sub-03_ses-M000_{SPACE}_desc-Crop_res-1x1x1_T1w.nii", "mri", 9)
    for i in (5, 6, 7, 8):
        sid = f"sub-{i:02d}"
        _scan(
            subjects
            / sid
            / "ses-M000"
            / "t1_linear"
            / f"{sid}_ses-M000_{SPACE}_desc-Crop_res-1x1x1_T1w.nii.gz",
            "mri",
            10 + i,
        )
    (subjects / "sub-04" / "ses-M000").mkdir(parents=True)  # listed, never processed
    return root / "caps"


def _labels(path: Path, participants: list[tuple[str, str, str]]) -> Path:
    pd.DataFrame(participants, columns=["participant_id", "session_id", "diagnosis"]).to_csv(
        path, sep="\t", index=False
    )
    return path


def test_caps_picks_files_and_sessions(tmp_path):
    caps = _caps(tmp_path)
    labels = _labels(
        caps / "participants.tsv",
        [
            ("sub-01", "ses-M000", "AD"),
            ("sub-02", "ses-M6", "sMCI"),
            ("sub-02", "ses-M12", "pMCI"),
            ("sub-03", "ses-M000", "CN"),
            ("sub-04", "ses-M000", "CN"),
        ],
    )
    table, problems = scan_caps(caps, None)
    by_id = table.set_index("participant_id")
    assert Path(by_id.loc["sub-01", "mri"]).name.endswith("_desc-Crop_res-1x1x1_T1w.nii.gz")
    assert (
        Path(by_id.loc["sub-01", "pet"]).name
        == f"sub-01_ses-M000_trc-18FFDG_{SPACE}_desc-Crop_res-1x1x1_suvr-pons2_pet.nii.gz"
    )
    assert by_id.loc["sub-02", "session_id"] == "ses-M12" and by_id.loc["sub-02", "diagnosis"] == "pMCI"
    assert "acq-fdg_rec-uniform" in by_id.loc["sub-02", "pet"]
    assert by_id.loc["sub-03", "pet"] == ""
    assert [p.subject for p in problems] == ["sub-04"] and "no t1-linear T1" in problems[0].message
    with pytest.raises(InputError, match="sub-04"):
        CapsSource().load(f"{caps}::{labels}", DataSettings(resolution_mm=RESOLUTION))
    # the tracer picks the AV45 scan; a suvr reference that nobody has leaves no PET
    assert (
        "trc-18FAV45"
        in scan_caps(caps, labels, tracer="18FAV45")[0].set_index("participant_id").loc["sub-01", "pet"]
    )
    assert (scan_caps(caps, labels, suvr_reference="cerebellumPons2")[0]["pet"] == "").all()
    # an explicit session that sub-02 lacks in the TSV
    table, problems = scan_caps(caps, labels, session="M000")
    assert "sub-02" not in set(table["participant_id"]) and "sub-02" in {p.subject for p in problems}


def test_caps_source_loads(tmp_path, settings):
    caps = _caps(tmp_path)
    labels = _labels(
        tmp_path / "labels.tsv",
        [
            ("sub-01", "ses-M000", "AD"),
            ("sub-02", "ses-M12", "AD"),
            ("sub-03", "ses-M000", "CN"),
            ("sub-05", "ses-M000", "CN"),
            ("sub-06", "ses-M000", "ad"),
            ("sub-07", "ses-M000", "CN"),
        ],
    )
    spec = f"{caps}::{labels}"
    source = detect_source(spec, [PhantomSource(), PhantomFolderSource(), ManifestSource(), CapsSource()])
    assert source.name == "caps"
    cohort = source.load(spec, settings)
    assert len(cohort) == 6 and cohort.has_pet.tolist() == [True, True, False, False, False, False]
    assert cohort.participants["diagnosis"].tolist()[4] == "AD"


# -- bad inputs -----------------------------------------------------------------------


def _bad_files(folder: Path) -> dict[str, tuple[dict, str]]:
    """One broken subject per failure, with the words its problem must contain."""
    mri_affine, shape = _mni_affine(6.0), (26, 32, 27)
    good = _blob(mri_affine, shape, 300.0, 0)
    cases: dict[str, tuple[dict, str]] = {}

    def case(sid: str, mri: Path, expect: str, pet: Path | None = None, label: str = "CN") -> None:
        cases[sid] = (
            {"participant_id": sid, "diagnosis": label, "mri": str(mri), "pet": str(pet or "")},
            expect,
        )

    case("sub-missing", folder / "nowhere.nii.gz", "does not exist")
    (folder / "text.nii").write_text("not an image at all " * 40)
    case("sub-text", folder / "text.nii", "cannot be read as NIfTI")
    plain = _write(folder / "plain.nii", good, mri_affine)
    (folder / "plain.nii.gz").write_bytes(plain.read_bytes())
    case("sub-gz", folder / "plain.nii.gz", "not gzip-compressed")
    case("sub-2d", _write(folder / "flat.nii.gz", good[:, :, 0], mri_affine), "2D")
    case("sub-4d", _write(folder / "frames.nii.gz", np.stack([good, good], -1), mri_affine), "4D")
    with_nan = good.copy()
    with_nan[3, 3, 3] = np.nan
    case("sub-nan", _write(folder / "nan.nii.gz", with_nan, mri_affine), "NaN")
    case("sub-zero", _write(folder / "zero.nii.gz", np.zeros(shape, np.float32), mri_affine), "all zeros")
    header = bytearray(plain.read_bytes())
    struct.pack_into("<4h", header, 40, 3, 2000, 2000, 2000)  # dim[0..3]
    (folder / "huge.nii").write_bytes(bytes(header))
    case("sub-huge", folder / "huge.nii", "(2000, 2000, 2000)")
    shifted = _mni_affine(6.0)
    shifted[:3, 3] += (25.0, 40.0, 0.0)  # a moved origin: the brain lies 47 mm from the template's
    case(
        "sub-affine",
        _write(folder / "mri_ok.nii.gz", good, mri_affine),
        "beyond data.max_offset_mm = 12 mm",
        pet=_write(folder / "pet_shifted.nii.gz", good / 200, shifted),
    )
    scanner = np.diag([6.0, 6.0, 6.0, 1.0])  # scanner space: the volume starts at the origin
    case("sub-scanner", _write(folder / "scanner.nii.gz", good, scanner), "covers 11% of the MNI brain box")
    case("sub-label", folder / "mri_ok.nii.gz", "'Dementia'", label="Dementia")
    return cases


def test_check_table_lists_every_problem(tmp_path, settings):
    cases = _bad_files(tmp_path)
    rows = [row for row, _ in cases.values()]
    rows.append({**rows[-1], "diagnosis": "CN"})  # sub-label again: a duplicate
    problems = check_table(pd.DataFrame(rows), settings, task="ad_cn")
    text = _messages(problems)
    for sid, (row, expect) in cases.items():
        mine = [p for p in problems if p.subject == sid]
        assert any(expect in p.message for p in mine), f"{sid}: {expect!r} not in\n{text}"
        if sid != "sub-label":
            assert any(p.file in (row["mri"], row["pet"]) for p in mine)
        if sid not in ("sub-label", "sub-affine", "sub-scanner"):
            assert any(Path(row["mri"]).name in p.message for p in mine)
    assert "sub-label: appears 2 times" in text
    assert "task ad_cn has 0 AD subject(s); it needs at least 3 per class" in text


def test_sources_refuse_bad_tables_before_preprocessing(tmp_path, settings, monkeypatch):
    rows = _good_rows(tmp_path, 4)
    rows[1]["mri"] = "scans/gone.nii.gz"
    rows[2]["diagnosis"] = "probable AD"
    rows.append(dict(rows[0]))
    pd.DataFrame(rows).to_csv(tmp_path / "bad.csv", index=False)
    monkeypatch.setattr(sources, "cohort_from_table", lambda *a: pytest.fail("preprocessed a bad table"))
    with pytest.raises(InputError) as error:
        ManifestSource().load(str(tmp_path / "bad.csv"), settings)
    message = str(error.value)
    assert "has 3 problem(s)" in message
    assert "sub-01 (" in message and "gone.nii.gz" in message
    assert "sub-02: has diagnosis 'probable AD'" in message and "sub-00: appears 2 times" in message


def test_read_volume_accepts_one_frame_and_refuses_truncation(tmp_path):
    affine = _mni_affine(6.0)
    data = _blob(affine, (26, 32, 27), 300.0, 0)
    image = read_volume(_write(tmp_path / "one.nii.gz", data[..., None], affine), "MRI")
    assert image.shape == (26, 32, 27)
    whole = gzip.compress(nib.Nifti1Image(data, affine).to_bytes())
    (tmp_path / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputError, match=r"PET file .*cut.nii.gz is truncated"):
        read_volume(tmp_path / "cut.nii.gz", "PET")


def test_detect_source_explains_what_it_accepts():
    all_sources = [PhantomSource(), PhantomFolderSource(), ManifestSource(), CapsSource()]
    assert detect_source("phantom", all_sources).name == "phantom"
    with pytest.raises(InputError, match="could not tell what --data nothing-here is") as error:
        detect_source("nothing-here", all_sources)
    assert "caps: a Clinica CAPS directory" in str(error.value)


# -- cache ----------------------------------------------------------------------------


def test_cache_hits_and_rebuilds_on_change(tmp_path, settings, monkeypatch):
    pd.DataFrame(_good_rows(tmp_path, 4)).to_csv(tmp_path / "cohort.tsv", sep="\t", index=False)
    builds = []
    real_build = sources.cohort_from_table

    def counting(*args):
        builds.append(1)
        return real_build(*args)

    monkeypatch.setattr(sources, "cohort_from_table", counting)
    spec = str(tmp_path / "cohort.tsv")
    first = ManifestSource().load(spec, settings)
    second = ManifestSource().load(spec, settings)
    assert len(builds) == 1
    assert np.array_equal(first.mri, second.mri) and first.participants.equals(second.participants)
    assert second.participants["participant_id"].tolist() == ["sub-00", "sub-01", "sub-02", "sub-03"]

    scan = tmp_path / "scans" / "sub-01_T1w.nii.gz"
    stat = scan.stat()
    os.utime(scan, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    ManifestSource().load(spec, settings)
    assert len(builds) == 2

    entries = [p for p in Path(settings.cache_dir).iterdir() if not p.name.startswith(".")]
    for entry in entries:
        (entry / "mri.npy").unlink()
    ManifestSource().load(spec, settings)  # damaged entry: rebuilt, not fatal
    assert len(builds) == 3


def test_code_fingerprint_covers_every_data_module(tmp_path, monkeypatch):
    modules = sorted(p.name for p in DATA_PACKAGE.glob("*.py"))
    assert {"grid.py", "nifti.py", "manifest.py", "caps.py", "phantom.py"} <= set(modules)
    original = tmp_path / "original"
    original.mkdir()
    for name in modules:
        (original / name).write_bytes((DATA_PACKAGE / name).read_bytes())
    assert code_fingerprint(original) == code_fingerprint(DATA_PACKAGE)
    for name in modules:
        changed = tmp_path / f"changed-{name}"
        changed.mkdir()
        for other in modules:
            (changed / other).write_bytes((original / other).read_bytes())
        with (changed / name).open("a") as handle:
            handle.write("# edited\n")
        assert code_fingerprint(changed) != code_fingerprint(original), name
    # and the cohort key follows the package's fingerprint
    key = cohort_key({"a": 1})
    monkeypatch.setattr("cdsf_bench.data.cache.code_fingerprint", lambda: "another package")
    assert cohort_key({"a": 1}) != key


def test_load_or_build_reports_hits_and_keys_are_canonical(settings):
    assert cohort_key({"a": 1, "b": [1, 2]}) == cohort_key({"b": [1, 2], "a": 1})
    assert cohort_key({"a": 1}) != cohort_key({"a": 2})
    small = DataSettings(resolution_mm=RESOLUTION, subjects=6, cache_dir=settings.cache_dir)
    key = cohort_key({"test": "phantom"})
    cohort, hit = load_or_build(key, lambda: PhantomSource._build(small), small)
    assert not hit and cohort.pet_truth is not None
    again, hit = load_or_build(key, lambda: pytest.fail("rebuilt a sound entry"), small)
    assert hit and np.array_equal(np.asarray(again.pet_truth), np.asarray(cohort.pet_truth))
    assert again.participants["has_pet"].dtype == bool
    assert np.all(np.asarray(again.pet)[~again.has_pet] == 0)


def test_save_nifti_replaces_atomically(tmp_path, monkeypatch):
    image = nib.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4), _mni_affine(8.0))
    target = tmp_path / "sub" / "out.nii.gz"
    save_nifti(image, target)
    nib.save(image, tmp_path / "direct.nii.gz")
    assert target.read_bytes() == (tmp_path / "direct.nii.gz").read_bytes()  # gzip, as nibabel writes it
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.nii.gz"]
    save_nifti(nib.Nifti1Image(np.ones((2, 3, 4), np.float32), image.affine), tmp_path / "plain.nii")
    assert nib.load(tmp_path / "plain.nii").get_fdata().sum() == 24
    before = target.read_bytes()

    def fail(img, filename):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        save_nifti(image, target)
    assert target.read_bytes() == before and sorted(p.name for p in target.parent.iterdir()) == ["out.nii.gz"]
