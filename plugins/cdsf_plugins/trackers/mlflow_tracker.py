"""The MLflow tracker, through ``MlflowClient`` (no global active run: a suite's run stays
open while its children are made, and nothing leaks into a user's own ``mlflow.start_run``).

A child run carries MLflow's ``mlflow.parentRunId`` tag, which the MLflow UI nests under the
parent. Parameters go in batches of MLflow's limit, values cut to its maximum length.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from cdsf_plugins.trackers._extra import missing

try:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
except ImportError as error:  # the factory turns this into exit 2 naming the extra
    raise missing("mlflow", "mlflow-skinny", error) from None

#: MLflow's limits on one log_batch call and on a parameter's value
BATCH = 100
VALUE_LENGTH = 6000

T = TypeVar("T")


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class MlflowTracker:
    """Runs in experiment ``experiment`` of the store at ``uri`` (MLflow's default if empty)."""

    def __init__(self, uri: str = "", experiment: str = "cdsf-bench") -> None:
        try:
            self.client = MlflowClient(tracking_uri=uri or None)
        except ImportError as error:  # the SQLite store's sqlalchemy and alembic, say
            raise missing("mlflow", "mlflow-skinny (with sqlalchemy and alembic)", error) from None
        self.experiment = experiment
        self._runs: list[str] = []

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        return found.experiment_id if found is not None else self.client.create_experiment(self.experiment)

    def start(
        self, run_name: str, params: dict[str, Any], tags: dict[str, str], parent: str | None, folder: Path
    ) -> str:
        all_tags = dict(tags)
        if parent:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent
        run = self.client.create_run(self._experiment_id(), tags=all_tags, run_name=run_name)
        run_id = run.info.run_id
        self._runs.append(run_id)
        entries = [Param(key, str(value)[:VALUE_LENGTH]) for key, value in params.items()]
        for chunk in _chunks(entries, BATCH):
            self.client.log_batch(run_id, params=chunk)
        return run_id

    def _metrics(self, metrics: dict[str, float], step: int) -> None:
        stamp = int(time.time() * 1000)
        entries = [Metric(key, value, stamp, step) for key, value in metrics.items()]
        for chunk in _chunks(entries, BATCH):
            self.client.log_batch(self._runs[-1], metrics=chunk)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self._metrics(metrics, epoch)

    def finish(self, metrics: dict[str, float], artefacts: list[Path], folder: Path, status: str) -> None:
        run_id = self._runs[-1]
        try:
            self._metrics(metrics, 0)
            for path in artefacts:
                where = Path(path).resolve().relative_to(Path(folder).resolve()).parent
                self.client.log_artifact(run_id, str(path), None if where == Path(".") else where.as_posix())
            self.client.set_terminated(run_id, status)
        finally:
            self._runs.pop()
