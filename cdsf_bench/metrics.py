"""Diagnosis and synthesis metrics, computed the same way for every method.

Diagnosis metrics come from scikit-learn. The AUC's 95% interval is a percentile bootstrap
over test subjects (stratified resampling, so every replicate has both classes), each
replicate's AUC computed as SciPy's Mann-Whitney U over its pairs (the same value).
Synthesis metrics are computed on PET mapped to [0, 1] (the pipeline's [-1, 1] scale
shifted and halved; 1 corresponds to ``data.pet_suvr_max`` SUVR): MAE and PSNR inside the
brain mask, SSIM in 3D by scikit-image over the brain's bounding box. The same scores in
the conventions other papers report (:mod:`cdsf_bench.metric_conventions`: PSNR of the
whole grid on [-1, 1], per axial slice on 0-255, MONAI's MS-SSIM) are added where
``evaluate.peer_psnr`` and ``evaluate.ms_ssim`` ask.

Disease-specific synthesis metrics read the uptake in the hypometabolism regions (posterior
cingulate, precuneus, angular gyri: spheres around their MNI centres, inside the brain) of
every scored test subject, from its synthetic and its real PET, on the same [0, 1] scale
(multiply by ``data.pet_suvr_max`` for SUVR): how far off the regional values are, whether
they rank subjects as the real ones do, and, on a cohort with known latent severities, how
much of PET's own disease information (the metabolic severity beyond the structural one)
the synthetic PET carries.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import stats
from skimage.metrics import structural_similarity
from sklearn import metrics as skm

from cdsf_bench.metric_conventions import CONVENTION_KEYS, convention_metrics

#: Calibration of the predicted probability of the positive class: the Brier score
#: (scikit-learn) and the expected calibration error over ECE_BINS equal-width bins.
CALIBRATION_KEYS = ("brier", "ece")
#: AUC and balanced accuracy on the test subjects with acquired PET and on those without
#: (where imputation methods differ from each other; NaN where a subgroup lacks a class).
SUBGROUP_KEYS = ("auc_with_pet", "bacc_with_pet", "auc_without_pet", "bacc_without_pet")
DIAGNOSIS_KEYS = (
    "acc",
    "bacc",
    "sen",
    "spe",
    "f1",
    "auc",
    "auc_ci_low",
    "auc_ci_high",
    "mcc",
    *CALIBRATION_KEYS,
    *SUBGROUP_KEYS,
)
#: bins of [0, 1] for the expected calibration error: [0, 0.1), [0.1, 0.2), ..., [0.9, 1]
ECE_BINS = 10
SYNTHESIS_KEYS = ("psnr", "ssim", "mae")
#: Disease-specific synthesis metrics (metrics.json "synthesis" section, results.csv):
#: roi_mae, the mean absolute error of regional uptake over subjects and regions; roi_r,
#: Pearson's r across subjects of the synthetic and real meta-region uptake (the regions'
#: mean); pet_specific_r, the partial correlation of the synthetic meta-region's uptake
#: loss with the metabolic severity given the structural one (only where the data source
#: provides the latent severities), and pet_specific_r_real, the same for the real PET: the ceiling.
DISEASE_SYNTHESIS_KEYS = ("roi_mae", "roi_r", "pet_specific_r", "pet_specific_r_real")
#: The per-subject latent columns the PET-specific correlation needs, in the participants
#: table of a data source that knows them; read for scoring only, never for training.
SEVERITY_COLUMNS = ("severity_structural", "severity_metabolic")
#: Fewest subjects for which a correlation is reported (NaN below).
MIN_CORRELATION_SUBJECTS = 4
#: whether a larger value of a metric is better (selection, regression, reports)
HIGHER_IS_BETTER = {
    **dict.fromkeys(DIAGNOSIS_KEYS, True),
    **dict.fromkeys(CALIBRATION_KEYS, False),
    "psnr": True,
    "ssim": True,
    "mae": False,
    **dict.fromkeys(CONVENTION_KEYS, True),
    "roi_mae": False,
    "roi_r": True,
    "pet_specific_r": True,
    "pet_specific_r_real": True,
}
#: The value of a selection metric that a prediction unrelated to the label reaches on average
#: (``train.patience_from``); the synthesis metrics have none.
CHANCE_LEVEL = {"auc": 0.5, "bacc": 0.5, "mcc": 0.0}
#: The metric that breaks a tie in a stage's selection metric. A rank or threshold metric of
#: a few dozen validation subjects saturates (AUC 1.0 is reached early and kept): every later
#: epoch then ties with the first, and keeping the first keeps an undertrained model. The
#: Brier score, a proper score, still tells those epochs apart. Continuous synthesis metrics
#: (MAE, SSIM) do not tie and have none.
SELECTION_TIE_BREAK = {"auc": "brier", "bacc": "brier", "mcc": "brier"}


def diagnosis_metrics(
    labels: np.ndarray,
    probability: np.ndarray,
    *,
    threshold: float = 0.5,
    bootstrap: int = 1000,
    seed: int = 0,
    has_pet: np.ndarray | None = None,
) -> dict[str, float]:
    """ACC, balanced ACC, sensitivity, specificity, F1, AUC with bootstrap CI, MCC, the
    calibration (Brier score, ECE) and, given ``has_pet`` (acquired PET per subject), AUC
    and balanced accuracy of the subjects with and without acquired PET (NaN without it)."""
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
    out["brier"] = skm.brier_score_loss(labels, probability, pos_label=1)
    out["ece"] = expected_calibration_error(labels, probability)
    out.update(subgroup_metrics(labels, probability, predicted, has_pet))
    return {key: float(out[key]) for key in DIAGNOSIS_KEYS}


def expected_calibration_error(labels: np.ndarray, probability: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of the probability of the positive class.

    The unit interval is cut into ``bins`` equal-width bins ([0, 1/bins), ..., the last one
    closed at 1; :func:`reliability_table` lists them); in each non-empty bin the mean
    predicted probability is compared with the fraction of positives, and the absolute gaps
    are averaged with the bins' shares of the subjects as weights:
    ECE = sum_b (n_b / n) |mean(y in b) - mean(p in b)|. 0 for a perfectly calibrated model;
    it depends on the binning, hence the fixed bins.
    """
    labels = np.asarray(labels, dtype=float)
    if len(labels) == 0:
        return math.nan
    _, positives, predicted = _calibration_bins(labels, probability, bins)
    # (n_b / n) |positives_b / n_b - predicted_b / n_b| = |positives_b - predicted_b| / n
    return float(np.abs(positives - predicted).sum() / len(labels))


