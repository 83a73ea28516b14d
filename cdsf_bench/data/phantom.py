"""The phantom cohort: MRI and FDG-PET of simulated people, drawn on real MNI anatomy.

The benchmark needs a cohort it can ship, whose ground truth is known (each subject's
disease severities and the PET that was "missing"), and which poses the same questions as
real data: MRI alone should diagnose imperfectly, real PET should help, and synthetic PET
should land in between. So the phantom is built from the ICBM152 2009a tissue maps
(:mod:`cdsf_bench.data.templates`), the regions of the atlas (:mod:`cdsf_bench.data.regions`)
and a generative model with the effects the literature reports, each with an explicit,
documented strength (docs/data.md, "The phantom cohort").

In short, per subject: a diagnosis; two correlated latent severities (structural and
metabolic, so PET carries information MRI lacks); age and sex with effects that are not
disease (global atrophy, ventricles, head size) and act as confounds; individual anatomy
(a smooth random deformation, a head scale, regional variation); grey-matter loss in the
medial and inferior temporal lobe and ventricle enlargement scaled by structural severity;
hypometabolism in posterior cingulate, precuneus and angular cortex scaled by metabolic
severity; a T1-like MRI with bias field and Rician noise; an FDG PET at scanner resolution
with counting noise, in SUVR units relative to cerebellum and pons. Named sites (``SITES``)
change the acquisition and the cohort's age, not the disease: a domain shift to test on.

Every random draw of subject ``i`` comes from its own stream, ``SeedSequence(seed,
spawn_key=(0, i))``, and its diagnosis from a randomised block that holds it, so subject
``i`` is the same whatever the cohort's size: a small cohort is a prefix of a large one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage, special, stats

from cdsf_bench.data.conventions import DIAGNOSES
from cdsf_bench.data.grid import BRAIN_BOX_MM, Grid, reference_grid
from cdsf_bench.data.nifti import save_nifti
from cdsf_bench.data.regions import ATROPHY_REGIONS, HYPOMETABOLISM_REGIONS, REFERENCE_REGIONS, REGIONS
from cdsf_bench.data.templates import Templates, grid_mni_coordinates, load_templates, mni_to_voxel
from cdsf_bench.errors import ConfigError
from cdsf_bench.staging import staged_folder

#: Bumped whenever the files ``write_phantom`` writes change meaning or layout
#: (2: the ``labelled`` column; 3: the ``pet_expected`` column and files). Folders of an
#: earlier version read as before, without E[PET | MRI].
FORMAT_VERSION = 3

#: The columns of ``PhantomCohort.participants``, in order.
PARTICIPANT_COLUMNS = (
    "participant_id",
    "diagnosis",
    "age",
    "sex",
    "has_pet",
    "severity_structural",
    "severity_metabolic",
    "head_scale",
    "labelled",
)
#: The columns of ``participants.tsv``: the table plus the files, relative to its folder.
TSV_COLUMNS = PARTICIPANT_COLUMNS[:5] + ("mri", "pet", "pet_truth", "pet_expected") + PARTICIPANT_COLUMNS[5:]

#: A progress wrapper: ``progress(iterable, total, label)`` yields the iterable's items.
Progress = Callable[[Iterable, int, str], Iterable]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: Inverse golden ratio: the step of the low-discrepancy sequence that spreads missing PET.
GOLDEN_STEP = (math.sqrt(5.0) - 1.0) / 2.0
#: Regions whose grey matter takes up less FDG than the cerebrum's (settings
#: ``pet_pons_uptake``, ``pet_cerebellum_uptake``), over a Gaussian this many times wider
#: than the region, so the reference sphere sits on a plateau of uptake.
LOW_UPTAKE_WIDTH = 1.5
#: The age at which every age effect is zero.
REFERENCE_AGE = 70.0
#: The frontal weight of ``age_frontal_hypometabolism``: a logistic step in MNI y, one half at
#: ``ANTERIOR_Y_MM`` (just behind the central sulcus' front) rising over ``ANTERIOR_WIDTH_MM``.
ANTERIOR_Y_MM = 0.0
ANTERIOR_WIDTH_MM = 10.0
#: Participants columns that are the phantom's ground truth: never inputs to a method.
LATENT_COLUMNS = ("severity_structural", "severity_metabolic", "head_scale")
#: Settings that ``[data]`` itself holds (``data.subjects`` ...): not ``data.phantom.*`` keys.
COHORT_SETTINGS = {
    "subjects": "data.subjects",
    "resolution_mm": "data.resolution_mm",
    "missing_pet": "data.missing_pet",
    "missing_mechanism": "data.missing_mechanism",
    "seed": "data.phantom_seed",
}

#: Named scenarios (docs/data.md, "Scenarios"): the settings each changes from the defaults.
#: Explicit settings override a scenario's. "independent": PET's disease information cannot
#: be predicted from MRI (uncorrelated severities, no structure-driven hypometabolism);
#: "predictable": PET's hypometabolism is the subject's structural pattern, as MRI shows it,
#: plus the regional and scanner noise; "label_scarce": many subjects with paired scans, few
#: of them labelled (the ``labelled`` column); "learnable": disease effects so strong and so
#: tight within class that every method, trained briefly on 8 mm volumes, separates AD from
#: CN (AUC >= 0.9), and PET a function of MRI's structure, so that a generator can learn it:
#: the CI regression suite's cohort, where a broken method stands out (docs/regression.md).
#: The positive controls of issue 35, measured in docs/data.md ("Scenarios"):
#: "synthesis_control": hypometabolism mostly driven by what MRI shows, part of it in the
#: atrophied medial temporal lobe, so E[PET | MRI] adds to MRI at few labels and a generator
#: can learn it from many unlabelled pairs (use with ``data.subjects`` of 600 or more);
#: "joint_control": large age- and head-size-driven uptake patterns that MRI predicts and that
#: do not diagnose, beside a small diagnostic part that MRI also predicts; "adni_like":
#: MRI alone near AUC 0.88 and real PET adding a few hundredths, as reported on ADNI
#: (use with ``data.missing_mechanism = "class"``).
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "independent": {"severity_correlation": 0.0, "metabolic_from_structure": 0.0},
    "predictable": {"metabolic_from_structure": 1.0, "regional_gm_sd": 0.1},
    "label_scarce": {"labelled_fraction": 0.2},
    "learnable": {
        "severity_sd": 0.2,
        "severity_correlation": 0.9,
        "metabolic_from_structure": 1.0,
        "hippocampus_atrophy": 0.5,
        "entorhinal_atrophy": 0.4,
        "temporal_atrophy": 0.35,
        "ventricle_expansion": 0.4,
        "cingulate_hypometabolism": 0.35,
        "precuneus_hypometabolism": 0.35,
        "angular_hypometabolism": 0.35,
    },
    "synthesis_control": {
        "medial_temporal_hypometabolism": 0.2,
        "metabolic_from_structure": 0.7,
        "regional_uptake_sd": 0.03,
        "labelled_fraction": 0.05,
    },
    "joint_control": {
        "age_frontal_hypometabolism": 0.01,
        "head_scale_uptake": 3.0,
        "metabolic_from_structure": 1.0,
        "medial_temporal_hypometabolism": 0.05,
        "cingulate_hypometabolism": 0.06,
        "precuneus_hypometabolism": 0.06,
        "angular_hypometabolism": 0.06,
    },
    "adni_like": {
        "hippocampus_atrophy": 0.45,
        "entorhinal_atrophy": 0.4,
        "temporal_atrophy": 0.22,
        "regional_gm_sd": 0.04,
        "severity_correlation": 0.8,
        "cingulate_hypometabolism": 0.05,
        "precuneus_hypometabolism": 0.05,
        "angular_hypometabolism": 0.05,
    },
}
#: Named sites (docs/data.md, "Sites"): the acquisition and recruitment settings each changes,
#: to test a model on a cohort from another site (a domain shift) while the disease model stays.
#: Explicit settings override a site's. "legacy": an older, 1.5 T-like MRI (less grey / white
#: and CSF contrast, a stronger bias field, more noise, coarser resolution), an older PET
#: scanner (coarser resolution, more noise, a smooth spatial bias left by its corrections) and
#: an older cohort (more age-related atrophy in every class). A global gain is not among
#: them: per-scan normalisation divides it out (MRI by its percentiles, PET by its SUVR reference).
SITES: dict[str, dict[str, Any]] = {
    "default": {},
    "legacy": {
        "age_mean": 77.0,
        "age_sd": 6.0,
        "t1_gm": 0.68,
        "t1_csf": 0.22,
        "bias_field_sd": 0.1,
        "mri_noise": 0.05,
        "mri_fwhm_mm": 6.0,
        "pet_fwhm_mm": 10.0,
        "pet_noise": 0.08,
        "pet_bias_field_sd": 0.05,
    },
}
#: The seed stream of a subject's site effects (``SeedSequence(seed, spawn_key=(SITE_STREAM, i))``),
#: apart from its own stream, so that switching them on redraws nothing else of the subject.
SITE_STREAM = 4


@dataclass(frozen=True)
class PhantomSettings:
    """Every parameter of the phantom's generative model, with its default (docs/data.md).

    Severities are on a latent scale where 0 is the average cognitively normal person and
    1 the average AD patient, so a strength "at severity 1" is the AD-versus-CN mean
    difference the literature reports. Fractions of tissue or uptake are relative (0.2 is
    20%). Lengths are in mm and the smooth random fields are drawn on a fixed lattice, so a
    subject's anatomy and disease pattern are the same at every resolution; only the
    voxel noise differs.
    """

    # Cohort.
    subjects: int = 200
    resolution_mm: float = 4.0
    missing_pet: float = 0.5  # fraction of subjects whose PET is withheld
    missing_mechanism: str = "mcar"  # "mcar" or "class" (see missing_class_log_odds)
    seed: int = 0
    # The named scenario these settings started from (SCENARIOS); a label, applied by
    # ``phantom_settings``.
    scenario: str = "default"
    # The named site these settings started from (SITES); a label, applied like the scenario.
    site: str = "default"
    class_fractions: tuple = (("CN", 0.3), ("sMCI", 0.2), ("pMCI", 0.2), ("AD", 0.3))
    # "class" missingness: the log-odds of missing PET rise by this per step CN -> sMCI ->
    # pMCI -> AD (sicker people drop out of a PET visit more often); the intercept is set
    # so the cohort's expected missing fraction stays ``missing_pet``.
    missing_class_log_odds: float = 0.7
    # Demographics: age is a normal truncated to the range, the same in every class.
    age_mean: float = 73.0
    age_sd: float = 7.0
    age_min: float = 60.0
    age_max: float = 90.0
    female_fraction: float = 0.5
    # Latent severities: class mean, within-class sd, within-class correlation.
    severity_means: tuple = (("CN", 0.0), ("sMCI", 0.3), ("pMCI", 0.75), ("AD", 1.0))
    severity_sd: float = 0.4
    severity_correlation: float = 0.6
    # Fraction of the hypometabolism's drive that is the subject's structural pattern as MRI
    # shows it (structural severity plus its regional atrophy deviations), the rest being the
    # metabolic severity: 0 keeps PET's disease signal apart from MRI's, 1 makes it a function
    # of MRI's. ``severity_metabolic`` in the table is the mixed drive PET shows.
    metabolic_from_structure: float = 0.0
    # Fraction of each class whose diagnosis is known (``labelled``); the rest are unlabelled.
    labelled_fraction: float = 1.0
    # Structural disease effects at severity 1 (fraction of grey matter lost at the centre).
    hippocampus_atrophy: float = 0.28
    entorhinal_atrophy: float = 0.25
    temporal_atrophy: float = 0.15
    ventricle_expansion: float = 0.15  # radial stretch at the ventricles' centre
    # Metabolic disease effects at severity 1 (fraction of grey-matter uptake lost).
    cingulate_hypometabolism: float = 0.18
    precuneus_hypometabolism: float = 0.16
    angular_hypometabolism: float = 0.16
    # Ageing, per year above (or below) REFERENCE_AGE.
    age_gm_loss: float = 0.003  # everywhere
    age_hippocampus_loss: float = 0.008  # extra, in the hippocampus and entorhinal cortex
    age_ventricle_expansion: float = 0.008  # radial stretch at the ventricles' centre
    # Individual anatomy.
    head_scale_sd: float = 0.02
    head_scale_sex: float = 0.03  # men's heads this much larger than women's (relative)
    deformation_mm: float = 2.0  # sd of each displacement component
    deformation_smoothness_mm: float = 16.0  # Gaussian sigma of the displacement field
    regional_gm_sd: float = 0.06  # sd of a region's grey matter between people
    regional_uptake_sd: float = 0.06  # sd of a region's grey-matter uptake between people
    # MRI.
    t1_gm: float = 0.6  # T1 intensity of pure grey matter (white matter = 1)
    t1_csf: float = 0.15
    mri_gain_sd: float = 0.1  # sd of the scanner's global gain (log scale)
    bias_field_sd: float = 0.04  # sd of the log bias field
    bias_field_smoothness_mm: float = 50.0
    mri_noise: float = 0.03  # Rician noise sigma, relative to white matter
    mri_fwhm_mm: float = 0.0  # the scanner's resolution: Gaussian blur before the noise (0: none)
    # PET.
    pet_wm_uptake: float = 0.22  # white-matter uptake relative to cerebral grey matter
    pet_cerebellum_uptake: float = 0.72  # cerebellar grey-matter uptake, same scale
    pet_pons_uptake: float = 0.5  # brainstem grey-matter uptake, same scale
    pet_fwhm_mm: float = 7.0
    pet_noise: float = 0.05  # sd of the smoothed noise, relative, at grey-matter uptake
    pet_reference: str = "cerebellum+pons"
    # sd of a smooth log field multiplying the PET (attenuation and scatter corrections), with
    # the MRI bias field's smoothness; drawn from the site stream (SITE_STREAM). 0: none.
    pet_bias_field_sd: float = 0.0
    # Hypometabolism co-localised with atrophy, as in real AD: the fraction of grey-matter
    # uptake lost in the hippocampus and entorhinal cortex at structural severity 1, beyond
    # the partial volume of the grey matter lost there. MRI shows its drive. 0: none.
    medial_temporal_hypometabolism: float = 0.0
    # PET variance that MRI predicts and diagnosis does not (age and head size are the same in
    # every class): the fraction of grey-matter uptake lost per year above REFERENCE_AGE over
    # the frontal lobe (ANTERIOR_Y_MM), and the relative change of cortical uptake (every grey
    # matter but the reference's) per unit of relative head scale (head_scale - 1). 0: none.
    age_frontal_hypometabolism: float = 0.0
    head_scale_uptake: float = 0.0

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first setting that cannot be used."""
        if int(self.subjects) != self.subjects or self.subjects < 1:
            raise ConfigError(f"phantom subjects must be a positive integer, got {self.subjects}")
        if int(self.seed) != self.seed or self.seed < 0:
            raise ConfigError(f"phantom seed must be a non-negative integer, got {self.seed}")
        if not self.resolution_mm > 0:
            raise ConfigError(f"phantom resolution_mm must be positive, got {self.resolution_mm}")
        if not 0.0 <= self.missing_pet <= 1.0:
            raise ConfigError(f"phantom missing_pet must lie in [0, 1], got {self.missing_pet}")
        if self.missing_mechanism not in ("mcar", "class"):
            raise ConfigError(
                f"phantom missing_mechanism must be 'mcar' or 'class', got {self.missing_mechanism!r}"
            )
        fractions = dict(self.class_fractions)
        unknown = sorted(set(fractions) - set(DIAGNOSES))
        if unknown or not fractions:
            raise ConfigError(
                f"phantom class_fractions must name classes among {DIAGNOSES}, got {unknown or 'none'}"
            )
        total = sum(fractions.values())
        if any(f < 0 for f in fractions.values()) or not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ConfigError(f"phantom class_fractions must be non-negative and sum to 1, got {fractions}")
        missing_means = sorted(set(fractions) - set(dict(self.severity_means)))
        if missing_means:
            raise ConfigError(f"phantom severity_means lacks the classes {missing_means}")
        if not -1.0 < self.severity_correlation < 1.0:
            raise ConfigError(
                f"phantom severity_correlation must lie in (-1, 1), got {self.severity_correlation}"
            )
        if self.scenario not in SCENARIOS:
            raise ConfigError(f"phantom scenario must be one of {sorted(SCENARIOS)}, got {self.scenario!r}")
        if self.site not in SITES:
            raise ConfigError(f"phantom site must be one of {sorted(SITES)}, got {self.site!r}")
        if not 0.0 <= self.metabolic_from_structure <= 1.0:
            raise ConfigError(
                f"phantom metabolic_from_structure must lie in [0, 1], got {self.metabolic_from_structure}"
            )
        if not 0.0 < self.labelled_fraction <= 1.0:
            raise ConfigError(f"phantom labelled_fraction must lie in (0, 1], got {self.labelled_fraction}")
        if not self.age_min < self.age_max:
            raise ConfigError(f"phantom age_min must be below age_max, got {self.age_min} and {self.age_max}")
        if not 0.0 <= self.female_fraction <= 1.0:
            raise ConfigError(f"phantom female_fraction must lie in [0, 1], got {self.female_fraction}")
        if self.pet_reference not in REFERENCE_REGIONS:
            raise ConfigError(
                f"phantom pet_reference must be one of {sorted(REFERENCE_REGIONS)}, "
                f"got {self.pet_reference!r}"
            )
        positive = ("deformation_smoothness_mm", "bias_field_smoothness_mm", "pet_fwhm_mm", "t1_gm")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"phantom {name} must be positive, got {getattr(self, name)}")
        non_negative = (
            "age_sd",
            "severity_sd",
            "head_scale_sd",
            "deformation_mm",
            "regional_gm_sd",
            "regional_uptake_sd",
            "mri_gain_sd",
            "bias_field_sd",
            "mri_noise",
            "mri_fwhm_mm",
            "pet_noise",
            "pet_bias_field_sd",
            "pet_wm_uptake",
            "pet_cerebellum_uptake",
            "pet_pons_uptake",
            "t1_csf",
            "medial_temporal_hypometabolism",
            "age_frontal_hypometabolism",
        )
        for name in non_negative:
            if not getattr(self, name) >= 0:
                raise ConfigError(f"phantom {name} must not be negative, got {getattr(self, name)}")

    def to_json(self) -> dict:
        """The settings as plain JSON values (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_json(cls, values: dict) -> PhantomSettings:
        """Settings back from :meth:`to_json` (``phantom.json``), unknown keys refused.

        Lists become tuples again so the result compares equal to, and hashes like, the
        settings that wrote the file.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown phantom settings {unknown}; known: {sorted(names)}")

        def as_tuple(value: Any) -> Any:  # JSON values: lists become tuples, all else is kept
            return tuple(as_tuple(v) for v in value) if isinstance(value, list) else value

        return cls(**{key: as_tuple(value) for key, value in values.items()})


