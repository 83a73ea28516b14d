"""The command line: listed without torch, commands imported on use, the couplings' flags."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import warnings

import click
import pytest
from click.testing import CliRunner

from cdsf_bench import Component, Flag, hookimpl
from cdsf_bench import registry as plugins
from cdsf_bench.cli import COMMANDS, load_command, main
from cdsf_bench.options import MethodCommand, method_flags, method_options
from cdsf_plugins.baselines import SingleModality

_PROBE = """
import json, sys
from click.testing import CliRunner
from cdsf_bench.cli import main
result = CliRunner().invoke(main, {args!r})
assert result.exit_code == 0, result.output
print(json.dumps({{"output": result.output, "modules": sorted(sys.modules)}}))
"""


def _probe(*args: str) -> tuple[str, set[str]]:
    """The output of ``cdsf-bench ARGS`` in a fresh interpreter and the modules it imported."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(args=list(args))], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    return found["output"], set(found["modules"])


def test_help_imports_neither_torch_nor_a_plugin():
    output, modules = _probe("--help")
    assert "torch" not in modules
    assert not {m for m in modules if m.startswith("cdsf_plugins")}
    for name in COMMANDS:
        assert f"  {name} " in output


def test_plugins_loads_the_plugins_and_no_training_stack():
    output, modules = _probe("plugins", "--json")
    assert "joint" in output and "cdsf_plugins.hooks" in modules
    for stack in (
        "cdsf_bench.engine",
        "cdsf_bench.run",
        "cdsf_bench.bench",
        "cdsf_bench.perf",
        "cdsf_bench.tune",
    ):
        assert stack not in modules


def test_run_help_lists_the_couplings_flags():
    result = CliRunner().invoke(main, ["run", "--help"])
    assert result.exit_code == 0
    assert "--joint" in result.output and "Train synthesis and diagnosis together" in result.output
    assert "--decoupled" in result.output and "Train a GAN first" in result.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_listing_shows_each_commands_own_summary(name: str):
    """The summary written in cli.COMMANDS is the first paragraph of the command's help."""
    command = load_command(name)
    assert command.name == name or name in ("perf", "predict")  # those two are renamed by COMMANDS
    first = inspect.cleandoc(command.help or "").split("\n\n")[0]
    assert " ".join(first.split()) == COMMANDS[name].summary


def test_two_coupling_flags_are_refused_by_name():
    result = CliRunner().invoke(main, ["run", "--synth", "ism", "--diag", "mdm", "--joint", "--decoupled"])
    assert result.exit_code == 2
    assert "--joint and --decoupled each choose a coupling; give one." in result.output


def test_a_flag_and_a_coupling_that_disagree_are_refused():
    result = CliRunner().invoke(main, ["data", "check", "phantom", "--joint", "--coupling", "single"])
    assert result.exit_code == 2
    assert "--joint and --coupling single disagree; give one." in result.output


class FlagPlugin:
    """A third party's coupling that brings its own flag, and one whose flag is an option already."""

    __name__ = "flags"

    @staticmethod
    @hookimpl
    def cdsf_bench_couplings() -> list[Component]:
        return [
            Component(
                "mri-only", SingleModality, "MRI alone", flag=Flag("mri-only", "Diagnose on MRI alone.")
            ),
            Component("clash", SingleModality, "a flag named like an option", flag=Flag("data", "Clash.")),
        ]


@click.command(cls=MethodCommand)
@method_options
def chosen(synth: str | None, diag: str | None, coupling_flag: str | None, coupling: str | None) -> None:
    """Print the coupling the method options choose."""
    click.echo(str(method_flags(synth, diag, coupling_flag, coupling)["method.coupling"]))


@pytest.fixture
def third_party(monkeypatch: pytest.MonkeyPatch) -> plugins.Registry:
    registry = plugins.build_registry(extra_plugins=[FlagPlugin()])
    monkeypatch.setattr(plugins, "default_registry", lambda: registry)
    return registry


def test_a_third_party_coupling_adds_its_own_flag(third_party: plugins.Registry):
    runner = CliRunner()
    assert runner.invoke(chosen, ["--mri-only"]).output.strip() == "mri-only"
    assert runner.invoke(chosen, ["--joint"]).output.strip() == "joint"
    assert runner.invoke(chosen, []).output.strip() == "None"
    both = runner.invoke(chosen, ["--mri-only", "--joint"])
    assert both.exit_code == 2 and "--joint and --mri-only each choose a coupling" in both.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the clashing flag's warning, tested below
        shown = runner.invoke(main, ["run", "--help"])
    assert "--mri-only" in shown.output and "Diagnose on MRI alone." in shown.output


def test_a_flag_that_is_already_an_option_is_left_out(third_party: plugins.Registry):
    with pytest.warns(UserWarning, match="declares flag --data, already an option of 'run'; it is left out"):
        shown = CliRunner().invoke(main, ["run", "--help"])
    assert "Clash." not in shown.output and "--data TEXT" in shown.output