def reliability_table(labels: np.ndarray, probability: np.ndarray, bins: int = ECE_BINS) -> pd.DataFrame:
    """The reliability diagram's data: per bin of :func:`expected_calibration_error` its
    edges (``low``, ``high``), its number of ``subjects``, their ``mean_probability`` and
    the ``fraction_positive`` among them (both NaN in an empty bin). Left-closed bins, the
    last closed at 1 (scikit-learn's ``calibration_curve`` closes them on the right)."""
    counts, positives, predicted = _calibration_bins(np.asarray(labels, dtype=float), probability, bins)
    edges = np.arange(bins + 1) / bins
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_probability, fraction_positive = predicted / counts, positives / counts
    return pd.DataFrame(
        {
            "bin": np.arange(bins),
            "low": edges[:-1],
            "high": edges[1:],
            "subjects": counts.astype(int),
            "mean_probability": np.where(counts > 0, mean_probability, np.nan),
            "fraction_positive": np.where(counts > 0, fraction_positive, np.nan),
        }
    )


def _calibration_bins(
    labels: np.ndarray, probability: np.ndarray, bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of the probability: subjects, positives and the sum of the probabilities."""
    probability = np.asarray(probability, dtype=float)
    which = np.clip(np.floor(probability * bins).astype(int), 0, bins - 1)
    counts = np.bincount(which, minlength=bins).astype(float)
    positives = np.bincount(which, weights=labels, minlength=bins)
    predicted = np.bincount(which, weights=probability, minlength=bins)
    return counts, positives, predicted


def subgroup_metrics(
    labels: np.ndarray, probability: np.ndarray, predicted: np.ndarray, has_pet: np.ndarray | None
) -> dict[str, float]:
    """AUC and balanced accuracy (scikit-learn) of the subjects with and without acquired PET.

    NaN for a subgroup that is empty or has one class, and for both without ``has_pet``.
    """
    out = dict.fromkeys(SUBGROUP_KEYS, math.nan)
    if has_pet is None:
        return out
    acquired = np.asarray(has_pet, dtype=bool)
    for suffix, rows in (("with_pet", acquired), ("without_pet", ~acquired)):
        if len(np.unique(labels[rows])) == 2:
            out[f"auc_{suffix}"] = skm.roc_auc_score(labels[rows], probability[rows])
            out[f"bacc_{suffix}"] = skm.balanced_accuracy_score(labels[rows], predicted[rows])
    return out


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
    """Percentile bootstrap interval of the AUC, resampling within each class.

    Each replicate's AUC is its Mann-Whitney U over the pairs (SciPy, all replicates in one
    vectorised call): the AUC as ``roc_auc_score`` computes it (ties count a half), without
    its per-call validation, which cost 7 ms a replicate, 7 s for a default interval.
    """
    rng = np.random.default_rng(seed)
    positives = np.flatnonzero(labels == 1)
    negatives = np.flatnonzero(labels == 0)
    drawn_positives = np.empty((replicates, len(positives)), dtype=np.intp)
    drawn_negatives = np.empty((replicates, len(negatives)), dtype=np.intp)
    for i in range(replicates):  # drawn in this order, so every seed keeps its resamples
        drawn_positives[i] = rng.choice(positives, len(positives))
        drawn_negatives[i] = rng.choice(negatives, len(negatives))
    u = stats.mannwhitneyu(
        probability[drawn_positives], probability[drawn_negatives], axis=1, method="asymptotic"
    ).statistic
    aucs = np.asarray(u, dtype=float) / (len(positives) * len(negatives))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(aucs, [tail, 100 - tail])
    return float(low), float(high)


def to_unit_scale(volume: np.ndarray) -> np.ndarray:
    """Map the pipeline's [-1, 1] intensities to the [0, 1] scale metrics are stated on."""
    return (np.asarray(volume, dtype=np.float32) + 1.0) / 2.0


