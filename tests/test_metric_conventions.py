"""Synthesis metrics in the peers' conventions, each against a hand computation.

PSNR's peak scales with the intensities, so a constant error gives the same PSNR on every
scale; what the conventions change is which voxels count (the brain, the grid, slices), and
each test below plants an error whose PSNR is known in closed form under each of them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cdsf_bench.errors import ConfigError
from cdsf_bench.metric_conventions import (
    MS_SSIM_KERNEL,
    MS_SSIM_WEIGHTS,
    check_ms_ssim_grid,
    ms_ssim,
    ms_ssim_min_side,
    psnr_pm1,
    psnr_slice255,
)
from cdsf_bench.metrics import synthesis_metrics

SHAPE = (20, 24, 24)  # the 8 mm grid: the smallest MS-SSIM accepts


def _volumes(seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    real = rng.uniform(-1, 1, SHAPE).astype(np.float32)
    synthetic = np.clip(real + rng.normal(0, 0.1, SHAPE), -1, 1).astype(np.float32)
    mask = np.zeros(SHAPE, bool)
    mask[2:18, 3:20, 2:22] = True
    return real, synthetic, mask


def test_todays_keys_keep_their_values_with_or_without_the_conventions():
    """psnr, ssim, mae: the [0, 1] PSNR in the mask, 3D SSIM and MAE, as main computes them."""
    real, synthetic, mask = _volumes()
    plain = synthesis_metrics(real, synthetic, mask)
    assert plain == {"psnr": 26.395265848441266, "ssim": 0.9869150653675005, "mae": 0.037945736199617386}
    both = synthesis_metrics(real, synthetic, mask, peer_psnr=True, ms_ssim=True)
    assert list(both) == ["psnr", "ssim", "mae", "psnr_pm1", "psnr_slice255", "ms_ssim"]
    assert {k: both[k] for k in plain} == plain


def test_a_constant_error_has_one_psnr_on_every_scale():
    """An error d on [-1, 1] is d/2 on [0, 1] and 127.5 d on 0-255: 20 log10(2 / d) on each."""
    real = np.random.default_rng(1).uniform(-0.5, 0.5, SHAPE)
    d = 0.1
    synthetic = real + d
    mask = np.zeros(SHAPE, bool)
    mask[3:9, 3:9, 4:12] = True
    expected = 20 * math.log10(2 / d)  # 26.02 dB
    scores = synthesis_metrics(real, synthetic, mask, peer_psnr=True)
    assert scores["psnr"] == pytest.approx(expected, rel=1e-5)  # float32 inside
    assert psnr_pm1(real, synthetic) == pytest.approx(expected, rel=1e-12)
    assert psnr_slice255(real, synthetic, mask) == pytest.approx(expected, rel=1e-12)


def test_the_whole_grid_psnr_counts_the_background_the_brain_psnr_does_not():
    real = np.zeros(SHAPE)
    mask = np.zeros(SHAPE, bool)
    mask[:10] = True  # half the grid is brain
    synthetic = real.copy()
    synthetic[10:] = 0.2  # every error outside the brain
    assert synthesis_metrics(real, synthetic, mask)["psnr"] == math.inf
    # MSE over the grid: half the voxels with 0.2^2; peak 2
    assert psnr_pm1(real, synthetic) == pytest.approx(10 * math.log10(4 / (0.5 * 0.04)), rel=1e-12)


def test_per_slice_psnr_averages_the_axial_slices_with_brain():
    """Slices along the last axis; a slice without brain is left out, whatever its error."""
    real = np.full(SHAPE, -1.0)
    synthetic = real.copy()
    mask = np.zeros(SHAPE, bool)
    mask[4:8, 4:8, 3] = True
    mask[4:8, 4:8, 5] = True
    synthetic[:, :, 3] += 0.1  # slice 3 off by 0.1 everywhere
    synthetic[:, :, 5] += 0.4  # slice 5 by 0.4
    synthetic[:, :, 10] += 1.0  # no brain: not counted
    expected = (20 * math.log10(2 / 0.1) + 20 * math.log10(2 / 0.4)) / 2
    assert psnr_slice255(real, synthetic, mask) == pytest.approx(expected, rel=1e-12)
    pooled = 10 * math.log10(255**2 / np.mean(((synthetic - real)[:, :, [3, 5]] * 127.5) ** 2))
    assert psnr_slice255(real, synthetic, mask) > pooled  # the mean of logs is not the log of the mean


def test_identical_volumes_score_perfectly_in_every_convention():
    real, _, mask = _volumes()
    scores = synthesis_metrics(real, real, mask, peer_psnr=True)
    assert scores["psnr_pm1"] == math.inf and scores["psnr_slice255"] == math.inf
    unit = (real + 1) / 2
    assert ms_ssim(unit, unit) == pytest.approx(1.0, abs=1e-6)


def test_ms_ssim_falls_with_the_error():
    rng = np.random.default_rng(4)
    real = rng.uniform(0, 1, SHAPE).astype(np.float32)
    slightly = np.clip(real + rng.normal(0, 0.05, real.shape), 0, 1).astype(np.float32)
    badly = np.clip(real + rng.normal(0, 0.3, real.shape), 0, 1).astype(np.float32)
    assert 1.0 > ms_ssim(real, slightly) > ms_ssim(real, badly)


def test_the_smallest_grid_for_ms_ssim_is_monais_own_limit():
    """MONAI's defaults need 176 voxels a side; kernel 5 with three scales, 20 (the 8 mm grid)."""
    from monai.metrics import MultiScaleSSIMMetric

    assert ms_ssim_min_side(11, 5) == 176
    need = ms_ssim_min_side(MS_SSIM_KERNEL, len(MS_SSIM_WEIGHTS))
    assert need == 20 and sum(MS_SSIM_WEIGHTS) == pytest.approx(1.0)
    import torch

    metric = MultiScaleSSIMMetric(spatial_dims=3, kernel_size=MS_SSIM_KERNEL, weights=MS_SSIM_WEIGHTS)
    fits = torch.rand(1, 1, need, need, need)
    assert float(metric(fits, fits).item()) == pytest.approx(1.0, abs=1e-6)
    small = torch.rand(1, 1, need - 1, need, need)
    with pytest.raises(ValueError):
        metric(small, small)
    check_ms_ssim_grid((need, 24, 24))
    with pytest.raises(ConfigError, match="at least 20 voxels"):
        check_ms_ssim_grid((need - 1, 24, 24))


def test_ms_ssim_is_refused_on_a_coarse_grid_when_the_config_resolves():
    from cdsf_bench.config import resolve
    from cdsf_bench.registry import default_registry

    resolve(default_registry(), None, ("evaluate.ms_ssim=true", "data.resolution_mm=8"))
    with pytest.raises(ConfigError, match="evaluate.ms_ssim needs every side"):
        resolve(default_registry(), None, ("evaluate.ms_ssim=true", "data.resolution_mm=16"))


def test_ms_ssim_without_monai_names_the_extra(monkeypatch):
    import builtins

    from cdsf_bench.metric_conventions import require_monai

    real_import = builtins.__import__

    def no_monai(name: str, *args, **kwargs):
        if name.startswith("monai"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_monai)
    with pytest.raises(ConfigError, match=r"cdsf-bench\[diffusion\]"):
        require_monai()
