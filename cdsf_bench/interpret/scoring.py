"""Attribution maps scored against the disease the phantom planted.

The phantom knows where its disease signal is (``cdsf_bench.data.phantom``): atrophy in the
hippocampus, entorhinal and inferior temporal cortex and ventricular expansion on MRI,
hypometabolism in the posterior cingulate, precuneus and angular gyri on PET, and, where
``medial_temporal_hypometabolism`` is set, in the hippocampus and entorhinal cortex too. The
truth of a run is read from its own phantom settings (scenario and explicit options): a
region whose strength is 0 there is planted nowhere and is not part of it. Each region is
the sphere of ``sigma_mm`` around its MNI centres (``regions.region_masks``), within the
brain mask.

Two scores per map, both within the brain mask:

- ``share``: the positive attribution inside the planted regions over all positive
  attribution (NaN for a map with none). Chance is the regions' share of brain voxels: the
  share of a map that spreads its attribution evenly.
- ``hit``: the pointing game, whether the map's largest value lies in the planted regions
  dilated by one voxel (6-connected), so that a maximum on a region's border at 4-8 mm
  counts. Chance is the dilated regions' share of brain voxels.

A random map (independent standard normal voxels, drawn from :data:`RANDOM_SEED`) is scored
beside every map, the empirical chance level of both scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cdsf_bench.data.phantom import PhantomSettings
from cdsf_bench.data.regions import ATROPHY_REGIONS, HYPOMETABOLISM_REGIONS, region_masks
from cdsf_bench.interpret.attribution import COMBINED
from cdsf_bench.interpret.capture import MRI, PET

#: the two kinds of planted truth and the channel whose maps are scored against each
ATROPHY = "atrophy"
HYPOMETABOLISM = "hypometabolism"
TRUTH_OF_CHANNEL = {MRI: (ATROPHY,), PET: (HYPOMETABOLISM,), COMBINED: (ATROPHY, HYPOMETABOLISM)}
#: the phantom setting that plants each MRI region
ATROPHY_STRENGTHS = {
    "hippocampus": "hippocampus_atrophy",
    "entorhinal": "entorhinal_atrophy",
    "inferior_temporal": "temporal_atrophy",
    "ventricles": "ventricle_expansion",
}
#: the phantom setting that plants each PET region (medial temporal: both of its regions)
HYPOMETABOLISM_STRENGTHS = {
    "posterior_cingulate": "cingulate_hypometabolism",
    "precuneus": "precuneus_hypometabolism",
    "angular": "angular_hypometabolism",
    "hippocampus": "medial_temporal_hypometabolism",
    "entorhinal": "medial_temporal_hypometabolism",
}
#: the seed of the random maps
RANDOM_SEED = 0


@dataclass(frozen=True)
class PlantedTruth:
    """The planted regions of one kind on the cohort's grid, and the brain they lie in."""

    regions: tuple[str, ...]
    mask: np.ndarray  # [D, H, W] bool, within the brain
    dilated: np.ndarray  # [D, H, W] bool, the mask dilated by one voxel, within the brain
    brain: np.ndarray  # [D, H, W] bool

    @property
    def chance_share(self) -> float:
        return float(self.mask.sum() / self.brain.sum())

    @property
    def chance_hit(self) -> float:
        return float(self.dilated.sum() / self.brain.sum())


def planted_regions(phantom: PhantomSettings) -> dict[str, tuple[str, ...]]:
    """The regions each kind of truth plants under the phantom settings ``phantom``."""
    atrophy = tuple(
        name for name in (*ATROPHY_REGIONS, "ventricles") if getattr(phantom, ATROPHY_STRENGTHS[name]) > 0
    )
    hypo = tuple(
        name
        for name in (*HYPOMETABOLISM_REGIONS, "hippocampus", "entorhinal")
        if getattr(phantom, HYPOMETABOLISM_STRENGTHS[name]) > 0
    )
    return {ATROPHY: atrophy, HYPOMETABOLISM: hypo}


def planted_truth(
    phantom: PhantomSettings, affine: np.ndarray, brain_mask: np.ndarray
) -> dict[str, PlantedTruth]:
    """Each kind of truth the phantom plants, as masks on the grid of ``affine``; kinds with no
    region planted are left out."""
    brain = np.asarray(brain_mask, dtype=bool)
    truths = {}
    for kind, regions in planted_regions(phantom).items():
        if not regions:
            continue
        masks = region_masks(affine, brain.shape, brain, regions)
        mask = np.logical_or.reduce(list(masks.values()))
        dilated = ndimage.binary_dilation(mask) & brain
        truths[kind] = PlantedTruth(regions, mask, dilated, brain)
    return truths


def positive_share(volume: np.ndarray, truth: PlantedTruth) -> float:
    """The positive attribution inside the planted regions over the brain's; NaN without any."""
    positive = np.clip(volume, 0.0, None)
    total = float(positive[truth.brain].sum())
    return float(positive[truth.mask].sum()) / total if total > 0 else float("nan")


def pointing_hit(volume: np.ndarray, truth: PlantedTruth) -> bool:
    """Whether the map's largest brain voxel lies in the dilated planted regions."""
    inside = np.flatnonzero(truth.brain)
    peak = inside[int(np.argmax(volume.reshape(-1)[inside]))]
    return bool(truth.dilated.reshape(-1)[peak])


def score(volume: np.ndarray, truth: PlantedTruth) -> dict[str, float]:
    """The share and the pointing-game hit of one map."""
    return {"share": positive_share(volume, truth), "hit": float(pointing_hit(volume, truth))}


def random_map(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A map of independent standard normal voxels: the empirical chance level."""
    return rng.standard_normal(shape).astype(np.float32)
