"""``cdsf-bench data import``: each peer layout written small, imported, and read back.

Every layout's test writes a tiny cohort in that layout with the library its peers use
(h5py, scipy.io, numpy; ECAT from nibabel's own test file, since nibabel writes ECAT only
from an existing file's headers), imports it, and checks that the voxels and affines
round-trip, the labels map, and the manifest passes ``data check``; a damaged file of each
layout is refused with exit 2, naming it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner, Result

from cdsf_bench.cli import main
from cdsf_bench.data.importers.cohort import BRAIN_CENTRE_MM, ArrayGeometry
from cdsf_bench.data.sources import ManifestSource
from cdsf_bench.errors import InputError
from cdsf_bench.interfaces import DataSettings

h5py = pytest.importorskip("h5py")
sio = pytest.importorskip("scipy.io")

#: tiny arrays: 12 x 14 x 12 voxels of 14 mm cover the MNI brain box, so data check accepts them
SHAPE = (12, 14, 12)
VOXEL_MM = 14.0
LABELS = ("CN", "AD") * 5


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("CDSF_BENCH_QUIET", "1")
    monkeypatch.delenv("CDSF_BENCH_DEBUG", raising=False)


def invoke(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


def brain(level: float, seed: int) -> np.ndarray:
    """A bright ellipsoid where the MNI brain lies on the assumed RAS grid, with a left-right and
    front-back asymmetry (so that a flipped axis would show) and a subject's own texture."""
    affine = ArrayGeometry(VOXEL_MM).affine(SHAPE)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    radius = np.sqrt((((xyz - BRAIN_CENTRE_MM) / (70.0, 90.0, 76.0)) ** 2).sum(-1))
    tilt = 1 + 0.2 * xyz[..., 0] / 70 + 0.1 * xyz[..., 1] / 90
    texture = np.random.default_rng(seed).uniform(0.9, 1.1, SHAPE)
    return (level * np.clip(1.2 - radius, 0, 1) * tilt * texture).astype(np.float32)


def checked(manifest: Path) -> None:
    result = invoke("data", "check", manifest, "--set", "data.resolution_mm=8")
    assert result.exit_code == 0, result.output
    assert "no problems found" in result.stdout


def imported(*args: object) -> tuple[pd.DataFrame, dict, Path]:
    out = Path(str(args[args.index("--out") + 1]))
    result = invoke("data", "import", *args)
    assert result.exit_code == 0, result.output
    return (
        pd.read_csv(out / "participants.tsv", sep="\t", dtype=str, keep_default_na=False),
        json.loads((out / "import.json").read_text()),
        out,
    )


