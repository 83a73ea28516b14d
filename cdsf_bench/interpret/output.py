"""What ``cdsf-bench interpret`` writes: the maps as NIfTI, montages as PNG, the tables.

An interpretation folder::

    interpretation.json   what was attributed: the run folder, its checkpoint's sha256, the
                          cohort, the subjects, the methods and their settings, the truth
    maps/<participant>/<diagnoser>_<method>_<channel>.nii.gz
                          each subject's map, on the run's grid with the run's affine
    means/<class>/<diagnoser>_<method>_<channel>.nii.gz
                          the maps' mean over the subjects of each diagnosis
    figures/<diagnoser>_<method>_<class>.png
                          orthogonal slices of a class mean through the planted regions
    subjects.csv          one row per subject: diagnosis, prediction, PET source, diagnosers called
    scores.csv            phantom only: one row per subject, diagnoser, method, channel and truth
    metrics.json          the scores' summary and the chance levels; written last

The folder appears whole (``cdsf_bench.staging``); the run folder is only read.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from cdsf_bench.data.nifti import save_nifti  # noqa: E402
from cdsf_bench.errors import InputError  # noqa: E402
from cdsf_bench.figures import save_figure  # noqa: E402
from cdsf_bench.interpret.scoring import PlantedTruth  # noqa: E402
from cdsf_bench.results import utc_stamp  # noqa: E402
from cdsf_bench.safe_names import safe_component  # noqa: E402

#: the default parent of an interpretation folder, beside predict's ``predictions``
DEFAULT_PARENT = "interpretations"


def plan_output(out: Path | None, run_folder: Path) -> Path:
    """The interpretation folder (default ``interpretations/<UTC>-<run folder name>``), checked.

    Never inside the run folder (a run's record stays as the run wrote it); a folder that
    already holds files is refused when it is staged (``cdsf_bench.staging``).
    """
    path = Path(out) if out is not None else Path(DEFAULT_PARENT) / f"{utc_stamp()}-{Path(run_folder).name}"
    resolved, run = path.resolve(), Path(run_folder).resolve()
    if resolved == run or run in resolved.parents:
        raise InputError(
            f"--out {path} lies inside the run folder {run_folder}; an interpretation goes to a folder of "
            "its own, so that the run's record stays as the run wrote it. Choose another --out."
        )
    return path


def map_name(diagnoser: str, method: str, channel: str) -> str:
    return safe_component(f"{diagnoser}_{method}_{channel}", "a map's name")


def write_map(path: Path, volume: np.ndarray, affine: np.ndarray) -> None:
    """One map as float32 NIfTI on the grid of ``affine``; sform and qform code 4 (MNI)."""
    image = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), np.asarray(affine))
    image.set_sform(np.asarray(affine), code=4)
    image.set_qform(np.asarray(affine), code=4)
    image.header.set_xyzt_units("mm")
    save_nifti(image, path)


def slice_centre(brain: np.ndarray, truths: list[PlantedTruth]) -> tuple[int, int, int]:
    """The slice of each axis that cuts the most planted voxels (without truth: the most brain).

    Per axis, not the regions' centre of mass: bilateral regions have theirs on the midline,
    between them, where a slice would cut none.
    """
    mask = np.logical_or.reduce([t.mask for t in truths]) if truths else brain
    picked = [int(np.argmax(mask.sum(axis=tuple(a for a in range(3) if a != axis)))) for axis in range(3)]
    return (picked[0], picked[1], picked[2])


#: each view: its name, the axis it cuts and the labels of its (left, right, bottom, top) edges
VIEWS = (
    ("axial", 2, ("L", "R", "P", "A")),
    ("coronal", 1, ("L", "R", "I", "S")),
    ("sagittal", 0, ("P", "A", "I", "S")),
)


def montage(
    path: Path,
    maps: dict[str, np.ndarray],
    truths: dict[str, list[PlantedTruth]],
    brain: np.ndarray,
    affine: np.ndarray,
    title: str,
) -> Path:
    """One row per channel: axial, coronal and sagittal slices of its map and a colour bar.

    The slices cut the channel's planted regions (outlined in black) where they are largest
    (:func:`slice_centre`); the brain's outline is grey. Colours are symmetric about 0 (red: evidence for
    the predicted class, blue: against). Shown as ``np.rot90`` of each slice, so that L is
    left, and A or S is up, as the edge labels say; the slice's MNI position is under it.
    """
    figure, axes = plt.subplots(len(maps), 3, figsize=(9.6, 2.9 * len(maps)), squeeze=False)
    for row, (channel, volume) in enumerate(maps.items()):
        centre = slice_centre(brain, truths.get(channel, []))
        limit = float(np.abs(volume[brain]).max()) or 1.0
        planted = np.logical_or.reduce([t.mask for t in truths[channel]]) if truths.get(channel) else None
        for column, (view, axis_index, labels) in enumerate(VIEWS):
            axis = axes[row, column]
            cut = [slice(None)] * 3
            cut[axis_index] = slice(centre[axis_index], centre[axis_index] + 1)
            image = np.rot90(np.squeeze(volume[tuple(cut)], axis=axis_index))
            shown = axis.imshow(image, cmap="RdBu_r", vmin=-limit, vmax=limit)
            axis.contour(
                np.rot90(np.squeeze(brain[tuple(cut)], axis=axis_index)), [0.5], colors="grey", linewidths=0.6
            )
            if planted is not None:
                axis.contour(
                    np.rot90(np.squeeze(planted[tuple(cut)], axis=axis_index)),
                    [0.5],
                    colors="black",
                    linewidths=0.8,
                )
            _edge_labels(axis, labels)
            axis.set_xticks([])
            axis.set_yticks([])
            position = float((np.asarray(affine) @ np.array([*centre, 1.0]))[axis_index])
            axis.set_xlabel(f"{view}, {'xyz'[axis_index]} = {position:+.0f} mm (MNI)", fontsize=7)
            if column == 2:
                figure.colorbar(shown, ax=axis, fraction=0.046, label="attribution")
        axes[row, 0].set_ylabel(channel, fontsize=9)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return save_figure(figure, path)


def _edge_labels(axis: plt.Axes, labels: tuple[str, str, str, str]) -> None:
    left, right, bottom, top = labels
    for x, y, label, ha, va in (
        (0.02, 0.5, left, "left", "center"),
        (0.98, 0.5, right, "right", "center"),
        (0.5, 0.02, bottom, "center", "bottom"),
        (0.5, 0.98, top, "center", "top"),
    ):
        axis.text(x, y, label, ha=ha, va=va, fontsize=7, fontweight="bold", transform=axis.transAxes)