@dataclass
class PhantomCohort:
    """A generated cohort in physical units, before the data layer's [-1, 1] mapping.

    ``pet`` holds every subject's PET, the withheld ones too (the ground truth that
    synthesis is scored against); ``has_pet`` says which a method may see.
    ``pet_expected`` is E[PET | what the MRI shows] (``_simulate_subject``).
    """

    participants: pd.DataFrame
    mri: np.ndarray  # [N, D, H, W] float32, T1-like, white matter about 1
    pet: np.ndarray  # [N, D, H, W] float32, SUVR (reference region mean 1)
    pet_expected: np.ndarray  # [N, D, H, W] float32, SUVR
    has_pet: np.ndarray  # [N] bool
    affine: np.ndarray  # [4, 4] voxel to MNI mm
    brain_mask: np.ndarray  # [D, H, W] bool

    def __len__(self) -> int:
        return len(self.participants)


# --------------------------------------------------------------------------------------
# What every subject at one resolution shares, computed once.


@dataclass
class _Anatomy:
    templates: Templates
    grid: Grid
    mni: np.ndarray  # [D, H, W, 3] voxel centres in mm
    weights: dict[str, np.ndarray]  # per region: [n_centres, D, H, W] Gaussian weights
    low_uptake: dict[str, np.ndarray]  # pons, cerebellum: [D, H, W] wide Gaussian weights
    reference_masks: dict[str, np.ndarray]  # per reference setting: [D, H, W] bool
    centre_mm: np.ndarray  # [3] the brain box centre, where head scaling is anchored
    frontal: np.ndarray  # [D, H, W] the frontal weight of age_frontal_hypometabolism
    cortical: np.ndarray  # [D, H, W] 1 in the cerebrum, 0 in the reference regions (head_scale_uptake)


