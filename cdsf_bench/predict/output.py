"""``cdsf-bench predict``'s work: a trained run applied to a cohort, written to a prediction folder.

A prediction folder has the test-output part of a run folder's layout
(``cdsf_bench.run_folder``)::

    prediction.json    what was applied to what: the run folder, its checkpoint's sha256, the
                       data spec and settings, the threshold, device, subjects skipped
    predictions.csv    one row per predicted subject: probability, prediction at the run's
                       threshold, the PET source (real / synthetic / mean / none), synthesis scores
    synth/             each subject's synthetic PET in SUVR units, on the subject's own MRI grid
                       with its affine (``*_space-T1w_*``) for file cohorts, on the MNI grid the
                       cohort was generated on for the phantom
    figures/roc.png    the ROC of the predicted subjects
    timing.json        wall and data seconds
    metrics.json       diagnosis metrics over the subjects' labels, synthesis scores where real PET
                       (or the phantom's withheld PET) is known; written last

The run folder is only read. The prediction folder is written into a staging folder beside
it and moved into place only when complete (``cdsf_bench.staging``): a prediction that fails
(NaN weights, a full disk) leaves nothing that blocks running it again. While it runs, the
process holds a lock beside the folder (``cdsf_bench.locking``): a second prediction into the
same ``--out`` is refused, naming the first.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdsf_bench.assemble import configure_backends, resolve_device
from cdsf_bench.data.nifti import to_native
from cdsf_bench.errors import InputError
from cdsf_bench.figures import roc_figure
from cdsf_bench.locking import folder_lock, lock_name
from cdsf_bench.predict.apply import Application, prepare, source_config, summary
from cdsf_bench.predict.trained import load_trained
from cdsf_bench.progress import track
from cdsf_bench.registry import Registry
from cdsf_bench.results import utc_stamp
from cdsf_bench.run_folder import RunFolder
from cdsf_bench.staging import staged_folder

#: The ``split`` column of predict's predictions.csv: the subjects came from the cohort given.
PREDICTED = "predicted"


@dataclass
class PredictionResult:
    folder: Path
    metrics: dict[str, Any]


def plan_output(out: Path | None, run_folder: Path) -> Path:
    """The prediction folder (default ``predictions/<UTC>-<run folder name>``), checked, not created.

    Never inside the run folder (a run's record is not changed by applying it) and never a
    folder that already holds files (nothing is overwritten).
    """
    path = Path(out) if out is not None else Path("predictions") / f"{utc_stamp()}-{Path(run_folder).name}"
    resolved, run = path.resolve(), Path(run_folder).resolve()
    if resolved == run or run in resolved.parents:
        raise InputError(
            f"--out {path} lies inside the run folder {run_folder}; predictions go to a folder of their "
            "own, so that the run's record stays as the run wrote it. Choose another --out."
        )
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {path} is a file, not a folder; choose another --out.")
    if path.exists() and any(path.iterdir()):
        raise InputError(f"--out {path} already holds files; choose a new or empty folder.")
    return path


def predict_run(
    run_folder: Path,
    spec: str,
    registry: Registry,
    *,
    assignments: tuple[str, ...] = (),
    out: Path | None = None,
    device: str | None = None,
) -> PredictionResult:
    """Apply the trained model of ``run_folder`` to the cohort ``spec`` and write ``out``."""
    started = time.perf_counter()
    path = plan_output(out, run_folder)
    beside = path.parent / lock_name(path.name)  # the folder itself exists only once complete
    with folder_lock(path, "Prediction folder", lock_file=beside, hint="choose another --out"):
        model = load_trained(run_folder, registry)
        config = source_config(model.config, spec, assignments, registry)
        target = resolve_device(device or model.config.device)
        configure_backends(target)
        data_started = time.perf_counter()
        application = prepare(model, registry, config, target)
        data_seconds = time.perf_counter() - data_started
        with staged_folder(path, "--out") as staging:
            folder = RunFolder(staging)
            metrics = _write(application, folder, spec, assignments, target, Path(run_folder))
            folder.write_timing(round(time.perf_counter() - started, 2), round(data_seconds, 2))
            folder.write_metrics(metrics)
    return PredictionResult(path, metrics)


def _write(
    application: Application,
    folder: RunFolder,
    spec: str,
    assignments: tuple[str, ...],
    target: torch.device,
    run_folder: Path,
) -> dict[str, Any]:
    """The prediction's record, table, synthetic PET and ROC in ``folder``; its metrics."""
    model = application.model
    folder.write_prediction_record(_record(application, spec, assignments, target))
    evaluation = application.predict(on_synthetic=_synthetic_writer(application, folder), progress=track)
    table = application.table(evaluation, PREDICTED)
    folder.write_predictions(table)
    roc_figure(
        {model.config.method.coupling: (table["label"].to_numpy(), table["probability"].to_numpy())},
        folder.figure("roc"),
        f"{model.config.task}: {run_folder.name} on {Path(spec).name or spec}",
    )
    return {
        **summary(evaluation),
        "threshold": model.threshold,
        "task": model.config.task,
        "method": dict(model.config.raw["method"]),
        "seed": model.config.seed,
        "run_folder": str(run_folder.resolve()),
        "data": spec,
    }


def model_record(application: Application) -> dict[str, Any]:
    """Which trained model was applied: its run folder, the checkpoint's SHA-256, method and task."""
    model = application.model
    checkpoint = RunFolder(model.folder).checkpoint_path
    return {
        "run_folder": str(model.folder.resolve()),
        "checkpoint_sha256": hashlib.sha256(checkpoint.read_bytes()).hexdigest(),
        "method": dict(model.config.raw["method"]),
        "task": model.config.task,
    }


def _record(application: Application, spec: str, assignments: tuple[str, ...], device: torch.device) -> dict:
    model, cohort = application.model, application.cohort
    return {
        **model_record(application),
        "threshold": model.threshold,
        "data": {
            "spec": spec,
            "source": application.source,
            "description": cohort.source,
            "settings": list(assignments),
            "subjects": len(cohort),
            "with_pet": int(np.sum(cohort.has_pet)),
            "skipped_other_diagnoses": application.skipped,
            "cache_hit": cohort.extra.get("cache_hit"),
        },
        "data_settings": application.config.raw["data"],
        "device": str(device),
        "time_utc": utc_stamp(),
    }


def _synthetic_writer(application: Application, folder: RunFolder) -> Callable[[int, np.ndarray], None]:
    """Where each synthetic PET goes as it is made: the input's own grid and affine.

    A file cohort's subject gets it on the grid of its own MRI file (so any viewer overlays
    the two); a generated cohort (the phantom) on the MNI grid its volumes were made on.
    """
    cohort = application.cohort
    suvr_max = application.config.data.pet_suvr_max
    ids = cohort.participants["participant_id"].astype(str).to_numpy()
    files = cohort.participants["mri"].astype(str).to_numpy() if "mri" in cohort.participants else None

    def write(row: int, volume: np.ndarray) -> None:
        suvr = (volume + 1.0) / 2.0 * suvr_max
        if files is None:
            folder.write_synthetic_pet(ids[row], suvr, cohort.affine, mni=True)
        else:
            folder.write_native_pet(ids[row], to_native(suvr, cohort.affine, files[row]))

    return write
