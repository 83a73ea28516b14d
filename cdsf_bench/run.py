"""One run, top to bottom: data, splits, pipeline, method, training, test, run folder.

The order is the protocol: the cohort is split by subject before anything is trained, the
model is selected on validation only, and the test split is predicted exactly once, after
training, with the selected model.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from cdsf_bench import config as cfg
from cdsf_bench import distributed
from cdsf_bench.assemble import assemble, configure_backends, load_cohort, resolve_device, task_subset
from cdsf_bench.data.conventions import TASKS
from cdsf_bench.data.pipeline import DevicePipeline
from cdsf_bench.data.splits import Splits, check_no_leak, make_splits
from cdsf_bench.engine import Evaluation, Trainer, evaluate
from cdsf_bench.errors import InputError
from cdsf_bench.figures import learning_curves, roc_figure, slice_montage
from cdsf_bench.interfaces import Cohort, Coupling
from cdsf_bench.metrics import youden_threshold
from cdsf_bench.progress import console
from cdsf_bench.registry import Registry
from cdsf_bench.results import (
    environment,
    remove_leftover_temporaries,
    utc_stamp,
    write_csv,
    write_json,
    write_text,
)

#: subjects shown in the slice montage
MONTAGE_SUBJECTS = 4


@dataclass
class RunResult:
    folder: Path
    metrics: dict


def prepare_folder(config: dict, out: Path | None, resume: bool) -> Path:
    """Create the run folder, or check that an existing one is this config's (for resume)."""
    method = config["method"]
    folder = out or Path("runs") / f"{utc_stamp()}-{method['synth']}-{method['diag']}-{method['coupling']}"
    text = cfg.to_toml(config)
    existing = folder / "config.toml"
    if folder.exists() and not folder.is_dir():
        raise InputError(f"Output folder {folder} is a file, not a folder; choose another --out.")
    if folder.exists() and any(folder.iterdir()):
        if not existing.exists():
            raise InputError(
                f"Output folder {folder} exists and is not a cdsf-bench run; choose another --out."
            )
        if existing.read_text() != text:
            raise InputError(
                f"Output folder {folder} holds a run of a different config; choose another --out, "
                f"or repeat that run with --config {existing}."
            )
        if not resume:
            done = (folder / "metrics.json").exists()
            raise InputError(
                f"Output folder {folder} already holds {'a finished' if done else 'an unfinished'} run of "
                f"this config; {'choose another --out' if done else f'continue it with --resume {folder}'}."
            )
    folder.mkdir(parents=True, exist_ok=True)
    if resume:
        remove_leftover_temporaries(folder)  # of writes the killed run did not finish
    write_text(existing, text)
    return folder


def execute(config: dict, registry: Registry, out: Path | None = None, resume: bool = False) -> RunResult:
    """Run one configuration end to end and write its run folder.

    Under torchrun every process runs this function; rank 0 alone writes files and logs.
    """
    started = time.perf_counter()
    cluster = distributed.from_environment()
    device = distributed.start(cluster, resolve_device(config["device"]))
    try:
        return _execute(config, registry, out, resume, cluster, device, started)
    finally:
        distributed.stop(cluster)


def _execute(
    config: dict,
    registry: Registry,
    out: Path | None,
    resume: bool,
    cluster: distributed.Cluster,
    device: torch.device,
    started: float,
) -> RunResult:
    main = cluster.is_main
    folder = distributed.broadcast_object(prepare_folder(config, out, resume) if main else None, cluster)
    log = _Log(folder / "log.txt", enabled=main)
    seed = int(config["seed"])
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    configure_backends(device)

    log(f"run folder {folder}; device {device}; seed {seed}; processes {cluster.world}")
    data_started = time.perf_counter()
    if not main:
        distributed.barrier(cluster)  # rank 0 fills the cache first; the others then read it
    cohort, source_name = load_cohort(config, registry)
    if main:
        distributed.barrier(cluster)
    data_seconds = time.perf_counter() - data_started
    log(
        f"data: {source_name} ({cohort.source}), {len(cohort)} subjects, {cohort.shape}, {data_seconds:.1f} s"
    )
    cohort, labels = task_subset(cohort, config["task"])
    split_cfg = config["split"]
    splits = make_splits(
        cohort.participants,
        labels,
        val=split_cfg["val"],
        test=split_cfg["test"],
        seed=seed,
        folds=split_cfg["folds"],
        fold=split_cfg["fold"],
        class_names=TASKS[config["task"]],
    )
    leak = check_no_leak(cohort.participants, splits)

    assembly = assemble(config, registry, cohort, labels, splits, device, (cluster.rank, cluster.world))
    pipeline, coupling = assembly.pipeline, assembly.coupling
    mixed, channels_last = assembly.context.mixed_precision, assembly.channels_last
    if main:
        write_csv(folder / "splits.csv", splits.table(cohort.participants))
        plugins = [
            {
                "kind": kind,
                "name": c.name,
                "plugin": c.plugin,
                "distribution": c.distribution,
                "version": c.version,
            }
            for kind, c in registry.all()
            if c.name in (config["method"]["synth"], config["method"]["diag"], config["method"]["coupling"])
        ]
        env = environment(device, plugins)
        env.update(
            {"mixed_precision_bf16": mixed, "channels_last_3d": channels_last, "processes": cluster.world}
        )
        write_json(folder / "environment.json", env)
        write_json(
            folder / "data.json",
            {
                "source": source_name,
                "description": cohort.source,
                "shape": list(cohort.shape),
                "affine": np.asarray(cohort.affine).tolist(),
                "subjects": {name: int(len(splits.rows(name))) for name in ("train", "val", "test")},
                "with_pet": {
                    name: int(cohort.has_pet[splits.rows(name)].sum()) for name in ("train", "val", "test")
                },
                "leak_check": leak,
                "fingerprints": pipeline.fingerprint(),
                "cache_hit": cohort.extra.get("cache_hit"),
                "load_seconds": round(data_seconds, 2),
            },
        )

    def on_epoch(history: list[dict]) -> None:
        write_csv(folder / "history.csv", pd.DataFrame(history))

    trainer = Trainer(
        coupling, pipeline, folder / "checkpoints", seed=seed, on_epoch=on_epoch, cluster=cluster
    )
    history = trainer.fit(resume=resume)
    log(f"trained: {len(history)} epochs in {len(trainer.stages)} stage(s)")

    # the operating point is chosen on validation with the selected model, never on test
    validation = evaluate(coupling, pipeline, "val", with_ssim=False, cluster=cluster)
    threshold = youden_threshold(validation.predictions["label"], validation.predictions["probability"])
    test = evaluate(
        coupling,
        pipeline,
        "test",
        bootstrap=config["evaluate"]["bootstrap"],
        seed=seed,
        keep_synthetic=True,
        cluster=cluster,
        threshold=threshold,
    )
    metrics = _metrics(config, trainer, pipeline, coupling, test)
    metrics["selection"]["threshold"] = threshold
    if main:
        _write_outputs(folder, config, cohort, labels, splits, pipeline, history, test)
        write_json(folder / "metrics.json", metrics)
        wall = round(time.perf_counter() - started, 2)
        write_json(folder / "timing.json", {"wall_seconds": wall, "data_seconds": round(data_seconds, 2)})
    log(f"test: {metrics['diagnosis']}; synthesis: {metrics['synthesis']}")
    log(f"finished in {time.perf_counter() - started:.1f} s")
    return RunResult(folder, metrics)


