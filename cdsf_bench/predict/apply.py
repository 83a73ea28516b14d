"""A trained model applied to a cohort: the one path of ``predict``, ``test_data`` and held-out sets.

``cdsf-bench predict``, a suite's external validation (``test_data``) and a run's held-out
phantom cohort (``evaluate.phantom_test_subjects``) all go through :func:`prepare` and
:meth:`Application.predict`: the cohort is read by the run's data settings (its grid and
intensity mapping; a file cohort on any grid is resampled onto the run's by the same
preprocessing), the model is rebuilt from the run folder's checkpoint, and every subject is
predicted by ``engine.evaluate``, as the run predicted its test split: real PET where it was
acquired, synthetic otherwise, as the method does, classified at the run's
validation-chosen threshold. Only the data settings that choose *which* subjects are read
may differ from the run's (another phantom seed or site, a CAPS session); those that define
the preprocessing may not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cdsf_bench import config as cfg
from cdsf_bench.assemble import Assembly, load_cohort
from cdsf_bench.data.labels import task_cohort
from cdsf_bench.engine import Evaluation, EvaluationSettings, evaluate
from cdsf_bench.interfaces import Batch, Cohort
from cdsf_bench.predict.settings import check_data_assignments
from cdsf_bench.predict.trained import TrainedModel, load_trained, rebuild
from cdsf_bench.registry import Registry
from cdsf_bench.run_folder import RunFolder
from cdsf_bench.settings import RunConfig

#: The held-out phantom cohort's seed is the training cohort's plus this: disjoint from every
#: seed a user gives (below 2**31), and so from every training cohort of a suite's replicates.
HELD_OUT_SEED_OFFSET = 2**31
#: The held-out validation cohort's seed is the training cohort's plus this: above every
#: training seed (at most ``ranges.MAX_SEED``) and every held-out test seed (at most
#: ``HELD_OUT_SEED_OFFSET + MAX_SEED`` < 2**33), so the three cohorts never share a seed.
VALIDATION_SEED_OFFSET = 2**33
#: The ``split`` column of a held-out cohort's predictions.
HELD_OUT = "held_out"


def source_config(base: RunConfig, spec: str, assignments: tuple[str, ...], registry: Registry) -> RunConfig:
    """The run's configuration reading the cohort ``spec`` with the data ``assignments`` on top.

    The run's own held-out phantom cohorts (``evaluate.phantom_test_subjects`` and
    ``evaluate.phantom_val_subjects``) are no part of a prediction: the cohort predicted is
    ``spec``, phantom or not.
    """
    check_data_assignments(assignments, "--set")
    flags = {"data.spec": spec, "evaluate.phantom_test_subjects": 0, "evaluate.phantom_val_subjects": 0}
    return cfg.resolve(registry, None, assignments, flags=flags, base=base)


def held_out_config(run: RunConfig) -> RunConfig:
    """The run's phantom settings with ``evaluate.phantom_test_subjects`` subjects and a disjoint seed.

    Same generative model, missing-PET rate and grid as the training cohort; only the
    cohort's size and its seed (``HELD_OUT_SEED_OFFSET`` above the training seed) differ.
    """
    return run.with_data(
        subjects=run.evaluate.phantom_test_subjects, phantom_seed=run.data.phantom_seed + HELD_OUT_SEED_OFFSET
    )


def validation_config(run: RunConfig) -> RunConfig:
    """The run's phantom settings with ``evaluate.phantom_val_subjects`` subjects and a disjoint seed.

    Drawn as :func:`held_out_config` draws the test cohort, ``VALIDATION_SEED_OFFSET`` above
    the training seed; the protocol makes it the run's validation split.
    """
    return run.with_data(
        subjects=run.evaluate.phantom_val_subjects,
        phantom_seed=run.data.phantom_seed + VALIDATION_SEED_OFFSET,
    )


@dataclass
class Application:
    """A trained model rebuilt for one cohort, every check passed: what remains is to predict."""

    model: TrainedModel
    config: RunConfig  # the run's, reading this cohort
    cohort: Cohort  # the task's subjects of the cohort
    labels: np.ndarray
    source: str  # the data source's name
    assembly: Assembly
    #: subjects of the cohort outside the task's two classes, which the model does not predict
    skipped: int = 0
    #: cohort rows batched apart from the rest: the run's own test subjects, in its order
    groups: tuple[np.ndarray, ...] = ()

    def predict(
        self,
        *,
        on_synthetic: Callable[[int, np.ndarray], None] | None = None,
        progress: Callable[[Iterable[Batch], int, str], Iterable[Batch]] | None = None,
    ) -> Evaluation:
        """Every subject the method predicts, scored as the run's test split was."""
        run = self.config
        settings = EvaluationSettings(
            "test",
            bootstrap=run.evaluate.bootstrap,
            seed=run.seed,
            threshold=self.model.threshold,
            score_withheld=True,
            groups=self.groups,
        )
        return evaluate(
            self.assembly.coupling,
            self.assembly.pipeline,
            settings,
            on_synthetic=on_synthetic,
            progress=progress,
        )

    def table(self, evaluation: Evaluation, split: str) -> pd.DataFrame:
        """The per-subject predictions as predictions.csv holds them, ``split`` naming the cohort."""
        return prediction_table(evaluation.predictions, self.cohort, split)


