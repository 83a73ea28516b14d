"""One run, top to bottom: the run protocol, then the test, then the run folder's records.

The order is the protocol (:mod:`cdsf_bench.protocol`: seed, preflight, cohort, split,
assembly, training): the cohort is split by subject before anything is trained, the model
is selected on validation only, and the test split is predicted exactly once, after
training, with the selected model. What is written where is the run folder's business
(``run_folder.RunFolder``).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cdsf_bench import distributed, protocol
from cdsf_bench.assemble import Assembly, resolve_device
from cdsf_bench.cost import EnergyMeter, energy_meter
from cdsf_bench.data.labels import UNLABELLED
from cdsf_bench.data.nifti import to_native
from cdsf_bench.data.pipeline import DevicePipeline
from cdsf_bench.engine import Evaluation, EvaluationSettings, Trainer, evaluate
from cdsf_bench.figures import learning_curves, reliability_diagram, roc_figure, slice_montage
from cdsf_bench.interfaces import Cohort, Coupling, TrainingStage
from cdsf_bench.metrics import reliability_table, youden_threshold
from cdsf_bench.predict.apply import HELD_OUT, HeldOut, predict_held_out, prediction_table, summary
from cdsf_bench.registry import Registry
from cdsf_bench.results import environment
from cdsf_bench.run_folder import RunFolder
from cdsf_bench.settings import TRACK, RunConfig
from cdsf_bench.tracking import Trackers, final_metrics, flatten, open_trackers, run_artefacts

#: subjects shown in the slice montage
MONTAGE_SUBJECTS = 4


@dataclass
class RunResult:
    folder: Path
    metrics: dict


def execute(
    run: RunConfig,
    registry: Registry,
    out: Path | None = None,
    resume: bool = False,
    *,
    trackers: Trackers | None = None,
    track_name: str | None = None,
) -> RunResult:
    """Run one resolved configuration end to end and write its run folder.

    Under torchrun every process runs this function; rank 0 alone writes files, logs and
    tracks. ``trackers`` (a suite's, whose run is open) replace those of the config's
    ``[track]``; ``track_name`` names the run there (default: the run folder's name).
    """
    started = time.perf_counter()
    cluster = distributed.from_environment()
    device = distributed.start(cluster, resolve_device(run.device))
    try:
        # built before any data are read: a tracker that is not installed stops nothing running
        tracking = trackers if trackers is not None else open_trackers(run.track, registry, cluster)
        depth = tracking.depth
        try:
            with contextlib.ExitStack() as held:
                planned = RunFolder.place(out, run.name) if cluster.is_main else None
                if planned is not None:  # rank 0 writes, so rank 0 alone holds the folder's lock
                    held.enter_context(RunFolder.lock(planned))
                    RunFolder.plan(run.toml(), planned, resume)
                path = distributed.broadcast_object(planned, cluster)
                evaluate = run.evaluate
                meter = held.enter_context(
                    energy_meter(evaluate.carbon, evaluate.carbon_country, measures=cluster.is_main)
                )
                return _execute(
                    run, registry, path, resume, cluster, device, started, tracking, track_name, meter
                )
        except BaseException:
            tracking.abandon(depth)  # the tracked run is closed as failed; the error goes on
            raise
    finally:
        distributed.stop(cluster)


def _execute(
    run: RunConfig,
    registry: Registry,
    path: Path,
    resume: bool,
    cluster: distributed.Cluster,
    device: torch.device,
    started: float,
    tracking: Trackers,
    track_name: str | None,
    meter: EnergyMeter,
) -> RunResult:
    """``execute`` once the device and the trackers are set up and the folder is planned (and
    locked by rank 0).

    The folder's files are written only once the data are accepted: a refused run leaves none.
    ``meter`` measures the run's energy where ``evaluate.carbon`` asks (``cdsf_bench.cost``).
    """
    main = cluster.is_main
    prepared = protocol.prepare(run, registry, device, cluster)
    data, assembly = prepared.data, prepared.assembly
    if resume:
        protocol.check_resumable(assembly, RunFolder(path, writes=False))
    if main:
        RunFolder.prepare(run.toml(), path, resume)
    distributed.barrier(cluster)
    folder = RunFolder(path, writes=main)
    _log_start(folder, run, prepared, device, cluster)
    folder.write_splits(data.splits.table(data.cohort.participants, data.labels))
    if main:
        env = _environment(run, registry, assembly, device, cluster)
        folder.write_environment(env)
        _start_tracking(tracking, track_name, run, folder, env)
    folder.write_data(protocol.data_record(run, data, assembly))

    steps = len(protocol.earlier_history(folder.path)) if resume else 0
    trainer = protocol.train(
        assembly, folder, cluster=cluster, resume=resume, on_epoch=_EpochTracking(tracking, steps)
    )
    history = trainer.history
    folder.log(f"trained: {len(history)} epochs in {len(trainer.stages)} stage(s)")

    test, threshold = _test(run, assembly, cluster)
    held_out = None
    if run.evaluate.phantom_test_subjects and main:  # inference only, from the checkpoint just written
        held_out = predict_held_out(folder.path, run, threshold, registry, device)
        folder.log(f"held-out phantom cohort: {held_out.subjects} subjects, seed {held_out.phantom_seed}")
    metrics = _metrics(run, trainer, assembly.pipeline, assembly.coupling, test, threshold, held_out)
    if main:
        _write_test_outputs(folder, run, data.cohort, history, test, held_out)
        folder.write_metrics(metrics)
        energy = meter.record()
        if energy is not None:
            folder.write_energy(energy)
        wall = round(time.perf_counter() - started, 2)
        folder.write_timing(wall, round(data.seconds, 2))
    folder.log(f"test: {_summary(metrics)}", echo=False)  # the console gets the table instead
    folder.log(f"finished in {time.perf_counter() - started:.1f} s")
    tracking.finish(final_metrics(metrics), run_artefacts(folder.path))  # rank 0's trackers only
    return RunResult(folder.path, metrics)


def _log_start(
    folder: RunFolder,
    run: RunConfig,
    prepared: protocol.Prepared,
    device: torch.device,
    cluster: distributed.Cluster,
) -> None:
    """log.txt's first lines: where the run is, what it read, how long that took."""
    data, assembly = prepared.data, prepared.assembly
    cohort = data.cohort
    folder.log(f"run folder {folder.path}; device {device}; seed {run.seed}; processes {cluster.world}")
    cache = "read from the cache" if cohort.extra.get("cache_hit") else "preprocessed and cached"
    folder.log(
        f"data: {data.source} ({cohort.source}), {len(cohort)} subjects "
        f"({int((data.labels == UNLABELLED).sum())} of them unlabelled, training only), {cohort.shape}, "
        f"{cache} ({cohort.extra.get('cache_entry', 'no cache')}), {data.seconds:.1f} s"
    )
    if data.validation is not None:
        held = data.validation
        folder.log(
            f"validation: held-out phantom cohort of {held['subjects']} subjects, seed "
            f"{held['phantom_seed']}; {held['validating']} of the task validate, the split's "
            f"{held['split_val_unused']} validation subjects are unused"
        )
    if assembly.eager_because is not None:
        folder.log(
            f"precision.compile: torch.compile cannot compile here ({assembly.eager_because}); "
            "the networks run without it"
        )


def _environment(
    run: RunConfig, registry: Registry, assembly: Assembly, device: torch.device, cluster: distributed.Cluster
) -> dict[str, Any]:
    """environment.json: versions, device, the chosen components' plugins and how the networks run."""
    method = run.method
    chosen = (method.synth, method.diag, method.coupling)
    plugins = [
        {
            "kind": kind,
            "name": c.name,
            "plugin": c.plugin,
            "distribution": c.distribution,
            "version": c.version,
        }
        for kind, c in registry.all()
        if c.name in chosen
    ]
    env = environment(device, plugins)
    env.update(
        {
            "mixed_precision_bf16": assembly.context.mixed_precision,
            "channels_last_3d": assembly.channels_last,
            "torch_compile": assembly.compiled,
            "processes": cluster.world,
        }
    )
    return env


def _start_tracking(
    tracking: Trackers, track_name: str | None, run: RunConfig, folder: RunFolder, env: dict[str, Any]
) -> None:
    """Open the tracked run: the settings as parameters, the method and provenance as tags."""
    tags = {
        **run.raw["method"],
        "task": run.task,
        "seed": run.seed,
        "git_commit": env.get("git_commit"),
        "run_folder": str(folder.path.resolve()),
    }
    # the trackers' own settings are no parameter of the run (a URI may hold a token)
    params = flatten({key: value for key, value in run.raw.items() if key != TRACK})
    tracking.start(track_name or folder.path.name, params, tags, folder.path)


@dataclass
class _EpochTracking:
    """The trainer's ``on_epoch`` for the trackers: one point per history row.

    The step counts epochs over every stage, those a resumed run's checkpoint holds included.
    """

    tracking: Trackers
    step: int = 0

    def __call__(self, _stage: TrainingStage, row: dict[str, Any]) -> None:
        values = {k: v for k, v in row.items() if k.startswith(("train_", "val_"))}
        self.tracking.log_epoch(self.step, values)
        self.step += 1


def _test(run: RunConfig, assembly: Assembly, cluster: distributed.Cluster) -> tuple[Evaluation, float]:
    """The test split, predicted once, at the operating point chosen on validation.

    The threshold is chosen with the selected model on validation, never on test; the
    withheld PET scores the test split and nothing else.
    """
    coupling, pipeline = assembly.coupling, assembly.pipeline
    validation = evaluate(coupling, pipeline, EvaluationSettings("val", with_ssim=False), cluster=cluster)
    chosen_on = validation.predictions
    threshold = youden_threshold(chosen_on["label"].to_numpy(), chosen_on["probability"].to_numpy())
    settings = EvaluationSettings(
        "test",
        bootstrap=run.evaluate.bootstrap,
        seed=run.seed,
        threshold=threshold,
        keep_synthetic=True,
        score_withheld=True,
        peer_psnr=run.evaluate.peer_psnr,
        ms_ssim=run.evaluate.ms_ssim,
    )
    return evaluate(coupling, pipeline, settings, cluster=cluster), threshold


def _summary(metrics: dict[str, Any]) -> str:
    """One readable line of the headline test metrics, for log.txt."""
    diagnosis = metrics["diagnosis"]
    parts = [f"AUC {diagnosis['auc']:.3f} [{diagnosis['auc_ci_low']:.3f}, {diagnosis['auc_ci_high']:.3f}]"]
    parts += [f"{key.upper()} {diagnosis[key]:.3f}" for key in ("bacc", "sen", "spe", "mcc")]
    if metrics["synthesis"]:
        parts += [f"synthesis {key.upper()} {value:.4f}" for key, value in metrics["synthesis"].items()]
    return ", ".join(parts)


def _metrics(
    run: RunConfig,
    trainer: Trainer,
    pipeline: DevicePipeline,
    coupling: Coupling,
    test: Evaluation,
    threshold: float,
    held_out: HeldOut | None = None,
) -> dict[str, Any]:
    """metrics.json. With a held-out phantom cohort, its metrics are the test metrics
    ("diagnosis", "synthesis", n.test) and the test split's are kept under "test_split"."""
    last = (
        trainer.selections[-1] if trainer.selections else {"best_epoch": None, "metric": None, "value": None}
    )
    metrics: dict[str, Any] = {
        "diagnosis": test.diagnosis,
        "synthesis": test.synthesis,
        "selection": {
            "best_epoch": last["best_epoch"],
            "metric": last["metric"],
            "value": last["value"],
            "threshold": threshold,
        },
        "stages": trainer.selections,
        "n": _split_sizes(pipeline, coupling),
        "task": run.task,
        "method": dict(run.raw["method"]),
        "seed": run.raw["seed"],
    }
    if held_out is not None:
        headline = summary(held_out.evaluation)
        metrics["test_split"] = {"diagnosis": test.diagnosis, "synthesis": test.synthesis}
        metrics["n"]["test_split"] = metrics["n"]["test"]
        metrics["n"]["test"] = headline["n"]["test"]
        metrics["diagnosis"], metrics["synthesis"] = headline["diagnosis"], headline["synthesis"]
        metrics["test_set"] = {
            "cohort": HELD_OUT,
            "subjects": held_out.subjects,
            "phantom_seed": held_out.phantom_seed,
        }
    return metrics


def _split_sizes(pipeline: DevicePipeline, coupling: Coupling) -> dict[str, int]:
    """metrics.json "n": the subjects the diagnoser trained on, selected on and was tested on.

    Training counts the labelled subjects of the task's classes only: the unlabelled ones
    (other diagnoses, or labels withheld) train a generator, never the diagnoser, and the
    corrected resampled t-test reads n_test / n_train as the diagnoser's overlap
    (:mod:`cdsf_bench.bench.answers`); data.json's "unlabelled" counts them.
    """
    rows = {name: pipeline.rows(name, coupling.subjects) for name in ("train", "val", "test")}
    rows["train"] = rows["train"][pipeline.labelled_np[rows["train"]]]
    return {name: int(len(chosen)) for name, chosen in rows.items()}


def _write_test_outputs(
    folder: RunFolder,
    run: RunConfig,
    cohort: Cohort,
    history: list[dict],
    test: Evaluation,
    held_out: HeldOut | None = None,
) -> None:
    """predictions.csv, reliability.csv, the figures and the synthetic PET of the test split.

    With a held-out phantom cohort, predictions.csv, the ROC and the reliability bins are the
    held-out cohort's and the test split's table is predictions_test_split.csv; the synthetic
    PET stays the test split's.
    """
    predictions = prediction_table(test.predictions, cohort)
    if held_out is not None:
        folder.write_predictions(predictions, test_split=True)
        predictions = held_out.table
    folder.write_predictions(predictions)
    roc_figure(
        {run.method.coupling: (predictions["label"].to_numpy(), predictions["probability"].to_numpy())},
        folder.figure("roc"),
        f"{run.task} test ROC",
    )
    reliability = reliability_table(predictions["label"].to_numpy(), predictions["probability"].to_numpy())
    folder.write_reliability(reliability)
    reliability_diagram(reliability, folder.figure("reliability"), f"{run.task} test reliability")
    if history:
        learning_curves(pd.DataFrame(history), folder.figure("learning_curves"))
    if not test.synthetic:
        return
    participants = cohort.participants["participant_id"]
    suvr_max = run.data.pet_suvr_max
    if run.evaluate.save_synthetic:
        for row, volume in test.synthetic.items():
            suvr = (volume + 1.0) / 2.0 * suvr_max
            # every cohort is resampled onto the MNI reference grid (cdsf_bench.data.grid)
            folder.write_synthetic_pet(participants.iloc[row], suvr, cohort.affine, mni=True)
            if run.evaluate.native_space:
                mri = str(cohort.participants["mri"].iloc[row])
                folder.write_native_pet(participants.iloc[row], to_native(suvr, cohort.affine, mri))
    slice_montage(_montage(cohort, test.synthetic), folder.figure("montage"), cohort.affine, suvr_max)


def _montage(cohort: Cohort, synthetic: dict[int, np.ndarray]) -> list[dict[str, Any]]:
    """Up to four test subjects: half with acquired PET, half whose PET was withheld."""
    rows = list(synthetic)
    acquired = [r for r in rows if cohort.has_pet[r]]
    withheld = [r for r in rows if not cohort.has_pet[r]]
    half = MONTAGE_SUBJECTS // 2
    picked = acquired[:half] + withheld[: MONTAGE_SUBJECTS - min(half, len(acquired))]
    shown = []
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
                "synthetic": synthetic[row],
            }
        )
    return shown
