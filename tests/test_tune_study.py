"""The study loop: budget, resume, determinism, pruning, killed and interrupted trials, storage.

A stand-in replaces a trial's training (a smooth function of the learning rate, reported
over three "epochs" through the engine's epoch callback), so these tests exercise Optuna,
the storage and the loop in a fraction of a second per trial. tests/test_tune_run.py trains.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest
from click.testing import CliRunner

from cdsf_bench.cli import main
from cdsf_bench.errors import InputError, RunFailed
from cdsf_bench.interfaces import TrainingStage
from cdsf_bench.registry import default_registry
from cdsf_bench.run_folder import RunFolder
from cdsf_bench.tune import run as tune_run
from cdsf_bench.tune import study as tune_study
from cdsf_bench.tune.plan import plan_study
from cdsf_bench.tune.run import run_study
from cdsf_bench.tune.study import STALE_SECONDS, StudyFolder, open_study, suggest
from cdsf_bench.tune.trial import TrialResult

EPOCHS = 3


def score(learning_rate: float) -> float:
    """The stand-in's validation value: best at a learning rate of 10^-2.5."""
    return 1.0 - abs(math.log10(learning_rate) + 2.5) / 2


class StandIn:
    """Replaces ``train_and_validate``: writes the trial's config, reports epochs, returns a score."""

    def __init__(
        self, fail_above: float | None = None, interrupt_call: int | None = None, kill_call: int | None = None
    ) -> None:
        self.calls = 0
        self.fail_above, self.interrupt_call, self.kill_call = fail_above, interrupt_call, kill_call

    def __call__(self, config, registry, data, folder, metric, *, resume=False, on_epoch=None):
        self.calls += 1
        RunFolder.prepare(config.toml(), folder, resume)
        if self.calls == self.interrupt_call:
            raise KeyboardInterrupt
        if self.calls == self.kill_call:
            die()
        lr = config.train.learning_rate
        if self.fail_above is not None and lr > self.fail_above:
            raise RunFailed(f"loss became nan at learning rate {lr:.3g}")
        value = score(lr)
        stage = TrainingStage("fit", {}, {}, lambda batch: {}, epochs=EPOCHS, select_on=metric)
        for epoch in range(EPOCHS):
            on_epoch(stage, {"stage": "fit", "epoch": epoch, f"val_{metric}": value * (epoch + 1) / EPOCHS})
        return TrialResult(value, {metric: value}, EPOCHS, [])


@pytest.fixture
def stand_in(monkeypatch) -> StandIn:
    replacement = StandIn()
    monkeypatch.setattr(tune_study, "train_and_validate", replacement)
    monkeypatch.setattr(tune_run, "load_study_data", lambda config, registry: None)
    return replacement


@pytest.fixture(scope="module")
def plan():
    return plan_study(default_registry(), assignments=("preset=tiny",))


def journal(out: Path) -> Path:
    """A journal file for the tests that need no SQLite (a journal opens in milliseconds)."""
    return out / "study.journal"


def trials(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "trials.csv")


SETTINGS = ["state", "auc", "train.learning_rate", "coupling.joint.w_voxel", "synth.ism.decoder_widths"]


def test_a_resumed_study_runs_only_the_rest_and_asks_what_an_uninterrupted_one_would(
    plan, stand_in, tmp_path
):
    first = run_study(plan, default_registry(), tmp_path / "a", 2)
    assert first["trials"]["finished"] == 2 and stand_in.calls == 2
    again = run_study(plan, default_registry(), tmp_path / "a", 4)
    assert again["trials"]["finished"] == 4 and stand_in.calls == 4  # two more, not four
    run_study(plan, default_registry(), tmp_path / "a", 4)
    assert stand_in.calls == 4, "a study at its budget trains nothing"
    fresh = run_study(plan, default_registry(), tmp_path / "b", 4, storage=journal(tmp_path / "b"))
    resumed, whole = trials(tmp_path / "a"), trials(tmp_path / "b")
    pd.testing.assert_frame_equal(resumed[SETTINGS], whole[SETTINGS])
    assert fresh["best"] == {**again["best"]}
    # trial 0 is the method's defaults
    assert resumed["note"][0] == "the method's defaults" and resumed["train.learning_rate"][0] == 1e-3
    assert resumed["synth.ism.decoder_widths"][0] == "[32, 16]"