@functools.lru_cache(maxsize=4)
def _anatomy(resolution_mm: float) -> _Anatomy:
    """The templates, voxel coordinates and region weights at one resolution."""
    templates = load_templates(resolution_mm)
    grid = templates.grid
    mni = grid_mni_coordinates(grid).astype(np.float32)
    weights = {}
    spheres = {}
    low_uptake = {}
    for name, region in REGIONS.items():
        distance2 = np.stack(
            [((mni - np.asarray(c, dtype=np.float32)) ** 2).sum(-1) for c in region.centres_mm]
        )
        weights[name] = np.exp(-distance2 / np.float32(2.0 * region.sigma_mm**2)).astype(np.float32)
        spheres[name] = (distance2 <= region.sigma_mm**2).any(0) & templates.brain_mask
        if name in ("pons", "cerebellum"):
            wide = np.exp(-distance2 / np.float32(2.0 * (LOW_UPTAKE_WIDTH * region.sigma_mm) ** 2))
            low_uptake[name] = wide.max(0).astype(np.float32)
    reference_masks = {
        key: np.logical_or.reduce([spheres[n] for n in names]) for key, names in REFERENCE_REGIONS.items()
    }
    centre = np.array([(lo + hi) / 2 for lo, hi in BRAIN_BOX_MM], dtype=np.float32)
    frontal = 1.0 / (1.0 + np.exp(-(mni[..., 1] - np.float32(ANTERIOR_Y_MM)) / np.float32(ANTERIOR_WIDTH_MM)))
    cortical = np.clip(1.0 - low_uptake["pons"] - low_uptake["cerebellum"], 0.0, 1.0)
    return _Anatomy(
        templates,
        grid,
        mni,
        weights,
        low_uptake,
        reference_masks,
        centre,
        frontal.astype(np.float32),
        cortical.astype(np.float32),
    )


