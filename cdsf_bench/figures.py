"""The PNG figures of a run: ROC curve, reliability diagram, learning curves and an MRI / PET slice montage.

Each figure is meant to be read without the code: metrics of different scales on their
own axes, images with their slice position, orientation and SUVR colour bar.

Figures are drawn with matplotlib's Agg backend (no display needed) and written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import roc_auc_score, roc_curve  # noqa: E402

from cdsf_bench.results import atomic_write  # noqa: E402


def save_figure(figure: plt.Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return atomic_write(path, lambda h: h.write(buffer.getvalue()))


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """ROC curves, one per name: ``curves[name] = (labels, probability)``."""
    figure, axis = plt.subplots(figsize=(4.6, 4.4))
    for name, (labels, probability) in curves.items():
        if len(np.unique(labels)) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, probability)
        axis.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(labels, probability):.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axis.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    if axis.get_legend_handles_labels()[0]:
        axis.legend(loc="lower right", fontsize=8)
    else:
        axis.text(
            0.5, 0.5, "one class only: no ROC curve", ha="center", va="center", transform=axis.transAxes
        )
    return save_figure(figure, path)


#: Validation metrics with their own scale (dB, or errors in intensity units), drawn apart
#: from the diagnosis metrics that all live in [-1, 1] (AUC, balanced accuracy, MCC, ...).
SYNTHESIS_METRICS = ("psnr", "ssim", "mae")


def _plot_columns(axis: plt.Axes, part: pd.DataFrame, columns: list[str], prefix: str) -> bool:
    """Draw ``columns`` of ``part`` by epoch on ``axis``; whether anything was drawn."""
    drawn = False
    for key in columns:
        values = part[key].astype(float)
        if values.notna().any():
            axis.plot(part["epoch"], values, marker=".", label=key.removeprefix(prefix))
            drawn = True
    return drawn


def learning_curves(history: pd.DataFrame, path: Path) -> Path:
    """Per stage: training losses, validation diagnosis metrics and validation synthesis metrics.

    Diagnosis metrics share one axis fixed to [0, 1] (MCC below 0 extends it), so a curve
    that moves by 0.05 is visible; PSNR (dB) and SSIM / MAE each get their own axis, since
    a PSNR of 25 on the same axis would flatten every diagnosis curve at the bottom.
    """
    stages = list(dict.fromkeys(history["stage"]))
    validation = [c for c in history.columns if c.startswith("val_")]
    synthesis = [c for c in validation if c.removeprefix("val_") in SYNTHESIS_METRICS]
    diagnosis = [c for c in validation if c not in synthesis]
    figure, axes = plt.subplots(len(stages), 3, figsize=(14, 3.2 * len(stages)), squeeze=False)
    for row, stage in enumerate(stages):
        part = history[history["stage"] == stage]
        chosen = part[part["selected"].astype(bool)]
        losses, diag_axis, synth_axis = axes[row]
        _plot_columns(losses, part, [c for c in part.columns if c.startswith("train_")], "train_")
        losses.set(xlabel="epoch", ylabel="loss", title=f"{stage}: training losses")
        _plot_columns(diag_axis, part, diagnosis, "val_")
        measured = part[diagnosis].to_numpy(dtype=float)
        low = min(0.0, float(np.nanmin(measured))) if np.isfinite(measured).any() else 0.0
        diag_axis.set(
            xlabel="epoch", ylabel="metric", ylim=(low - 0.02, 1.02), title=f"{stage}: validation diagnosis"
        )
        psnr = [c for c in synthesis if c == "val_psnr"]
        others = [c for c in synthesis if c != "val_psnr"]
        drew_psnr = _plot_columns(synth_axis, part, psnr, "val_")
        synth_axis.set(xlabel="epoch", ylabel="PSNR (dB)", title=f"{stage}: validation synthesis")
        twin = synth_axis.twinx()
        twin.set_prop_cycle(color=["tab:orange", "tab:green"])
        drew_others = _plot_columns(twin, part, others, "val_")
        twin.set_ylabel("SSIM, MAE")
        if not (drew_psnr or drew_others):
            synth_axis.text(
                0.5, 0.5, "no synthesis", ha="center", va="center", transform=synth_axis.transAxes
            )
        for axis in (losses, diag_axis, synth_axis):
            if len(chosen) and axis is not losses:
                axis.axvline(chosen["epoch"].iloc[-1], color="grey", linestyle=":", label="selected")
        for axis in (losses, diag_axis):
            if axis.get_legend_handles_labels()[0]:
                axis.legend(fontsize=7)
        handles = synth_axis.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        if drew_psnr or drew_others:
            synth_axis.legend(handles, [h.get_label() for h in handles], fontsize=7)
    figure.tight_layout()
    return save_figure(figure, path)


def _orient(axis: plt.Axes) -> None:
    """Anatomical labels on an axial slice shown as ``np.rot90(volume[:, :, z])``: x runs
    left to right (L at the left), y bottom to top (A at the top)."""
    for x, y, label, ha, va in (
        (0.02, 0.5, "L", "left", "center"),
        (0.98, 0.5, "R", "right", "center"),
        (0.5, 0.98, "A", "center", "top"),
        (0.5, 0.02, "P", "center", "bottom"),
    ):
        axis.text(
            x, y, label, ha=ha, va=va, color="white", fontsize=7, fontweight="bold", transform=axis.transAxes
        )


def slice_montage(
    subjects: list[dict[str, np.ndarray | str | None]],
    path: Path,
    affine: np.ndarray,
    suvr_max: float,
    axial_fraction: float = 0.6,
) -> Path:
    """One row per subject: MRI, real PET (where known), synthetic PET, |synthetic - real|.

    Each entry of ``subjects`` has ``title``, ``mri``, ``pet`` (or None) and ``synthetic``,
    volumes in the pipeline's [-1, 1] scale, shown on one axial slice at ``axial_fraction``
    of the height (through the posterior cingulate and temporo-parietal cortex by default).
    PET is shown in SUVR (``suvr_max`` is the +1 of the pipeline's scale) with a colour bar;
    the slice's MNI height (``affine``) and the orientation (L/R, A/P) are on the figure.
    """
    columns = ("MRI", "real PET (SUVR)", "synthetic PET (SUVR)", "|synthetic - real| (SUVR)")
    figure, axes = plt.subplots(len(subjects), 4, figsize=(11, 2.7 * len(subjects)), squeeze=False)

    def suvr(volume: np.ndarray) -> np.ndarray:
        return (volume + 1.0) / 2.0 * suvr_max

    for row, subject in enumerate(subjects):
        mri = np.asarray(subject["mri"])
        z = int(round(axial_fraction * (mri.shape[2] - 1)))
        z_mm = float((np.asarray(affine) @ np.array([0.0, 0.0, z, 1.0]))[2])
        real = subject.get("pet")
        synth = suvr(np.asarray(subject["synthetic"]))
        truth = None if real is None else suvr(np.asarray(real))
        images = [
            (mri[:, :, z], "gray", (-1, 1), ""),
            (None if truth is None else truth[:, :, z], "hot", (0, suvr_max), "SUVR"),
            (synth[:, :, z], "hot", (0, suvr_max), "SUVR"),
            (None if truth is None else np.abs(synth - truth)[:, :, z], "viridis", (0, suvr_max / 4), "SUVR"),
        ]
        for column, (image, cmap, limits, unit) in enumerate(images):
            axis = axes[row, column]
            axis.set_xticks([])
            axis.set_yticks([])
            if image is None:
                axis.text(0.5, 0.5, "not acquired", ha="center", va="center", transform=axis.transAxes)
            else:
                shown = axis.imshow(np.rot90(image), cmap=cmap, vmin=limits[0], vmax=limits[1])
                _orient(axis)
                if unit:
                    figure.colorbar(shown, ax=axis, fraction=0.046, label=unit)
            if row == 0:
                axis.set_title(columns[column], fontsize=9)
        axes[row, 0].set_ylabel(str(subject["title"]), fontsize=8)
        axes[row, 0].set_xlabel(f"axial, z = {z_mm:+.0f} mm (MNI; S up, I down)", fontsize=7)
    figure.tight_layout()
    return save_figure(figure, path)


def reliability_diagram(table: pd.DataFrame, path: Path, title: str) -> Path:
    """The fraction of positives against the mean predicted probability per bin
    (``metrics.reliability_table``), each bin's share of the subjects as a bar beneath:
    a calibrated model's points lie on the diagonal."""
    figure, (axis, share) = plt.subplots(
        2, 1, figsize=(4.6, 5.4), sharex=True, gridspec_kw={"height_ratios": (3, 1)}
    )
    filled = table[table["subjects"] > 0]
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="calibrated")
    axis.plot(filled["mean_probability"], filled["fraction_positive"], marker="o", label="test subjects")
    axis.set(ylabel="fraction positive", title=title, xlim=(0, 1), ylim=(-0.02, 1.02))
    axis.legend(loc="upper left", fontsize=8)
    total = max(int(table["subjects"].sum()), 1)
    share.bar(table["low"], table["subjects"] / total, width=table["high"] - table["low"], align="edge")
    share.set(xlabel="predicted probability of the positive class", ylabel="share of subjects")
    figure.tight_layout()
    return save_figure(figure, path)