def refused(*args: object) -> str:
    result = invoke("data", "import", *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return " ".join(result.output.split())


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(path)
    return np.asarray(image.get_fdata(), dtype=np.float32), image.affine


# --- PASTA / SiM2P HDF5 ---------------------------------------------------------------------


def write_pasta(path: Path, *, without_pet: int | None = None, dx: tuple[str, ...] | None = None) -> dict:
    volumes = {}
    with h5py.File(path, "w") as handle:
        for i, label in enumerate(dx or tuple("Dementia" if x == "AD" else x for x in LABELS)):
            group = handle.create_group(f"I{100 + i}")
            mri, pet = brain(300.0, i), brain(1.5, 100 + i)
            group.create_dataset("MRI/T1/data", data=mri)
            if i != without_pet:
                group.create_dataset("PET/FDG/data", data=pet)
            group.create_dataset("tabular", data=np.array([70.0 + i, 1, 16, 28, 10.5, np.nan]))
            group.attrs.update({"DX": label, "RID": 10 + i, "VISCODE": "bl"})
            volumes[f"RID{10 + i:04d}"] = (mri, None if i == without_pet else pet)
        columns = [b"AGE", b"PTGENDER", b"PTEDUCAT", b"MMSE", b"ADAS13", b"APOE4"]
        handle.create_dataset("stats/tabular/columns", data=np.array(columns))
    return volumes


def test_a_pasta_file_round_trips_and_passes_data_check(tmp_path):
    source = tmp_path / "train.h5"
    volumes = write_pasta(source, without_pet=2)
    table, record, out = imported("pasta-hdf5", source, "--out", tmp_path / "cohort", "--voxel-mm", VOXEL_MM)
    assert list(table.participant_id) == list(volumes)
    assert list(table.diagnosis) == list(LABELS)  # Dementia is AD
    assert set(table.session_id) == {"ses-bl"} and list(table.image_id) == [
        f"I{100 + i}" for i in range(len(LABELS))
    ]
    assert table.age.iloc[1] == "71.0" and table.mmse.iloc[0] == "28.0" and table.apoe4.iloc[0] == ""
    assert table.pet.iloc[2] == "" and record["subjects_with_pet"] == len(LABELS) - 1
    expected_affine = ArrayGeometry(VOXEL_MM).affine(SHAPE)
    for row in table.itertuples():
        mri, pet = volumes[row.participant_id]
        data, affine = read_nifti(out / row.mri)
        np.testing.assert_array_equal(data, mri)
        np.testing.assert_allclose(affine, expected_affine)
        if pet is not None:
            np.testing.assert_array_equal(read_nifti(out / row.pet)[0], pet)
    # the centre voxel lies on the MNI brain box's centre, the axes RAS+ at the voxel size
    np.testing.assert_allclose(expected_affine[:3, :3], np.eye(3) * VOXEL_MM)
    np.testing.assert_allclose(
        expected_affine[:3, :3] @ ((np.array(SHAPE) - 1) / 2) + expected_affine[:3, 3], BRAIN_CENTRE_MM
    )
    assert record["geometry"] == {
        "voxel_mm": VOXEL_MM,
        "orientation": "RAS",
        "centre_mm": list(BRAIN_CENTRE_MM),
        "assumed": True,
    }
    assert record["diagnoses"] == {"AD": 5, "CN": 5}
    checked(out / "participants.tsv")


def test_pasta_labels_nan_and_missing_fields_are_refused_naming_the_group(tmp_path):
    source = tmp_path / "mci.h5"
    write_pasta(source, dx=("CN", "MCI", "AD"))
    message = refused("pasta-hdf5", source, "--out", tmp_path / "a")
    assert (
        f"{source}:/I101: diagnosis 'MCI' cannot be mapped" in message and "--skip-diagnosis MCI" in message
    )
    assert not (tmp_path / "a").exists()  # nothing is left of a refused import
    table, record, _ = imported("pasta-hdf5", source, "--out", tmp_path / "b", "--skip-diagnosis", "mci")
    assert list(table.diagnosis) == ["CN", "AD"] and record["skipped"] == [
        {"source": f"{source}:/I101", "diagnosis": "MCI"}
    ]

    with h5py.File(source, "a") as handle:
        handle["I102/PET/FDG/data"][0, 0, 0] = np.nan
    message = refused("pasta-hdf5", source, "--out", tmp_path / "c", "--skip-diagnosis", "MCI")
    assert f"{source}:/I102/PET/FDG/data has 1 NaN voxel(s)" in message
    table, record, out = imported(
        "pasta-hdf5", source, "--out", tmp_path / "d", "--skip-diagnosis", "MCI", "--nan-to-zero"
    )
    assert (
        record["nan_set_to_zero"] == {"RID0012_ses-bl": 1}
        and read_nifti(out / table.pet.iloc[1])[0][0, 0, 0] == 0
    )

    with h5py.File(source, "a") as handle:
        del handle["I100/MRI/T1/data"]
    message = refused("pasta-hdf5", source, "--out", tmp_path / "e")
    assert f"{source}:/I100: dataset MRI/T1/data is missing" in message

    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(b"not an HDF5 file at all")
    assert f"PASTA HDF5 file {damaged} cannot be opened as HDF5" in refused(
        "pasta-hdf5", damaged, "--out", tmp_path / "f"
    )


def test_pasta_shapes_and_duplicate_visits_are_refused(tmp_path):
    source = tmp_path / "bad.h5"
    write_pasta(source)
    with h5py.File(source, "a") as handle:
        del handle["I103/PET/FDG/data"]
        handle.create_dataset("I103/PET/FDG/data", data=np.ones((12, 14, 11), np.float32))
    assert f"{source}:/I103/PET/FDG/data has shape (12, 14, 11)" in refused(
        "pasta-hdf5", source, "--out", tmp_path / "a"
    )
    with h5py.File(source, "a") as handle:
        del handle["I103"]
        handle["I104"].attrs["RID"] = 10
    message = refused("pasta-hdf5", source, "--out", tmp_path / "b")
    assert f"{source}:/I104: participant RID0010 session ses-bl is also {source}:/I100" in message


# --- TPA-GAN .mat -----------------------------------------------------------------------------


def write_tpagan(folder: Path) -> dict:
    folder.mkdir()
    volumes = {}
    for i, label in enumerate(LABELS):
        subject = f"{i:03d}_S_{1000 + i}"
        mri, pet = np.round(brain(255.0, i)), np.round(brain(200.0, 50 + i))
        sio.savemat(folder / f"{int(label == 'AD')}_{subject}.mat", {"data": np.stack([mri, pet])})
        volumes[subject] = (mri, pet)
    (folder / "About_dataset.txt").write_text("the peer's note, which the import ignores\n")
    return volumes


def test_a_tpagan_folder_round_trips_and_passes_data_check(tmp_path):
    source = tmp_path / "ADNI1_MRI_PET_ADNC_255"
    volumes = write_tpagan(source)
    table, record, out = imported(
        "tpagan-mat", source, "--out", tmp_path / "cohort", "--voxel-mm", VOXEL_MM, "--pet-scale", 255
    )
    assert sorted(table.participant_id) == sorted(volumes)
    assert {pid: dx for pid, dx in zip(table.participant_id, table.diagnosis, strict=True)} == {
        f"{i:03d}_S_{1000 + i}": label for i, label in enumerate(LABELS)
    }
    for row in table.itertuples():
        mri, pet = volumes[row.participant_id]
        np.testing.assert_array_equal(read_nifti(out / row.mri)[0], mri)
        np.testing.assert_allclose(read_nifti(out / row.pet)[0], pet / 255, rtol=1e-6)
        np.testing.assert_allclose(read_nifti(out / row.pet)[1], ArrayGeometry(VOXEL_MM).affine(SHAPE))
    assert record["options"]["pet_scale"] == 255 and record["documented_shape"] == [76, 94, 76]
    checked(out / "participants.tsv")


def test_the_documented_tpagan_voxel_size_is_the_default_and_bad_files_are_refused(tmp_path):
    source = tmp_path / "mats"
    write_tpagan(source)
    result = invoke("data", "import", "tpagan-mat", source, "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert "not the layout's documented 76x94x76" in " ".join(result.output.split())
    assert np.allclose(nib.load(next((tmp_path / "a").glob("*/*_T1w.nii.gz"))).header.get_zooms(), 2.0)
    assert "PET reaches" in result.output and "--pet-scale" in result.output  # 0-255 is not SUVR

    (source / "2_extra.mat").write_bytes(b"")
    assert f"{source / '2_extra.mat'}: the name is not <label>_<subject>.mat" in refused(
        "tpagan-mat", source, "--out", tmp_path / "b"
    )
    (source / "2_extra.mat").unlink()
    sio.savemat(source / "1_999_S_9999.mat", {"volume": np.zeros((2, 3, 3, 3))})
    message = refused("tpagan-mat", source, "--out", tmp_path / "c")
    assert f"{source / '1_999_S_9999.mat'}: variable 'data' is missing (variables there: volume)" in message
    sio.savemat(source / "1_999_S_9999.mat", {"data": np.zeros((3, 3, 3))})
    assert "variable 'data' has shape (3, 3, 3)" in refused("tpagan-mat", source, "--out", tmp_path / "d")
    (source / "1_999_S_9999.mat").write_bytes(b"MATLAB 5.0 but then nothing")
    assert f"{source / '1_999_S_9999.mat'} cannot be read as a MATLAB file" in refused(
        "tpagan-mat", source, "--out", tmp_path / "e"
    )


# --- .npy volumes and a table -----------------------------------------------------------------


def write_npy(folder: Path) -> tuple[Path, dict]:
    folder.mkdir()
    rows, volumes = [], {}
    for i, label in enumerate(LABELS):
        mri, pet = brain(300.0, i).astype(np.float64), brain(1.5, 7 + i)
        np.save(folder / f"s{i}_mri.npy", mri)
        pet_cell = ""
        if i != 0:
            np.save(folder / f"s{i}_pet.npy", pet)
            pet_cell = f"s{i}_pet.npy"
        rows.append(
            {
                "subject_id": f"s{i}",
                "label": label.lower(),
                "mri_path": f"s{i}_mri.npy",
                "pet_path": pet_cell,
                "age": 60 + i,
            }
        )
        volumes[f"s{i}"] = (mri, pet if pet_cell else None)
    table = folder / "subjects.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table, volumes


def test_an_npy_table_round_trips_and_needs_a_voxel_size(tmp_path):
    source, volumes = write_npy(tmp_path / "npy")
    assert "npy-table arrays carry no voxel size; give it with --voxel-mm" in refused(
        "npy-table", source, "--out", tmp_path / "a"
    )
    table, record, out = imported("npy-table", source, "--out", tmp_path / "cohort", "--voxel-mm", VOXEL_MM)
    assert list(table.participant_id) == list(volumes) and list(table.diagnosis) == list(LABELS)
    assert list(table.age) == [str(60 + i) for i in range(len(LABELS))] and table.pet.iloc[0] == ""
    for row in table.itertuples():
        mri, pet = volumes[row.participant_id]
        np.testing.assert_array_equal(read_nifti(out / row.mri)[0], mri.astype(np.float32))
        if pet is not None:
            np.testing.assert_array_equal(read_nifti(out / row.pet)[0], pet)
    checked(out / "participants.tsv")


def test_pickles_are_never_opened_and_bad_npy_files_are_refused(tmp_path, monkeypatch):
    import pickle

    def forbidden(*_args, **_kwargs):
        raise AssertionError("pickle.load was called")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    listing = tmp_path / "train_paths.pkl"
    listing.write_bytes(pickle.dumps(["a.npy", "b.npy"]))
    message = refused("npy-table", listing, "--out", tmp_path / "a", "--voxel-mm", 1.5)
    assert f"{listing} is a pickle file; it is not read" in message and "Convert it once" in message

    source, _ = write_npy(tmp_path / "npy")
    np.save(tmp_path / "npy" / "s3_pet.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    message = refused("npy-table", source, "--out", tmp_path / "b", "--voxel-mm", VOXEL_MM)
    assert (
        f"{source}, row 4 (s3) pet: {tmp_path / 'npy' / 's3_pet.npy'} cannot be read without unpickling"
        in message
    )
    np.save(tmp_path / "npy" / "s3_pet.npy", brain(1.5, 0)[None])
    message = refused("npy-table", source, "--out", tmp_path / "c", "--voxel-mm", VOXEL_MM)
    assert (
        f"row 4 (s3) pet: {tmp_path / 'npy' / 's3_pet.npy'} has shape (1, 12, 14, 12); give a 3D volume"
        in message
    )
    table = pd.read_csv(source)
    table.loc[3, "label"] = "LMCI"
    table.to_csv(source, index=False)
    assert f"{source}, row 4 (s3): diagnosis 'LMCI' is not one cdsf-bench knows" in refused(
        "npy-table", source, "--out", tmp_path / "d", "--voxel-mm", VOXEL_MM
    )


# --- ECAT PET with NIfTI MRI ------------------------------------------------------------------


def tinypet() -> Path:
    return Path(os.path.dirname(nib.__file__)) / "tests" / "data" / "tinypet.v"


def test_ecat_pet_keeps_its_own_affine_and_the_mri_is_copied(tmp_path):
    from nibabel import ecat

    folder = tmp_path / "adni"
    folder.mkdir()
    shutil.copy(tinypet(), folder / "pet_I123.v")
    mri_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(brain(300.0, 0), mri_affine), folder / "t1.nii.gz")
    pd.DataFrame(
        [
            {"participant_id": "sub-1", "diagnosis": "AD", "mri": "t1.nii.gz", "pet": "pet_I123.v"},
            {"participant_id": "sub-2", "diagnosis": "CN", "mri": "t1.nii.gz", "pet": ""},
        ]
    ).to_csv(folder / "pairs.tsv", sep="\t", index=False)
    table, record, out = imported("ecat", folder / "pairs.tsv", "--out", tmp_path / "cohort")
    source = ecat.load(folder / "pet_I123.v")
    data, affine = read_nifti(out / table.pet.iloc[0])
    np.testing.assert_allclose(data, source.get_fdata()[..., 0].astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(affine, source.affine, rtol=1e-6)
    assert int(nib.load(out / table.pet.iloc[0]).header["sform_code"]) == 1  # scanner space, not MNI
    assert (out / table.mri.iloc[0]).read_bytes() == (folder / "t1.nii.gz").read_bytes()
    assert record["geometry"]["assumed"] is False and table.pet.iloc[1] == ""
    # the scanner-space PET is read by data check and reported as not in MNI space, not refused unread
    result = invoke("data", "check", out / "participants.tsv")
    assert result.exit_code == 2 and "not in MNI space" in result.stdout

    (folder / "broken.v").write_bytes(tinypet().read_bytes()[:600])
    pd.DataFrame(
        [{"participant_id": "sub-1", "diagnosis": "AD", "mri": "t1.nii.gz", "pet": "broken.v"}]
    ).to_csv(folder / "bad.csv", index=False)
    assert (
        f"{folder / 'bad.csv'}, row 1 (sub-1) pet: {folder / 'broken.v'} cannot be read as ECAT 7"
        in refused("ecat", folder / "bad.csv", "--out", tmp_path / "b")
    )


# --- the geometry of bare arrays -------------------------------------------------------------


def test_axis_codes_set_the_direction_of_each_voxel_axis_and_the_centre_stays_put(tmp_path):
    shape = (4, 6, 8)
    affine = ArrayGeometry(2.0, "LPI", (1.0, 2.0, 3.0)).affine(shape)
    np.testing.assert_allclose(affine[:3, :3], np.diag([-2.0, -2.0, -2.0]))
    np.testing.assert_allclose(affine[:3, :3] @ ((np.array(shape) - 1) / 2) + affine[:3, 3], (1.0, 2.0, 3.0))
    sagittal = ArrayGeometry(1.0, "ASR").affine(shape)[:3, :3]  # voxel axis 0 runs to the front
    np.testing.assert_allclose(sagittal, [[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    for codes in ("RAR", "RA", "XYZ", "RASI"):
        with pytest.raises(InputError, match="is not three axis codes"):
            ArrayGeometry(1.0, codes)
    source, _ = write_npy(tmp_path / "npy")
    message = refused("npy-table", source, "--out", tmp_path / "a", "--voxel-mm", 2, "--centre-mm", "1,2")
    assert "--centre-mm '1,2' must be three numbers" in message


# --- the output folder ------------------------------------------------------------------------


def test_out_is_never_replaced_unless_force_names_an_earlier_import(tmp_path):
    source = tmp_path / "train.h5"
    write_pasta(source)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert "exists and is not empty" in refused("pasta-hdf5", source, "--out", other, "--voxel-mm", VOXEL_MM)
    assert "holds no import.json" in refused(
        "pasta-hdf5", source, "--out", other, "--voxel-mm", VOXEL_MM, "--force"
    )
    assert (other / "notes.txt").read_text() == "keep me"
    imported("pasta-hdf5", source, "--out", tmp_path / "cohort", "--voxel-mm", VOXEL_MM)
    table, record, out = imported(
        "pasta-hdf5", source, "--out", tmp_path / "cohort", "--voxel-mm", 10, "--force"
    )
    assert (
        record["geometry"]["voxel_mm"] == 10
        and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    )


def test_an_imported_cohort_is_read_by_the_manifest_source(tmp_path):
    source = tmp_path / "train.h5"
    write_pasta(source, without_pet=1)
    _, _, out = imported("pasta-hdf5", source, "--out", tmp_path / "cohort", "--voxel-mm", VOXEL_MM, "--json")
    result = invoke(
        "data", "import", "pasta-hdf5", source, "--out", tmp_path / "again", "--voxel-mm", VOXEL_MM, "--json"
    )
    assert json.loads(result.stdout)["manifest"] == str(tmp_path / "again" / "participants.tsv")
    settings = DataSettings(resolution_mm=8.0, cache_dir=str(tmp_path / "cache"))
    cohort = ManifestSource().load(str(out / "participants.tsv"), settings)
    assert len(cohort) == len(LABELS) and list(cohort.has_pet) == [i != 1 for i in range(len(LABELS))]
    assert list(cohort.participants.diagnosis) == list(LABELS)
    # the volumes land on the MNI grid where the brain is: brighter inside the brain mask than outside
    from cdsf_bench.data.templates import load_templates

    mask = load_templates(8.0).brain_mask
    assert cohort.mri[0][mask].mean() > cohort.mri[0][~mask].mean() + 0.5