@functools.lru_cache(maxsize=8)
def _lattice(spacing_mm: float, resolution_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """A coarse lattice for smooth random fields, and where the target voxels fall on it.

    Smooth fields are drawn on a lattice whose spacing follows their smoothness, not the
    output resolution, so a subject's deformation and bias field are the same function of
    position at 2, 4 or 8 mm, and drawing them costs little at fine resolutions.
    """
    lattice = reference_grid(spacing_mm)
    target = reference_grid(resolution_mm)
    coordinates = mni_to_voxel(lattice, grid_mni_coordinates(target))
    return lattice.shape, np.moveaxis(coordinates, -1, 0).astype(np.float32)


def _smooth_fields(
    rng: np.random.Generator, count: int, smoothness_mm: float, resolution_mm: float
) -> np.ndarray:
    """``count`` Gaussian random fields of unit sd and Gaussian correlation ``smoothness_mm``.

    Returns [count, D, H, W] on the target grid.
    """
    spacing = min(8.0, smoothness_mm / 2.0)
    shape, coordinates = _lattice(spacing, resolution_mm)
    out = np.empty((count, *coordinates.shape[1:]), dtype=np.float32)
    for k in range(count):
        noise = ndimage.gaussian_filter(rng.standard_normal(shape), smoothness_mm / spacing, mode="reflect")
        noise /= max(float(noise.std()), 1e-12)
        out[k] = ndimage.map_coordinates(noise, coordinates, order=1, mode="nearest")
    return out


@functools.lru_cache(maxsize=8)
def _smoothed_noise_sd(sigma_voxels: float) -> float:
    """The sd of white unit noise after the PET kernel, to rescale smoothed noise to 1."""
    radius = int(4.0 * sigma_voxels + 0.5)
    impulse = np.zeros(2 * radius + 1)
    impulse[radius] = 1.0
    kernel = ndimage.gaussian_filter1d(impulse, sigma_voxels, truncate=4.0)
    return float(np.sqrt((kernel**2).sum()) ** 3)


# --------------------------------------------------------------------------------------
# Cohort-level assignments: diagnoses and which PET is withheld.


def _block_size(fractions: list[float]) -> int:
    """The smallest block (at most 1000) in which every class fraction is a whole count."""
    for size in range(1, 1001):
        if all(abs(f * size - round(f * size)) < 1e-6 for f in fractions):
            return size
    return 100


def _block_counts(fractions: list[float], size: int) -> list[int]:
    """Whole counts per class summing to ``size``, by largest remainder."""
    raw = [f * size for f in fractions]
    counts = [int(math.floor(r)) for r in raw]
    order = sorted(range(len(raw)), key=lambda k: raw[k] - counts[k], reverse=True)
    for k in order[: size - sum(counts)]:
        counts[k] += 1
    return counts


def assign_diagnoses(settings: PhantomSettings, n: int) -> list[str]:
    """Diagnoses by permuted blocks: exact class fractions in every block, random order.

    Block randomisation (as in clinical trials) keeps the fractions exact at every block
    boundary, so small cohorts stay balanced, and block ``b`` depends only on the seed, so
    subject ``i``'s diagnosis does not depend on the cohort's size.
    """
    classes = [c for c, _ in settings.class_fractions]
    fractions = [float(f) for _, f in settings.class_fractions]
    size = _block_size(fractions)
    block = [c for c, k in zip(classes, _block_counts(fractions, size), strict=True) for _ in range(k)]
    out: list[str] = []
    for b in range(math.ceil(n / size)):
        rng = np.random.default_rng(np.random.SeedSequence(settings.seed, spawn_key=(1, b)))
        out.extend(block[k] for k in rng.permutation(size))
    return out[:n]


def missing_probabilities(settings: PhantomSettings) -> dict[str, float]:
    """Each class's probability of missing PET under the settings' mechanism.

    "mcar": the same ``missing_pet`` in every class. "class": the log-odds rise by
    ``missing_class_log_odds`` per step along CN, sMCI, pMCI, AD, and the intercept is
    solved (bisection) so the class-weighted mean is still ``missing_pet``.
    """
    fractions = dict(settings.class_fractions)
    p = float(settings.missing_pet)
    if settings.missing_mechanism == "mcar" or p in (0.0, 1.0):
        return {c: p for c in fractions}
    steps = {c: float(DIAGNOSES.index(c)) for c in fractions}
    slope = float(settings.missing_class_log_odds)

    def mean_missing(intercept: float) -> float:
        return sum(f / (1.0 + math.exp(-(intercept + slope * steps[c]))) for c, f in fractions.items())

    low, high = -50.0, 50.0
    for _ in range(200):
        mid = (low + high) / 2
        if mean_missing(mid) < p:
            low = mid
        else:
            high = mid
    intercept = (low + high) / 2
    return {c: 1.0 / (1.0 + math.exp(-(intercept + slope * steps[c]))) for c in fractions}


def _golden_flags(
    probabilities: dict[str, float], seed: int, stream: int, diagnoses: list[str]
) -> np.ndarray:
    """True where ``frac(offset + k * 0.618...)`` falls below the class's probability.

    ``k`` counts the subjects of a class; the offsets come from the seed's ``stream``.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))
    offsets = {c: float(u) for c, u in zip(DIAGNOSES, rng.random(len(DIAGNOSES)), strict=True)}
    seen = {c: 0 for c in DIAGNOSES}
    flags = np.zeros(len(diagnoses), dtype=bool)
    for i, c in enumerate(diagnoses):
        u = (offsets[c] + seen[c] * GOLDEN_STEP) % 1.0
        seen[c] += 1
        flags[i] = u < probabilities[c]
    return flags


def assign_labelled(settings: PhantomSettings, diagnoses: list[str]) -> np.ndarray:
    """Which subjects' diagnoses are known: ``labelled_fraction`` of each class.

    The same golden-ratio sequence as missing PET, from its own seed stream, so every
    class keeps its fraction at any size and the other draws are not reshuffled.
    """
    fraction = float(settings.labelled_fraction)
    return _golden_flags({c: fraction for c in DIAGNOSES}, settings.seed, 3, diagnoses)


def assign_has_pet(settings: PhantomSettings, diagnoses: list[str]) -> np.ndarray:
    """Which subjects keep their PET: a golden-ratio sequence within each class.

    The k-th subject of a class misses PET when ``frac(offset + k * 0.618...)`` falls
    below the class's probability. That low-discrepancy sequence keeps every class's
    missing fraction within a subject or two of its target for any cohort size (random
    draws would not, at ten subjects), the seeded offsets make it random, and the k-th
    subject of a class is the same whatever the cohort's size.
    """
    probabilities = missing_probabilities(settings)
    return ~_golden_flags({c: probabilities.get(c, 0.0) for c in DIAGNOSES}, settings.seed, 2, diagnoses)


# --------------------------------------------------------------------------------------
# One subject.


@dataclass
class PhantomSubject:
    """One simulated subject: its participants row, MRI, PET and E[PET | MRI] (float32, physical units)."""

    row: dict
    mri: np.ndarray
    pet: np.ndarray
    pet_expected: np.ndarray


def _truncated_normal(rng: np.random.Generator, mean: float, sd: float, low: float, high: float) -> float:
    if sd == 0:
        return float(np.clip(mean, low, high))
    for _ in range(1000):
        value = rng.normal(mean, sd)
        if low <= value <= high:
            return float(value)
    return float(np.clip(mean, low, high))


def _region_map(weights: np.ndarray, amounts: np.ndarray) -> np.ndarray:
    """Sum over a region's centres of weight times that centre's amount.

    A plain loop over the one or two centres rather than a tensordot, which would call
    a multi-threaded BLAS for no gain on a shared machine.
    """
    out = np.zeros(weights.shape[1:], dtype=np.float32)
    for weight, amount in zip(weights, amounts, strict=True):
        out += np.float32(amount) * weight
    return out


def expected_metabolic_severity(settings: PhantomSettings, severity_structural: float) -> float:
    """E[metabolic severity | structural severity] under the cohort's class mixture.

    Within class c the severities are bivariate normal with mean ``mu_c`` each, sd ``sd``
    and correlation ``rho``, so E[metabolic | structural s, c] = mu_c + rho (s - mu_c). The
    class is hidden: P(c | s) is proportional to the class fraction times the normal density
    of s about mu_c. Nothing else MRI shows (age, sex, anatomy, regional deviations) depends
    on the class, so conditioning on it adds nothing. With sd 0 both severities are the
    class mean, and the structural one is the answer.
    """
    if settings.severity_sd == 0:
        return float(severity_structural)
    means = dict(settings.severity_means)
    classes = [(c, float(f)) for c, f in settings.class_fractions if f > 0]
    centres = np.array([float(means[c]) for c, _ in classes])
    log_weights = np.log([f for _, f in classes]) + stats.norm.logpdf(
        severity_structural, loc=centres, scale=settings.severity_sd
    )
    posterior = np.exp(log_weights - special.logsumexp(log_weights))
    rho = settings.severity_correlation
    return float(np.sum(posterior * (centres + rho * (severity_structural - centres))))


def _visible_uptake_loss(
    settings: PhantomSettings, anatomy: _Anatomy, severity_structural: float, years: float, head_scale: float
) -> np.ndarray | None:
    """The uptake loss that MRI's latents fix (template space), or None where every such knob is 0.

    Medial temporal hypometabolism follows the structural severity at the atrophied centres;
    the frontal loss follows age, the cortical change head size. None of them draws.
    """
    s = settings
    knobs = (s.medial_temporal_hypometabolism, s.age_frontal_hypometabolism, s.head_scale_uptake)
    if not any(knobs):
        return None
    loss = np.float32(s.age_frontal_hypometabolism * years) * anatomy.frontal
    loss -= np.float32(s.head_scale_uptake * (head_scale - 1.0)) * anatomy.cortical
    for name in ("hippocampus", "entorhinal"):
        n = anatomy.weights[name].shape[0]
        amount = s.medial_temporal_hypometabolism * severity_structural
        loss += _region_map(anatomy.weights[name], np.full(n, amount))
    return loss


def _simulate_subject(
    settings: PhantomSettings, anatomy: _Anatomy, index: int, diagnosis: str
) -> PhantomSubject:
    """Draw subject ``index``: demographics, severities, anatomy, then its MRI, PET and E[PET | MRI].

    E[PET | MRI], the PET a perfect generator could produce, is rendered from the same draws:
    what MRI shows stays (age, sex, head scale, ventricles, deformation, structural severity,
    regional grey-matter deviations, the uptake terms they fix) and each PET-only term becomes
    its expectation given that. The metabolic severity becomes
    :func:`expected_metabolic_severity`, mixed with the structural pattern exactly as the PET
    mixes it under ``metabolic_from_structure``; the regional uptake deviations and the
    counting noise, of mean 0, become 0; the PET bias field becomes its mean, a constant the
    SUVR divides out. Blur and SUVR are the PET's, the reference mean read from the expected
    PET itself. Exact where the clips of the uptake loss are inactive (they are at every
    shipped strength) and to first order in the SUVR ratio; with every PET-only term off it is
    the PET itself. It adds no draw, so every other output is the same with or without it.
    """
    s = settings
    rng = np.random.default_rng(np.random.SeedSequence(s.seed, spawn_key=(0, index)))
    tpl = anatomy.templates
    w = anatomy.weights
    resolution = anatomy.grid.resolution_mm

    # Demographics and latent severities. Everything is drawn in a fixed order, whatever
    # the settings, so changing one strength does not reshuffle the other draws.
    sex = "F" if rng.random() < s.female_fraction else "M"
    age = round(_truncated_normal(rng, s.age_mean, s.age_sd, s.age_min, s.age_max), 1)
    sex_scale = (0.5 if sex == "M" else -0.5) * s.head_scale_sex
    head_scale = 1.0 + sex_scale + s.head_scale_sd * rng.standard_normal()
    head_scale = float(np.clip(head_scale, 0.8, 1.2))
    mean = float(dict(s.severity_means)[diagnosis])
    rho = s.severity_correlation
    z1, z2 = rng.standard_normal(2)
    severity_structural = mean + s.severity_sd * z1
    severity_metabolic = mean + s.severity_sd * (rho * z1 + math.sqrt(1.0 - rho**2) * z2)
    years = age - REFERENCE_AGE

    # Grey matter in template space: disease, ageing and individual variation per centre.
    gm_loss = np.full(anatomy.grid.shape, s.age_gm_loss * years, dtype=np.float32)
    strengths = {
        "hippocampus": s.hippocampus_atrophy,
        "entorhinal": s.entorhinal_atrophy,
        "inferior_temporal": s.temporal_atrophy,
    }
    deviations = 0.0  # the regional atrophy beyond the severity, summed over centres
    strength_sum = 0.0
    for name in ATROPHY_REGIONS:
        n = w[name].shape[0]
        deviation = np.asarray(s.regional_gm_sd * rng.standard_normal(n))
        amounts = strengths[name] * severity_structural + deviation
        deviations += float(deviation.sum())
        strength_sum += n * strengths[name]
        if name in ("hippocampus", "entorhinal"):
            amounts = amounts + s.age_hippocampus_loss * years
        gm_loss += _region_map(w[name], amounts)
    gm_loss = np.clip(gm_loss, -0.5, 0.9)
    lost = tpl.gm * gm_loss
    lost = np.maximum(lost, -tpl.csf)  # grey matter can only grow into CSF
    gm = tpl.gm - lost
    csf = tpl.csf + lost  # atrophied tissue leaves CSF behind (sulci, temporal horn)

    # Uptake in template space, so the hypometabolic pattern moves with the anatomy.
    hypo_strengths = {
        "posterior_cingulate": s.cingulate_hypometabolism,
        "precuneus": s.precuneus_hypometabolism,
        "angular": s.angular_hypometabolism,
    }
    # The drive of the hypometabolism: the metabolic severity, mixed with the structural
    # pattern MRI shows (severity plus regional deviations, in severity units) when
    # metabolic_from_structure > 0. At 0 the drive is the metabolic severity itself. The
    # expected PET's drive mixes the metabolic severity's expectation given the structural
    # one (expected_metabolic_severity) with the same pattern.
    mix = float(s.metabolic_from_structure)
    expected_drive = expected_metabolic_severity(s, severity_structural)
    if mix > 0.0:
        pattern = severity_structural + (deviations / strength_sum if strength_sum > 0 else 0.0)
        severity_metabolic = (1.0 - mix) * severity_metabolic + mix * pattern
        expected_drive = (1.0 - mix) * expected_drive + mix * pattern
    visible_loss = _visible_uptake_loss(s, anatomy, severity_structural, years, head_scale)
    uptake_loss = np.zeros(anatomy.grid.shape, dtype=np.float32)
    expected_loss = np.zeros(anatomy.grid.shape, dtype=np.float32)
    for name in HYPOMETABOLISM_REGIONS:
        n = w[name].shape[0]
        amounts = hypo_strengths[name] * severity_metabolic + s.regional_uptake_sd * rng.standard_normal(n)
        uptake_loss += _region_map(w[name], amounts)
        expected_loss += _region_map(w[name], np.full(n, hypo_strengths[name] * expected_drive))
    if visible_loss is not None:
        uptake_loss += visible_loss
        expected_loss += visible_loss
    base = 1.0 - (1.0 - s.pet_pons_uptake) * anatomy.low_uptake["pons"]
    base = base - (1.0 - s.pet_cerebellum_uptake) * anatomy.low_uptake["cerebellum"]

    def activity_of(loss: np.ndarray) -> np.ndarray:
        loss = np.clip(loss, -0.5, 0.8)
        return gm * np.maximum(base, 0.1) * (1.0 - loss) + s.pet_wm_uptake * tpl.wm

    activity = activity_of(uptake_loss)
    expected_activity = activity_of(expected_loss)

    # Where each output voxel samples the template: head scale about the brain centre,
    # ventricle enlargement (a radial stretch that grows what sits at the centres), and a
    # smooth random displacement, the subject's individual anatomy.
    mni = anatomy.mni
    position = anatomy.centre_mm + (mni - anatomy.centre_mm) / np.float32(head_scale)
    stretch = s.ventricle_expansion * severity_structural + s.age_ventricle_expansion * years
    stretch = float(np.clip(stretch, -0.3, 0.6))
    for k, centre in enumerate(REGIONS["ventricles"].centres_mm):
        offset = mni - np.asarray(centre, dtype=np.float32)
        position -= np.float32(stretch) * offset * w["ventricles"][k][..., None]
    displacement = _smooth_fields(rng, 3, s.deformation_smoothness_mm, resolution)
    position += np.float32(s.deformation_mm) * np.moveaxis(displacement, 0, -1)
    coordinates = np.moveaxis(mni_to_voxel(anatomy.grid, position), -1, 0).astype(np.float32)

    def warp(volume: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(volume, coordinates, order=1, mode="constant", cval=0.0)

    gm_w, wm_w, csf_w, activity_w = warp(gm), warp(tpl.wm), warp(csf), warp(activity)
    expected_activity_w = warp(expected_activity)

    # MRI: tissue contrast, scanner gain, smooth bias field, the scanner's resolution, Rician noise.
    gain = math.exp(s.mri_gain_sd * rng.standard_normal())
    log_bias = _smooth_fields(rng, 1, s.bias_field_smoothness_mm, resolution)[0]
    bias = np.exp(np.float32(s.bias_field_sd) * log_bias)
    signal = gain * bias * (wm_w + s.t1_gm * gm_w + s.t1_csf * csf_w)
    if s.mri_fwhm_mm > 0:
        sigma_mri = s.mri_fwhm_mm / FWHM_PER_SIGMA / resolution
        signal = ndimage.gaussian_filter(signal, sigma_mri, mode="constant", truncate=4.0)
    sigma = np.float32(s.mri_noise * gain)
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    mri = np.sqrt(real * real + imaginary * imaginary)

    # PET: scanner resolution, counting noise (sd grows with the square root of uptake,
    # correlated at the kernel's scale as reconstructed PET is), then SUVR. The expected PET
    # has the same blur and SUVR, no noise and no bias field (the docstring).
    sigma_voxels = s.pet_fwhm_mm / FWHM_PER_SIGMA / resolution
    blurred = ndimage.gaussian_filter(activity_w, sigma_voxels, mode="constant", truncate=4.0)
    expected = ndimage.gaussian_filter(expected_activity_w, sigma_voxels, mode="constant", truncate=4.0)
    white = rng.standard_normal(blurred.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(white, sigma_voxels, mode="constant", truncate=4.0)
    noise /= np.float32(_smoothed_noise_sd(sigma_voxels))
    pet = np.maximum(blurred + np.float32(s.pet_noise) * np.sqrt(np.maximum(blurred, 0.0)) * noise, 0.0)
    if s.pet_bias_field_sd > 0:  # before the SUVR, which divides out only its mean in the reference
        site = np.random.default_rng(np.random.SeedSequence(s.seed, spawn_key=(SITE_STREAM, index)))
        log_pet_bias = _smooth_fields(site, 1, s.bias_field_smoothness_mm, resolution)[0]
        pet = pet * np.exp(np.float32(s.pet_bias_field_sd) * log_pet_bias)
    reference_mask = anatomy.reference_masks[s.pet_reference]
    reference = float(pet[reference_mask].mean())
    pet = pet / np.float32(max(reference, 1e-6))
    expected = np.maximum(expected, 0.0)
    expected = expected / np.float32(max(float(expected[reference_mask].mean()), 1e-6))

    row = {
        "participant_id": f"sub-{index + 1:04d}",
        "diagnosis": diagnosis,
        "age": age,
        "sex": sex,
        "severity_structural": float(severity_structural),
        "severity_metabolic": float(severity_metabolic),
        "head_scale": head_scale,
    }
    return PhantomSubject(row, mri.astype(np.float32), pet.astype(np.float32), expected.astype(np.float32))


# --------------------------------------------------------------------------------------
# Public entry points.


@dataclass
class PhantomPlan:
    """A phantom cohort before its subjects are simulated: what they share, who has PET.

    ``subjects()`` simulates them one at a time, so that a caller can convert and store
    each without holding the whole cohort in float32 (1000 subjects at 2 mm take 4.5 GB
    per modality in float32). Deterministic in the settings, like ``generate_phantom``.
    """

    settings: PhantomSettings
    anatomy: _Anatomy
    diagnoses: list[str]
    has_pet: np.ndarray  # [N] bool

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.anatomy.grid.shape

    @property
    def affine(self) -> np.ndarray:
        return self.anatomy.grid.affine.copy()

    @property
    def brain_mask(self) -> np.ndarray:
        return np.array(self.anatomy.templates.brain_mask, dtype=bool)

    def __len__(self) -> int:
        return len(self.diagnoses)

    def subjects(self, progress: Progress | None = None, workers: int = 1) -> Iterator[PhantomSubject]:
        """Every subject in order; ``progress`` wraps the loop as ``progress(range(n), n, "phantom")``.

        ``workers`` threads simulate subjects side by side. SciPy's filters and interpolation
        and NumPy's array work release the GIL, so threads use the cores without copying the
        anatomy into processes; every subject draws from its own stream, so the cohort is the
        same bit for bit whatever ``workers`` is. At most ``2 * workers`` subjects are
        simulated ahead of the one the caller holds, which bounds memory at 2 mm.
        """
        n = len(self)
        indices: Iterable = range(n) if progress is None else progress(range(n), n, "phantom")
        if workers <= 1:
            for i in indices:
                yield self._simulate(i)
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="phantom") as pool:
            ahead: deque[Future[PhantomSubject]] = deque()
            submitted = 0
            for _ in indices:
                while submitted < n and len(ahead) < 2 * workers:
                    ahead.append(pool.submit(self._simulate, submitted))
                    submitted += 1
                yield ahead.popleft().result()

    def _simulate(self, index: int) -> PhantomSubject:
        return _simulate_subject(self.settings, self.anatomy, index, self.diagnoses[index])

    def participants(self, rows: list[dict]) -> pd.DataFrame:
        """The participants table of the simulated subjects' rows, ``has_pet`` included."""
        participants = pd.DataFrame(rows)
        participants.insert(4, "has_pet", self.has_pet)
        participants["labelled"] = assign_labelled(self.settings, self.diagnoses)
        return participants[list(PARTICIPANT_COLUMNS)]


def phantom_settings(options: Mapping[str, Any] | None = None, **cohort: Any) -> PhantomSettings:
    """Settings from a scenario, a site and explicit options (``data.phantom.*``), then cohort settings.

    The scenario (``options["scenario"]``, default "default") sets its values from
    :data:`SCENARIOS`, the site (``options["site"]``) its own from :data:`SITES`; explicit
    options override both; ``cohort`` gives what ``[data]``
    holds (subjects, resolution_mm, missing_pet, missing_mechanism, seed). Unknown names,
    and cohort settings given as options, are refused with the known names. Not validated
    for ranges here: :meth:`PhantomSettings.validate` does that.
    """
    options = dict(options or {})
    names = {f.name for f in dataclasses.fields(PhantomSettings)}
    unknown = sorted(set(options) - names)
    if unknown:
        known = sorted(names - set(COHORT_SETTINGS))
        raise ConfigError(f"unknown phantom setting(s) {unknown}; known: {', '.join(known)}")
    owned = sorted(set(options) & set(COHORT_SETTINGS))
    if owned:
        where = ", ".join(COHORT_SETTINGS[name] for name in owned)
        raise ConfigError(f"phantom setting(s) {owned} are set through {where}, not data.phantom.*")
    scenario = options.get("scenario", "default")
    if scenario not in SCENARIOS:
        raise ConfigError(f"phantom scenario must be one of {sorted(SCENARIOS)}, got {scenario!r}")
    site = options.get("site", "default")
    if site not in SITES:
        raise ConfigError(f"phantom site must be one of {sorted(SITES)}, got {site!r}")

    def as_tuple(value: Any) -> Any:  # TOML arrays become tuples, so settings stay hashable
        return tuple(as_tuple(v) for v in value) if isinstance(value, list | tuple) else value

    values = {**SCENARIOS[scenario], **SITES[site], **options, **cohort}
    return PhantomSettings(**{key: as_tuple(value) for key, value in values.items()})


def plan_phantom(settings: PhantomSettings) -> PhantomPlan:
    """Validate the settings, build the shared anatomy and draw diagnoses and missing PET."""
    settings.validate()
    anatomy = _anatomy(float(settings.resolution_mm))
    diagnoses = assign_diagnoses(settings, int(settings.subjects))
    return PhantomPlan(settings, anatomy, diagnoses, assign_has_pet(settings, diagnoses))


def generate_phantom(
    settings: PhantomSettings, progress: Progress | None = None, workers: int = 1
) -> PhantomCohort:
    """Generate the phantom cohort the settings describe, in memory; deterministic in the settings.

    ``progress``, if given, wraps the per-subject loop as ``progress(range(n), n,
    "phantom")`` (a progress bar, say); ``workers`` threads simulate subjects side by side
    (:meth:`PhantomPlan.subjects`), with the same result.
    """
    plan = plan_phantom(settings)
    mri = np.empty((len(plan), *plan.shape), dtype=np.float32)
    pet = np.empty_like(mri)
    pet_expected = np.empty_like(mri)
    rows = []
    for i, subject in enumerate(plan.subjects(progress, workers)):
        mri[i] = subject.mri
        pet[i] = subject.pet
        pet_expected[i] = subject.pet_expected
        rows.append(subject.row)
    return PhantomCohort(
        participants=plan.participants(rows),
        mri=mri,
        pet=pet,
        pet_expected=pet_expected,
        has_pet=plan.has_pet,
        affine=plan.affine,
        brain_mask=plan.brain_mask,
    )


def _mni_image(volume: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    """A float32 NIfTI with qform and sform both set to the grid affine, code MNI."""
    image = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), affine)
    image.set_qform(affine, code=4)
    image.set_sform(affine, code=4)
    image.header.set_xyzt_units("mm")
    return image