def test_the_best_config_is_the_best_trials_and_run_reads_it(plan, stand_in, tmp_path):
    summary = run_study(plan, default_registry(), tmp_path, 3)
    table = trials(tmp_path)
    best = table.loc[table["auc"].idxmax()]
    assert summary["best"]["trial"] == best["trial"]
    written = (tmp_path / "best.toml").read_text()
    trial_config = (tmp_path / best["folder"] / "config.toml").read_text()
    assert written.endswith(trial_config) and written.startswith("# Best trial")
    from cdsf_bench import config as cfg

    resolved = cfg.resolve(default_registry(), tmp_path / "best.toml")
    assert resolved.toml() == trial_config  # what run --config best.toml trains
    assert resolved.train.learning_rate == pytest.approx(best["train.learning_rate"])
    assert (tmp_path / "figures" / "history.png").stat().st_size > 1000
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_pruned_trials_stop_early_and_count_towards_the_budget(plan, stand_in, tmp_path):
    summary = run_study(plan, default_registry(), tmp_path, 10, storage=journal(tmp_path))
    counts = summary["trials"]
    assert counts["complete"] + counts["pruned"] == 10 and counts["pruned"] > 0
    table = trials(tmp_path)
    pruned = table[table["state"] == "pruned"]
    assert pruned["note"].str.startswith("pruned after epoch").all()
    assert pruned["auc"].isna().all()
    # the median rule prunes the poor: no pruned trial would have beaten the best complete one
    complete = table[table["state"] == "complete"]
    assert complete["auc"].max() >= pruned["train.learning_rate"].map(score).max()


def test_a_trial_that_diverges_fails_and_counts(plan, monkeypatch, tmp_path):
    monkeypatch.setattr(tune_study, "train_and_validate", StandIn(fail_above=2e-3))
    monkeypatch.setattr(tune_run, "load_study_data", lambda config, registry: None)
    summary = run_study(plan, default_registry(), tmp_path, 6, storage=journal(tmp_path))
    table = trials(tmp_path)
    failed = table[table["state"] == "fail"]
    assert len(failed) == summary["trials"]["failed"] > 0
    assert (failed["train.learning_rate"] > 2e-3).all() and failed["note"].str.contains(
        "loss became nan"
    ).all()
    assert summary["trials"]["finished"] == 6 and len(table) == 6


def die() -> None:
    """End this process as a kill does: at once, no handler, no clean-up."""
    os.kill(os.getpid(), signal.SIGKILL)


def killed_in_child(study: Callable[[], object]) -> None:
    """Run ``study`` in a forked process that dies mid-way (its stand-ins call ``die``)."""
    pid = os.fork()
    if pid == 0:
        try:
            study()
        finally:
            os._exit(3)  # reached only when nothing killed it
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == -signal.SIGKILL, "the child was meant to be killed"


#: past TPE_STARTUP (5), so that trials drawn at random and trials TPE models are both resumed
RESUME_BUDGET = 8


def proposals(plan, storage: Path) -> list[tuple[str, float | None, dict[str, Any]]]:
    """The study's trials as an uninterrupted study holds them: state, value and settings in
    order, without the trials that were killed or interrupted (each ran again as a later one)."""
    study = optuna.load_study(
        study_name=plan.name,
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(storage))),
    )
    lost = [t for t in study.trials if t.state.name == "FAIL" and not t.user_attrs.get("counted")]
    assert lost, "no trial was killed"
    return [(t.state.name, t.value, t.params) for t in study.trials if t not in lost]


@pytest.fixture(scope="module")
def uninterrupted(plan, tmp_path_factory) -> list[tuple[str, float | None, dict[str, Any]]]:
    out = tmp_path_factory.mktemp("uninterrupted")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tune_study, "train_and_validate", StandIn())
        patch.setattr(tune_run, "load_study_data", lambda config, registry: None)
        run_study(plan, default_registry(), out, RESUME_BUDGET, storage=journal(out))
    study = optuna.load_study(
        study_name=plan.name,
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal(out)))),
    )
    assert {t.state.name for t in study.trials} == {"COMPLETE", "PRUNED"}
    return [(t.state.name, t.value, t.params) for t in study.trials]


def _kill_while_drawing(monkeypatch, plan, trial: int) -> None:
    """Die between two of the trial's suggestions: some settings drawn, none trained."""
    calls = iter(range(1, 10**6))
    kill_at = trial * len(plan.space) + 2

    def suggesting(optuna_trial: optuna.Trial, dim: Any) -> Any:
        if next(calls) == kill_at:
            die()
        return suggest(optuna_trial, dim)

    monkeypatch.setattr(tune_study, "suggest", suggesting)


def _kill_before_telling(monkeypatch, plan, trial: int) -> None:
    """Die after the trial (or, were it pruned, the next complete one) trained, before its result is told."""
    stand_in = tune_study.train_and_validate
    recorded = tune_study.json_safe

    def recording(value: Any) -> Any:
        if stand_in.calls > trial:
            die()
        return recorded(value)

    monkeypatch.setattr(tune_study, "json_safe", recording)


def _kill_while_training(monkeypatch, plan, trial: int) -> None:
    monkeypatch.setattr(tune_study, "train_and_validate", StandIn(kill_call=trial + 1))


