"""Metrics against hand computations and scikit-learn / scikit-image references."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from cdsf_bench.metrics import diagnosis_metrics, synthesis_metrics, youden_threshold


def test_diagnosis_metrics_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 1])
    probability = np.array([0.1, 0.6, 0.2, 0.8, 0.4, 0.9])
    m = diagnosis_metrics(labels, probability, bootstrap=200, seed=0)
    assert m["acc"] == pytest.approx(4 / 6)
    assert m["sen"] == pytest.approx(2 / 3) and m["spe"] == pytest.approx(2 / 3)
    assert m["bacc"] == pytest.approx(2 / 3)
    assert m["auc"] == pytest.approx(8 / 9)  # 8 of 9 positive-negative pairs ordered right
    assert m["auc_ci_low"] <= m["auc"] <= m["auc_ci_high"]


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
