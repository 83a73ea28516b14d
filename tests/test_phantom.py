"""Tests of the phantom cohort and its templates, at 6 mm and a dozen subjects.

They pin down what the rest of the benchmark relies on: the reference grid, determinism
(a cohort is a function of its settings, and a small cohort is a prefix of a large one),
the missing-PET bookkeeping with the hidden truth kept, SUVR units, the direction of the
disease effects, and a lossless round trip through the files ``write_phantom`` writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from cdsf_bench.data.grid import reference_grid
from cdsf_bench.data.nifti import smooth_and_resample
from cdsf_bench.data.phantom import (
    FORMAT_VERSION,
    PARTICIPANT_COLUMNS,
    SCENARIOS,
    SITES,
    PhantomCohort,
    PhantomSettings,
    generate_phantom,
    missing_probabilities,
    phantom_settings,
    plan_phantom,
    write_phantom,
)
from cdsf_bench.data.regions import HYPOMETABOLISM_REGIONS, REFERENCE_REGIONS, REGIONS, region_masks
from cdsf_bench.data.templates import grid_mni_coordinates, load_templates, mni_to_voxel
from cdsf_bench.errors import ConfigError

RESOLUTION = 6.0
SMALL = PhantomSettings(subjects=10, resolution_mm=RESOLUTION, seed=3)


@pytest.fixture(scope="module")
def cohort() -> PhantomCohort:
    return generate_phantom(SMALL)


def region_weights(name: str, resolution: float = RESOLUTION) -> np.ndarray:
    """Gaussian weights of a region on the grid, built here from the MNI centres alone."""
    mni = grid_mni_coordinates(reference_grid(resolution))
    region = REGIONS[name]
    distances2 = [((mni - np.array(c)) ** 2).sum(-1) for c in region.centres_mm]
    return np.max([np.exp(-d2 / (2 * region.sigma_mm**2)) for d2 in distances2], axis=0)


def weighted_means(volumes: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return (volumes * weights).reshape(len(volumes), -1).sum(1) / weights.sum()


def test_templates_on_reference_grid() -> None:
    templates = load_templates(RESOLUTION)
    grid = reference_grid(RESOLUTION)
    for name in ("t1", "gm", "wm", "csf"):
        volume = getattr(templates, name)
        assert volume.shape == grid.shape and volume.dtype == np.float32
        assert volume.min() >= 0.0 and volume.max() <= 1.0
    assert templates.brain_mask.dtype == bool and templates.brain_mask.shape == grid.shape
    # The mask holds the tissue, and tissue fractions add up to about one inside it.
    total = templates.gm + templates.wm + templates.csf
    assert np.mean(total[templates.brain_mask]) > 0.9
    assert templates.gm[templates.brain_mask].sum() > 0.9 * templates.gm.sum()
    # Cached and read-only, so no caller can corrupt another's templates.
    assert load_templates(RESOLUTION) is templates
    with pytest.raises(ValueError):
        templates.gm[0, 0, 0] = 1.0


def test_mni_to_voxel_inverts_the_affine() -> None:
    grid = reference_grid(RESOLUTION)
    ijk = np.array([[0, 0, 0], [3, 5, 7]], dtype=float)
    mm = ijk @ grid.affine[:3, :3].T + grid.affine[:3, 3]
    np.testing.assert_allclose(mni_to_voxel(grid, mm), ijk, atol=1e-9)


def test_shapes_types_and_table(cohort: PhantomCohort) -> None:
    grid = reference_grid(RESOLUTION)
    n = SMALL.subjects
    assert cohort.mri.shape == (n, *grid.shape) and cohort.mri.dtype == np.float32
    assert cohort.pet.shape == (n, *grid.shape) and cohort.pet.dtype == np.float32
    assert cohort.has_pet.shape == (n,) and cohort.has_pet.dtype == bool
    np.testing.assert_array_equal(cohort.affine, grid.affine)
    assert cohort.brain_mask.shape == grid.shape and cohort.brain_mask.dtype == bool
    table = cohort.participants
    assert list(table.columns) == [
        "participant_id",
        "diagnosis",
        "age",
        "sex",
        "has_pet",
        "severity_structural",
        "severity_metabolic",
        "head_scale",
        "labelled",
    ]
    assert list(table.participant_id) == [f"sub-{i:04d}" for i in range(1, n + 1)]
    assert set(table.diagnosis) <= {"CN", "sMCI", "pMCI", "AD"}
    assert set(table.sex) <= {"F", "M"}
    assert table.age.between(SMALL.age_min, SMALL.age_max).all()
    np.testing.assert_array_equal(table.has_pet.to_numpy(), cohort.has_pet)
    assert np.isfinite(cohort.mri).all() and np.isfinite(cohort.pet).all()


def test_class_fractions_exact_per_block(cohort: PhantomCohort) -> None:
    counts = cohort.participants.diagnosis.value_counts().to_dict()
    assert counts == {"CN": 3, "sMCI": 2, "pMCI": 2, "AD": 3}


def test_deterministic_and_seed_dependent(cohort: PhantomCohort) -> None:
    again = generate_phantom(SMALL)
    np.testing.assert_array_equal(again.mri, cohort.mri)
    np.testing.assert_array_equal(again.pet, cohort.pet)
    np.testing.assert_array_equal(again.has_pet, cohort.has_pet)
    pd.testing.assert_frame_equal(again.participants, cohort.participants)
    other = generate_phantom(PhantomSettings(subjects=SMALL.subjects, resolution_mm=RESOLUTION, seed=4))
    assert not np.array_equal(other.mri, cohort.mri)
    assert not np.array_equal(other.pet, cohort.pet)


def test_subject_independent_of_cohort_size(cohort: PhantomCohort) -> None:
    small = generate_phantom(PhantomSettings(subjects=6, resolution_mm=RESOLUTION, seed=SMALL.seed))
    np.testing.assert_array_equal(small.mri, cohort.mri[:6])
    np.testing.assert_array_equal(small.pet, cohort.pet[:6])
    np.testing.assert_array_equal(small.has_pet, cohort.has_pet[:6])
    pd.testing.assert_frame_equal(small.participants, cohort.participants.iloc[:6])


def test_missing_fraction_respected(cohort: PhantomCohort) -> None:
    missing = int((~cohort.has_pet).sum())
    assert abs(missing - SMALL.missing_pet * SMALL.subjects) <= 1
    for fraction in (0.0, 1.0):
        settings = PhantomSettings(subjects=4, resolution_mm=RESOLUTION, missing_pet=fraction)
        assert generate_phantom(settings).has_pet.all() == (fraction == 0.0)


def test_missing_by_class() -> None:
    settings = PhantomSettings(missing_pet=0.4, missing_mechanism="class")
    p = missing_probabilities(settings)
    assert p["CN"] < p["sMCI"] < p["pMCI"] < p["AD"]
    assert sum(f * p[c] for c, f in settings.class_fractions) == pytest.approx(0.4)
    assert set(missing_probabilities(PhantomSettings(missing_pet=0.4)).values()) == {0.4}


def test_hidden_pet_kept(cohort: PhantomCohort) -> None:
    hidden = cohort.pet[~cohort.has_pet]
    assert len(hidden) > 0
    # The withheld PET is a full scan, as bright inside the brain as the available ones.
    inside = cohort.brain_mask
    hidden_mean = hidden[:, inside].mean()
    shown_mean = cohort.pet[cohort.has_pet][:, inside].mean()
    assert hidden_mean > 0.5 and abs(hidden_mean - shown_mean) < 0.15 * shown_mean


def test_pet_in_suvr_units(cohort: PhantomCohort) -> None:
    templates = load_templates(RESOLUTION)
    mni = grid_mni_coordinates(reference_grid(RESOLUTION))
    reference = np.zeros(templates.shape, dtype=bool)
    for name in REFERENCE_REGIONS[SMALL.pet_reference]:
        region = REGIONS[name]
        for centre in region.centres_mm:
            reference |= ((mni - np.array(centre)) ** 2).sum(-1) <= region.sigma_mm**2
    reference &= templates.brain_mask
    np.testing.assert_allclose(cohort.pet[:, reference].mean(1), 1.0, atol=1e-4)
    cortex = (templates.gm > 0.5) & templates.brain_mask & (mni[..., 2] > 0)
    assert 1.0 < cohort.pet[:, cortex].mean() < 1.8
    assert cohort.pet.min() >= 0.0 and cohort.pet.max() < 2.5


def test_disease_effects_point_the_right_way() -> None:
    # A stronger atrophy and only CN and AD, so twenty subjects show the direction reliably.
    settings = PhantomSettings(
        subjects=20,
        resolution_mm=RESOLUTION,
        seed=1,
        class_fractions=(("CN", 0.5), ("AD", 0.5)),
        hippocampus_atrophy=0.5,
        entorhinal_atrophy=0.5,
    )
    data = generate_phantom(settings)
    ad = (data.participants.diagnosis == "AD").to_numpy()
    hippocampus = weighted_means(data.mri, region_weights("hippocampus"))
    gain = data.mri[:, load_templates(RESOLUTION).wm > 0.8].mean(1)  # the scanner gain cancels
    assert (hippocampus / gain)[ad].mean() < (hippocampus / gain)[~ad].mean()
    cingulate = weighted_means(data.pet, region_weights("posterior_cingulate"))
    assert cingulate[ad].mean() < 0.95 * cingulate[~ad].mean()
    severity = data.participants[["severity_structural", "severity_metabolic"]].to_numpy()
    assert (severity[ad].mean(0) > severity[~ad].mean(0) + 0.5).all()


def test_progress_wraps_the_subject_loop() -> None:
    calls = []

    def progress(iterable, total, label):
        calls.append((total, label))
        return iterable

    generate_phantom(PhantomSettings(subjects=2, resolution_mm=RESOLUTION), progress=progress)
    assert calls == [(2, "phantom")]


def test_write_round_trip(cohort: PhantomCohort, tmp_path: Path) -> None:
    tsv = write_phantom(cohort, SMALL, tmp_path)
    assert tsv == tmp_path / "participants.tsv"
    table = pd.read_csv(tsv, sep="\t", keep_default_na=False)
    assert list(table.columns) == [
        "participant_id",
        "diagnosis",
        "age",
        "sex",
        "has_pet",
        "mri",
        "pet",
        "pet_truth",
        "pet_expected",
        "severity_structural",
        "severity_metabolic",
        "head_scale",
        "labelled",
    ]
    assert list(table.participant_id) == list(cohort.participants.participant_id)
    np.testing.assert_array_equal(table.has_pet.astype(bool).to_numpy(), cohort.has_pet)
    for i, row in table.iterrows():
        pid = row.participant_id
        assert row.mri == f"{pid}/{pid}_T1w.nii.gz"
        if cohort.has_pet[i]:
            assert row.pet == row.pet_truth == f"{pid}/{pid}_pet.nii.gz"
        else:
            assert row.pet == "" and row.pet_truth == f"{pid}/{pid}_desc-hidden_pet.nii.gz"
        assert row.pet_expected == f"{pid}/{pid}_desc-expected_pet.nii.gz"
        volumes = (
            ("mri", cohort.mri[i]),
            ("pet_truth", cohort.pet[i]),
            ("pet_expected", cohort.pet_expected[i]),
        )
        for column, expected in volumes:
            image = nib.load(tmp_path / row[column])
            assert image.get_data_dtype() == np.float32
            np.testing.assert_allclose(image.affine, cohort.affine, atol=1e-6)
            assert int(image.header["qform_code"]) == 4 and int(image.header["sform_code"]) == 4
            np.testing.assert_array_equal(np.asanyarray(image.dataobj), expected)
    meta = json.loads((tmp_path / "phantom.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION
    assert PhantomSettings.from_json(meta["settings"]) == SMALL


@pytest.mark.parametrize(
    "change",
    [
        {"missing_pet": 1.5},
        {"missing_mechanism": "mnar"},
        {"class_fractions": (("CN", 0.5), ("MCI", 0.5))},
        {"class_fractions": (("CN", 0.5), ("AD", 0.4))},
        {"subjects": 0},
        {"pet_reference": "thalamus"},
        {"metabolic_from_structure": 1.5},
        {"metabolic_from_structure": -0.1},
        {"labelled_fraction": 0.0},
        {"scenario": "easy"},
    ],
)
def test_bad_settings_refused(change: dict) -> None:
    settings = PhantomSettings(**{"subjects": 2, "resolution_mm": RESOLUTION, **change})
    with pytest.raises(ConfigError):
        generate_phantom(settings)


def test_subjects_one_at_a_time_equal_the_generated_cohort(cohort: PhantomCohort):
    """The phantom source streams subjects into float16 storage; they must be generate_phantom's."""
    plan = plan_phantom(SMALL)
    assert len(plan) == len(cohort) and plan.shape == cohort.mri.shape[1:]
    rows = []
    for i, subject in enumerate(plan.subjects()):
        np.testing.assert_array_equal(subject.mri, cohort.mri[i])
        np.testing.assert_array_equal(subject.pet, cohort.pet[i])
        rows.append(subject.row)
    pd.testing.assert_frame_equal(plan.participants(rows), cohort.participants)
    np.testing.assert_array_equal(plan.has_pet, cohort.has_pet)
    np.testing.assert_array_equal(plan.affine, cohort.affine)


