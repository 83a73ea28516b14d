"""The run protocol: everything before training, in one order, and the training itself.

``cdsf-bench run``, every trial of a tuning study and anything else that trains go through
these steps, so that one configuration trains the same networks on the same batches
wherever it is trained:

1. :func:`seed`: torch and NumPy seeded by the run's seed and the device's kernels chosen,
   before anything draws a random number (the networks' initial weights do);
2. :func:`load`: the preflight (rows, files, headers, the task: every problem raised
   together before a volume is read), the cohort (under torchrun rank 0 fills the cache
   first, the others then read it) and the subject-level split of the task's subjects,
   leak-checked; a study loads it once for all its trials. With
   ``evaluate.phantom_val_subjects`` (the phantom only) a fresh cohort of the same
   generative model is the validation split instead (:func:`validate_on`);
3. :func:`prepare`: step 1, step 2 (unless the cohort is given), then ``assemble``;
4. :func:`train`: the engine's fit, resumed from the folder's checkpoint when asked.

:func:`data_record` is what a run folder's data.json says about the cohort and its split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cdsf_bench import distributed
from cdsf_bench.assemble import Assembly, assemble, configure_backends, load_cohort, split_cohort
from cdsf_bench.checkpoints import check_format, load_modules
from cdsf_bench.data.labels import UNLABELLED, task_cohort
from cdsf_bench.data.sources import PhantomSource
from cdsf_bench.data.splits import Splits, check_no_leak
from cdsf_bench.distributed import SINGLE_PROCESS, Cluster
from cdsf_bench.engine import EpochCallback, Trainer
from cdsf_bench.errors import InputError
from cdsf_bench.interfaces import Cohort
from cdsf_bench.predict.apply import validation_config
from cdsf_bench.preflight import refuse_early
from cdsf_bench.registry import Registry
from cdsf_bench.results import load_torch
from cdsf_bench.run_folder import RunFolder
from cdsf_bench.settings import RunConfig

SPLITS = ("train", "val", "test")
#: what a held-out validation cohort's participant ids start with: phantom ids count from
#: sub-0001 in every cohort, so without it a validation subject could share a training id
VALIDATION_ID_PREFIX = "val-"


def seed(run: RunConfig, device: torch.device) -> None:
    """Seed torch and NumPy by the run's initialisation seed (``seeds.init``, by default the
    run's seed) and choose the device's kernels."""
    init = run.seed_of("init")
    torch.manual_seed(init)
    np.random.seed(init % 2**32)
    configure_backends(device)


@dataclass
class CohortSplit:
    """The subjects a run keeps, their labels, their split, and where they were read from."""

    cohort: Cohort
    labels: np.ndarray
    splits: Splits
    leak: dict[str, Any]  # the leak check's record (data.json "leak_check")
    source: str  # the data source's name
    seconds: float  # reading (or preprocessing) the cohort took
    #: the held-out validation cohort that replaced the split's validation subjects (data.json
    #: "validation_cohort"); None: the split's own validate
    validation: dict[str, Any] | None = None


def load(run: RunConfig, registry: Registry, cluster: Cluster = SINGLE_PROCESS) -> CohortSplit:
    """The preflight, then the cohort and its split; a refused cohort costs seconds and writes nothing."""
    refuse_early(run, registry)
    started = time.perf_counter()
    if not cluster.is_main:
        distributed.barrier(cluster)  # rank 0 fills the cache first; the others then read it
    cohort, source = load_cohort(run, registry)
    held = None
    if run.evaluate.phantom_val_subjects:
        settings = validation_config(run)
        held = (load_cohort(settings, registry)[0], settings.data.phantom_seed)
    if cluster.is_main:
        distributed.barrier(cluster)
    seconds = time.perf_counter() - started
    cohort, labels, splits, leak = split_cohort(run, cohort)
    data = CohortSplit(cohort, labels, splits, leak, source, seconds)
    return data if held is None else validate_on(data, *held, run.task)


def validate_on(data: CohortSplit, validating: Cohort, phantom_seed: int, task: str) -> CohortSplit:
    """``data`` with its validation split replaced by the task's subjects of ``validating``.

    The held-out validation cohort comes from the same generative model under its own seed
    (``predict.apply.validation_config``), so selection sees other people than training
    and test. Its ids get ``VALIDATION_ID_PREFIX``; every one of its task's subjects
    validates, whatever its ``labelled`` flag (labels scored, never trained on), as in the
    held-out test cohort. The split's train and test subjects stay, in their order (the
    training batches and the test split are the split's); its validation subjects leave
    the cohort: they neither validate nor train, so the training set is the one the split
    gives. The joined split is leak-checked again.
    """
    cohort, labels, splits = data.cohort, data.labels, data.splits
    extra, extra_labels = task_cohort(validating, task)
    counts = np.bincount(extra_labels, minlength=2)
    if counts.min() == 0:
        raise InputError(
            f"evaluate.phantom_val_subjects: the validation cohort's {len(validating)} subjects hold "
            f"{counts[0]} and {counts[1]} of the task's two classes; validation needs both. "
            "Draw more subjects."
        )
    keep = np.sort(np.concatenate([splits.train, splits.test]))
    kept = cohort.subset(keep)
    participants = extra.participants.copy()
    participants["participant_id"] = VALIDATION_ID_PREFIX + participants["participant_id"].astype(str)
    joined = Cohort(
        participants=pd.concat([kept.participants, participants], ignore_index=True),
        mri=np.concatenate([np.asarray(kept.mri), np.asarray(extra.mri)]),
        pet=np.concatenate([np.asarray(kept.pet), np.asarray(extra.pet)]),
        has_pet=np.concatenate([kept.has_pet, extra.has_pet]),
        affine=kept.affine,
        brain_mask=kept.brain_mask,
        pet_truth=_stacked(kept.pet_truth, extra.pet_truth),
        pet_expected=_stacked(kept.pet_expected, extra.pet_expected),
        source=kept.source,
        extra=kept.extra,
    )
    joined_splits = Splits(
        np.searchsorted(keep, splits.train),
        np.arange(len(keep), len(joined)),
        np.searchsorted(keep, splits.test),
    )
    leak = check_no_leak(joined.participants, joined_splits)
    record = {
        "subjects": len(validating),
        "phantom_seed": phantom_seed,
        "validating": len(extra),
        "split_val_unused": len(splits.val),
    }
    return CohortSplit(
        joined,
        np.concatenate([labels[keep], extra_labels]),
        joined_splits,
        leak,
        data.source,
        data.seconds,
        record,
    )


def _stacked(first: np.ndarray | None, second: np.ndarray | None) -> np.ndarray | None:
    """Two cohorts' hidden volumes one after the other; None unless both cohorts hold them."""
    if first is None or second is None:
        return None
    return np.concatenate([np.asarray(first), np.asarray(second)])


