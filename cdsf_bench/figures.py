"""The PNG figures of a run: ROC curve, learning curves and an MRI / PET slice montage.

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


def learning_curves(history: pd.DataFrame, path: Path) -> Path:
    """Per stage: training losses (left) and validation metrics (right) by epoch."""
    stages = list(dict.fromkeys(history["stage"]))
    figure, axes = plt.subplots(len(stages), 2, figsize=(10, 3.2 * len(stages)), squeeze=False)
    for row, stage in enumerate(stages):
        part = history[history["stage"] == stage]
        for column, prefix in enumerate(("train_", "val_")):
            axis = axes[row, column]
            for key in [c for c in part.columns if c.startswith(prefix)]:
                values = part[key].astype(float)
                if values.notna().any():
                    axis.plot(part["epoch"], values, marker=".", label=key.removeprefix(prefix))
            chosen = part[part["selected"].astype(bool)]
            if column == 1 and len(chosen):
                axis.axvline(chosen["epoch"].iloc[-1], color="grey", linestyle=":", label="selected")
            axis.set(xlabel="epoch", title=f"{stage}: {'training losses' if column == 0 else 'validation'}")
            axis.legend(fontsize=7)
    figure.tight_layout()
    return save_figure(figure, path)


def slice_montage(
    subjects: list[dict[str, np.ndarray | str | None]], path: Path, axial_fraction: float = 0.6
) -> Path:
    """One row per subject: MRI, real PET (where known), synthetic PET, |synthetic - real|.

    Each entry of ``subjects`` has ``title``, ``mri``, ``pet`` (or None) and ``synthetic``,
    volumes in the pipeline's [-1, 1] scale, shown on one axial slice at ``axial_fraction``
    of the height (through the posterior cingulate and temporo-parietal cortex by default).
    """
    columns = ("MRI", "real PET", "synthetic PET", "|synthetic - real|")
    figure, axes = plt.subplots(len(subjects), 4, figsize=(10, 2.7 * len(subjects)), squeeze=False)
    for row, subject in enumerate(subjects):
        mri = np.asarray(subject["mri"])
        z = int(round(axial_fraction * (mri.shape[2] - 1)))
        real = subject.get("pet")
        synth = np.asarray(subject["synthetic"])
        images = [
            (mri[:, :, z], "gray", (-1, 1)),
            (None if real is None else np.asarray(real)[:, :, z], "hot", (-1, 1)),
            (synth[:, :, z], "hot", (-1, 1)),
            (None if real is None else np.abs(synth - np.asarray(real))[:, :, z], "viridis", (0, 0.5)),
        ]
        for column, (image, cmap, limits) in enumerate(images):
            axis = axes[row, column]
            axis.set_xticks([])
            axis.set_yticks([])
            if image is None:
                axis.text(0.5, 0.5, "not acquired", ha="center", va="center", transform=axis.transAxes)
            else:
                shown = axis.imshow(np.rot90(image), cmap=cmap, vmin=limits[0], vmax=limits[1])
                if column == 3:
                    figure.colorbar(shown, ax=axis, fraction=0.046)
            if row == 0:
                axis.set_title(columns[column], fontsize=9)
        axes[row, 0].set_ylabel(str(subject["title"]), fontsize=8)
    figure.tight_layout()
    return save_figure(figure, path)
