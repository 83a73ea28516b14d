"""The built-in experiment trackers: MLflow and TensorBoard.

Each is an ordinary ``cdsf_bench_trackers`` component. Its library is imported only when
the tracker is selected (``--track mlflow``), inside the factory; a library that is not
installed fails there with the extra to install (exit 2), before any data are read.
"""

from __future__ import annotations

from cdsf_bench.hookspecs import hookimpl
from cdsf_bench.interfaces import Component
from cdsf_bench.tracking import Tracker


def mlflow(uri: str = "", experiment: str = "cdsf-bench") -> Tracker:
    """MLflow: ``uri`` is any tracking URI (a server, ``sqlite:///mlflow.db``, a folder);
    empty, MLflow's own choice ($MLFLOW_TRACKING_URI, else ``./mlruns``)."""
    from cdsf_plugins.trackers.mlflow_tracker import MlflowTracker

    return MlflowTracker(uri=uri, experiment=experiment)


def tensorboard(subfolder: str = "tensorboard") -> Tracker:
    """TensorBoard event files in ``<run folder>/<subfolder>`` (a suite's in its own folder)."""
    from cdsf_plugins.trackers.tensorboard_tracker import TensorBoardTracker

    return TensorBoardTracker(subfolder=subfolder)


@hookimpl
def cdsf_bench_trackers() -> list[Component]:
    return [
        Component("mlflow", mlflow, "MLflow runs: parameters, per-epoch metrics, test metrics, artefacts"),
        Component("tensorboard", tensorboard, "TensorBoard event files in the run folder"),
    ]
