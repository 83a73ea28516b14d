"""The prepared GPU check (``benchmarks/gpu/``), run on the CPU so that it cannot rot.

``run.sh --dry-run`` is the GPU plan at tiny sizes: every step must run and leave the files
the GPU run is read from, packed as the lent machine's ``$OUT`` can return them. Each step's
own timeout is checked apart, on stand-in steps, so that the dry run stays short.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch

from cdsf_bench.registry import default_registry

GPU = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"


def _check_module() -> ModuleType:
    """``benchmarks/gpu/check.py``, with its sibling modules importable as they are when it runs."""
    if str(GPU) not in sys.path:
        sys.path.insert(0, str(GPU))
    spec = importlib.util.spec_from_file_location("gpu_check", GPU / "check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


check = _check_module()


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict[str, bytes]]:
    """The dry run's $OUT, its summary, and the archive's small files by name."""
    base = tmp_path_factory.mktemp("gpu-check")
    out = base / "out"
    env = {**os.environ, "OUT": str(out), "CDSF_GPU_SITE": str(base / "site"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", str(GPU / "run.sh"), "--dry-run", "--work", str(base / "work")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    with tarfile.open(out / "results.tar.gz") as archive:
        files = {
            m.name: archive.extractfile(m).read()  # type: ignore[union-attr]
            for m in archive.getmembers()
            if m.isfile() and m.size < 2**20
        }
        names = set(archive.getnames())
    files["__names__"] = "\n".join(sorted(names)).encode()
    return out, summary, files


def _json(files: dict[str, bytes], name: str) -> dict:
    return json.loads(files[f"results/{name}"])


def test_outputs_fit_what_the_machine_returns(dry_run: tuple[Path, dict, dict[str, bytes]]) -> None:
    out = dry_run[0]
    returned = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert returned == ["driver.log", "results.tar.gz", "summary.json", "summary.txt"]
    assert all(p.stat().st_size < 16 * 2**20 for p in out.iterdir())
    names = dry_run[2]["__names__"].decode().split("\n")
    assert not [n for n in names if "checkpoints" in n or n.endswith((".pt", ".nii.gz")) or "/cache" in n]


def test_every_step_runs_and_leaves_its_outputs(dry_run: tuple[Path, dict, dict[str, bytes]]) -> None:
    _, summary, files = dry_run
    planned = [step.name for step in check.plan(check.DRY_RUN, Path("/work"))]
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == planned
    for name, step in steps.items():
        if name.endswith("-compiled"):  # torch.compile takes minutes on a CPU
            assert step["status"] == "skipped" and "compile" in step["note"]
        else:
            assert step["status"] == "ok", step
            assert step["missing_outputs"] == [] and step["figures"], step
    table = (dry_run[0] / "summary.txt").read_text()
    assert all(name in table for name in planned)
    for name in ("env/env.json", "env/nvidia-smi.txt", "tests/junit.xml", "paper-epoch/run/metrics.json"):
        assert f"results/{name}" in files


def test_env_records_the_versions_and_the_registered_plugins(
    dry_run: tuple[Path, dict, dict[str, bytes]],
) -> None:
    env = _json(dry_run[2], "env/env.json")
    assert env["torch"] == torch.__version__ and env["missing_imports"] == []
    # the metadata the plugins were registered from: the tree's own (dist_info.py) on a bare GPU
    # machine; here an editable install of the same tree may come first on the path
    assert "cdsf_bench_installer" in env
    assert "joint" in env["plugins"]["coupling"] and env["plugin_failures"] == {}


def test_cuda_tests_are_collected_and_skip_on_the_cpu(dry_run: tuple[Path, dict, dict[str, bytes]]) -> None:
    figures = {s["name"]: s["figures"] for s in dry_run[1]["steps"]}["tests"]
    assert figures["tests"] > 0 and figures["skipped"] == figures["tests"] and figures["failed"] == []


def test_precision_covers_every_shipped_network(dry_run: tuple[Path, dict, dict[str, bytes]]) -> None:
    report = _json(dry_run[2], "precision-16mm/precision.json")
    registry = default_registry()
    expected = {f"{kind}:{name}" for kind in ("synthesiser", "diagnoser") for name in registry.names(kind)}
    checked = {f"{r['kind']}:{r['name']}" for r in report["networks"]}
    assert checked | set(report["not_checked"]) == expected and checked
    for record in report["networks"]:
        assert set(record["candidates"]) == {"bf16", "bf16_channels_last", "fp32_tf32"}
        for errors in record["candidates"].values():
            assert 0 <= errors["output_rel_error"] < 1 and 0 <= errors["grad_rel_error"] < 1


def test_perf_paper_and_suite_figures_are_sane(dry_run: tuple[Path, dict, dict[str, bytes]]) -> None:
    figures = {s["name"]: s["figures"] for s in dry_run[1]["steps"]}
    perf = _json(dry_run[2], "perf-16mm-bf16-cl/perf.json")
    assert perf["settings"]["device"] == "cpu" and perf["settings"]["size"] == [12, 16, 12]
    assert perf["settings"]["matmul_side"] == check.DRY_RUN.matmul_side
    assert figures["perf-16mm-bf16-cl"]["step_s"] > 0 and figures["perf-16mm-bf16-cl"]["gflop_per_s"] > 0
    paper = figures["paper-epoch"]
    assert paper["epoch_s"] > 0 and paper["subjects_per_s"] > 0 and paper["train_subjects"] > 0
    assert _json(dry_run[2], "paper-epoch/usage.json")["exit_status"] == 0
    assert figures["suite"]["finished_runs"] == 1 and figures["suite"]["complete"]


def _sleeper(pid_file: Path) -> list[str]:
    """A step that starts a child (as pytest or bench would) and both outlive any timeout."""
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(120)\n"
    )
    return [sys.executable, "-c", code]


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_a_step_over_its_timeout_is_killed_with_its_children_and_the_next_runs(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    steps = [
        check.Step("slow", _sleeper(pid_file), 3.0, ["never.txt"]),
        check.Step(
            "next",
            [sys.executable, "-c", f"open({str(tmp_path / 'next' / 'done.txt')!r}, 'w')"],
            30.0,
            ["done.txt"],
        ),
    ]
    started = time.monotonic()
    outcomes = check.run_plan(steps, tmp_path, budget=120.0, env=dict(os.environ), only=None)
    assert [o.status for o in outcomes] == ["timed_out", "ok"]
    assert outcomes[0].missing_outputs == ["never.txt"] and "killed after 3 s" in outcomes[0].note
    assert time.monotonic() - started < 60
    time.sleep(0.5)
    assert _gone(int(pid_file.read_text()))


def test_the_deadline_shortens_a_step_and_leaves_the_rest_unstarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(check, "MIN_START_S", 2.0)
    steps = [
        check.Step("slow", _sleeper(tmp_path / "child.pid"), 300.0, []),
        check.Step("late", [sys.executable, "-c", "pass"], 30.0, []),
    ]
    outcomes = check.run_plan(steps, tmp_path, budget=4.0, env=dict(os.environ), only=None)
    assert [o.status for o in outcomes] == ["timed_out", "not_started"]
    assert outcomes[0].timeout_s <= 4.0