#: where a killed worker dies: each arranges it in the trial given
KILLS = {"drawing": _kill_while_drawing, "training": _kill_while_training, "telling": _kill_before_telling}


@pytest.mark.parametrize(
    ("kill", "trial"),
    [("interrupt", 2), ("training", 6), ("drawing", 3), ("telling", 5)],
)
def test_a_study_killed_at_any_point_of_a_trial_and_resumed_proposes_what_an_uninterrupted_one_does(
    plan, stand_in, monkeypatch, tmp_path, uninterrupted, kill, trial
):
    storage = journal(tmp_path)

    def study() -> None:
        run_study(plan, default_registry(), tmp_path, RESUME_BUDGET, storage=storage)

    if kill == "interrupt":
        monkeypatch.setattr(tune_study, "train_and_validate", StandIn(interrupt_call=trial + 1))
        with pytest.raises(KeyboardInterrupt):
            study()
    else:
        with monkeypatch.context() as patch:
            KILLS[kill](patch, plan, trial)
            killed_in_child(study)
    monkeypatch.setattr(tune_study, "train_and_validate", StandIn())
    study()
    assert proposals(plan, storage) == uninterrupted


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _started_trial(plan, out: Path, worker: str) -> optuna.Trial:
    """A trial left running by ``worker``, with every setting drawn, as a killed worker leaves it."""
    study = open_study(plan, StudyFolder(out), journal(out))
    trial = study.ask()
    trial.set_user_attr("worker", worker)
    trial.set_user_attr("heartbeat", time.time())
    for dim in plan.space:
        suggest(trial, dim)
    return trial


def test_a_trial_whose_worker_died_is_failed_and_run_again_with_its_settings(plan, stand_in, tmp_path):
    killed = _started_trial(plan, tmp_path, f"{socket.gethostname()}:{_dead_pid()}")
    summary = run_study(plan, default_registry(), tmp_path, 1, storage=journal(tmp_path))
    table = trials(tmp_path)
    assert list(table["state"]) == ["fail", "complete"]
    assert table["note"][0].startswith("killed; re-run as trial 1")
    assert table["train.learning_rate"][1] == pytest.approx(killed.params["train.learning_rate"])
    assert table["folder"][1] == table["folder"][0] == "trials/0000"  # the retry continues its folder
    assert summary["trials"] == {**summary["trials"], "lost": 1, "complete": 1, "finished": 1}


def test_a_live_worker_elsewhere_keeps_its_trial_until_its_heartbeat_is_stale(plan, stand_in, tmp_path):
    elsewhere = _started_trial(plan, tmp_path, "another-host:1")
    summary = run_study(plan, default_registry(), tmp_path, 1, storage=journal(tmp_path))
    assert stand_in.calls == 0 and summary["trials"]["running"] == 1  # the budget is being met there
    elsewhere.set_user_attr("heartbeat", time.time() - STALE_SECONDS - 1)
    summary = run_study(plan, default_registry(), tmp_path, 1, storage=journal(tmp_path))
    assert stand_in.calls == 1 and summary["trials"]["lost"] == 1 and summary["trials"]["complete"] == 1


def test_an_interrupted_trial_is_queued_again_and_resumed_with_the_study(plan, monkeypatch, tmp_path):
    monkeypatch.setattr(tune_run, "load_study_data", lambda config, registry: None)
    monkeypatch.setattr(tune_study, "train_and_validate", StandIn(interrupt_call=2))
    with pytest.raises(KeyboardInterrupt):
        run_study(plan, default_registry(), tmp_path, 3, storage=journal(tmp_path))
    monkeypatch.setattr(tune_study, "train_and_validate", StandIn())
    summary = run_study(plan, default_registry(), tmp_path, 3, storage=journal(tmp_path))
    table = trials(tmp_path)
    assert list(table["state"]) == ["complete", "fail", "complete", "complete"]
    assert table["note"][1].startswith("killed; re-run as trial 2 (interrupted: KeyboardInterrupt)")
    assert table["train.learning_rate"][2] == table["train.learning_rate"][1]
    assert summary["trials"]["finished"] == 3


