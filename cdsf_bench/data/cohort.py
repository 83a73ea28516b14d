"""The cohort: every subject's preprocessed volumes on the reference grid, and its table."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

#: Diagnoses a cohort may carry, and the two binary tasks built from them.
DIAGNOSES = ("CN", "sMCI", "pMCI", "AD")
TASKS: dict[str, tuple[str, str]] = {"ad_cn": ("CN", "AD"), "pmci_smci": ("sMCI", "pMCI")}


@dataclass(frozen=True)
class DataSettings:
    """How a source reads and preprocesses a cohort (the ``[data]`` config section).

    Everything here is part of the cache key: change any of it and the cache is rebuilt.
    """

    resolution_mm: float = 4.0
    subjects: int = 200  # phantom only
    missing_pet: float = 0.5  # phantom only
    missing_mechanism: str = "mcar"  # phantom only: "mcar" or "class"
    phantom_seed: int = 0  # phantom only: the cohort's seed, independent of the run's seed
    session: str = ""  # CAPS: the session to read (empty: each participant's first)
    tracer: str = "18FFDG"  # CAPS: the PET tracer entity
    suvr_reference: str = ""  # CAPS: the SUVR reference region entity (empty: any)
    pet_suvr_max: float = 2.5  # PET SUVR mapped to +1 (0 SUVR to -1)
    cache_dir: str = ""  # empty: $CDSF_BENCH_CACHE or ~/.cache/cdsf-bench


@dataclass
class Cohort:
    """A preprocessed cohort on one grid, intensities in [-1, 1] (docs/data.md).

    ``participants`` has one row per subject, in the order of the arrays, with at least
    ``participant_id``, ``diagnosis`` and ``has_pet``; an optional ``split`` column
    (train / val / test) is honoured by the splitter. ``pet`` is zero where ``has_pet`` is
    False. ``pet_truth`` holds the real PET of every subject when the source knows it.
    """

    participants: pd.DataFrame
    mri: np.ndarray  # [N, D, H, W] float16
    pet: np.ndarray  # [N, D, H, W] float16
    has_pet: np.ndarray  # [N] bool
    affine: np.ndarray  # [4, 4] voxel to MNI mm
    brain_mask: np.ndarray  # [D, H, W] bool
    pet_truth: np.ndarray | None = None  # [N, D, H, W] float16
    source: str = ""  # what was read, for logs and environment.json
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.participants)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.mri.shape[1:])  # type: ignore[return-value]

    def subset(self, rows: np.ndarray) -> Cohort:
        """The cohort restricted to ``rows`` (for a task's classes), arrays shared where possible."""
        return Cohort(
            participants=self.participants.iloc[rows].reset_index(drop=True),
            mri=self.mri[rows],
            pet=self.pet[rows],
            has_pet=self.has_pet[rows],
            affine=self.affine,
            brain_mask=self.brain_mask,
            pet_truth=None if self.pet_truth is None else self.pet_truth[rows],
            source=self.source,
            extra=self.extra,
        )


def normalise_mri(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Map an MRI to [-1, 1] by its own brain-masked 0.5 and 99.5 percentiles.

    MRI intensities have no physical unit, so each scan is scaled by itself; robust
    percentiles keep a few hot voxels from compressing the rest.
    """
    inside = volume[mask]
    low, high = np.percentile(inside, [0.5, 99.5]) if inside.size else (0.0, 1.0)
    scaled = (volume - low) / max(float(high - low), 1e-6)
    return np.clip(scaled * 2.0 - 1.0, -1.0, 1.0).astype(np.float32)


def normalise_pet(volume: np.ndarray, suvr_max: float) -> np.ndarray:
    """Map a PET in SUVR units to [-1, 1]: 0 to -1, ``suvr_max`` to +1, clipped.

    A fixed map, not a per-scan one, keeps global hypometabolism visible to the models.
    """
    return np.clip(volume / suvr_max * 2.0 - 1.0, -1.0, 1.0).astype(np.float32)