def write_phantom(
    cohort: PhantomCohort, settings: PhantomSettings, out_dir: Path, progress: Progress | None = None
) -> Path:
    """Write the cohort as NIfTI files, ``participants.tsv`` and ``phantom.json``.

    Layout: ``sub-NNNN/sub-NNNN_T1w.nii.gz``; ``sub-NNNN/sub-NNNN_pet.nii.gz`` where the
    PET is available, ``sub-NNNN/sub-NNNN_desc-hidden_pet.nii.gz`` (the ground truth for
    scoring synthesis) where it is withheld, and ``sub-NNNN/sub-NNNN_desc-expected_pet.nii.gz``
    (E[PET | MRI]) for every subject. The TSV doubles as a manifest: its ``mri``, ``pet``,
    ``pet_truth`` and ``pet_expected`` columns are paths relative to ``out_dir``, and ``pet`` is
    empty where PET is withheld. Returns the TSV's path. The folder must be new or empty (a
    BIDS dataset's own ``participants.tsv`` is never replaced), and appears only once complete.
    """
    out_dir = Path(out_dir)
    with staged_folder(out_dir, "Phantom output folder") as staging:
        _write_phantom_files(cohort, settings, staging, progress)
    return out_dir / "participants.tsv"


def _write_phantom_files(
    cohort: PhantomCohort, settings: PhantomSettings, out_dir: Path, progress: Progress | None
) -> None:
    table = cohort.participants.copy()
    n = len(table)
    mri_paths, pet_paths, truth_paths, expected_paths = [], [], [], []
    indices: Iterable = range(n)
    if progress is not None:
        indices = progress(indices, n, "write")
    for i in indices:
        pid = str(table.participant_id.iloc[i])
        folder = out_dir / pid
        folder.mkdir(exist_ok=True)
        mri_rel = f"{pid}/{pid}_T1w.nii.gz"
        save_nifti(_mni_image(cohort.mri[i], cohort.affine), out_dir / mri_rel)
        if cohort.has_pet[i]:
            pet_rel = f"{pid}/{pid}_pet.nii.gz"
            truth_rel = pet_rel
        else:
            pet_rel = ""
            truth_rel = f"{pid}/{pid}_desc-hidden_pet.nii.gz"
        save_nifti(_mni_image(cohort.pet[i], cohort.affine), out_dir / truth_rel)
        expected_rel = f"{pid}/{pid}_desc-expected_pet.nii.gz"
        save_nifti(_mni_image(cohort.pet_expected[i], cohort.affine), out_dir / expected_rel)
        mri_paths.append(mri_rel)
        pet_paths.append(pet_rel)
        truth_paths.append(truth_rel)
        expected_paths.append(expected_rel)
    table["has_pet"] = np.asarray(cohort.has_pet, dtype=bool)
    table["mri"] = mri_paths
    table["pet"] = pet_paths
    table["pet_truth"] = truth_paths
    table["pet_expected"] = expected_paths
    tsv = out_dir / "participants.tsv"
    table[list(TSV_COLUMNS)].to_csv(tsv, sep="\t", index=False, float_format="%.6g")
    meta = {
        "format_version": FORMAT_VERSION,
        "generator": "cdsf_bench.data.phantom",
        "settings": settings.to_json(),
        "shape": list(cohort.mri.shape[1:]),
        "affine": np.asarray(cohort.affine).tolist(),
        "subjects": n,
        "subjects_with_pet": int(np.sum(cohort.has_pet)),
    }
    (out_dir / "phantom.json").write_text(json.dumps(meta, indent=2) + "\n")
