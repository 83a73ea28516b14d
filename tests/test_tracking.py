"""Experiment tracking: what MLflow and TensorBoard hold after a run and a suite, read back
with each tool's own reader; a failing tracker never stops a run; nothing tracks off rank 0.

One tiny tracked run (2 epochs) and one tiny tracked suite (two seeds, 1 epoch) run once each
for the module. The built-in trackers are found through the registry as any plugin is:
through the entry point when the package is installed with this change, else registered
here from the same module the entry point names.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

import cdsf_bench.cli
import cdsf_bench.registry
from cdsf_bench import config as cfg
from cdsf_bench.bench.suite_file import load_suite
from cdsf_bench.distributed import Cluster
from cdsf_bench.errors import InputError
from cdsf_bench.hookspecs import hookimpl
from cdsf_bench.interfaces import Component
from cdsf_bench.registry import Registry, build_registry, default_registry
from cdsf_bench.tracking import Tracker, Trackers, open_trackers

mlflow_tracking = pytest.importorskip("mlflow.tracking")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


class Broken:
    """A tracker whose backend is unreachable: every call raises."""

    calls = 0

    def _fail(self, *args, **kwargs):
        Broken.calls += 1
        raise ConnectionError("tracking server unreachable")

    start = log_epoch = finish = _fail


class Recording:
    """A tracker that records every call and names its runs run-0, run-1, ..."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def start(self, run_name, params, tags, parent, folder):
        self.calls.append(("start", run_name, parent))
        return f"run-{sum(call[0] == 'start' for call in self.calls) - 1}"

    def log_epoch(self, epoch, metrics):
        self.calls.append(("epoch", epoch, dict(metrics)))

    def finish(self, metrics, artefacts, folder, status):
        self.calls.append(("finish", status, dict(metrics)))


class ExtraTrackers:
    """Trackers this module adds, registered through the registry like any plugin."""

    recording = Recording()
    built = 0

    @staticmethod
    def build_recording() -> Recording:
        ExtraTrackers.built += 1
        return ExtraTrackers.recording

    @hookimpl
    def cdsf_bench_trackers(self):
        return [
            Component("broken", lambda: Broken(), "raises on every call"),
            Component("recording", ExtraTrackers.build_recording, "records calls"),
        ]


def _registry() -> Registry:
    extra: list[object] = [ExtraTrackers()]
    if "mlflow" not in default_registry().names("tracker"):  # this change not pip-installed
        import cdsf_plugins.trackers

        extra.append(cdsf_plugins.trackers)
    return build_registry(extra)


@pytest.fixture(scope="module")
def registry():
    registry = _registry()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cdsf_bench.registry, "default_registry", lambda: registry)
        yield registry


def invoke(*args: object):
    return CliRunner().invoke(cdsf_bench.cli.main, [str(a) for a in args])


TINY = ["--preset", "tiny", "--set", "data.subjects=24", "--set", "evaluate.bootstrap=20"]