@pytest.mark.parametrize("workers", [2, 3])
def test_threads_simulate_the_same_cohort_bit_for_bit(cohort: PhantomCohort, workers: int):
    """Subjects simulated side by side come out in order and equal to one thread's, row for row."""
    seen: list[int] = []

    def progress(iterable, total, label):
        for item in iterable:
            seen.append(item)
            yield item

    threaded = generate_phantom(SMALL, progress=progress, workers=workers)
    assert seen == list(range(len(cohort)))
    np.testing.assert_array_equal(threaded.mri, cohort.mri)
    np.testing.assert_array_equal(threaded.pet, cohort.pet)
    pd.testing.assert_frame_equal(threaded.participants, cohort.participants)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("resolution", [4.0, 8.0])
def test_smooth_and_resample_ignores_storage_order_and_keeps_levels(resolution):
    """Templates and scans share one resampler: a left-right flipped copy of a volume lands on
    the grid exactly as the original, and a uniform volume stays uniform where it covers the grid.

    (When the two former resamplers were merged, the merged one was checked bit for bit
    against both at 2, 4 and 8 mm; these are the invariants that keep it right since.)
    """
    rng = np.random.default_rng(1)
    grid = reference_grid(resolution)
    ras = np.diag([1.5, 1.2, 2.0, 1.0])
    ras[:3, 3] = (-76.0, -112.0, -76.0)
    data = rng.random((100, 150, 80)).astype(np.float32)
    las = ras.copy()
    las[0, 0], las[0, 3] = -1.5, -76.0 + 1.5 * 99  # the same voxels, stored right to left
    original = smooth_and_resample(nib.Nifti1Image(data, ras), grid)
    flipped = smooth_and_resample(nib.Nifti1Image(data[::-1].copy(), las), grid)
    assert original.shape == grid.shape
    assert np.allclose(original, flipped, atol=1e-5)
    uniform = smooth_and_resample(nib.Nifti1Image(np.full(data.shape, 0.7, np.float32), ras), grid)
    covered = uniform > 0.35
    assert covered.mean() > 0.2 and np.allclose(uniform[uniform > 0.69], 0.7, atol=1e-4)


