"""Metrics against hand computations and scikit-learn / scikit-image references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from skimage.metrics import structural_similarity
from sklearn.metrics import roc_auc_score

from cdsf_bench.metrics import (
    auc_interval,
    diagnosis_metrics,
    expected_calibration_error,
    reliability_table,
    synthesis_metrics,
    youden_threshold,
)


def test_diagnosis_metrics_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 1])
    probability = np.array([0.1, 0.6, 0.2, 0.8, 0.4, 0.9])
    m = diagnosis_metrics(labels, probability, bootstrap=200, seed=0)
    assert m["acc"] == pytest.approx(4 / 6)
    assert m["sen"] == pytest.approx(2 / 3) and m["spe"] == pytest.approx(2 / 3)
    assert m["bacc"] == pytest.approx(2 / 3)
    assert m["auc"] == pytest.approx(8 / 9)  # 8 of 9 positive-negative pairs ordered right
    assert m["auc_ci_low"] <= m["auc"] <= m["auc_ci_high"]


def test_the_bootstrap_interval_is_the_percentiles_of_scikit_learns_resampled_aucs():
    """The vectorised interval resamples as documented and scores each replicate as roc_auc_score."""
    rng = np.random.default_rng(5)
    labels = (rng.random(60) < 0.4).astype(int)
    probability = np.round(rng.random(60) * 0.6 + 0.3 * labels, 1)  # coarse: many ties
    draw = np.random.default_rng(9)
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    aucs = []
    for _ in range(300):
        rows = np.concatenate(
            [draw.choice(positives, len(positives)), draw.choice(negatives, len(negatives))]
        )
        aucs.append(roc_auc_score(labels[rows], probability[rows]))
    expected = np.percentile(aucs, [2.5, 97.5])
    np.testing.assert_allclose(auc_interval(labels, probability, 300, seed=9), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        auc_interval(labels, probability, 300, seed=9, level=0.8), np.percentile(aucs, [10, 90]), atol=1e-12
    )


def test_threshold_changes_the_operating_point_not_the_auc():
    labels = np.array([0, 0, 1, 1])
    probability = np.array([0.90, 0.91, 0.95, 0.96])  # ranks perfectly, all above 0.5
    assert diagnosis_metrics(labels, probability, bootstrap=0)["bacc"] == 0.5
    threshold = youden_threshold(labels, probability)
    tuned = diagnosis_metrics(labels, probability, threshold=threshold, bootstrap=0)
    assert tuned["bacc"] == 1.0 and tuned["auc"] == 1.0


def test_synthesis_metrics_on_a_known_error():
    rng = np.random.default_rng(0)
    real = rng.uniform(-1, 1, (12, 12, 12)).astype(np.float32)
    synthetic = real + 0.2  # 0.1 on the [0, 1] scale everywhere
    mask = np.ones_like(real, dtype=bool)
    m = synthesis_metrics(real, synthetic, mask)
    assert m["mae"] == pytest.approx(0.1, rel=1e-4)
    assert m["psnr"] == pytest.approx(20.0, rel=1e-4)  # 10 log10(1 / 0.01)
    reference = structural_similarity((real + 1) / 2, (synthetic + 1) / 2, data_range=1.0, win_size=7)
    assert m["ssim"] == pytest.approx(reference)
    assert synthesis_metrics(real, real, mask)["ssim"] == pytest.approx(1.0)


# --- disease-specific synthesis metrics (issue #17) -----------------------------------------


def test_partial_correlation_matches_the_textbook_formula():
    """The residual form equals r_xy.z = (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2))."""
    from cdsf_bench.metrics import partial_correlation

    rng = np.random.default_rng(0)
    z = rng.standard_normal(200)
    x = z + rng.standard_normal(200)
    y = 0.5 * z + 0.4 * x + rng.standard_normal(200)
    r = np.corrcoef([x, y, z])
    expected = (r[0, 1] - r[0, 2] * r[1, 2]) / np.sqrt((1 - r[0, 2] ** 2) * (1 - r[1, 2] ** 2))
    assert partial_correlation(x, y, z) == pytest.approx(expected, abs=1e-10)
    assert np.isnan(partial_correlation(x[:3], y[:3], z[:3]))  # too few subjects
    assert np.isnan(partial_correlation(z, y, z))  # nothing left of x once z is removed


def _regions(values: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(values, columns=["posterior_cingulate", "precuneus", "angular"])


def test_disease_synthesis_metrics_on_constructed_subjects():
    """A perfect generator reaches the ceiling; one that only knows the structural severity
    scores a PET-specific r near 0 while its plain regional correlation can still be high."""
    from cdsf_bench.metrics import DISEASE_SYNTHESIS_KEYS, disease_synthesis_metrics

    rng = np.random.default_rng(1)
    n = 400
    structural = rng.standard_normal(n)
    metabolic = 0.6 * structural + 0.8 * rng.standard_normal(n)
    severities = pd.DataFrame({"severity_structural": structural, "severity_metabolic": metabolic})
    real = _regions(0.6 - 0.05 * metabolic[:, None] + 0.01 * rng.standard_normal((n, 3)))
    perfect = disease_synthesis_metrics(real, real, severities)
    assert set(perfect) == set(DISEASE_SYNTHESIS_KEYS)
    assert perfect["roi_mae"] == 0.0 and perfect["roi_r"] == pytest.approx(1.0)
    assert perfect["pet_specific_r"] == perfect["pet_specific_r_real"] > 0.8
    # E[PET | MRI]: the regional values the structural severity predicts, nothing more
    from_mri = _regions(0.6 - 0.05 * 0.6 * structural[:, None] + 0.01 * rng.standard_normal((n, 3)))
    mri_only = disease_synthesis_metrics(from_mri, real, severities)
    assert abs(mri_only["pet_specific_r"]) < 0.15 and mri_only["pet_specific_r_real"] > 0.8
    assert mri_only["roi_r"] > 0.4
    assert mri_only["roi_mae"] == pytest.approx(np.abs(from_mri.to_numpy() - real.to_numpy()).mean())
    # without latents (real data) the PET-specific correlations are left out
    assert set(disease_synthesis_metrics(from_mri, real)) == {"roi_mae", "roi_r"}
    assert disease_synthesis_metrics(real.iloc[:0], real.iloc[:0]) is None


def test_regional_uptake_is_the_mask_mean_on_the_unit_scale():
    from cdsf_bench.metrics import regional_uptake

    volume = np.full((4, 4, 4), -1.0, dtype=np.float32)
    volume[0] = 1.0  # unit scale 1 in the first slab, 0 elsewhere
    mask = np.zeros((4, 4, 4), dtype=bool)
    mask[0, 0, :2] = mask[1, 0, :2] = True
    assert regional_uptake(volume, {"a": mask}) == {"a": pytest.approx(0.5)}


def test_reliability_table_bins_are_those_of_the_ece():
    labels = np.array([0, 0, 1, 1, 1, 0, 1])
    probability = np.array([0.05, 0.1, 0.15, 0.55, 0.95, 0.9, 1.0])
    table = reliability_table(labels, probability)
    assert table["subjects"].tolist() == [1, 2, 0, 0, 0, 1, 0, 0, 0, 3]  # left-closed, 1.0 in the last
    assert table["subjects"].sum() == len(labels) and np.isnan(table["mean_probability"][2])
    filled = table[table["subjects"] > 0]
    gaps = (filled["fraction_positive"] - filled["mean_probability"]).abs() * filled["subjects"] / len(labels)
    assert gaps.sum() == pytest.approx(expected_calibration_error(labels, probability))
    assert table["fraction_positive"][9] == pytest.approx(2 / 3)
