"""Figures of a suite report: pooled ROC curves and reliability diagrams, per-replicate strip
plots, synthesis bars.

Drawn with the run figures' helpers (Agg backend, atomic PNG writes), so a report's figures
look like a run's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.calibration import calibration_curve

from cdsf_bench.figures import plt, roc_figure, save_figure
from cdsf_bench.metrics import ECE_BINS

#: metrics of the strip plot and the synthesis bars, with their axis labels
STRIP_METRICS = {"auc": "AUC", "bacc": "balanced accuracy"}
SYNTHESIS_METRICS = {"ssim": "SSIM", "psnr": "PSNR (dB)", "mae": "MAE ([0, 1] scale)"}


def pooled_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, task: str) -> Path:
    """ROC per method over the test subjects of every replicate pooled together."""
    return roc_figure(curves, path, f"{task}: test ROC, replicates pooled")


def pooled_reliability(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, task: str) -> Path:
    """Per method, the fraction of positives against the mean predicted probability in each of
    ECE's equal-width bins (scikit-learn's ``calibration_curve``), the test subjects of every
    replicate pooled; on the diagonal the probabilities mean what they say."""
    figure, axis = plt.subplots(figsize=(4.8, 4.4))
    axis.plot([0, 1], [0, 1], linestyle="--", color="0.5", linewidth=1, label="calibrated")
    for method, (labels, probabilities) in curves.items():
        observed, predicted = calibration_curve(labels, probabilities, n_bins=ECE_BINS, strategy="uniform")
        axis.plot(predicted, observed, marker="o", markersize=3, label=method)
    axis.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="mean predicted probability (bin)",
        ylabel="fraction positive",
        title=f"{task}: reliability, replicates pooled",
    )
    axis.legend(fontsize=7, loc="upper left")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return save_figure(figure, path)


def strip_plot(done: pd.DataFrame, methods: list[str], path: Path, task: str) -> Path:
    """One point per replicate and a bar at the mean, per method, for AUC and balanced accuracy."""
    width = 1.5 + 0.6 * len(methods)  # per panel: room for each method's rotated label
    figure, axes = plt.subplots(
        1, len(STRIP_METRICS), figsize=(width * len(STRIP_METRICS), 3.8), squeeze=False
    )
    rng = np.random.default_rng(0)  # jitter only; fixed so the figure is reproducible
    for axis, (metric, label) in zip(axes[0], STRIP_METRICS.items(), strict=True):
        for x, method in enumerate(methods):
            values = done.loc[done["method"] == method, metric].astype(float).dropna().to_numpy()
            if len(values) == 0:
                continue
            axis.scatter(x + rng.uniform(-0.12, 0.12, len(values)), values, s=18, alpha=0.8)
            axis.hlines(values.mean(), x - 0.3, x + 0.3, color="black", linewidth=1.5)
        axis.set_xticks(range(len(methods)), methods, rotation=35, ha="right", fontsize=8)
        axis.set(ylabel=label, title=f"{task}: {label} per replicate")
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return save_figure(figure, path)


def synthesis_bars(done: pd.DataFrame, methods: list[str], path: Path, task: str) -> Path:
    """Mean ± sd over replicates of SSIM, PSNR and MAE for each method that synthesises PET."""
    figure, axes = plt.subplots(
        1, len(SYNTHESIS_METRICS), figsize=(3.2 * len(SYNTHESIS_METRICS), 3.6), squeeze=False
    )
    for axis, (metric, label) in zip(axes[0], SYNTHESIS_METRICS.items(), strict=True):
        values = [done.loc[done["method"] == m, metric].astype(float).dropna() for m in methods]
        means = [v.mean() for v in values]
        spreads = [v.std(ddof=1) if len(v) > 1 else 0.0 for v in values]
        axis.bar(range(len(methods)), means, yerr=spreads, capsize=4, color="tab:orange", alpha=0.85)
        axis.set_xticks(range(len(methods)), methods, rotation=35, ha="right", fontsize=8)
        axis.set(title=label)
        axis.grid(axis="y", alpha=0.3)
    figure.suptitle(f"{task}: synthesis quality (mean ± sd over replicates)", fontsize=10)
    figure.tight_layout()
    return save_figure(figure, path)


def answers_plot(rows: list[tuple[str, float, float, float, float, str]], path: Path, reference: str) -> Path:
    """One line per comparison: the estimate and its 95% interval, with a grey band of ±MDD.

    ``rows``: (label, estimate, low, high, mdd, verdict) where verdict starts with "better",
    "worse" or anything else (no difference detectable). A difference inside the band would
    mostly go unseen by the design; an interval that leaves zero behind is a verdict.
    """
    colours = {"better": "tab:green", "worse": "tab:red"}
    figure, axis = plt.subplots(figsize=(6.4, 0.9 + 0.42 * len(rows)))
    for y, (_, estimate, low, high, mdd, verdict) in enumerate(reversed(rows)):
        if np.isfinite(mdd):
            axis.fill_betweenx([y - 0.35, y + 0.35], -mdd, mdd, color="0.88", linewidth=0)
        colour = colours.get(verdict.split(" ")[0], "tab:blue")
        axis.errorbar(
            estimate, y, xerr=[[estimate - low], [high - estimate]], fmt="o", color=colour, capsize=3
        )
    axis.axvline(0, color="black", linewidth=0.8)
    axis.set_yticks(range(len(rows)), [row[0] for row in reversed(rows)], fontsize=8)
    axis.set(xlabel=f"difference vs {reference} (95% CI); grey: ±MDD at 80% power")
    axis.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return save_figure(figure, path)
