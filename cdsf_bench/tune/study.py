"""Running a study with Optuna: storage, sampler, pruner, the budget, killed trials.

Optuna is imported here and only when a study runs (``require_optuna``): without the
``tune`` extra every other command works, and ``tune`` says which extra to install.

- **Storage**: SQLite (``study.db`` in the output folder) by default; ``--storage FILE`` an
  Optuna journal file (``JournalFileBackend``), which workers on a shared filesystem (Slurm
  array tasks) use to join one study. The study's name is its plan's hash, so workers that
  plan the same study join it and a resumed study continues.
- **Sampler**: TPE, seeded by the study's hash and the trial's place in the study
  (``position``): the trials before it, less those lost (killed or interrupted, each queued
  again) and those waiting. TPE models the complete, pruned and running trials, and a lost
  trial is failed before the next is asked, so it changes neither the seed nor the history:
  a study killed at any point of a trial and resumed asks what an uninterrupted one would
  have. Trial 0 is the method's defaults (where the space holds them).
- **Pruner**: the median rule on the per-epoch validation metric of the stages that select on
  it (``Trainer``'s ``on_epoch``), after ``PRUNE_STARTUP`` finished trials and half the epochs.
- **Budget**: ``trials`` counts finished trials: complete, pruned, or failed on their own
  merits (a non-finite loss, or lost once more after its retries). A worker stops when
  finished and running trials reach it.
- **Killed trials**: every running trial records its worker (host and process) and a
  heartbeat. A trial whose process is gone (same host) or whose heartbeat is older than
  ``STALE_SECONDS`` is marked failed and queued again with the same settings; the retry
  continues from the killed trial's last checkpoint. A trial killed before it drew all its
  settings trained nothing: its retry is given only what it was given (the defaults) and
  draws the rest again, from the same seed and history, so it draws what it drew. An
  interrupted trial is queued again the same way. A trial lost again after ``MAX_RETRIES``
  retries fails for good and counts towards the budget (``lost``).
- **Locks**: a study folder is shared by design (the workers of one study join it), so it is
  not locked; each trial folder is, while a worker trains it (``RunFolder.lock``). A retry of
  a trial whose worker still trains (its heartbeat late) is refused, exit 2 naming the worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import threading
import time
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from cdsf_bench.errors import InputError, RunFailed
from cdsf_bench.interfaces import Choice, FloatRange, IntRange, TrainingStage
from cdsf_bench.locking import is_lock_file
from cdsf_bench.registry import Registry
from cdsf_bench.results import json_safe, write_json
from cdsf_bench.run_folder import RunFolder
from cdsf_bench.settings import RunConfig
from cdsf_bench.tune.plan import StudyPlan
from cdsf_bench.tune.space import Dimension, label
from cdsf_bench.tune.storage import open_storage
from cdsf_bench.tune.trial import StudyData, train_and_validate

if TYPE_CHECKING:
    import optuna

#: this process, as recorded on the trials it runs
WORKER = f"{socket.gethostname()}:{os.getpid()}"
HEARTBEAT_SECONDS = 60
#: a running trial whose heartbeat is older than this is taken for dead
STALE_SECONDS = 600
MAX_RETRIES = 2
#: trials drawn at random before TPE models the results (trial 0, the defaults, among them)
TPE_STARTUP = 5
#: finished trials before the pruner compares a trial with them
PRUNE_STARTUP = 3
STUDY_FILE = "study.json"


def require_optuna() -> ModuleType:
    """Optuna, or a message saying which extra installs it (exit 2)."""
    try:
        import optuna
    except ImportError:
        raise InputError(
            "Tuning needs Optuna, an optional dependency: pip install 'cdsf-bench[tune]'."
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


class StudyFolder:
    """The paths of a study's output folder (one owner of its layout)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def record(self) -> Path:
        return self.path / STUDY_FILE

    @property
    def sqlite(self) -> Path:
        return self.path / "study.db"

    def trial(self, number: int) -> Path:
        return self.path / "trials" / f"{number:04d}"

    @property
    def trials_table(self) -> Path:
        return self.path / "trials.csv"

    @property
    def best_config(self) -> Path:
        return self.path / "best.toml"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def figure(self) -> Path:
        return self.path / "figures" / "history.png"