# --------------------------------------------------------------------------------------
# Knobs and scenarios (issue #17). A tiny 8 mm cohort keeps these cheap.

TINY = {"subjects": 6, "resolution_mm": 8.0}
#: SHA-256 of a 6-subject 8 mm default cohort (MRI, PET, has_pet and the columns that
#: existed then), computed with the generator before the knobs of issue #17 were added.
DEFAULT_COHORT_SHA256 = {
    (): "a9dd911c1c2ccd94e8094e6f050b92aa910b8d2cb71c552e476c860c4d8cfe84",
    (("missing_mechanism", "class"), ("seed", 3)): (
        "0650febaa2eab872ffb757cdb932f95385ea5410a6f7f1a8084e48471e2abfcb"
    ),
}


def _cohort_hash(cohort: PhantomCohort) -> str:
    import hashlib

    digest = hashlib.sha256()
    for array in (cohort.mri, cohort.pet, cohort.has_pet):
        digest.update(np.ascontiguousarray(array).tobytes())
    old_columns = [c for c in PARTICIPANT_COLUMNS if c != "labelled"]
    digest.update(cohort.participants[old_columns].to_csv(index=False, float_format="%.9g").encode())
    return digest.hexdigest()


@pytest.mark.parametrize("change", list(DEFAULT_COHORT_SHA256))
def test_default_cohort_unchanged_by_the_new_knobs(change: tuple) -> None:
    """Existing caches, tests and results rely on the default cohort staying byte-identical."""
    settings = phantom_settings({}, **TINY, **dict(change))
    assert _cohort_hash(generate_phantom(settings)) == DEFAULT_COHORT_SHA256[change]
    # the "default" scenario named explicitly is the same cohort
    named = phantom_settings({"scenario": "default"}, **TINY, **dict(change))
    assert _cohort_hash(generate_phantom(named)) == DEFAULT_COHORT_SHA256[change]


