"""Experiment tracking: what a tracker plugin receives, and the fan-out the core calls.

The core knows no tracker by name. A tracker is a component of the ``cdsf_bench_trackers``
hook (``hookspecs``), chosen with ``--track NAME`` and configured with
``--set track.NAME.KEY=VALUE``; the resolved ``[track]`` section of a run's configuration
holds one table per selected tracker. A run calls, on rank 0 only:

- ``start`` once: the resolved configuration flattened to dotted parameters, the tags
  (method, seed, task, git commit) and the run folder;
- ``log_epoch`` after every epoch: the history row's training losses and validation
  metrics, keyed as in history.csv, at a step that counts epochs over every stage;
- ``finish`` once: the test metrics (``test_auc``, ``test_ssim`` ...) and, as artefacts,
  the run folder's files, figures included (not checkpoints or synthetic volumes: they stay
  in the run folder, whose path is the ``run_folder`` tag).

A suite opens one run of its own first; each run it makes is started while the suite's is
open, so a tracker that nests runs records it as the suite's child. A resumed run
(``--resume``) is tracked as a new run whose steps continue from its checkpoint's epoch.

Tracking never loses a run: :class:`Trackers` catches whatever a backend raises (an
unreachable server, a full disk), warns once per tracker and stops calling that tracker;
the run goes on and writes its folder. Only a tracker that cannot be built (its package
not installed, a bad setting) stops the command, before anything is computed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cdsf_bench.distributed import SINGLE_PROCESS, Cluster
from cdsf_bench.errors import ConfigError
from cdsf_bench.registry import Registry

#: the configuration section that selects and configures trackers
SECTION = "track"


@runtime_checkable
class Tracker(Protocol):
    """One tracking backend. Runs nest: ``finish`` closes the run ``start`` opened last."""

    def start(
        self,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        parent: str | None,
        folder: Path,
    ) -> str:
        """Open a run named ``run_name`` whose files are in ``folder``; return its id.

        ``parent`` is the id this tracker returned for the enclosing run (a suite's), or None.
        """
        ...

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Record one epoch's finite metrics in the open run; ``epoch`` counts from 0 over stages."""
        ...

    def finish(self, metrics: dict[str, float], artefacts: list[Path], folder: Path, status: str) -> None:
        """Record the final metrics and the artefact files, then close the open run.

        ``status`` is ``"FINISHED"`` or ``"FAILED"``; ``folder`` is the run (or suite) folder.
        """
        ...


class Trackers:
    """Every selected tracker behind one object; a tracker that raises is warned about once
    and then left alone, so tracking can never stop a run."""

    def __init__(self, named: Mapping[str, Tracker]) -> None:
        self.named = dict(named)
        #: the runs open now, outermost first: (each tracker's id of it, its folder)
        self._open: list[tuple[dict[str, str | None], Path]] = []
        self._broken: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.named)

    @property
    def depth(self) -> int:
        """How many runs are open (a suite's, then one of its runs)."""
        return len(self._open)

    def _call(self, name: str, what: str, call: Callable[..., Any], *args: Any) -> Any:
        if name in self._broken:
            return None
        try:
            return call(*args)
        except Exception as error:  # any backend fault: the run must go on
            self._broken.add(name)
            warnings.warn(
                f"tracker '{name}' failed in {what} ({type(error).__name__}: {error}); the run goes on "
                f"and writes its folder, but '{name}' records nothing more",
                RuntimeWarning,
                stacklevel=3,
            )
            return None

    def start(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, Any], folder: Path) -> None:
        """Open a run in every tracker, as a child of the run open now, if any."""
        if not self.named:
            return
        parents = self._open[-1][0] if self._open else {}
        ids: dict[str, str | None] = {}
        text_tags = {key: str(value) for key, value in tags.items() if value is not None}
        for name, tracker in self.named.items():
            parent = parents.get(name)
            made = self._call(name, "start", tracker.start, run_name, dict(params), text_tags, parent, folder)
            ids[name] = None if made is None else str(made)
        self._open.append((ids, folder))

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        """One epoch's metrics; what is not a finite number (a stage name, NaN) is left out."""
        finite = _finite(metrics)
        for name, tracker in self.named.items():
            self._call(name, "log_epoch", tracker.log_epoch, epoch, finite)

    def finish(self, metrics: Mapping[str, Any], artefacts: list[Path], status: str = "FINISHED") -> None:
        """Close the innermost open run with its final metrics and artefact files."""
        if not self.named or not self._open:
            return
        _, folder = self._open.pop()
        finite = _finite(metrics)
        for name, tracker in self.named.items():
            self._call(name, "finish", tracker.finish, finite, list(artefacts), folder, status)

    def abandon(self, depth: int) -> None:
        """Close, as failed, every run opened since there were ``depth`` (a run that raised)."""
        while len(self._open) > depth:
            self.finish({}, [], status="FAILED")


def _finite(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }


#: tracking nowhere (holds no state: with no tracker, start and finish do nothing)
NO_TRACKERS = Trackers({})


def open_trackers(
    section: Mapping[str, Mapping[str, Any]], registry: Registry, cluster: Cluster = SINGLE_PROCESS
) -> Trackers:
    """Build the trackers of a resolved ``[track]`` section (name -> settings).

    Only rank 0 builds them (a tracker's store is opened once, not by every process), so a
    tracker whose package is missing stops rank 0, and torchrun the others; the other
    processes track nothing.
    """
    if not cluster.is_main:
        return NO_TRACKERS
    built: dict[str, Tracker] = {}
    for name, settings in section.items():
        tracker = registry.get("tracker", name).factory(**dict(settings))
        if not isinstance(tracker, Tracker):
            raise ConfigError(
                f"Tracker '{name}' built a {type(tracker).__name__}, which lacks start, log_epoch and "
                "finish; its plugin is broken."
            )
        built[name] = tracker
    return Trackers(built)


#: run-folder subfolders too large to copy to a tracker: checkpoints and synthetic volumes
HEAVY = ("checkpoints", "synth")


def run_artefacts(folder: Path) -> list[Path]:
    """The files of a run folder a tracker keeps: all but checkpoints and volumes."""
    return sorted(
        path
        for path in Path(folder).rglob("*")
        if path.is_file() and path.relative_to(folder).parts[0] not in HEAVY and not path.name.startswith(".")
    )


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested configuration as dotted keys (``train.epochs``); lists become their text."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted + "."))
        elif isinstance(value, list | tuple):
            flat[dotted] = str(list(value))
        else:
            flat[dotted] = value
    return flat


def final_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """A run's metrics.json as flat ``test_*`` numbers: diagnosis, then synthesis."""
    out: dict[str, float] = {}
    for section in ("diagnosis", "synthesis"):
        for key, value in (metrics.get(section) or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[f"test_{key}"] = float(value)
    return out