def synthesis_metrics(
    real: np.ndarray,
    synthetic: np.ndarray,
    mask: np.ndarray,
    *,
    ssim: bool = True,
    peer_psnr: bool = False,
    ms_ssim: bool = False,
) -> dict[str, float]:
    """PSNR, SSIM and MAE of one subject's synthetic PET against its real PET, then the peers'
    conventions asked for (``metric_conventions.convention_metrics``).

    Both volumes are in the pipeline's [-1, 1] scale; PSNR, SSIM and MAE use [0, 1] (data
    range 1), inside the brain mask. SSIM, the slow one, can be skipped (NaN) for per-epoch
    validation.
    """
    real01, synth01 = to_unit_scale(real), to_unit_scale(synthetic)
    mask = np.asarray(mask, dtype=bool)
    error = np.abs(real01 - synth01)[mask]
    mse = float(np.mean(error**2))
    return {
        "psnr": float(10 * np.log10(1.0 / mse)) if mse > 0 else float("inf"),
        "ssim": ssim_3d(real01, synth01, mask) if ssim else float("nan"),
        "mae": float(error.mean()),
        **convention_metrics(real, synthetic, mask, peer_psnr=peer_psnr, with_ms_ssim=ms_ssim),
    }


def ssim_3d(real01: np.ndarray, synth01: np.ndarray, mask: np.ndarray) -> float:
    """3D SSIM (scikit-image, Gaussian-free 7-voxel window) over the brain's bounding box."""
    box = tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in np.nonzero(mask))
    win = min(7, *(s.stop - s.start for s in box))
    win = win if win % 2 == 1 else win - 1
    return float(structural_similarity(real01[box], synth01[box], data_range=1.0, win_size=max(win, 3)))


def mean_synthesis(per_subject: list[dict[str, float]]) -> dict[str, float] | None:
    """Average each synthesis metric of the subjects (those of :func:`synthesis_metrics`, in
    its order) over them; None when nothing was synthesised."""
    if not per_subject:
        return None
    return {key: float(np.mean([m[key] for m in per_subject])) for key in per_subject[0]}