def claim(folder: StudyFolder, plan: StudyPlan, storage: Path | None) -> None:
    """Record the plan in study.json, refusing a folder that holds another study or storage."""
    where = "sqlite:study.db" if storage is None else str(Path(storage).resolve())
    record = {"name": plan.name, "hash": plan.hash, "storage": where, **plan.canonical()}
    if folder.path.is_file():
        raise InputError(f"{folder.path} is a file, not a folder; choose another --out.")
    if not folder.record.exists() and folder.path.exists() and any(folder.path.iterdir()):
        raise InputError(f"{folder.path} exists and holds no tuning study; choose another --out.")
    if folder.record.exists():
        try:
            held = dict(json.loads(folder.record.read_text()))
        except (ValueError, TypeError, OSError) as error:  # not UTF-8, not JSON, not an object
            raise InputError(
                f"{folder.record} cannot be read ({error}); restore it, or choose another --out."
            ) from None
        if held.get("hash") != plan.hash:
            raise InputError(
                f"{folder.path} holds a different study ({held.get('name')}); its method, settings, space, "
                "metric or pruner differ from these. Choose another --out, or repeat that study's inputs."
            )
        if held.get("storage") != where:
            storage_option = (
                "no --storage" if held["storage"].startswith("sqlite:") else f"--storage {held['storage']}"
            )
            raise InputError(
                f"{folder.path} holds a study stored in {held['storage']}; resume it with {storage_option}."
            )
        return
    folder.path.mkdir(parents=True, exist_ok=True)
    write_json(folder.record, record)


def open_study(plan: StudyPlan, folder: StudyFolder, storage: Path | None) -> optuna.Study:
    """Create the plan's study in its storage, or load it to continue.

    A journal's torn last record is dropped first; a damaged storage is refused (exit 2),
    see :mod:`cdsf_bench.tune.storage`.
    """
    optuna = require_optuna()
    claim(folder, plan, storage)
    pruner: Any = optuna.pruners.NopPruner()
    if plan.pruner == "median":
        epochs = plan.base.train.epochs
        pruner = optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP, n_warmup_steps=epochs // 2)
    path = folder.sqlite if storage is None else Path(storage)
    backend = open_storage(path, journal=storage is not None)
    return optuna.create_study(
        study_name=plan.name, storage=backend, direction=plan.direction, pruner=pruner, load_if_exists=True
    )


def sampler(plan: StudyPlan, place: int) -> Any:
    """TPE seeded by the study and the next trial's ``position``: the same history asks the same."""
    optuna = require_optuna()
    digest = hashlib.sha256(f"{plan.hash}:{place}".encode()).digest()
    return optuna.samplers.TPESampler(seed=int.from_bytes(digest[:4], "big"), n_startup_trials=TPE_STARTUP)


def suggest(trial: optuna.Trial, dim: Dimension) -> Any:
    """The trial's value of one dimension (a choice's list values travel as their JSON text)."""
    match dim.param:
        case FloatRange(low, high, log):
            return trial.suggest_float(dim.key, low, high, log=log)
        case IntRange(low, high, log):
            return trial.suggest_int(dim.key, low, high, log=log)
        case Choice(values):
            labels = [label(v) for v in values]
            chosen = trial.suggest_categorical(dim.key, labels)
            return values[labels.index(chosen)]  # type: ignore[arg-type]
    raise TypeError(f"not a search parameter: {dim.param!r}")


def optuna_params(point: dict[str, Any]) -> dict[str, Any]:
    """Settings as Optuna records them (choices by label), to queue a trial of them."""
    return {key: label(value) for key, value in point.items()}


# -- the budget and killed trials ----------------------------------------------------------


