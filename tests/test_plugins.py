"""The registry, the plugins command, and a third-party plugin installed as its own distribution."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

from cdsf_bench import Component, Flag, hookimpl
from cdsf_bench.cli import main
from cdsf_bench.errors import InputError
from cdsf_bench.registry import build_registry, default_registry

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def test_plugins_json_lists_every_kind_with_its_distribution():
    result = CliRunner().invoke(main, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    kinds = {(c["kind"], c["name"]): c for c in listed["components"]}
    for key in [
        ("synthesiser", "ism"),
        ("diagnoser", "mdm"),
        ("coupling", "joint"),
        ("coupling", "task-induced"),
        ("synthesiser", "diffusion"),
        ("data_source", "phantom"),
    ]:
        assert key in kinds
        assert kinds[key]["distribution"] == "cdsf-bench"
    assert listed["failed"] == []


def test_plugins_table_names_the_distribution():
    result = CliRunner().invoke(main, ["plugins"])
    assert result.exit_code == 0
    assert "cdsf-bench" in result.output and "ism" in result.output


def test_unknown_name_lists_known_ones_and_a_close_match():
    with pytest.raises(InputError) as error:
        default_registry().get("synthesiser", "isn")
    assert "Did you mean 'ism'" in str(error.value)
    assert "ism" in str(error.value)


def test_unknown_synthesiser_exits_2_without_traceback():
    result = CliRunner().invoke(main, ["run", "--synth", "nosuch", "--diag", "mdm", "--joint"])
    assert result.exit_code == 2
    assert "Known synthesisers" in result.output and "ism" in result.output
    assert "Traceback" not in result.output


class BrokenPlugin:
    """A plugin whose hook raises: it must be reported, and the others must load."""

    __name__ = "broken"

    @staticmethod
    @hookimpl
    def cdsf_bench_synthesisers():
        raise RuntimeError("boom")


def test_a_broken_plugin_is_reported_and_does_not_stop_the_others():
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        registry = build_registry(extra_plugins=[BrokenPlugin()])
    assert any("boom" in error for error in registry.failures.values())
    assert "ism" in registry.names("synthesiser")


class MisspeltPlugin:
    """A plugin with a misspelt hook (``synthesiser``, not ``synthesisers``) beside a correct one."""

    __name__ = "misspelt"

    @staticmethod
    @hookimpl
    def cdsf_bench_synthesiser():
        return [Component("lost", object, "never registered")]

    @staticmethod
    @hookimpl
    def cdsf_bench_diagnosers():
        return [Component("orphan", object, "of a broken plugin")]


def test_a_misspelt_hook_reports_its_plugin_and_the_others_load(monkeypatch):
    with pytest.warns(UserWarning, match="cdsf-bench plugin 'misspelt' is broken"):
        registry = build_registry(extra_plugins=[MisspeltPlugin()])
    error = registry.failures["misspelt"]
    assert "'cdsf_bench_synthesiser' (did you mean 'cdsf_bench_synthesisers'?)" in error
    assert "no hook specification" in error
    assert "orphan" not in registry.names("diagnoser")  # a broken plugin is refused whole
    assert "ism" in registry.names("synthesiser") and "mdm" in registry.names("diagnoser")
    monkeypatch.setattr("cdsf_bench.registry.default_registry", lambda: registry)
    listed = json.loads(CliRunner().invoke(main, ["plugins", "--json"]).output)
    assert {"plugin": "misspelt", "error": error} in listed["failed"]


def _flagged(kind: str, flag: Flag) -> object:
    class Flagged:
        __name__ = "flagged"

    hook = {"coupling": "cdsf_bench_couplings", "synthesiser": "cdsf_bench_synthesisers"}[kind]
    setattr(Flagged, hook, staticmethod(hookimpl(lambda: [Component("flagged", object, "", flag=flag)])))
    return Flagged()


@pytest.mark.parametrize(
    "kind, flag, message",
    [
        ("coupling", Flag("Joint_2", "bad"), "a flag is lowercase letters, digits and dashes"),
        ("coupling", Flag("joint", "again"), "declares flag --joint, taken by coupling 'joint'"),
        ("synthesiser", Flag("flagged", "no"), "only couplings take flags"),
    ],
)
def test_a_bad_flag_reports_its_plugin(kind, flag, message):
    with pytest.warns(UserWarning, match="declares a bad flag"):
        registry = build_registry(extra_plugins=[_flagged(kind, flag)])
    assert message in registry.failures["flagged"]
    assert "flagged" not in registry.names(kind)  # type: ignore[arg-type]


def test_allowlist_restricts_loaded_plugins(monkeypatch):
    monkeypatch.setenv("CDSF_BENCH_PLUGINS", "data")
    registry = build_registry()
    assert registry.names("synthesiser") == []
    assert "phantom" in registry.names("data_source")


class ShadowPlugin:
    __name__ = "shadow"

    @staticmethod
    @hookimpl
    def cdsf_bench_synthesisers():
        return [Component("ism", object, "a second ism")]


def test_a_duplicate_name_warns_and_keeps_the_first():
    with pytest.warns(UserWarning, match="shadowed"):
        registry = build_registry(extra_plugins=[ShadowPlugin()])
    assert registry.get("synthesiser", "ism").description != "a second ism"


def _doc_blocks() -> tuple[str, str]:
    text = DOCS.read_text()
    toml = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    python = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    return toml, python


def test_external_plugin_from_the_docs_installs_and_runs(tmp_path: Path):
    """Build the guide's example as a wheel, install it like a third party would, run it."""
    project = tmp_path / "cdsf-bench-shallow"
    project.mkdir()
    toml, python = _doc_blocks()
    (project / "pyproject.toml").write_text(toml)
    (project / "cdsf_bench_shallow.py").write_text(python)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(project),
        ],
        check=True,
    )
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-index",
            "-q",
            "--target",
            str(site),
            *map(str, wheels.glob("*.whl")),
        ],
        check=True,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    listed = subprocess.run(
        [sys.executable, "-m", "cdsf_bench", "plugins", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    shallow = [c for c in json.loads(listed.stdout)["components"] if c["name"] == "shallow"]
    assert shallow and shallow[0]["distribution"] == "cdsf-bench-shallow"
    out = tmp_path / "run"
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "cdsf_bench",
            "run",
            "--synth",
            "shallow",
            "--diag",
            "mdm",
            "--joint",
            "--preset",
            "tiny",
            "--set",
            "data.subjects=24",
            "--epochs",
            "1",
            "--set",
            "synth.shallow.depth=3",
            "--set",
            "evaluate.bootstrap=10",
            "--out",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"]["synth"] == "shallow"
    assert "depth = 3" in (out / "config.toml").read_text()
    # its declared search space is what 'cdsf-bench tune' searches, beside the core's and MDM's
    planned = subprocess.run(
        [
            sys.executable,
            "-c",
            "from cdsf_bench.registry import default_registry\n"
            "from cdsf_bench.tune.plan import plan_study\n"
            "plan = plan_study(default_registry(), assignments=('preset=tiny', 'method.synth=shallow'))\n"
            "print(' '.join(dim.key for dim in plan.space))",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert {"synth.shallow.width", "synth.shallow.depth", "train.learning_rate"} <= set(
        planned.stdout.split()
    )
