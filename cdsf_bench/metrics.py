"""Diagnosis and synthesis metrics, computed the same way for every method.

Diagnosis metrics come from scikit-learn. The AUC's 95% interval is a percentile bootstrap
over test subjects (stratified resampling, so every replicate has both classes).
Synthesis metrics are computed on PET mapped to [0, 1] (the pipeline's [-1, 1] scale
shifted and halved; 1 corresponds to ``data.pet_suvr_max`` SUVR): MAE and PSNR inside the
brain mask, SSIM in 3D by scikit-image over the brain's bounding box.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.metrics import structural_similarity
from sklearn import metrics as skm

DIAGNOSIS_KEYS = ("acc", "bacc", "sen", "spe", "f1", "auc", "auc_ci_low", "auc_ci_high", "mcc")
SYNTHESIS_KEYS = ("psnr", "ssim", "mae")
#: whether a larger value of a metric is better (selection, regression, reports)
HIGHER_IS_BETTER = {
    **dict.fromkeys(DIAGNOSIS_KEYS, True),
    "psnr": True,
    "ssim": True,
    "mae": False,
}


def diagnosis_metrics(
    labels: np.ndarray,
    probability: np.ndarray,
    *,
    threshold: float = 0.5,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """ACC, balanced ACC, sensitivity, specificity, F1, AUC with bootstrap CI, MCC."""
    labels = np.asarray(labels, dtype=int)
    probability = np.asarray(probability, dtype=float)
    predicted = (probability >= threshold).astype(int)
    both = len(np.unique(labels)) == 2
    out = {
        "acc": skm.accuracy_score(labels, predicted),
        "bacc": skm.balanced_accuracy_score(labels, predicted) if both else float("nan"),
        "sen": skm.recall_score(labels, predicted, pos_label=1, zero_division=0),
        "spe": skm.recall_score(labels, predicted, pos_label=0, zero_division=0),
        "f1": skm.f1_score(labels, predicted, zero_division=0),
        "auc": skm.roc_auc_score(labels, probability) if both else float("nan"),
        "mcc": skm.matthews_corrcoef(labels, predicted),
    }
    low, high = auc_interval(labels, probability, bootstrap, seed) if both and bootstrap else (math.nan,) * 2
    out["auc_ci_low"], out["auc_ci_high"] = low, high
    return {key: float(out[key]) for key in DIAGNOSIS_KEYS}


def youden_threshold(labels: np.ndarray, probability: np.ndarray) -> float:
    """The operating point that maximises sensitivity + specificity (Youden's J).

    Chosen on validation and applied to test: a model selected for its AUC can rank
    subjects well while its probabilities sit on one side of 0.5, and a fixed 0.5 would
    then report every test subject as one class. 0.5 when validation has one class.
    """
    labels = np.asarray(labels, dtype=int)
    if len(np.unique(labels)) < 2:
        return 0.5
    fpr, tpr, thresholds = skm.roc_curve(labels, probability)
    finite = np.isfinite(thresholds)
    best = np.argmax((tpr - fpr)[finite])
    return float(thresholds[finite][best])


def auc_interval(
    labels: np.ndarray, probability: np.ndarray, replicates: int, seed: int, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC, resampling within each class."""
    rng = np.random.default_rng(seed)
    positives = np.flatnonzero(labels == 1)
    negatives = np.flatnonzero(labels == 0)
    aucs = np.empty(replicates)
    for i in range(replicates):
        rows = np.concatenate([rng.choice(positives, len(positives)), rng.choice(negatives, len(negatives))])
        aucs[i] = skm.roc_auc_score(labels[rows], probability[rows])
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(aucs, [tail, 100 - tail])
    return float(low), float(high)


def to_unit_scale(volume: np.ndarray) -> np.ndarray:
    """Map the pipeline's [-1, 1] intensities to the [0, 1] scale metrics are stated on."""
    return (np.asarray(volume, dtype=np.float32) + 1.0) / 2.0


def synthesis_metrics(
    real: np.ndarray, synthetic: np.ndarray, mask: np.ndarray, *, ssim: bool = True
) -> dict[str, float]:
    """PSNR, SSIM and MAE of one subject's synthetic PET against its real PET.

    Both volumes are in the pipeline's [-1, 1] scale; metrics use [0, 1] (data range 1).
    SSIM, the slow one, can be skipped (NaN) for per-epoch validation.
    """
    real01, synth01 = to_unit_scale(real), to_unit_scale(synthetic)
    mask = np.asarray(mask, dtype=bool)
    error = np.abs(real01 - synth01)[mask]
    mse = float(np.mean(error**2))
    return {
        "psnr": float(10 * np.log10(1.0 / mse)) if mse > 0 else float("inf"),
        "ssim": ssim_3d(real01, synth01, mask) if ssim else float("nan"),
        "mae": float(error.mean()),
    }


def ssim_3d(real01: np.ndarray, synth01: np.ndarray, mask: np.ndarray) -> float:
    """3D SSIM (scikit-image, Gaussian-free 7-voxel window) over the brain's bounding box."""
    box = tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in np.nonzero(mask))
    win = min(7, *(s.stop - s.start for s in box))
    win = win if win % 2 == 1 else win - 1
    return float(structural_similarity(real01[box], synth01[box], data_range=1.0, win_size=max(win, 3)))


def mean_synthesis(per_subject: list[dict[str, float]]) -> dict[str, float] | None:
    """Average synthesis metrics over subjects; None when nothing was synthesised."""
    if not per_subject:
        return None
    return {key: float(np.mean([m[key] for m in per_subject])) for key in SYNTHESIS_KEYS}