def regional_uptake(volume: np.ndarray, masks: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Mean uptake of a [-1, 1] PET volume in each region, on the [0, 1] scale."""
    unit = to_unit_scale(volume)
    return {name: float(unit[np.asarray(mask, dtype=bool)].mean()) for name, mask in masks.items()}


def regional_uptake_columns(
    synthetic: np.ndarray, real: np.ndarray, masks: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """One subject's regional uptake of its synthetic and its real PET (:func:`regional_uptake`).

    Keyed ``roi_synth_<region>`` and ``roi_real_<region>``: the per-subject columns of
    ``predictions.csv`` that :func:`disease_synthesis_from_table` reads back.
    """
    out: dict[str, float] = {}
    for prefix, volume in (("roi_synth", synthetic), ("roi_real", real)):
        out.update({f"{prefix}_{name}": value for name, value in regional_uptake(volume, masks).items()})
    return out


def partial_correlation(x: np.ndarray, y: np.ndarray, given: np.ndarray) -> float:
    """Pearson's r of ``x`` and ``y`` after regressing each on ``given`` (with an intercept).

    The residual form of the first-order partial correlation; NaN with fewer than
    :data:`MIN_CORRELATION_SUBJECTS` subjects or when a residual is constant.
    """
    x, y, given = (np.asarray(a, dtype=float) for a in (x, y, given))
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(given)
    if keep.sum() < MIN_CORRELATION_SUBJECTS:
        return math.nan
    design = np.column_stack([np.ones(keep.sum()), given[keep]])

    def residual(values: np.ndarray) -> np.ndarray:
        coefficients, *_ = np.linalg.lstsq(design, values, rcond=None)
        return values - design @ coefficients

    rx, ry = residual(x[keep]), residual(y[keep])
    scale = max(float(np.abs(x[keep]).max()), float(np.abs(y[keep]).max()), 1.0)
    if np.ptp(rx) <= 1e-12 * scale or np.ptp(ry) <= 1e-12 * scale:
        return math.nan
    return float(stats.pearsonr(rx, ry).statistic)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < MIN_CORRELATION_SUBJECTS or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.pearsonr(x, y).statistic)


def disease_synthesis_metrics(
    synthetic: pd.DataFrame, real: pd.DataFrame, severities: pd.DataFrame | None = None
) -> dict[str, float] | None:
    """The disease-specific synthesis metrics of scored subjects (:data:`DISEASE_SYNTHESIS_KEYS`).

    ``synthetic`` and ``real``: one row per subject, one column per region, regional uptake
    on the [0, 1] scale (:func:`regional_uptake`), rows aligned. ``severities``: the same
    rows with :data:`SEVERITY_COLUMNS` (the latent severities), or None where unknown, when
    the two PET-specific correlations are left out. The meta-region is the regions' mean;
    "uptake loss" is its negative, so a positive PET-specific r means the PET shows the
    metabolic severity beyond what the structural severity explains. None without subjects.
    """
    if len(synthetic) == 0:
        return None
    if list(synthetic.columns) != list(real.columns) or len(synthetic) != len(real):
        raise ValueError("synthetic and real regional uptake must have the same regions and subjects")
    synth_values, real_values = synthetic.to_numpy(float), real.to_numpy(float)
    synth_meta, real_meta = synth_values.mean(1), real_values.mean(1)
    out = {
        "roi_mae": float(np.abs(synth_values - real_values).mean()),
        "roi_r": _pearson(synth_meta, real_meta),
    }
    if severities is not None:
        structural = severities["severity_structural"].to_numpy(float)
        metabolic = severities["severity_metabolic"].to_numpy(float)
        out["pet_specific_r"] = partial_correlation(-synth_meta, metabolic, structural)
        out["pet_specific_r_real"] = partial_correlation(-real_meta, metabolic, structural)
    return out


def disease_synthesis_from_table(
    table: pd.DataFrame, participants: pd.DataFrame, names: list[str]
) -> dict[str, float] | None:
    """:func:`disease_synthesis_metrics` of the subjects of a predictions table with regional uptake.

    ``table`` holds each subject's cohort ``row`` and the columns of
    :func:`regional_uptake_columns` for the regions ``names``. ``participants`` is the
    cohort's table; where it has the :data:`SEVERITY_COLUMNS`, the PET-specific correlations
    are computed too. None without a scored subject.
    """
    scored = table.dropna(subset=[f"roi_synth_{n}" for n in names]) if names else table.iloc[:0]
    if scored.empty:
        return None
    synthetic = scored[[f"roi_synth_{n}" for n in names]].set_axis(names, axis=1)
    real = scored[[f"roi_real_{n}" for n in names]].set_axis(names, axis=1)
    severities = None
    if all(column in participants.columns for column in SEVERITY_COLUMNS):
        severities = participants.iloc[scored["row"].to_numpy()][list(SEVERITY_COLUMNS)]
    return disease_synthesis_metrics(synthetic, real, severities)