@pytest.fixture(scope="module")
def tracked_run(registry, tmp_path_factory):
    """One run tracked by MLflow (its default store, in a fresh working directory), TensorBoard
    and a tracker that raises on every call."""
    where = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patch.chdir(where)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        Broken.calls = 0
        result = invoke(
            "run", *TINY, "--epochs", 2, "--out", where / "run",
            "--track", "mlflow", "--track", "tensorboard", "--track", "broken",
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    return where, where / "run", [str(w.message) for w in caught]


def test_an_unreachable_tracking_server_does_not_lose_the_run(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # refused at once, not after minutes
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = invoke(
            "run", *TINY, "--epochs", 1, "--out", tmp_path / "run",
            "--track", "mlflow", "--set", "track.mlflow.uri=http://127.0.0.1:9",  # nothing listens there
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert sum("tracker 'mlflow' failed" in str(w.message) for w in caught) == 1
    assert "track" in cfg.read_toml(tmp_path / "run" / "config.toml")  # how it was tracked is recorded


def _mlflow_run(client, name: str | None = None):
    experiment = client.get_experiment_by_name("cdsf-bench")
    runs = client.search_runs([experiment.experiment_id])
    return runs if name is None else next(r for r in runs if r.info.run_name == name)


def test_a_failing_tracker_warns_once_and_the_run_writes_its_folder(tracked_run):
    _, run, messages = tracked_run
    assert (run / "metrics.json").is_file() and (run / "checkpoints" / "last.pt").is_file()
    mine = [m for m in messages if "tracker 'broken'" in m]
    assert len(mine) == 1 and "unreachable" in mine[0] and "the run goes on" in mine[0]
    assert Broken.calls == 1  # left alone after its first fault


def test_mlflow_holds_params_tags_one_point_per_epoch_test_metrics_and_artefacts(tracked_run):
    where, run, _ = tracked_run
    # MLflow's default store, in the working directory: SQLite since MLflow 3, files before
    database = where / "mlflow.db"
    client = mlflow_tracking.MlflowClient(
        tracking_uri=f"sqlite:///{database}" if database.is_file() else (where / "mlruns").as_uri()
    )
    assert list((where / "mlruns").rglob("metrics.json"))  # its artefacts, either way
    (found,) = _mlflow_run(client)
    assert found.info.run_name == run.name and found.info.status == "FINISHED"
    config = cfg.read_toml(run / "config.toml")
    params = found.data.params
    assert params["train.epochs"] == "2" and params["method.synth"] == config["method"]["synth"]
    assert params["data.subjects"] == "24" and params["seed"] == "0"
    assert not [key for key in params if key.startswith("track.")]  # a tracker's URI may hold a token
    tags = found.data.tags
    environment = json.loads((run / "environment.json").read_text())
    assert tags["coupling"] == config["method"]["coupling"] and tags["seed"] == "0"
    assert tags["git_commit"] == str(environment["git_commit"]) and tags["run_folder"] == str(run.resolve())
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 2
    logged = [c for c in history.columns if c.startswith(("train_", "val_"))]
    assert any(c.startswith("train_") for c in logged) and "val_auc" in logged
    for column in logged:
        points = sorted(client.get_metric_history(found.info.run_id, column), key=lambda m: m.step)
        expected = [(step, value) for step, value in enumerate(history[column]) if math.isfinite(value)]
        assert [(p.step, pytest.approx(p.value)) for p in points] == expected, column
    metrics = json.loads((run / "metrics.json").read_text())
    assert found.data.metrics["test_auc"] == pytest.approx(metrics["diagnosis"]["auc"])
    assert found.data.metrics["test_ssim"] == pytest.approx(metrics["synthesis"]["ssim"])
    top = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"config.toml", "metrics.json", "predictions.csv", "history.csv", "figures"} <= top
    assert "checkpoints" not in top and "synth" not in top
    figures = {a.path for a in client.list_artifacts(found.info.run_id, "figures")}
    assert {"figures/roc.png", "figures/learning_curves.png"} <= figures


def test_tensorboard_event_files_in_the_run_folder_hold_every_epoch(tracked_run):
    _, run, _ = tracked_run
    events = event_accumulator.EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    history = pd.read_csv(run / "history.csv")
    scalars = events.Tags()["scalars"]
    for column in (c for c in history.columns if c.startswith(("train_", "val_"))):
        expected = [(step, value) for step, value in enumerate(history[column]) if math.isfinite(value)]
        got = [(e.step, pytest.approx(e.value, rel=1e-5)) for e in events.Scalars(column)] if expected else []
        assert got == expected, column
    metrics = json.loads((run / "metrics.json").read_text())
    assert "test_auc" in scalars
    assert events.Scalars("test_auc")[-1].value == pytest.approx(metrics["diagnosis"]["auc"], rel=1e-5)
    assert "figures/roc" in events.Tags()["images"]


@pytest.fixture(scope="module")
def tracked_suite(registry, tmp_path_factory):
    where = tmp_path_factory.mktemp("suite")
    store = f"sqlite:///{where / 'store.db'}"
    suite = where / "tiny.toml"
    suite.write_text(
        'name = "tiny-tracked"\npreset = "tiny"\nseeds = [0, 1]\n\n'
        '[settings]\n"data.subjects" = 24\n"train.epochs" = 1\n"evaluate.bootstrap" = 10\n\n'
        '[[methods]]\nname = "CDSF"\nsynth = "ism"\ndiag = "mdm"\ncoupling = "joint"\n\n'
        f'[track.mlflow]\nuri = "{store}"\nexperiment = "suites"\n'
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(where)  # nothing may land in the default store
        result = invoke("bench", suite, "--out", where / "out", "--track", "tensorboard")
    assert result.exit_code == 0, result.output
    return where, where / "out", mlflow_tracking.MlflowClient(tracking_uri=store)


def test_a_suite_is_the_parent_run_of_its_runs(tracked_suite):
    where, out, client = tracked_suite
    assert not (where / "mlflow.db").exists()  # the suite's uri, not the default store
    experiment = client.get_experiment_by_name("suites")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    (parent,) = parents
    assert parent.info.run_name == "tiny-tracked" and parent.info.status == "FINISHED"
    assert parent.data.tags["suite_hash"] == json.loads((out / "suite.json").read_text())["hash"]
    assert parent.data.metrics["runs_done"] == 2 and parent.data.metrics["runs_failed"] == 0
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"results.csv", "suite.json"}
    children = {r.info.run_name: r for r in runs if r is not parent}
    assert set(children) == {"ad_cn/seed-0/cdsf", "ad_cn/seed-1/cdsf"}
    for name, child in children.items():
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.tags["seed"] == name.split("/")[1].removeprefix("seed-")
        metrics = json.loads((out / name / "metrics.json").read_text())
        assert child.data.metrics["test_auc"] == pytest.approx(metrics["diagnosis"]["auc"])
        assert len(client.get_metric_history(child.info.run_id, "val_auc")) <= 1  # one epoch
        # the suite's trackers are not written into the runs' configs: their hash is unchanged
        assert "track" not in cfg.read_toml(out / name / "config.toml")
        assert list((out / name / "tensorboard").glob("events.out.tfevents.*"))
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_the_suites_trackers_leave_its_hash_alone(tmp_path):
    plain = tmp_path / "plain.toml"
    plain.write_text('name = "s"\n[[methods]]\nname = "M"\nsynth = "ism"\ndiag = "mdm"\ncoupling = "joint"\n')
    tracked = tmp_path / "tracked.toml"
    tracked.write_text(plain.read_text() + "[track.tensorboard]\n")
    assert load_suite(tracked).track == {"tensorboard": {}}
    assert load_suite(tracked).hash == load_suite(plain).hash
    settings = tmp_path / "settings.toml"
    settings.write_text(plain.read_text() + '[settings]\n"track.mlflow.uri" = "x"\n')
    with pytest.raises(InputError, match=r"\[track.NAME\] tables"):
        load_suite(settings)
    listed = tmp_path / "listed.toml"
    listed.write_text('track = ["mlflow"]\n' + plain.read_text())
    with pytest.raises(InputError, match=r"field 'track' must hold one \[track.NAME\] table"):
        load_suite(listed)


@pytest.mark.parametrize(
    "tracker, hidden", [("mlflow", "mlflow"), ("tensorboard", "torch.utils.tensorboard")]
)
def test_a_tracker_not_installed_exits_2_naming_the_extra(registry, tmp_path, monkeypatch, tracker, hidden):
    for name in [m for m in sys.modules if m == hidden or m.startswith(hidden + ".")] + [hidden]:
        monkeypatch.setitem(sys.modules, name, None)  # importing it now raises ImportError
    monkeypatch.delitem(sys.modules, f"cdsf_plugins.trackers.{tracker}_tracker", raising=False)
    result = invoke("run", *TINY, "--out", tmp_path / "run", "--track", tracker)
    assert result.exit_code == 2
    assert f"pip install 'cdsf-bench[{tracker}]'" in result.output
    assert not (tmp_path / "run").exists()  # refused before anything was computed


def test_tracker_names_and_settings_are_checked(registry, tmp_path):
    unknown = invoke("run", *TINY, "--out", tmp_path / "a", "--track", "mlfow")
    assert unknown.exit_code == 2 and "Did you mean 'mlflow'" in unknown.output
    setting = invoke("run", *TINY, "--out", tmp_path / "b", "--set", "track.mlflow.url=x")
    assert setting.exit_code == 2 and "track.mlflow.url" in setting.output
    assert "track" not in cfg.resolve(registry).raw  # an untracked run's config.toml is unchanged
    tracked = cfg.resolve(registry, assignments=("track.mlflow.uri=sqlite:///x.db",))
    assert tracked.track == {"mlflow": {"uri": "sqlite:///x.db", "experiment": "cdsf-bench"}}


def test_runs_nest_and_a_run_that_raised_is_closed_as_failed():
    recording = Recording()
    trackers = Trackers({"r": recording})
    trackers.start("suite", {}, {}, Path("."))
    trackers.start("child", {"a": 1}, {"seed": 0}, Path("."))
    trackers.log_epoch(0, {"val_auc": 0.5, "val_mae": float("nan"), "stage": "joint", "selected": True})
    trackers.abandon(1)
    trackers.finish({"runs_done": 1}, [])
    assert recording.calls == [
        ("start", "suite", None),
        ("start", "child", "run-0"),
        ("epoch", 0, {"val_auc": 0.5}),  # only finite numbers
        ("finish", "FAILED", {}),
        ("finish", "FINISHED", {"runs_done": 1.0}),
    ]


def test_only_rank_0_tracks(registry):
    ExtraTrackers.recording.calls.clear()
    ExtraTrackers.built = 0
    for rank in (1, 0):
        trackers = open_trackers({"recording": {}}, registry, Cluster(rank=rank, world=2))
        assert bool(trackers) == (rank == 0)
        trackers.start("run", {}, {}, Path("."))
        trackers.log_epoch(0, {"train_loss": 1.0})
        trackers.finish({"test_auc": 0.5}, [])
        if rank == 1:  # not even built: a tracker's store is opened by one process
            assert ExtraTrackers.recording.calls == [] and ExtraTrackers.built == 0
    assert [call[0] for call in ExtraTrackers.recording.calls] == ["start", "epoch", "finish"]
    assert ExtraTrackers.built == 1


def test_hook_cdsf_bench_trackers(registry, tmp_path, monkeypatch):
    """Every tracker builds from its defaults into a Tracker, and its settings are its factory's."""
    monkeypatch.chdir(tmp_path)  # a default store lands here, if the factory makes one
    components = registry.components["tracker"]
    assert {"mlflow", "tensorboard"} <= set(components)
    assert set(components["mlflow"].parameters()) == {"uri", "experiment"}
    for name in ("mlflow", "tensorboard"):
        trackers = open_trackers({name: {}}, registry)
        assert isinstance(trackers.named[name], Tracker)


def test_the_tracker_of_docs_plugins_works(tmp_path):
    """The JSON-lines tracker of docs/plugins.md, registered as a plugin, records a nested run."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    section = page[page.index("## Trackers") : page.index("## Search spaces")]
    code = section.split("```python\n")[1].split("```")[0]
    module = types.ModuleType("cdsf_bench_jsonl")
    exec(compile(code, "docs/plugins.md", "exec"), module.__dict__)
    registry = build_registry([module])
    path = tmp_path / "runs.jsonl"
    section_config = cfg.resolve_trackers(registry, {"jsonl": {"path": str(path)}})
    trackers = open_trackers(section_config, registry)
    trackers.start("suite", {}, {}, tmp_path)
    trackers.start("run", {"train.epochs": 2}, {"seed": 0}, tmp_path)
    trackers.log_epoch(0, {"val_auc": 0.75})
    trackers.finish({"test_auc": 0.5}, [])
    trackers.finish({}, [])
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["event"] for e in events] == ["start", "start", "epoch", "finish", "finish"]
    assert events[1]["parent"] == events[0]["run"] and events[1]["tags"] == {"seed": "0"}
    assert events[2]["metrics"] == {"val_auc": 0.75} and events[3]["metrics"] == {"test_auc": 0.5}


def test_nothing_of_a_tracker_is_imported_unless_it_is_selected():
    code = (
        "import sys, cdsf_plugins.trackers, cdsf_bench.cli, cdsf_bench.run\n"
        "from cdsf_bench.registry import build_registry, default_registry\n"
        "from cdsf_bench import config\n"
        "registry = default_registry()\n"
        "if 'mlflow' not in registry.names('tracker'):\n"
        "    registry = build_registry([cdsf_plugins.trackers])\n"
        "assert registry.names('tracker') == ['mlflow', 'tensorboard']\n"
        "config.resolve(registry)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'tensorboard')"
        " or m.startswith('torch.utils.tensorboard')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_two_processes_track_once_from_rank_0(tmp_path):
    """torchrun with 2 CPU processes: one MLflow run with one point per epoch, one event file."""
    import importlib.metadata

    installed = {ep.name for ep in importlib.metadata.entry_points(group="cdsf_bench")}
    if "trackers" not in installed:  # torchrun's processes find plugins by entry point only
        pytest.skip("needs this version installed (pip install -e .): the trackers' entry point")
    store = f"sqlite:///{tmp_path / 'store.db'}"
    args = [
        "run", "--synth", "none", "--diag", "mdm", *TINY, "--epochs", "2",
        "--set", "diag.mdm.norm=group", "--set", "precision.mixed=false", "--out", str(tmp_path / "run"),
        "--nproc", "2", "--track", "mlflow", "--track", "tensorboard", "--set", f"track.mlflow.uri={store}",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "cdsf_bench", *args], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "environment.json").read_text())["processes"] == 2
    client = mlflow_tracking.MlflowClient(tracking_uri=store)
    (found,) = _mlflow_run(client)
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert len(history) == 2
    column = next(c for c in history.columns if c.startswith("train_"))
    points = client.get_metric_history(found.info.run_id, column)
    assert sorted(p.step for p in points) == [0, 1]
    assert len(list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))) == 1
