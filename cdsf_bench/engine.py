"""The training engine: runs a coupling's stages, selects on validation, checkpoints, resumes.

It knows no model. For each stage it draws batches from the pipeline, calls the stage's
step, evaluates the coupling's predictions on the validation split after every epoch,
keeps the best modules by the stage's selection metric (an exact tie broken by the
validation Brier score, ``metrics.SELECTION_TIE_BREAK``), stops early, and restores the best
state at the end of the stage. The test split is never touched here.

A checkpoint (the run folder's ``checkpoint_path``) is written atomically after every epoch
with every module, optimiser and scheduler, the best state so far, the history and the RNG state;
batch order and augmentation depend only on (seed, epoch), so a resumed run continues
exactly where the killed one would have gone. The checkpoint a finished run leaves holds the
selected modules and the training PET mean, everything ``cdsf-bench predict`` needs to
rebuild the trained model (``cdsf_bench.predict.trained``); ``format`` says which layout it is
(``cdsf_bench.checkpoints``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.progress import Progress

from cdsf_bench import batchnorm, distributed
from cdsf_bench.checkpoints import CHECKPOINT_FORMAT, check_format, load_modules
from cdsf_bench.data.pipeline import DevicePipeline
from cdsf_bench.data.regions import hypometabolism_masks
from cdsf_bench.distributed import SINGLE_PROCESS, Cluster
from cdsf_bench.errors import InputError, RunFailed
from cdsf_bench.interfaces import Batch, Coupling, Prediction, TrainingStage
from cdsf_bench.metrics import (
    HIGHER_IS_BETTER,
    SELECTION_TIE_BREAK,
    diagnosis_metrics,
    disease_synthesis_from_table,
    mean_synthesis,
    regional_uptake_columns,
    synthesis_metrics,
)
from cdsf_bench.progress import DONE_BEFORE, make_progress, print_progress_line
from cdsf_bench.recipe import NO_RECIPE, Averages, Recipe, scaled_learning_rates
from cdsf_bench.results import load_torch, save_torch
from cdsf_bench.run_folder import RunFolder

SYNTHESIS_SELECTION = ("ssim", "psnr", "mae")


@dataclass
class Evaluation:
    """Predictions of one split: a per-subject table, metrics and synthetic volumes."""

    predictions: pd.DataFrame
    diagnosis: dict[str, float]
    synthesis: dict[str, float] | None
    synthetic: dict[int, np.ndarray] = field(default_factory=dict)  # cohort row -> volume


@dataclass(frozen=True)
class EvaluationSettings:
    """What one :func:`evaluate` predicts and how it scores it."""

    split: str
    bootstrap: int = 0  # resamples of the AUC's interval (0: none), drawn from ``seed``
    seed: int = 0
    threshold: float = 0.5  # a subject is classified positive at or above it
    with_ssim: bool = True  # the (costly) 3D SSIM
    # the peers' conventions (cdsf_bench.metric_conventions): the two PSNRs, MONAI's MS-SSIM
    peer_psnr: bool = False
    ms_ssim: bool = False
    keep_synthetic: bool = False  # every synthetic volume kept in the result
    # synthesis also scored against the PET the source withheld (the phantom's), with the uptake
    # in the hypometabolism regions: the final test only, as selection uses what a real cohort has
    score_withheld: bool = False
    groups: tuple[np.ndarray, ...] = ()  # rows batched apart (``DevicePipeline.eval_batches``)


def evaluate(
    coupling: Coupling,
    pipeline: DevicePipeline,
    settings: EvaluationSettings,
    *,
    cluster: Cluster = SINGLE_PROCESS,
    on_synthetic: Callable[[int, np.ndarray], None] | None = None,
    progress: Callable[[Iterable[Batch], int, str], Iterable[Batch]] | None = None,
) -> Evaluation:
    """Predict a split with the coupling and score diagnosis and (where made) synthesis.

    Synthesis is scored against the acquired PET and, as ``settings`` say, also against the
    hidden PET of subjects whose PET is "missing", where the data source keeps it: only the
    final test asks for that, since selection and early stopping use what a real cohort has.
    That PET comes from the pipeline (``DevicePipeline.withheld_pet``) once the coupling has
    predicted: the batches a coupling sees carry it only where the coupling declares it.
    That evaluation also reads the uptake in the hypometabolism regions (per subject in the
    table, ``metrics.disease_synthesis_metrics`` in ``synthesis``). Under torch.distributed
    (``cluster``) each process predicts its share and the records are gathered, one per subject.

    ``on_synthetic(row, volume)`` receives each synthetic PET as soon as its batch is
    predicted and the volume is not kept (a large cohort's volumes need not fit in memory);
    ``progress`` wraps the batch loop as ``progress(batches, count, label)`` (a progress bar).
    """
    split, score_withheld = settings.split, settings.score_withheld
    threshold, groups = settings.threshold, settings.groups
    records: list[dict] = []
    mask = pipeline.brain_mask.cpu().numpy()
    regions = hypometabolism_masks(pipeline.affine, mask) if score_withheld else {}
    modules = coupling.modules()
    was_training = {name: m.training for name, m in modules.items()}
    for module in modules.values():
        module.eval()
    batches: Iterable[Batch] = pipeline.eval_batches(split, coupling.subjects, groups)
    if progress is not None:
        count = pipeline.n_eval_batches(split, coupling.subjects, groups)
        batches = progress(batches, count, f"predicting {split}")
    keep = settings.keep_synthetic or on_synthetic is not None
    with torch.no_grad():
        for batch in batches:
            prediction = coupling.predict(batch)
            if score_withheld:  # the withheld PET joins the batch for scoring only, after the prediction
                batch = dataclasses.replace(batch, pet_truth=pipeline.withheld_pet(batch.index))
            made = _batch_records(
                prediction,
                batch,
                mask,
                settings.with_ssim,
                keep,
                score_withheld,
                regions,
                peer_psnr=settings.peer_psnr,
                ms_ssim=settings.ms_ssim,
            )
            if on_synthetic is not None:
                for record in made:
                    if "volume" in record:
                        on_synthetic(record["row"], record.pop("volume"))
            records.extend(made)
    for name, module in modules.items():
        module.train(was_training[name])
    records = sorted(distributed.gather_records(records, cluster), key=lambda r: r["row"])
    if not records:
        raise InputError(
            f"The {split} split has no subject that this method can use "
            f"({'subjects with real PET' if coupling.subjects == 'with_pet' else 'any subject'}); "
            "add subjects, change split.val / split.test, or choose another method."
        )
    synthetic = {r["row"]: r.pop("volume") for r in records if "volume" in r}
    table = pd.DataFrame(records)
    participants = pipeline.participants
    table.insert(0, "participant_id", participants["participant_id"].to_numpy()[table["row"]])
    table.insert(1, "split", split)
    table["prediction"] = (table["probability"] >= threshold).astype(int)
    diagnosis = diagnosis_metrics(
        table["label"].to_numpy(),
        table["probability"].to_numpy(),
        threshold=threshold,
        bootstrap=settings.bootstrap,
        seed=settings.seed,
        has_pet=table["has_pet"].to_numpy(bool),
    )
    prefix = "synth_"  # a record's synthesis scores: synthesis_metrics' keys, prefixed
    scored = [{k.removeprefix(prefix): v for k, v in r.items() if k.startswith(prefix)} for r in records]
    scored = [scores for scores in scored if scores]
    synthesis = mean_synthesis(scored)
    if synthesis is not None and score_withheld:  # the test's scoring; per-epoch validation has none
        synthesis.update(disease_synthesis_from_table(table, participants, list(regions)) or {})
    return Evaluation(table, diagnosis, synthesis, synthetic)


def _batch_records(
    prediction: Prediction,
    batch: Batch,
    mask: np.ndarray,
    with_ssim: bool,
    keep_synthetic: bool,
    score_withheld: bool,
    regions: Mapping[str, np.ndarray],
    *,
    peer_psnr: bool = False,
    ms_ssim: bool = False,
) -> list[dict[str, Any]]:
    """One record per subject of a predicted batch; each tensor crosses to the host once."""
    rows = batch.index.tolist()
    labels = batch.label.tolist()
    has_pet = batch.has_pet.tolist()
    probability = prediction.probability.float().cpu().numpy()
    synthetic = truth = None
    if prediction.synthetic is not None:
        synthetic = prediction.synthetic[:, 0].float().cpu().numpy()
        withheld_known = score_withheld and batch.pet_truth is not None
        known_truth = batch.pet_truth if withheld_known and batch.pet_truth is not None else batch.pet
        truth = known_truth[:, 0].cpu().numpy()
    records = []
    for i, row in enumerate(rows):
        record: dict[str, Any] = {
            "row": row,
            "label": int(labels[i]),
            "probability": float(probability[i]),
            "pet_source": prediction.pet_source[i],
            "has_pet": int(has_pet[i]),  # acquired PET (1) or not (0): the report's subgroups
        }
        if synthetic is not None and truth is not None:
            if withheld_known or has_pet[i]:
                scores = synthesis_metrics(
                    truth[i], synthetic[i], mask, ssim=with_ssim, peer_psnr=peer_psnr, ms_ssim=ms_ssim
                )
                record.update({f"synth_{k}": v for k, v in scores.items()})
                record.update(regional_uptake_columns(synthetic[i], truth[i], regions))
            if keep_synthetic:
                record["volume"] = synthetic[i]
        records.append(record)
    return records


#: called after every epoch with its stage and its history row (losses, validation metrics)
EpochCallback = Callable[[TrainingStage, dict[str, Any]], None]


class Trainer:
    """Runs the stages of one coupling on one pipeline; writes checkpoints and history.

    ``on_epoch`` is called once an epoch's checkpoint and history are written, so it may
    stop training by raising (``cdsf-bench tune`` prunes a trial that way) and leave a run
    folder that resumes. ``recipe`` adds the engine's remedies around the coupling's steps
    (``cdsf_bench.recipe``; none by default).
    """

    def __init__(
        self,
        coupling: Coupling,
        pipeline: DevicePipeline,
        folder: RunFolder,
        *,
        cluster: Cluster = SINGLE_PROCESS,
        on_epoch: EpochCallback | None = None,
        recipe: Recipe = NO_RECIPE,
    ) -> None:
        self.coupling = coupling
        self.recipe = recipe
        self.pipeline = pipeline
        self.folder = folder
        self.cluster = cluster
        self.on_epoch = on_epoch
        self.stages = coupling.stages()
        for stage in self.stages:
            distributed.synchronise(stage.modules, stage.optimisers, cluster)
        self.history: list[dict] = []
        #: per stage: its best epoch and validation value (metrics.json "selection")
        self.selections: list[dict] = []
        #: the weight averages of the stage in training (``recipe.ema_decay``), checkpointed
        self.averages: Averages | None = None
        self._resumed_averages: dict | None = None

    # -- checkpointing -------------------------------------------------------------------

    def _state(self, stage_index: int, next_epoch: int, best: dict) -> dict:
        averaged = {} if self.averages is None else {"averaged": self.averages.state_dict()}
        return {
            "format": CHECKPOINT_FORMAT,
            # the one input a coupling takes from the training data besides its modules' state
            "train_pet_mean": self.coupling.context.train_pet_mean.detach().cpu(),
            "stage_index": stage_index,
            "next_epoch": next_epoch,
            "best": best,
            "history": self.history,
            "selections": self.selections,
            "torch_rng": torch.get_rng_state(),
            "stages": [
                {
                    "name": s.name,
                    "modules": {k: m.state_dict() for k, m in s.modules.items()},
                    "optimisers": {k: o.state_dict() for k, o in s.optimisers.items()},
                    "schedulers": {k: sc.state_dict() for k, sc in s.schedulers.items()},
                }
                for s in self.stages
            ],
            **averaged,
        }

    def _restore(self, state: dict) -> None:
        """Continue from a checkpoint of this run's method (else an InputError naming both, see
        ``cdsf_bench.checkpoints``)."""
        check_format(state, self.folder.checkpoint_path)
        load_modules(self.stages, state, self.folder.checkpoint_path)
        for stage, saved in zip(self.stages, state["stages"], strict=True):
            for key, optimiser in stage.optimisers.items():
                optimiser.load_state_dict(saved["optimisers"][key])
            for key, scheduler in stage.schedulers.items():
                scheduler.load_state_dict(saved["schedulers"][key])
        self.history = list(state["history"])
        self.selections = list(state["selections"])
        self._resumed_averages = state.get("averaged")
        torch.set_rng_state(state["torch_rng"])

    def _save(self, state: dict) -> None:
        """Write the checkpoint (rank 0 only: every process holds the same weights)."""
        if self.cluster.is_main:
            save_torch(self.folder.checkpoint_path, state)

    # -- training ------------------------------------------------------------------------

    def fit(self, resume: bool = False) -> list[dict]:
        """Train every stage; with ``resume``, continue from the last checkpoint."""
        start_stage, start_epoch, best = 0, 0, _fresh_best()
        if resume and self.folder.checkpoint_path.exists():
            state = load_torch(self.folder.checkpoint_path)
            self._restore(state)
            start_stage, start_epoch, best = state["stage_index"], state["next_epoch"], state["best"]
        with make_progress(enabled=self.cluster.is_main) as progress:
            for index, stage in enumerate(self.stages):
                if index < start_stage:
                    continue
                first_epoch = start_epoch if index == start_stage else 0
                if index != start_stage:
                    best = _fresh_best()
                self._run_stage(index, stage, first_epoch, best, progress)
        return self.history

    def _run_stage(
        self, index: int, stage: TrainingStage, first_epoch: int, best: dict, progress: Progress
    ) -> None:
        higher = HIGHER_IS_BETTER[stage.select_on]
        tie_break = SELECTION_TIE_BREAK.get(stage.select_on)
        tie_higher = HIGHER_IS_BETTER[tie_break] if tie_break is not None else True
        patience = stage.patience
        label = f"{stage.name} ({index + 1}/{len(self.stages)})"
        fields: dict[str, Any] = {"status": "", DONE_BEFORE: first_epoch}  # a resumed stage's epochs
        epochs_task = progress.add_task(
            f"{label} epochs", total=stage.epochs, completed=first_epoch, **fields
        )
        n_batches = self.pipeline.n_train_batches(stage.subjects, stage.labels)
        batch_task = progress.add_task("  batches", total=n_batches, status="")
        recipe = self.recipe
        self.averages = Averages(stage.modules, recipe.ema_decay) if recipe.ema_decay else None
        if self.averages is not None and first_epoch and self._resumed_averages is not None:
            self.averages.load_state_dict(self._resumed_averages)
        for epoch in range(first_epoch, stage.epochs):
            if best["stale"] is not None and patience is not None and best["stale"] > patience:
                break
            started = time.perf_counter()
            for module in stage.modules.values():
                module.train()
            if stage.begin_epoch is not None:
                stage.begin_epoch(epoch)
            sums: dict[str, float] = {}
            progress.reset(batch_task, total=n_batches)
            for step, batch in enumerate(self.pipeline.train_batches(epoch, stage.subjects, stage.labels)):
                with scaled_learning_rates(stage.optimisers, recipe.warmup_factor(epoch, step, n_batches)):
                    losses = _to_floats(stage.step(batch))
                if self.averages is not None:
                    self.averages.update()
                for key, value in losses.items():
                    if not math.isfinite(value):
                        self._fail(stage, epoch, step, key, value)
                    sums[key] = sums.get(key, 0.0) + value
                progress.update(batch_task, advance=1, status=_fmt(losses))
            for scheduler in stage.schedulers.values():
                scheduler.step()
            sums = distributed.average_scalars(sums, self.cluster)
            train_losses = {f"train_{k}": v / n_batches for k, v in sums.items()}
            with self.averages.swapped_in() if self.averages is not None else contextlib.nullcontext():
                val = self._validate(stage)
                value = val[f"val_{stage.select_on}"]
                tie = val.get(f"val_{tie_break}") if tie_break is not None else None
                improved = _improves(value, tie, best, higher, tie_higher)
                if improved:
                    best = {
                        "value": value,
                        "tie": tie,
                        "epoch": epoch,
                        "stale": 0,
                        "modules": {k: copy.deepcopy(m.state_dict()) for k, m in stage.modules.items()},
                    }
                elif recipe.counts_towards_patience(stage.select_on, best["value"]):
                    best["stale"] = (best["stale"] or 0) + 1
            row = {
                "stage": stage.name,
                "epoch": epoch,
                **train_losses,
                **val,
                "selected": improved,
                "seconds": round(time.perf_counter() - started, 3),
            }
            self.history.append(row)
            self._save(self._state(index, epoch + 1, best))
            self.folder.write_history(self.history)
            best_value = best["value"] if best["value"] is not None else float("nan")
            status = f"val {stage.select_on} {value:.3f} (best {best_value:.3f} @ {best['epoch']})"
            progress.update(epochs_task, advance=1, status=status)
            print_progress_line(progress, epochs_task)
            if self.on_epoch is not None:
                self.on_epoch(stage, row)
        progress.update(batch_task, visible=False)
        if best["modules"] is not None:
            for key, module in stage.modules.items():
                module.load_state_dict(best["modules"][key])
        self.averages = None
        reestimated = {}
        if recipe.batchnorm_reestimation:
            layers = batchnorm.reestimate(self.coupling, self.pipeline, stage.modules, stage.subjects)
            reestimated = {"batchnorm_reestimated": layers}
        stage_summary = {
            "stage": stage.name,
            "best_epoch": best["epoch"],
            "metric": stage.select_on,
            "value": best["value"],
            "tie_break": tie_break,
            "tie_break_value": best.get("tie"),
            **reestimated,
        }
        self.selections.append(stage_summary)
        # the next stage starts from here: record it so a resume does not repeat this stage
        self._save(self._state(index + 1, 0, _fresh_best()))

    def _validate(self, stage: TrainingStage) -> dict[str, float]:
        with_ssim = stage.select_on == "ssim"
        result = evaluate(
            self.coupling, self.pipeline, EvaluationSettings("val", with_ssim=with_ssim), cluster=self.cluster
        )
        out = {f"val_{k}": result.diagnosis[k] for k in ("auc", "bacc", "mcc", "brier")}
        if result.synthesis is not None:
            out.update(
                {f"val_{k}": v for k, v in result.synthesis.items() if not (k == "ssim" and not with_ssim)}
            )
        if f"val_{stage.select_on}" not in out:
            raise RunFailed(
                f"Stage '{stage.name}' selects on {stage.select_on}, which its validation does not "
                "produce (synthesis metrics need a synthesiser and validation subjects with PET)."
            )
        return out

    def _fail(self, stage: TrainingStage, epoch: int, step: int, key: str, value: float) -> None:
        # a checkpoint exists only once an epoch has finished; never claim one that is not there
        kept = self.folder.checkpoint_path if self.folder.checkpoint_path.exists() else None
        record = {
            "stage": stage.name,
            "epoch": epoch,
            "step": step,
            "loss": key,
            "value": str(value),
            "checkpoint": None if kept is None else str(kept),
        }
        self.folder.write_failure(record)
        saved = (
            f"The checkpoint of the last good epoch is kept at {kept}"
            if kept is not None
            else "No epoch finished before it, so there is no checkpoint to keep"
        )
        raise RunFailed(
            f"Loss '{key}' became {value} in stage '{stage.name}', epoch {epoch}, step {step}. "
            f"{saved}; the failure is recorded in {self.folder.failure_path}. "
            "Lower the learning rate (--set train.learning_rate=...) or check the data, then rerun."
        )


def _fresh_best() -> dict:
    return {"value": None, "tie": None, "epoch": None, "stale": None, "modules": None}


def _improves(value: float, tie: float | None, best: dict, higher: bool, tie_higher: bool) -> bool:
    """Whether an epoch's validation beats the best so far: by the selection metric, or, where
    it ties exactly, by the tie-break metric (metrics.SELECTION_TIE_BREAK). A non-finite value
    never improves; a tie without a finite tie-break value (none defined, or a checkpoint
    written before tie-breaks) keeps the earlier epoch."""
    if not math.isfinite(value):
        return False
    if best["value"] is None:
        return True
    if value != best["value"]:
        return value > best["value"] if higher else value < best["value"]
    earlier = best.get("tie")
    if tie is None or earlier is None or not math.isfinite(tie):
        return False
    return tie > earlier if tie_higher else tie < earlier


def _to_floats(losses: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """A step's loss tensors as Python floats, with one device synchronisation for them all.

    A step may return values on the host beside losses on the GPU (a flag made with
    ``torch.tensor``): the values are read one stack per device, so the GPU's are read in one
    synchronisation and the host's in none, and tensors of two devices are never stacked.
    """
    read: dict[str, float] = {}
    for device in {value.device for value in losses.values()}:
        keys = [key for key, value in losses.items() if value.device == device]
        values = torch.stack([losses[key].detach().float().reshape(()) for key in keys]).tolist()
        read.update(zip(keys, values, strict=True))
    return {key: read[key] for key in losses}


def _fmt(losses: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.3f}" for k, v in list(losses.items())[:4])