def _metrics(
    config: dict, trainer: Trainer, pipeline: DevicePipeline, coupling: Coupling, test: Evaluation
) -> dict:
    last = (
        trainer.selections[-1] if trainer.selections else {"best_epoch": None, "metric": None, "value": None}
    )
    return {
        "diagnosis": test.diagnosis,
        "synthesis": test.synthesis,
        "selection": {"best_epoch": last["best_epoch"], "metric": last["metric"], "value": last["value"]},
        "stages": trainer.selections,
        "n": {name: int(len(pipeline.rows(name, coupling.subjects))) for name in ("train", "val", "test")},
        "task": config["task"],
        "method": dict(config["method"]),
        "seed": config["seed"],
    }


def _write_outputs(
    folder: Path,
    config: dict,
    cohort: Cohort,
    labels: np.ndarray,
    splits: Splits,
    pipeline: DevicePipeline,
    history: list[dict],
    test: Evaluation,
) -> None:
    predictions = test.predictions.copy()
    predictions.insert(2, "diagnosis", cohort.participants["diagnosis"].to_numpy()[predictions["row"]])
    write_csv(folder / "predictions.csv", predictions.drop(columns=["row"]))
    figures = folder / "figures"
    roc_figure(
        {
            config["method"]["coupling"]: (
                predictions["label"].to_numpy(),
                predictions["probability"].to_numpy(),
            )
        },
        figures / "roc.png",
        f"{config['task']} test ROC",
    )
    if history:
        learning_curves(pd.DataFrame(history), figures / "learning_curves.png")
    if not test.synthetic:
        return
    suvr_max = float(config["data"]["pet_suvr_max"])
    if config["evaluate"]["save_synthetic"]:
        for row, volume in test.synthetic.items():
            participant = cohort.participants["participant_id"].iloc[row]
            suvr = ((volume + 1.0) / 2.0 * suvr_max).astype(np.float32)
            image = nib.Nifti1Image(suvr, np.asarray(cohort.affine))
            image.header.set_xyzt_units("mm")
            _save_nifti(image, folder / "synth" / f"{participant}_desc-synthetic_pet.nii.gz")
    shown = []
    # half with acquired PET, half whose PET was withheld (where the source keeps it)
    rows = list(test.synthetic)
    acquired = [r for r in rows if cohort.has_pet[r]]
    withheld = [r for r in rows if not cohort.has_pet[r]]
    half = MONTAGE_SUBJECTS // 2
    picked = acquired[:half] + withheld[: MONTAGE_SUBJECTS - min(half, len(acquired))]
    for row in sorted(picked)[:MONTAGE_SUBJECTS]:
        truth = (
            cohort.pet_truth[row]
            if cohort.pet_truth is not None
            else (cohort.pet[row] if cohort.has_pet[row] else None)
        )
        participant = cohort.participants["participant_id"].iloc[row]
        state = "PET acquired" if cohort.has_pet[row] else ("PET withheld" if truth is not None else "no PET")
        shown.append(
            {
                "title": f"{participant} ({cohort.participants['diagnosis'].iloc[row]}, {state})",
                "mri": np.asarray(cohort.mri[row], dtype=np.float32),
                "pet": None if truth is None else np.asarray(truth, dtype=np.float32),
                "synthetic": test.synthetic[row],
            }
        )
    slice_montage(shown, figures / "montage.png")


def _save_nifti(image: nib.Nifti1Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    nib.save(image, tmp)
    os.replace(tmp, path)


class _Log:
    """Appends timestamped lines to the run's log.txt and echoes them to the console."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        with open(self.path, "a") as handle:
            handle.write(line + "\n")
        console.log(message, highlight=False)