def retries_left(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the trial, were it lost, would be queued again (it ran fewer than ``MAX_RETRIES`` again)."""
    return int(trial.user_attrs.get("retries", 0)) < MAX_RETRIES


def lost(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the trial failed not on its merits (killed or interrupted) and runs again: it does not count.

    A trial lost once more after ``MAX_RETRIES`` retries fails for good and counts: its
    settings kill the worker (out of memory, say), and a lost trial's place would draw
    them again for ever.
    """
    return trial.state.name == "FAIL" and not trial.user_attrs.get("counted") and retries_left(trial)


def position(study: optuna.Study) -> int:
    """The next trial's place in the study: the trials an uninterrupted study would hold before it.

    Lost trials ran again as later ones, and a waiting trial is the one about to be asked
    (the defaults, or a lost trial's retry), so neither takes a place.
    """
    return sum(1 for t in study.get_trials(deepcopy=False) if not lost(t) and t.state.name != "WAITING")


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by what they mean for the budget: finished (counted), running, failed and lost."""
    from optuna.trial import TrialState

    out = {"complete": 0, "pruned": 0, "failed": 0, "running": 0, "lost": 0, "waiting": 0}
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.COMPLETE:
            out["complete"] += 1
        elif trial.state == TrialState.PRUNED:
            out["pruned"] += 1
        elif trial.state == TrialState.FAIL:
            out["lost" if lost(trial) else "failed"] += 1
        elif trial.state == TrialState.RUNNING:
            out["running"] += 1
        else:
            out["waiting"] += 1
    out["finished"] = out["complete"] + out["pruned"] + out["failed"]
    return out


def _process_gone(worker: str) -> bool:
    """Whether ``worker`` ("host:pid") is a process of this host that no longer runs."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True  # this process runs no trial while it looks for stale ones: an earlier one had its pid
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def queue_again(study: optuna.Study, trial: optuna.trial.FrozenTrial, keys: Collection[str]) -> None:
    """Queue a lost trial again, with its settings, to run in its folder.

    A trial that drew every setting of the space (``keys``) is queued with them; one killed
    while drawing them is queued with only what it was given, so that its retry draws the
    rest as it did (a partial draw, fixed, would shift the sampler's random stream).
    """
    drawn = set(keys) <= set(trial.params)
    settings = trial.params if drawn else trial.system_attrs.get("fixed_params", {})
    marks: dict[str, Any] = {
        "retry_of": trial.number,
        "folder_of": int(trial.user_attrs.get("folder_of", trial.number)),
        "retries": int(trial.user_attrs.get("retries", 0)) + 1,
    }
    if trial.user_attrs.get("defaults"):
        marks["defaults"] = True  # still the defaults' trial
    study.enqueue_trial(settings, user_attrs=marks)


def reap_stale(study: optuna.Study, keys: Collection[str]) -> list[int]:
    """Fail the running trials whose worker is gone and queue each again (the retry resumes it)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    reaped = []
    for trial in trials:
        if trial.state != TrialState.RUNNING:
            continue
        started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
        beat = float(trial.user_attrs.get("heartbeat", started))
        if not (_process_gone(str(trial.user_attrs.get("worker", ""))) or time.time() - beat > STALE_SECONDS):
            continue
        study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
        reaped.append(trial.number)
        if retries_left(trial) and trial.number not in retried:  # another worker may have just reaped it
            queue_again(study, trial, keys)
    return reaped


class GivenUp(Exception):
    """Another worker took this trial for dead and failed it; its result can no longer be told."""


class Heartbeat:
    """A thread that records the trial's heartbeat every ``HEARTBEAT_SECONDS`` while it runs."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        optuna = require_optuna()
        while True:
            try:
                self.trial.set_user_attr("heartbeat", time.time())
            except optuna.exceptions.UpdateFinishedTrialError:
                return
            if self.stop.wait(HEARTBEAT_SECONDS):
                return

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


@dataclass
class EpochReporter:
    """Reports each epoch's validation metric to the pruner and prunes (``Trainer``'s ``on_epoch``).

    Only stages that select on the study's metric report: their per-epoch value is what the
    stage optimises (a decoupled run's synthesis stage selects on MAE, so an AUC study does
    not report it). ``step`` counts the reported epochs; a retry is first shown the epochs
    its killed trial finished (``train_and_validate``), so its steps continue theirs.
    """

    trial: optuna.Trial
    metric: str
    step: int = 0

    def __call__(self, stage: TrainingStage, row: dict[str, Any]) -> None:
        if stage.select_on != self.metric:
            return
        optuna = require_optuna()
        value = float(row.get(f"val_{self.metric}", float("nan")))
        try:
            if value == value:  # NaN is not reported
                self.trial.report(value, self.step)
        except optuna.exceptions.UpdateFinishedTrialError:
            raise GivenUp from None
        self.step += 1
        if self.trial.should_prune():
            raise optuna.TrialPruned(
                f"pruned after epoch {row['epoch']} of stage {stage.name} (val {self.metric} {value:.4f})"
            )


# -- one trial -------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How one trial ended, for the console line."""

    number: int
    state: str
    value: float | None
    note: str
    seconds: float


def _trial_folder(path: Path, config: RunConfig) -> bool:
    """Make ``path`` ready for a trial of ``config``; whether the trial resumes a checkpoint there.

    A retry continues its killed trial's checkpoint when the folder holds this very config;
    anything else left there (a kill before the first epoch ended) is cleared, all but the
    lock this process holds on it.
    """
    folder = RunFolder(path)
    same = folder.config_path.exists() and folder.config_text() == config.toml()
    if same and folder.checkpoint_path.exists():
        return True
    for entry in path.iterdir() if path.exists() else ():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif not is_lock_file(entry):
            entry.unlink()
    return False


def run_trial(
    study: optuna.Study, plan: StudyPlan, registry: Registry, data: StudyData, folder: StudyFolder
) -> Outcome:
    """Ask for a trial, train and validate it, tell the study how it ended."""
    optuna = require_optuna()
    from optuna.trial import TrialState

    study.sampler = sampler(plan, position(study))
    trial = study.ask()
    trial.set_user_attr("worker", WORKER)
    trial.set_user_attr("heartbeat", time.time())
    values = {dim.key: suggest(trial, dim) for dim in plan.space}
    origin = int(trial.user_attrs.get("folder_of", trial.number))
    trial.set_user_attr("folder_of", origin)
    path = folder.trial(origin)
    config = plan.trial_config(values)
    resume = False
    reporter = EpochReporter(trial, plan.metric)
    started = time.perf_counter()

    def finish(state: Any, note: str, value: float | None = None) -> Outcome:
        """Tell the study how the trial ended on its merits (it counts towards the budget)."""
        trial.set_user_attr("note", note)
        trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
        if state == TrialState.FAIL:
            trial.set_user_attr("counted", True)
        study.tell(trial, value, state=state if value is None else None)
        checkpoints = RunFolder(path).checkpoint_path.parent
        if checkpoints.exists():  # only a killed trial's retry needs it
            shutil.rmtree(checkpoints)
        return Outcome(trial.number, state.name.lower(), value, note, time.perf_counter() - started)

    try:
        with RunFolder.lock(path), Heartbeat(trial):  # a late heartbeat's retry must not train here too
            resume = _trial_folder(path, config)
            result = train_and_validate(
                config, registry, data, path, plan.metric, resume=resume, on_epoch=reporter
            )
    except optuna.TrialPruned as pruned:
        return finish(TrialState.PRUNED, str(pruned))
    except RunFailed as error:
        return finish(TrialState.FAIL, f"failed: {error}")
    except GivenUp:
        note = "another worker took it for dead and failed it"
        return Outcome(trial.number, "abandoned", None, note, time.perf_counter() - started)
    except BaseException as error:
        # an interrupt, a bad input or a bug: not the trial's fault; it runs again when the study resumes
        trial.set_user_attr("note", f"interrupted: {type(error).__name__}")
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        told = next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
        if lost(told):
            queue_again(study, told, [dim.key for dim in plan.space])
        raise
    trial.set_user_attr("epochs", result.epochs)
    trial.set_user_attr("validation", json_safe(result.validation))
    note = "the method's defaults" if trial.user_attrs.get("defaults") else ""
    if resume:
        note = f"resumed trial {trial.user_attrs.get('retry_of')}'s checkpoint"
    return finish(TrialState.COMPLETE, note, result.value)
