"""The run protocol: everything before training, in one order, and the training itself.

``cdsf-bench run``, every trial of a tuning study and anything else that trains go through
these steps, so that one configuration trains the same networks on the same batches
wherever it is trained:

1. :func:`seed`: torch and NumPy seeded by the run's seed and the device's kernels chosen,
   before anything draws a random number (the networks' initial weights do);
2. :func:`load`: the preflight (rows, files, headers, the task: every problem raised
   together before a volume is read), the cohort (under torchrun rank 0 fills the cache
   first, the others then read it) and the subject-level split of the task's subjects,
   leak-checked; a study loads it once for all its trials;
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
import torch

from cdsf_bench import distributed
from cdsf_bench.assemble import Assembly, assemble, configure_backends, load_cohort, split_cohort
from cdsf_bench.checkpoints import check_format, load_modules
from cdsf_bench.data.labels import UNLABELLED
from cdsf_bench.data.sources import PhantomSource
from cdsf_bench.data.splits import Splits
from cdsf_bench.distributed import SINGLE_PROCESS, Cluster
from cdsf_bench.engine import EpochCallback, Trainer
from cdsf_bench.interfaces import Cohort
from cdsf_bench.preflight import refuse_early
from cdsf_bench.registry import Registry
from cdsf_bench.results import load_torch
from cdsf_bench.run_folder import RunFolder
from cdsf_bench.settings import RunConfig

SPLITS = ("train", "val", "test")


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


def load(run: RunConfig, registry: Registry, cluster: Cluster = SINGLE_PROCESS) -> CohortSplit:
    """The preflight, then the cohort and its split; a refused cohort costs seconds and writes nothing."""
    refuse_early(run, registry)
    started = time.perf_counter()
    if not cluster.is_main:
        distributed.barrier(cluster)  # rank 0 fills the cache first; the others then read it
    cohort, source = load_cohort(run, registry)
    if cluster.is_main:
        distributed.barrier(cluster)
    seconds = time.perf_counter() - started
    cohort, labels, splits, leak = split_cohort(run, cohort)
    return CohortSplit(cohort, labels, splits, leak, source, seconds)


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
    }
