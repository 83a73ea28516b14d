"""The conventions every cohort follows: its diagnoses, the tasks built on them, intensity scales.

The cohort type itself is part of the plugin contract (``cdsf_bench.interfaces.Cohort``).
"""

from __future__ import annotations

import numpy as np

#: Diagnoses a cohort may carry, and the two binary tasks built from them.
DIAGNOSES = ("CN", "sMCI", "pMCI", "AD")
TASKS: dict[str, tuple[str, str]] = {"ad_cn": ("CN", "AD"), "pmci_smci": ("sMCI", "pMCI")}


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
