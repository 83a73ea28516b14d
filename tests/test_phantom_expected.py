"""E[PET | MRI] of the phantom (``pet_expected``), the knobs of issue 35 and their scenarios."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cdsf_bench.data.phantom import (
    PARTICIPANT_COLUMNS,
    REFERENCE_AGE,
    SCENARIOS,
    PhantomCohort,
    PhantomSettings,
    _anatomy,
    expected_metabolic_severity,
    generate_phantom,
    phantom_settings,
    write_phantom,
)
from cdsf_bench.data.regions import region_masks
from cdsf_bench.data.sources import PhantomFolderSource, PhantomSource
from cdsf_bench.interfaces import DataSettings

RESOLUTION = 8.0
#: SHA-256 of MRI, PET, has_pet and the participants table of a 3-subject 8 mm cohort (seed 5)
#: for every scenario and site that existed before E[PET | MRI] and the issue-35 knobs,
#: computed with the generator before they were added: those cohorts must stay byte-identical.
EXISTING_SHA256 = {
    ("default", "default"): "aa094e96022d8c26efec0ec7bb585126c6e99048afa2a9ee5bd448ed5bb914c4",
    ("default", "legacy"): "96cffee37b2c5d7b4d274e81bf8981332b3969092fdedba9f6aa365f2675b65a",
    ("independent", "default"): "9ac3c9594900f932d55eea54cbe1a83e5c091a23a2aad68172f1fca6e46a3c06",
    ("independent", "legacy"): "b4e1315ae5cc160c264f7ff7f0512115559cbc4a4242b2ad2ab8b291f956a6b2",
    ("label_scarce", "default"): "deb6fb7f533212f358ed3c5b36848030dd355154ae7cf74da0c9e68f1f3214c9",
    ("label_scarce", "legacy"): "720bc29cf6d7ed6a2ca899f7c91f10d11bf238cca8d696b27e52ca8e1d4de637",
    ("learnable", "default"): "8dd856a67984bfcad1f3e7d822a8d8cde5624567700bd837b8c61981ad3c167a",
    ("learnable", "legacy"): "c30e96c78cd21eda0f17e1bdfad4c46332a8b9cf229bc1f53f62fedc19cfce6b",
    ("predictable", "default"): "999dc4e923a9a899a96e06261bf1409c33612e8312a71645a02f9f751445d95d",
    ("predictable", "legacy"): "10eca8027a852ab1037f36ab17f5b935b70455070016707df761bae22ab253f5",
}
#: Every PET-only term switched off: PET is then a function of what MRI shows.
NO_PET_ONLY_TERMS = {
    "regional_uptake_sd": 0.0,
    "pet_noise": 0.0,
    "pet_bias_field_sd": 0.0,
    "metabolic_from_structure": 1.0,
}


def _cohort(options: dict, subjects: int = 8, seed: int = 2) -> PhantomCohort:
    return generate_phantom(phantom_settings(options, subjects=subjects, resolution_mm=RESOLUTION, seed=seed))


def _hash(cohort: PhantomCohort) -> str:
    digest = hashlib.sha256()
    for array in (cohort.mri, cohort.pet, cohort.has_pet):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(
        cohort.participants[list(PARTICIPANT_COLUMNS)].to_csv(index=False, float_format="%.9g").encode()
    )
    return digest.hexdigest()


@pytest.mark.parametrize(("scenario", "site"), list(EXISTING_SHA256))
def test_existing_scenarios_stay_byte_identical(scenario: str, site: str) -> None:
    cohort = generate_phantom(
        phantom_settings({"scenario": scenario, "site": site}, subjects=3, resolution_mm=RESOLUTION, seed=5)
    )
    assert _hash(cohort) == EXISTING_SHA256[(scenario, site)]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"site": "legacy"},
        {
            "medial_temporal_hypometabolism": 0.2,
            "age_frontal_hypometabolism": 0.01,
            "head_scale_uptake": 3.0,
            "severity_correlation": 0.3,
        },
    ],
)
def test_without_pet_only_terms_the_expected_pet_is_the_pet(options: dict) -> None:
    """What MRI shows fixes the PET once noise, regional uptake and the metabolic severity are off."""
    cohort = _cohort({**options, **NO_PET_ONLY_TERMS})
    np.testing.assert_array_equal(cohort.pet_expected.astype(np.float16), cohort.pet.astype(np.float16))


@pytest.mark.parametrize("scenario", ["default", "synthesis_control", "joint_control", "adni_like"])
def test_the_expected_pet_predicts_worse_than_real_and_better_than_the_mean(scenario: str) -> None:
    cohort = _cohort({"scenario": scenario}, subjects=16)
    brain = cohort.brain_mask
    pet, expected = cohort.pet[:, brain], cohort.pet_expected[:, brain]
    error = float(((expected - pet) ** 2).mean())
    assert 0.0 < error < float(((pet.mean(0) - pet) ** 2).mean()) / 2


def test_expected_metabolic_severity_is_the_conditional_mean_of_the_mixture() -> None:
    """The closed form against the mean of simulated metabolic severities near each structural one."""
    settings = PhantomSettings()
    rng = np.random.default_rng(0)
    classes = [c for c, _ in settings.class_fractions]
    fractions = [f for _, f in settings.class_fractions]
    means = np.array([dict(settings.severity_means)[c] for c in rng.choice(classes, 400_000, p=fractions)])
    rho, sd = settings.severity_correlation, settings.severity_sd
    z1, z2 = rng.standard_normal((2, len(means)))
    structural = means + sd * z1
    metabolic = means + sd * (rho * z1 + np.sqrt(1 - rho**2) * z2)
    for value in (-0.3, 0.2, 0.5, 0.9, 1.4):
        near = np.abs(structural - value) < 0.02
        assert expected_metabolic_severity(settings, value) == pytest.approx(metabolic[near].mean(), abs=0.02)
    # one class: the regression line; sd 0: the structural severity itself
    single = PhantomSettings(class_fractions=(("AD", 1.0),))
    assert expected_metabolic_severity(single, 1.5) == pytest.approx(1.0 + rho * 0.5)
    assert expected_metabolic_severity(PhantomSettings(severity_sd=0.0), 0.75) == 0.75


def _region_mean(volumes: np.ndarray, weight: np.ndarray, brain: np.ndarray) -> np.ndarray:
    return volumes[:, brain & (weight > 0.9)].mean(1)


@pytest.mark.parametrize(
    ("knob", "value", "driver", "sign"),
    [
        ("medial_temporal_hypometabolism", 0.2, "severity_structural", -1),
        ("age_frontal_hypometabolism", 0.01, "age", -1),
        ("head_scale_uptake", 3.0, "head_scale", 1),
    ],
)
def test_each_uptake_knob_moves_pet_with_its_driver_and_leaves_mri(
    knob: str, value: float, driver: str, sign: int
):
    off, on = _cohort({}, subjects=10), _cohort({knob: value}, subjects=10)
    assert np.array_equal(off.mri, on.mri)
    assert on.participants.equals(off.participants)
    anatomy = _anatomy(RESOLUTION)
    weight = {
        "medial_temporal_hypometabolism": region_masks(
            anatomy.grid.affine, anatomy.grid.shape, off.brain_mask, ["hippocampus"]
        )["hippocampus"].astype(np.float32),
        "age_frontal_hypometabolism": anatomy.frontal,
        "head_scale_uptake": anatomy.cortical,
    }[knob]
    for volumes in ("pet", "pet_expected"):
        change = _region_mean(getattr(on, volumes) - getattr(off, volumes), weight, off.brain_mask)
        latent = on.participants[driver].to_numpy(dtype=float)
        assert sign * np.corrcoef(change, latent)[0, 1] > 0.9, volumes
    if knob == "age_frontal_hypometabolism":  # no loss at the reference age
        change = _region_mean(on.pet - off.pet, weight, off.brain_mask)
        years = on.participants.age.to_numpy() - REFERENCE_AGE
        assert np.all(np.sign(change[np.abs(years) > 2]) == -np.sign(years[np.abs(years) > 2]))


def test_new_scenarios_validate_and_use_only_known_settings() -> None:
    for name in ("synthesis_control", "joint_control", "adni_like"):
        settings = phantom_settings({"scenario": name})
        settings.validate()
        for key, value in SCENARIOS[name].items():
            assert getattr(settings, key) == value


def test_the_cache_keeps_the_expected_pet(tmp_path: Path) -> None:
    settings = DataSettings(resolution_mm=RESOLUTION, subjects=6, cache_dir=str(tmp_path / "cache"))
    built = PhantomSource().load("phantom", settings)
    again = PhantomSource().load("phantom", settings)
    assert not built.extra["cache_hit"] and again.extra["cache_hit"]
    assert again.pet_expected is not None and again.pet_expected.dtype == np.float16
    np.testing.assert_array_equal(np.asarray(again.pet_expected), np.asarray(built.pet_expected))
    assert np.asarray(again.pet_expected).shape == np.asarray(again.pet_truth).shape
    rows = np.array([1, 4])
    np.testing.assert_array_equal(
        np.asarray(again.subset(rows).pet_expected), np.asarray(again.pet_expected)[rows]
    )


def test_a_phantom_folder_gives_back_the_expected_pet_and_version_2_folders_read_without(
    tmp_path: Path,
) -> None:
    phantom = PhantomSettings(subjects=6, resolution_mm=RESOLUTION, seed=3)
    folder = tmp_path / "phantom"
    write_phantom(generate_phantom(phantom), phantom, folder)
    settings = DataSettings(resolution_mm=RESOLUTION, cache_dir=str(tmp_path / "cache"))
    cohort = PhantomFolderSource().load(str(folder), settings)
    direct = PhantomSource._build(DataSettings(resolution_mm=RESOLUTION, subjects=6, phantom_seed=3))
    assert cohort.pet_expected is not None and direct.pet_expected is not None
    np.testing.assert_allclose(
        np.asarray(cohort.pet_expected, np.float32), direct.pet_expected.astype(np.float32), atol=1e-2
    )
    # a folder of format 2 has no pet_expected column and files
    tsv = folder / "participants.tsv"
    table = pd.read_csv(tsv, sep="\t", keep_default_na=False)
    for path in table.pet_expected:
        (folder / path).unlink()
    table.drop(columns="pet_expected").to_csv(tsv, sep="\t", index=False)
    meta = json.loads((folder / "phantom.json").read_text())
    (folder / "phantom.json").write_text(json.dumps({**meta, "format_version": 2}))
    old = PhantomFolderSource().load(str(folder), settings)
    assert old.pet_expected is None and old.pet_truth is not None