@dataclass
class Prepared:
    """What trains, and the cohort it trains on."""

    data: CohortSplit
    assembly: Assembly


def prepare(
    run: RunConfig,
    registry: Registry,
    device: torch.device,
    cluster: Cluster = SINGLE_PROCESS,
    data: CohortSplit | None = None,
) -> Prepared:
    """Seed, read and split the cohort (unless ``data`` gives it), and assemble what trains."""
    seed(run, device)
    if data is None:
        data = load(run, registry, cluster)
    assembly = assemble(run, registry, data.cohort, data.labels, data.splits, device, cluster)
    return Prepared(data, assembly)


def earlier_history(folder: Path) -> list[dict[str, Any]]:
    """The epochs that the checkpoint in ``folder`` holds, which a resumed training continues."""
    path = RunFolder(folder).checkpoint_path
    return list(load_torch(path)["history"]) if path.exists() else []


def check_resumable(assembly: Assembly, folder: RunFolder) -> None:
    """Refuse a checkpoint the run cannot continue (another method's, another version's, damaged)
    before a file of the run folder is written; the trainer reads it again to continue.

    A folder without a checkpoint (killed before its first epoch ended) starts over.
    """
    path = folder.checkpoint_path
    if path.exists():
        state = load_torch(path)
        check_format(state, path)
        load_modules(assembly.coupling.stages(), state, path)


def train(
    assembly: Assembly,
    folder: RunFolder,
    *,
    cluster: Cluster = SINGLE_PROCESS,
    resume: bool = False,
    on_epoch: EpochCallback | None = None,
    replay: bool = False,
) -> Trainer:
    """Train every stage into ``folder`` (``resume``: from its checkpoint); the trainer, fitted.

    ``on_epoch`` sees each epoch's history row as it is written; with ``replay``, a resumed
    training first shows it the epochs the checkpoint holds, as if they ran now.
    """
    coupling, pipeline, recipe = assembly.coupling, assembly.pipeline, assembly.recipe
    trainer = Trainer(coupling, pipeline, folder, cluster=cluster, on_epoch=on_epoch, recipe=recipe)
    if resume and replay and on_epoch is not None:
        stages = {stage.name: stage for stage in trainer.stages}
        for row in earlier_history(folder.path):
            on_epoch(stages[row["stage"]], row)
    trainer.fit(resume=resume)
    return trainer


def data_record(run: RunConfig, data: CohortSplit, assembly: Assembly) -> dict[str, Any]:
    """data.json: the cohort, the split, the subjects of each split and the batch fingerprints."""
    cohort, labels, splits = data.cohort, data.labels, data.splits
    return {
        "source": data.source,
        "description": cohort.source,
        # the cohort's own seed (a suite's replicate seed unless it pins one); None: not the phantom
        "phantom_seed": run.data.phantom_seed if data.source == PhantomSource.name else None,
        "split": {
            "seed": run.seed_of("split"),
            "folds": run.split.folds,
            "fold": run.split.fold if run.split.folds else None,
        },
        "shape": list(cohort.shape),
        "affine": np.asarray(cohort.affine).tolist(),
        "subjects": {name: int(len(splits.rows(name))) for name in SPLITS},
        "with_pet": {name: int(cohort.has_pet[splits.rows(name)].sum()) for name in SPLITS},
        # training subjects whose label no loss reads (data/labels.py); never in val or test
        "unlabelled": {name: int((labels[splits.rows(name)] == UNLABELLED).sum()) for name in SPLITS},
        "synthesis_subjects": run.synthesis_subjects,
        "leak_check": data.leak,
        "fingerprints": assembly.pipeline.fingerprint(),
        "cache_hit": cohort.extra.get("cache_hit"),
        "cache_entry": cohort.extra.get("cache_entry"),
        "load_seconds": round(data.seconds, 2),
        **({} if data.validation is None else {"validation_cohort": data.validation}),
    }
