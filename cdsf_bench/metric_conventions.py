"""Synthesis metrics in the conventions other papers report them in, beside cdsf-bench's own.

cdsf-bench's own synthesis metrics (``metrics.synthesis_metrics``: ``psnr``, ``ssim``,
``mae``) are computed inside the brain mask on PET mapped to [0, 1]. Published numbers use
other conventions, and PSNR is not comparable across them: its peak scales with the
intensities, so the scale alone changes nothing (a constant error ``d`` on [-1, 1] is
``d / 2`` on [0, 1] and ``127.5 d`` on 0-255, and each gives 20 log10(2 / d) dB); what
changes the number is which voxels are averaged (the brain, the whole grid with its
background, or 2D slices whose PSNRs are averaged). The fields here, each named by its
convention in metrics.json, results.csv and the report (docs/benchmark.md maps them to the
peers' published metrics):

- ``psnr_pm1``: PSNR of the whole grid, background included, on the pipeline's [-1, 1]
  scale with data range 2 (peak 2): how GAN code (pix2pix and its 3D ports) scores its
  output tensor.
- ``psnr_slice255``: PSNR of each axial slice (the grid's last axis, MNI z) on 0-255 with
  data range 255, averaged over the slices where the brain mask has a voxel (slices of
  background alone, where both volumes are 0 and the PSNR is infinite, are left out).
- ``ms_ssim``: MONAI's 3D multi-scale SSIM (``monai.metrics.MultiScaleSSIMMetric``) of the
  whole grid on [0, 1] with data range 1, a Gaussian kernel of :data:`MS_SSIM_KERNEL` voxels
  and :data:`MS_SSIM_WEIGHTS` (three scales). MONAI's defaults (kernel 11, five scales) need
  every side of the grid to be at least :func:`ms_ssim_min_side` (11, 5) = 176 voxels, more
  than any grid cdsf-bench makes (the 2 mm grid is 76 x 92 x 80); kernel 5 with three scales
  needs 20, which the 8 mm grid (20 x 24 x 24) and every finer one has. The weights are the
  first three of Wang et al.'s five (MONAI's default), rescaled to sum to 1.

The first two are plain NumPy and cost nothing beside the 3D SSIM; MS-SSIM needs MONAI
(the ``diffusion`` or ``test`` extra) and is computed only where ``evaluate.ms_ssim`` asks.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from cdsf_bench.errors import ConfigError

#: the conventions' fields, in the order metrics.json and the report list them
CONVENTION_KEYS = ("psnr_pm1", "psnr_slice255", "ms_ssim")
#: the two PSNR conventions (``evaluate.peer_psnr``); MS-SSIM has its own setting
PSNR_CONVENTION_KEYS = ("psnr_pm1", "psnr_slice255")
#: MS-SSIM's Gaussian kernel, in voxels along every axis
MS_SSIM_KERNEL = 5
#: MONAI's default MS-SSIM weights (Wang, Simoncelli and Bovik 2003), finest scale first
MONAI_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: the first three of them, rescaled to sum to 1: three scales
MS_SSIM_WEIGHTS = tuple(w / sum(MONAI_MS_SSIM_WEIGHTS[:3]) for w in MONAI_MS_SSIM_WEIGHTS[:3])
#: the axis of the axial slices (a grid's axes are MNI x, y, z)
AXIAL_AXIS = 2
#: what installs MONAI
MONAI_EXTRA = "pip install 'cdsf-bench[diffusion]'"


def ms_ssim_min_side(kernel: int, scales: int) -> int:
    """The smallest side (voxels) on which MONAI's MS-SSIM accepts ``kernel`` and ``scales``.

    MONAI refuses a side ``n`` with ``n // (scales - 1) ** 2 <= kernel - 1``; the smallest
    side it accepts is therefore ``kernel * (scales - 1) ** 2``.
    """
    return kernel * max(1, scales - 1) ** 2


def require_monai() -> None:
    """Refuse ``evaluate.ms_ssim`` where MONAI is not installed, naming the extra."""
    try:
        import monai.metrics  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"evaluate.ms_ssim computes MS-SSIM with MONAI, which is not installed; {MONAI_EXTRA} "
            "(or the 'test' extra), or set evaluate.ms_ssim = false."
        ) from None


def check_ms_ssim_grid(shape: tuple[int, ...]) -> None:
    """Refuse a grid too small for :data:`MS_SSIM_KERNEL` and three scales, naming the sizes."""
    need = ms_ssim_min_side(MS_SSIM_KERNEL, len(MS_SSIM_WEIGHTS))
    if min(shape) < need:
        raise ConfigError(
            f"evaluate.ms_ssim needs every side of the grid to be at least {need} voxels (kernel "
            f"{MS_SSIM_KERNEL}, {len(MS_SSIM_WEIGHTS)} scales); this grid is {' x '.join(map(str, shape))}. "
            "Use a finer data.resolution_mm (8 mm or less), or set evaluate.ms_ssim = false."
        )


def psnr(mse: float, peak: float) -> float:
    """10 log10(peak^2 / MSE); infinite for identical images."""
    return float(10 * np.log10(peak**2 / mse)) if mse > 0 else math.inf


def psnr_pm1(real: np.ndarray, synthetic: np.ndarray) -> float:
    """PSNR of the whole grid on the [-1, 1] scale, data range 2."""
    error = np.asarray(real, dtype=np.float64) - np.asarray(synthetic, dtype=np.float64)
    return psnr(float(np.mean(error**2)), 2.0)


def psnr_slice255(real: np.ndarray, synthetic: np.ndarray, mask: np.ndarray) -> float:
    """Mean over the axial slices with brain of each slice's PSNR on 0-255, data range 255.

    Inputs on [-1, 1], mapped by (x + 1) * 127.5; every voxel of a slice counts, background
    included. Infinite when a counted slice is identical in both volumes.
    """
    scale = 255.0 / 2.0
    error = (np.asarray(real, dtype=np.float64) - np.asarray(synthetic, dtype=np.float64)) * scale
    other = tuple(a for a in range(3) if a != AXIAL_AXIS)
    brain = np.asarray(mask, dtype=bool).any(axis=other)
    mse = np.mean(error**2, axis=other)[brain]
    return float(np.mean([psnr(float(m), 255.0) for m in mse]))


def ms_ssim(real01: np.ndarray, synth01: np.ndarray) -> float:
    """MONAI's 3D MS-SSIM of two [0, 1] volumes (the whole grid), data range 1."""
    import torch
    from monai.metrics import MultiScaleSSIMMetric

    metric: Any = MultiScaleSSIMMetric(
        spatial_dims=3, data_range=1.0, kernel_size=MS_SSIM_KERNEL, weights=MS_SSIM_WEIGHTS
    )

    def batch(volume: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(volume, dtype=np.float32))[None, None]

    return float(metric(batch(synth01), batch(real01)).item())


def convention_metrics(
    real: np.ndarray, synthetic: np.ndarray, mask: np.ndarray, *, peer_psnr: bool, with_ms_ssim: bool
) -> dict[str, float]:
    """The conventions asked for, of one subject's [-1, 1] synthetic PET against its real PET."""
    out: dict[str, float] = {}
    if peer_psnr:
        out["psnr_pm1"] = psnr_pm1(real, synthetic)
        out["psnr_slice255"] = psnr_slice255(real, synthetic, mask)
    if with_ms_ssim:
        out["ms_ssim"] = ms_ssim((np.asarray(real) + 1.0) / 2.0, (np.asarray(synthetic) + 1.0) / 2.0)
    return out