def prediction_table(predictions: pd.DataFrame, cohort: Cohort, split: str | None = None) -> pd.DataFrame:
    """``evaluate``'s table with each subject's diagnosis and without the cohort row; with
    ``split``, the split column names the cohort the subjects came from instead."""
    table = predictions.copy()
    table.insert(2, "diagnosis", cohort.participants["diagnosis"].to_numpy()[table["row"]])
    if split is not None:
        table["split"] = split
    return table.drop(columns=["row"])


def prepare(model: TrainedModel, registry: Registry, config: RunConfig, device: torch.device) -> Application:
    """Read the cohort ``config`` names and rebuild ``model`` for it; every refusal happens here."""
    cohort, source = load_cohort(config, registry)
    task = model.config.task
    everyone = len(cohort)
    cohort, labels = task_cohort(cohort, task)
    assembly = rebuild(model, registry, cohort, labels, device)
    groups = (run_test_rows(model, cohort),) if config.raw["data"] == model.config.raw["data"] else ()
    return Application(model, config, cohort, labels, source, assembly, everyone - len(cohort), groups)


def run_test_rows(model: TrainedModel, cohort: Cohort) -> np.ndarray:
    """The rows of ``cohort`` that were the run's test split, in the order the run batched them.

    Only for the run's own cohort (same data settings): predicting them in the run's batches
    repeats the run's test predictions bit for bit, since a convolution rounds by batch.
    """
    rows = {participant: row for row, participant in enumerate(cohort.participants["participant_id"])}
    tested = RunFolder(model.folder).test_participants()
    return np.array([rows[p] for p in tested if p in rows], dtype=np.int64)


def summary(evaluation: Evaluation) -> dict[str, Any]:
    """The metrics of a predicted cohort as metrics.json and results tables hold them."""
    return {
        "diagnosis": evaluation.diagnosis,
        "synthesis": evaluation.synthesis,
        "n": {"test": int(len(evaluation.predictions))},
    }


@dataclass
class HeldOut:
    """A run's held-out phantom cohort, predicted: the metrics and the predictions.csv table."""

    evaluation: Evaluation
    table: pd.DataFrame
    subjects: int
    phantom_seed: int


def predict_held_out(
    folder: Path, run: RunConfig, threshold: float, registry: Registry, device: torch.device
) -> HeldOut:
    """Predict the held-out phantom cohort with the model the run in ``folder`` just selected.

    Read back from the run's checkpoint, like ``cdsf-bench predict`` does: the held-out
    cohort is scored by exactly the path any later cohort would be.
    """
    from cdsf_bench.progress import track

    model = load_trained(folder, registry, threshold=threshold)
    held = held_out_config(run)
    application = prepare(model, registry, held, device)
    evaluation = application.predict(progress=track)
    data = held.data
    return HeldOut(evaluation, application.table(evaluation, HELD_OUT), data.subjects, data.phantom_seed)