def test_a_trial_lost_again_after_its_retries_fails_for_good_and_counts(plan, monkeypatch, tmp_path):
    """Else its place would draw the same settings again at every resume, for ever."""
    monkeypatch.setattr(tune_run, "load_study_data", lambda config, registry: None)
    for _ in range(tune_study.MAX_RETRIES + 1):
        monkeypatch.setattr(tune_study, "train_and_validate", StandIn(interrupt_call=1))
        with pytest.raises(KeyboardInterrupt):
            run_study(plan, default_registry(), tmp_path, 2, storage=journal(tmp_path))
    monkeypatch.setattr(tune_study, "train_and_validate", StandIn())
    summary = run_study(plan, default_registry(), tmp_path, 2, storage=journal(tmp_path))
    table = trials(tmp_path)
    retries = tune_study.MAX_RETRIES
    assert list(table["state"]) == ["fail"] * (retries + 1) + ["complete"]
    assert table["note"][retries].startswith(f"killed {retries + 1} times; failed for good")
    assert table["train.learning_rate"].nunique() == 2  # the next trial drew new settings
    expected = {"lost": retries, "failed": 1, "complete": 1, "finished": 2}
    assert summary["trials"] == {**summary["trials"], **expected}


def test_a_journal_file_lets_workers_join_one_study(plan, stand_in, tmp_path):
    journal = tmp_path / "shared" / "study.journal"
    run_study(plan, default_registry(), tmp_path / "out", 2, storage=journal)
    joined = run_study(plan, default_registry(), tmp_path / "out", 3, storage=journal)
    assert joined["trials"]["finished"] == 3 and stand_in.calls == 3 and journal.stat().st_size > 0
    assert not (tmp_path / "out" / "study.db").exists()
    loaded = optuna.load_study(
        study_name=plan.name,
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal))),
    )
    assert len(loaded.trials) == 3
    with pytest.raises(InputError, match="resume it with --storage"):
        run_study(plan, default_registry(), tmp_path / "out", 3)


def test_a_folder_of_another_study_is_refused(plan, stand_in, tmp_path):
    run_study(plan, default_registry(), tmp_path, 1, storage=journal(tmp_path))
    other = plan_study(default_registry(), assignments=("preset=tiny", "seed=3"))
    with pytest.raises(InputError, match="holds a different study"):
        run_study(other, default_registry(), tmp_path, 1, storage=journal(tmp_path))
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "notes.txt").write_text("not a study")
    with pytest.raises(InputError, match="holds no tuning study"):
        run_study(plan, default_registry(), tmp_path / "elsewhere", 1)


def test_a_trial_another_worker_gave_up_on_is_abandoned_not_retold(plan, monkeypatch, tmp_path):
    """A worker whose trial was taken for dead (a clock far off, say) drops it and goes on."""
    monkeypatch.setattr(tune_run, "load_study_data", lambda config, registry: None)
    plain = StandIn()

    def given_up_once(config, registry, data, folder, metric, *, resume=False, on_epoch=None):
        if int(folder.name) == 0:  # another process's handle on the same journal
            storage = optuna.storages.JournalStorage(
                optuna.storages.journal.JournalFileBackend(str(journal(tmp_path)))
            )
            optuna.load_study(study_name=plan.name, storage=storage).tell(
                0, state=optuna.trial.TrialState.FAIL
            )
        return plain(config, registry, data, folder, metric, resume=resume, on_epoch=on_epoch)

    monkeypatch.setattr(tune_study, "train_and_validate", given_up_once)
    summary = run_study(plan, default_registry(), tmp_path, 2, storage=journal(tmp_path))
    table = trials(tmp_path)
    assert table["state"][0] == "fail" and summary["trials"]["complete"] == 2


def test_tune_json_prints_the_summary(plan, stand_in, tmp_path):
    result = CliRunner().invoke(
        main, ["tune", "--preset", "tiny", "--trials", "2", "--out", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["study"] == plan.name and printed["budget"] == 2 and printed["trials"]["finished"] == 2
    assert printed["best"]["config"] == "best.toml" and set(printed["best"]["settings"]) == {
        d.key for d in plan.space
    }
    table = CliRunner().invoke(main, ["tune", "--preset", "tiny", "--trials", "2", "--out", str(tmp_path)])
    assert table.exit_code == 0 and "best.toml" in table.stdout and "budget 2" in table.stdout


def test_a_trial_folder_a_live_worker_trains_is_refused_and_run_once_it_is_gone(plan, stand_in, tmp_path):
    out = tmp_path / "study"
    run_study(plan, default_registry(), out, 1, storage=journal(out))
    script = (
        "import sys, time\nfrom pathlib import Path\nfrom cdsf_bench.run_folder import RunFolder\n"
        "with RunFolder.lock(Path(sys.argv[1])):\n    print('locked', flush=True)\n    time.sleep(600)\n"
    )
    trial = StudyFolder(out).trial(1)
    holder = subprocess.Popen([sys.executable, "-c", script, str(trial)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=f"process {holder.pid} on host"):
            run_study(plan, default_registry(), out, 2, storage=journal(out))
    finally:
        holder.kill()
        holder.wait()
    summary = run_study(plan, default_registry(), out, 2, storage=journal(out))
    assert summary["trials"]["finished"] == 2
    assert (trial / "config.toml").is_file()
