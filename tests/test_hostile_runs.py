"""Hostile and careless input to the commands that read and write run folders: run, predict,
regress, bench. Every case exits 2 through the CLI's error path (no traceback), names the
culprit, and leaves every file as it was, inside the folders involved and outside them.

One tiny run is trained once (module fixture); each case spoils a copy of it, then runs the
command from inside the test's own folder, so a file written anywhere there is seen.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from support import TINY_RUN

from cdsf_bench.cli import main
from cdsf_bench.errors import RunFailed
from cdsf_bench.predict import output
from cdsf_bench.results import load_torch

CHECKPOINT = Path("run/checkpoints/last.pt")


def invoke(*args: object) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's copy of the session's tiny MRI-only run (conftest.py)."""
    return Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("hostile_runs") / "run"))


def _edit_checkpoint(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def spoil(root: Path) -> None:
        state = load_torch(root / CHECKPOINT)
        edit(state)
        torch.save(state, root / CHECKPOINT)

    return spoil


def _another_method(state: dict) -> None:
    """The checkpoint of a two-stage method: a synthesis stage before the diagnosis one."""
    first = state["stages"][0]
    state["stages"] = [{**first, "name": "synthesis", "modules": {"synth": first["modules"]}}, first]
    state["stage_index"] = 2


def _modules_renamed(state: dict) -> None:
    for stage in state["stages"]:
        stage["name"] = None
        stage["modules"] = {f"other_{key}": value for key, value in stage["modules"].items()}


def _old_format(state: dict) -> None:
    del state["format"]


def _no_history(state: dict) -> None:
    del state["history"]


def _shrunk_weights(state: dict) -> None:
    modules = state["stages"][0]["modules"]
    name = next(iter(modules))
    key = next(iter(modules[name]))
    modules[name][key] = modules[name][key][..., :1].clone()


def _edit_metrics(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def spoil(root: Path) -> None:
        path = root / "run" / "metrics.json"
        metrics = json.loads(path.read_text())
        edit(metrics)
        path.write_text(json.dumps(metrics))

    return spoil


def _write(relative: str, content: bytes) -> Callable[[Path], None]:
    def spoil(root: Path) -> None:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)

    return spoil


def _results_with_text_metric(root: Path) -> None:
    (root / "results.csv").write_text("task,method,status,run_folder,auc\nad_cn,A,done,run,high\n")


@dataclass(frozen=True)
class Case:
    id: str
    spoil: Callable[[Path], None]
    command: tuple[str, ...]  # "{root}" is the test's folder
    names: tuple[str, ...]  # words the message must hold (the culprit)


def _nothing(root: Path) -> None:
    pass


PREDICT = ("predict", "{root}/run", "--data", "phantom", "--out", "{root}/p")
RESUME = ("run", "--resume", "{root}/run")
REGRESS = ("regress", "{root}/run", "--baseline", "{root}/baseline.toml")
BENCH = ("bench", "{root}/suite.toml", "--out", "{root}/suite", "--resume")
SUITE = (
    b'name = "s"\ntask = "ad_cn"\npreset = "tiny"\nseeds = [0]\n'
    b'[settings]\n"data.subjects" = 24\n"train.epochs" = 1\n'
    b'[[methods]]\nname = "A"\nsynth = "none"\ndiag = "mdm"\ncoupling = "single"\n'
)

CASES = [
    Case("resume-another-method", _edit_checkpoint(_another_method), RESUME, ("last.pt", "another method's")),
    Case(
        "predict-another-method", _edit_checkpoint(_another_method), PREDICT, ("last.pt", "another method's")
    ),
    Case("resume-other-modules", _edit_checkpoint(_modules_renamed), RESUME, ("last.pt", "other_")),
    Case("predict-other-modules", _edit_checkpoint(_modules_renamed), PREDICT, ("last.pt", "other_")),
    Case("resume-old-format", _edit_checkpoint(_old_format), RESUME, ("last.pt", "another version")),
    Case("resume-damaged-layout", _edit_checkpoint(_no_history), RESUME, ("last.pt", "lacks history")),
    Case("predict-damaged-layout", _edit_checkpoint(_no_history), PREDICT, ("last.pt", "lacks history")),
    Case("resume-other-shape", _edit_checkpoint(_shrunk_weights), RESUME, ("last.pt", "weights do not fit")),
    Case(
        "predict-other-shape", _edit_checkpoint(_shrunk_weights), PREDICT, ("last.pt", "weights do not fit")
    ),
    Case(
        "resume-garbage-checkpoint", _write(str(CHECKPOINT), b"\x00garbage"), RESUME, ("last.pt", "damaged")
    ),
    Case("predict-garbage-checkpoint", _write(str(CHECKPOINT), b"PK\x03\x04"), PREDICT, ("last.pt",)),
    Case("resume-no-config", lambda root: (root / "run/config.toml").unlink(), RESUME, ("config.toml",)),
    Case(
        "resume-config-not-utf8",
        _write("run/config.toml", b"seed = \xff\n"),
        RESUME,
        ("config.toml", "UTF-8"),
    ),
    Case("resume-not-a-folder", _write("file", b"x"), ("run", "--resume", "{root}/file"), ("file",)),
    Case("run-out-is-a-file", _write("file", b"x"), ("run", *TINY_RUN, "--out", "{root}/file"), ("file",)),
    Case("predict-out-is-a-file", _write("p", b"x"), PREDICT, ("p", "file")),
    Case("predict-out-inside-run", _nothing, (*PREDICT[:-1], "{root}/run/p"), ("inside the run folder",)),
    Case(
        "predict-no-threshold",
        _edit_metrics(lambda m: m["selection"].pop("threshold")),
        PREDICT,
        ("metrics.json", "selection.threshold"),
    ),
    Case("predict-metrics-not-json", _write("run/metrics.json", b"{"), PREDICT, ("metrics.json",)),
    Case(
        "regress-metrics-without-method",
        _edit_metrics(lambda m: m.pop("method")),
        REGRESS,
        ("metrics.json", "lacks method"),
    ),
    Case(
        "regress-metrics-without-diagnosis",
        _edit_metrics(lambda m: m.pop("diagnosis")),
        REGRESS,
        ("metrics.json", "diagnosis"),
    ),
    Case(
        "regress-method-without-coupling",
        _edit_metrics(lambda m: m["method"].pop("coupling")),
        REGRESS,
        ("metrics.json", "coupling"),
    ),
    Case("regress-metrics-a-list", _write("run/metrics.json", b"[1, 2]"), REGRESS, ("metrics.json",)),
    Case(
        "regress-text-metric",
        _results_with_text_metric,
        ("regress", "{root}/results.csv", "--baseline", "{root}/baseline.toml"),
        ("results.csv", "text"),
    ),
    Case(
        "bench-damaged-suite-record",
        lambda root: (_write("suite.toml", SUITE)(root), _write("suite/suite.json", b"\xff{")(root)),
        BENCH,
        ("suite.json",),
    ),
    Case(
        "bench-out-is-a-file",
        lambda root: (_write("suite.toml", SUITE)(root), _write("suite", b"x")(root)),
        BENCH,
        ("suite", "file"),
    ),
]


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file's size and modification time, every folder's name (a lock taken and released
    inside a folder touches only the folder's own time)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, -1)
        for p in folder.rglob("*")
    }


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_run_folder_commands_refuse_hostile_input(
    case: Case, trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(trained, tmp_path / "run")
    (tmp_path / "baseline.toml").write_text(
        '[methods."none+mdm+single"]\nauc = { value = 0.5, abs_tol = 1 }\n'
    )
    case.spoil(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    result = invoke(*(part.format(root=tmp_path) for part in case.command))
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), f"not refused through the CLI: {result.exc_info}"
    for name in case.names:
        assert name in result.output, result.output
    assert _tree(tmp_path) == before


def test_nan_weights_are_refused_before_predict_writes(trained: Path, tmp_path: Path) -> None:
    run = shutil.copytree(trained, tmp_path / "run")
    path = run / "checkpoints" / "last.pt"
    state = load_torch(path)
    module = next(iter(state["stages"][-1]["modules"].values()))
    next(value for value in module.values() if value.is_floating_point()).fill_(float("nan"))
    torch.save(state, path)
    result = invoke("predict", run, "--data", "phantom", "--out", tmp_path / "predicted")
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert "last.pt" in result.output and "not finite" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_prediction_failing_half_way_leaves_nothing_that_blocks_its_rerun(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(*args: object, **kwargs: object) -> None:
        raise RunFailed("no space left on the device")

    out = tmp_path / "predicted"
    with monkeypatch.context() as patch:
        patch.setattr(output, "roc_figure", full_disk)  # after the record, table and synthetic PET
        first = invoke("predict", trained, "--data", "phantom", "--out", out)
    assert first.exit_code == 1 and isinstance(first.exception, SystemExit), first.output
    assert list(tmp_path.iterdir()) == []  # no folder, no staging folder, no lock
    again = invoke("predict", trained, "--data", "phantom", "--out", out)
    assert again.exit_code == 0, again.output
    assert (out / "metrics.json").is_file()