def test_scenarios_set_their_values_and_explicit_settings_win() -> None:
    independent = phantom_settings({"scenario": "independent"})
    assert independent.severity_correlation == 0.0 and independent.metabolic_from_structure == 0.0
    predictable = phantom_settings({"scenario": "predictable"})
    assert predictable.metabolic_from_structure == 1.0
    assert phantom_settings({"scenario": "label_scarce"}).labelled_fraction < 0.5
    mixed = phantom_settings({"scenario": "predictable", "metabolic_from_structure": 0.5})
    assert mixed.metabolic_from_structure == 0.5 and mixed.scenario == "predictable"
    learnable = phantom_settings({"scenario": "learnable"})
    assert learnable.severity_sd < PhantomSettings().severity_sd
    assert learnable.hippocampus_atrophy > PhantomSettings().hippocampus_atrophy
    assert learnable.metabolic_from_structure == 1.0
    assert set(SCENARIOS) == {
        "default",
        "independent",
        "predictable",
        "label_scarce",
        "learnable",
        "synthesis_control",
        "joint_control",
        "adni_like",
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"severity_corr": 0.9}, "severity_correlation"),  # unknown: the known names are listed
        ({"subjects": 10}, "data.subjects"),  # a cohort setting belongs to [data]
        ({"seed": 1}, "data.phantom_seed"),
        ({"scenario": "easy"}, "independent"),
    ],
)
def test_phantom_settings_refuse_bad_names(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        phantom_settings(options)


def _within_class_correlation(table: pd.DataFrame) -> float:
    centred = table.groupby("diagnosis")[["severity_structural", "severity_metabolic"]].transform(
        lambda column: column - column.mean()
    )
    return float(np.corrcoef(centred["severity_structural"], centred["severity_metabolic"])[0, 1])


def test_severity_correlation_knob_reaches_the_latents() -> None:
    """Planted truth 1: the within-class correlation of the severities is what was asked for.

    Only the latents are needed, so a plan with many subjects and no images suffices.
    """
    rows = {}
    for rho in (0.0, 0.9):
        plan = plan_phantom(phantom_settings({"severity_correlation": rho}, subjects=400, resolution_mm=8.0))
        rows[rho] = _latent_table(plan, 120)
    assert abs(_within_class_correlation(rows[0.0])) < 0.3  # 120 subjects: sd of r about 0.09
    assert _within_class_correlation(rows[0.9]) > 0.8


def _latent_table(plan, n: int) -> pd.DataFrame:
    """The participants rows of a plan's first ``n`` subjects (simulated: 8 mm is cheap)."""
    from cdsf_bench.data.phantom import _simulate_subject

    rows = [_simulate_subject(plan.settings, plan.anatomy, i, plan.diagnoses[i]).row for i in range(n)]
    return pd.DataFrame(rows)


def test_structure_driven_hypometabolism_follows_the_structural_pattern() -> None:
    """Planted truth 2: at metabolic_from_structure = 1 PET's drive is MRI's pattern.

    With uncorrelated severities the drive (``severity_metabolic``) still tracks the
    structural severity within class, and the regional uptake follows that drive; MRI and
    the structural severity do not move, only PET's drive does.
    """
    options = {"severity_correlation": 0.0, "metabolic_from_structure": 1.0}
    cohort = generate_phantom(phantom_settings(options, subjects=40, resolution_mm=8.0))
    table = cohort.participants
    assert _within_class_correlation(table) > 0.9
    masks = region_masks(cohort.affine, cohort.pet.shape[1:], cohort.brain_mask, HYPOMETABOLISM_REGIONS)
    roi = np.stack([cohort.pet[:, m].mean(1) for m in masks.values()], 1).mean(1)
    assert np.corrcoef(roi, table["severity_metabolic"])[0, 1] < -0.7
    base = generate_phantom(phantom_settings({"severity_correlation": 0.0}, subjects=40, resolution_mm=8.0))
    np.testing.assert_array_equal(base.mri, cohort.mri)
    assert (base.participants["severity_structural"] == table["severity_structural"]).all()
    assert not (base.participants["severity_metabolic"] == table["severity_metabolic"]).all()


def test_labelled_fraction_per_class() -> None:
    """label_scarce: each class keeps its labelled fraction; no other draw is reshuffled."""
    from cdsf_bench.data.phantom import assign_labelled

    plan = plan_phantom(phantom_settings({"scenario": "label_scarce"}, subjects=200, resolution_mm=8.0))
    table = pd.DataFrame({"diagnosis": plan.diagnoses})
    table["labelled"] = assign_labelled(plan.settings, plan.diagnoses)
    for _, group in table.groupby("diagnosis"):
        assert abs(group["labelled"].sum() - 0.2 * len(group)) <= 1.0
    default = plan_phantom(phantom_settings({}, subjects=200, resolution_mm=8.0))
    assert default.diagnoses == plan.diagnoses
    np.testing.assert_array_equal(default.has_pet, plan.has_pet)
    assert assign_labelled(default.settings, default.diagnoses).all()


# --------------------------------------------------------------------------------------
# data.phantom.* through the run configuration.


@pytest.fixture(scope="module")
def registry():
    from cdsf_bench.registry import default_registry

    return default_registry()


def test_phantom_knobs_reach_data_settings_and_the_cache_key(registry, tmp_path: Path) -> None:
    """``--set data.phantom.*`` lands in DataSettings, so a changed knob is a new cohort."""
    from cdsf_bench import config as cfg
    from cdsf_bench.data.cache import settings_fingerprint

    assignments = ("data.phantom.scenario=independent", "data.phantom.severity_correlation=0.9")
    config = cfg.resolve(registry, None, assignments)
    data = config.data
    assert data.phantom == (("scenario", "independent"), ("severity_correlation", 0.9))
    assert settings_fingerprint(data) != settings_fingerprint(cfg.resolve(registry).data)
    assert cfg.resolve(registry).data.phantom == ()
    hash(data)  # a frozen, hashable settings object
    # the phantom source coerces an integer for a float setting; the file written to the run
    # folder resolves again
    from cdsf_bench.data.sources import phantom_options

    config = cfg.resolve(registry, None, ("data.phantom.metabolic_from_structure=1",))
    coerced = phantom_options(config.data)
    assert coerced == {"metabolic_from_structure": 1.0}
    assert isinstance(coerced["metabolic_from_structure"], float)
    file = tmp_path / "config.toml"
    file.write_text(config.toml())
    assert cfg.resolve(registry, file) == config


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("data.phantom.severity_corr=0.9", "Known keys in \\[data.phantom\\]"),
        ("data.phantom.severity_correlation=high", "must be float"),
        ("data.phantom.severity_correlation=1.0", "severity_correlation must lie in"),
        ("data.phantom.metabolic_from_structure=-0.5", "metabolic_from_structure must lie in"),
        ("data.phantom.scenario=easy", "scenario must be one of"),
        ("data.phantom.subjects=10", "data.subjects"),
        ("data.phantom=3", "data.phantom"),
    ],
)
def test_bad_phantom_settings_are_refused_naming_the_field(registry, assignment: str, message: str) -> None:
    """The preflight asks the phantom source, before anything is read."""
    from cdsf_bench import config as cfg
    from cdsf_bench.preflight import preflight

    with pytest.raises(ConfigError, match=message):
        preflight(cfg.resolve(registry, None, (assignment,)), registry)


def test_data_phantom_refuses_bad_options_before_it_writes(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cdsf_bench.cli import main

    out = tmp_path / "cohort"
    result = CliRunner().invoke(
        main, ["data", "phantom", "--out", str(out), "--subjects", "4", "--set", "data.phantom.scenario=easy"]
    )
    assert result.exit_code == 2 and "scenario must be one of" in result.output
    assert not out.exists()


def test_phantom_source_builds_the_cohort_the_knobs_describe() -> None:
    """What ``run`` loads: the built-in source passes data.phantom.* to the generator."""
    from cdsf_bench.data.sources import PhantomSource
    from cdsf_bench.interfaces import DataSettings

    base = DataSettings(resolution_mm=8.0, subjects=4)
    knob = DataSettings(resolution_mm=8.0, subjects=4, phantom=(("metabolic_from_structure", 1.0),))
    plain, driven = PhantomSource._build(base), PhantomSource._build(knob)
    np.testing.assert_array_equal(plain.mri, driven.mri)
    assert not np.array_equal(plain.pet_truth, driven.pet_truth)
    assert (plain.participants["severity_metabolic"] != driven.participants["severity_metabolic"]).all()


def test_latent_columns_are_read_by_scoring_only() -> None:
    """The phantom's ground truth must never reach training: only the generator and the
    metrics (the test split's scoring) may name the latent columns."""
    from cdsf_bench.data.phantom import LATENT_COLUMNS

    root = Path(__file__).resolve().parent.parent
    allowed = {"cdsf_bench/data/phantom.py", "cdsf_bench/metrics.py"}
    offenders = [
        path.relative_to(root).as_posix()
        for folder in ("cdsf_bench", "plugins")
        for path in sorted((root / folder).rglob("*.py"))
        if path.relative_to(root).as_posix() not in allowed
        and any(column in path.read_text() for column in (*LATENT_COLUMNS, "SEVERITY_COLUMNS"))
    ]
    assert offenders == []


# -- sites: a domain shift ------------------------------------------------------------------


def test_sites_set_their_values_and_explicit_settings_win() -> None:
    legacy = phantom_settings({"site": "legacy"})
    for name, value in SITES["legacy"].items():
        assert getattr(legacy, name) == value
    assert legacy.site == "legacy" and legacy.severity_correlation == PhantomSettings().severity_correlation
    mixed = phantom_settings({"site": "legacy", "scenario": "independent", "mri_noise": 0.02})
    assert mixed.mri_noise == 0.02 and mixed.pet_fwhm_mm == SITES["legacy"]["pet_fwhm_mm"]
    assert mixed.severity_correlation == 0.0  # a site and a scenario set different settings
    assert set(SITES["legacy"]).isdisjoint(set().union(*SCENARIOS.values()))
    with pytest.raises(ConfigError, match="site must be one of"):
        phantom_settings({"site": "mars"})
    for bad in ({"mri_fwhm_mm": -1.0}, {"pet_bias_field_sd": -0.1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            phantom_settings(bad).validate()


def _subject(**options: object):
    settings = phantom_settings(options, subjects=1, resolution_mm=RESOLUTION, seed=3)
    return next(plan_phantom(settings).subjects())


def test_mri_resolution_blurs_the_mri_and_touches_nothing_else() -> None:
    """Without noise the MRI is its signal, so the blurred MRI is the plain one through the
    scanner's Gaussian (FWHM 8 mm); no random draw moves."""
    from scipy import ndimage

    from cdsf_bench.data.phantom import FWHM_PER_SIGMA

    plain, noiseless = _subject(), _subject(mri_noise=0.0)
    blurred = _subject(mri_fwhm_mm=8.0, mri_noise=0.0)
    sigma = 8.0 / FWHM_PER_SIGMA / RESOLUTION
    expected = ndimage.gaussian_filter(noiseless.mri, sigma, mode="constant", truncate=4.0)
    np.testing.assert_allclose(blurred.mri, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(blurred.mri, noiseless.mri, atol=1e-3)
    np.testing.assert_array_equal(blurred.pet, plain.pet)
    assert blurred.row == plain.row


def test_the_pet_bias_field_comes_from_its_own_stream() -> None:
    plain, biased = _subject(), _subject(pet_bias_field_sd=0.1)
    np.testing.assert_array_equal(biased.mri, plain.mri)  # the subject's own draws are untouched
    assert biased.row == plain.row
    ratio = biased.pet[plain.pet > 0.5] / plain.pet[plain.pet > 0.5]
    assert 0.03 < float(np.std(np.log(ratio))) < 0.3  # a smooth field of about that sd
    again = _subject(pet_bias_field_sd=0.1)
    np.testing.assert_array_equal(again.pet, biased.pet)  # deterministic in the settings


def test_the_legacy_site_is_an_older_cohort_with_the_same_diagnoses() -> None:
    def participants(options: dict) -> pd.DataFrame:
        plan = plan_phantom(phantom_settings(options, subjects=20, resolution_mm=8.0))
        return plan.participants([subject.row for subject in plan.subjects()])

    legacy, default = participants({"site": "legacy"}), participants({})
    assert legacy["age"].mean() > default["age"].mean() + 2.5
    assert (legacy["diagnosis"] == default["diagnosis"]).all()  # drawn alike: the site changes no diagnosis
