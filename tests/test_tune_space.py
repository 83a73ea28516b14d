"""Search spaces: what every built-in method declares, and every bad space refused by name.

No training here: plans resolve configurations only, and the command-line cases stop at
the checks that run before any trial.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cdsf_bench import Choice, Component, IntRange, hookimpl
from cdsf_bench.bench.suite_file import load_suite
from cdsf_bench.cli import main
from cdsf_bench.errors import InputError
from cdsf_bench.registry import build_registry, default_registry
from cdsf_bench.tune.plan import plan_study
from cdsf_bench.tune.space import default_point

#: every built-in method, as the quick suite names them
METHODS = [
    ("ism", "mdm", "joint"),
    ("unet3d", "mdm", "joint"),
    ("ism", "mdm", "decoupled"),
    ("unet3d", "mdm", "decoupled"),
    ("diffusion", "mdm", "decoupled"),
    ("ism", "mdm", "task-induced"),
    ("none", "mdm", "single"),
    ("none", "mdm", "mean-impute"),
    ("none", "mdm", "complete-case"),
    ("none", "mdm", "oracle"),
]


def _method(synth: str, diag: str, coupling: str) -> tuple[str, ...]:
    return ("preset=tiny", f"method.synth={synth}", f"method.diag={diag}", f"method.coupling={coupling}")


@pytest.mark.parametrize("method", METHODS, ids=lambda m: "-".join(m))
def test_every_builtin_method_declares_a_space_that_holds_its_defaults(method):
    plan = plan_study(default_registry(), assignments=_method(*method))
    keys = [dim.key for dim in plan.space]
    synth, diag, coupling = method
    assert keys[:2] == ["train.learning_rate", "train.patience"]  # the core's, for every method
    assert any(key.startswith(f"coupling.{coupling}.") for key in keys)
    assert any(key.startswith(f"diag.{diag}.") for key in keys)
    assert any(key.startswith(f"synth.{synth}.") for key in keys) == (synth != "none")
    # trial 0 tries the defaults: every dimension's default lies inside its range or choices
    assert set(default_point(list(plan.space), plan.base)) == set(keys)


def test_the_diagnosers_weight_decay_is_searched_alike_in_every_coupling():
    spaces = {
        m[2]: next(
            d.param
            for d in plan_study(default_registry(), assignments=_method(*m)).space
            if d.key.endswith(".weight_decay")
        )
        for m in METHODS
    }
    assert len(set(spaces.values())) == 1


@pytest.mark.parametrize(
    "kind, name",
    [("synthesiser", "ism"), ("synthesiser", "unet3d"), ("synthesiser", "diffusion"), ("diagnoser", "mdm")],
)
def test_every_declared_value_builds_a_working_network(kind, name):
    """Each choice and each range end of a network's space builds and runs on a tiny volume."""
    component = default_registry().get(kind, name)
    shape = (20, 24, 20)
    for key, param in component.space.items():
        values = param.values if isinstance(param, Choice) else (param.low, param.high)
        for value in values:
            if kind == "diagnoser":
                module = component.factory(in_channels=2, input_shape=shape, num_classes=2, **{key: value})
                module.train()
                out = module(torch.rand(2, 2, *shape) * 2 - 1)
                assert out.logits.shape == (2, 2), (key, value)
            else:
                module = component.factory(**{key: value})
                assert module(torch.rand(1, 1, *shape) * 2 - 1).shape == (1, 1, *shape), (key, value)


def test_settings_given_with_set_leave_the_space_and_keep_their_value():
    assignments = (
        *_method("ism", "mdm", "decoupled"),
        "coupling.decoupled.w_adv=0",
        "coupling.decoupled.w_l1=50",
    )
    plan = plan_study(default_registry(), assignments=assignments)
    keys = [dim.key for dim in plan.space]
    assert "coupling.decoupled.w_l1" not in keys and "coupling.decoupled.synthesis_lr" in keys
    config = plan.trial_config({"coupling.decoupled.synthesis_lr": 1e-4})
    assert config.setting("coupling.decoupled.w_l1") == 50.0
    assert config.setting("coupling.decoupled.w_adv") == 0.0
    assert config.setting("coupling.decoupled.synthesis_lr") == 1e-4


def test_a_diagnosis_metric_also_selects_the_epoch():
    plan = plan_study(default_registry(), assignments=("preset=tiny",), metric="bacc")
    assert plan.base.train.select_on == "bacc" and plan.direction == "maximize"
    assert plan_study(default_registry(), assignments=("preset=tiny",), metric="mae").direction == "minimize"
    with pytest.raises(InputError, match="disagree"):
        plan_study(default_registry(), assignments=("preset=tiny", "train.select_on=auc"), metric="mcc")


def test_the_plan_hash_is_the_study_and_changes_with_what_decides_its_trials():
    registry = default_registry()
    one = plan_study(registry, assignments=("preset=tiny",))
    assert one.hash == plan_study(registry, assignments=("preset=tiny",)).hash
    assert one.hash != plan_study(registry, assignments=("preset=tiny", "seed=1")).hash
    assert one.hash != plan_study(registry, assignments=("preset=tiny",), metric="bacc").hash
    assert one.hash != plan_study(registry, assignments=("preset=tiny",), pruner="none").hash


class UnknownParameterPlugin:
    """A plugin whose declared space names a parameter its factory does not take."""

    __name__ = "badspace"

    @staticmethod
    @hookimpl
    def cdsf_bench_synthesisers():
        def shallow(width: int = 8):
            return torch.nn.Conv3d(1, 1, 3, padding=1)

        return [
            Component("badspace", shallow, "a space for a missing parameter", space={"depth": IntRange(1, 4)})
        ]


def test_a_plugins_space_for_a_parameter_it_lacks_is_refused_naming_both():
    registry = build_registry(extra_plugins=[UnknownParameterPlugin()])
    with pytest.raises(
        InputError, match=r"synthesiser 'badspace'.*'depth' is not one of its settings \(width\)"
    ):
        plan_study(registry, assignments=("preset=tiny", "method.synth=badspace"))


def _space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


TUNE = ["tune", "--preset", "tiny", "--trials", "1"]


@pytest.mark.parametrize(
    "space, message",
    [
        (
            '"coupling.joint.w_nothing" = { low = 1.0, high = 2.0 }',
            "'coupling.joint.w_nothing': it is not a setting of this method",
        ),
        (
            '"coupling.decoupled.w_l1" = { low = 1.0, high = 2.0 }',
            "'coupling.decoupled.w_l1': it is not a setting of this method",
        ),
        ('"data.subjects" = { low = 20, high = 40 }', "[data] is not searched"),
        ('"train.select_on" = { values = ["auc", "bacc"] }', "the study's --metric sets it"),
        ("", "The search space is empty: space file"),
        ('"train.learning_rate" = { low = 0.01, high = 0.001 }', "low (0.01) must be below high (0.001)"),
        ('"train.learning_rate" = { low = 0.0, high = 0.1, log = true }', "log-scale range needs low > 0"),
        ('"train.patience" = { low = 1.5, high = 4.0 }', "integer setting"),
        ('"coupling.joint.mdm_head" = { low = 1, high = 2 }', "a range needs a numeric setting"),
        ('"coupling.joint.mdm_head" = { values = ["class"] }', "at least two values"),
        ('"coupling.joint.w_voxel" = { values = [1.0, "x"] }', "the value 'x' is refused"),
        ('"coupling.joint.w_voxel" = { low = 1.0, high = 2.0, step = 1 }', "unknown field(s) step"),
        ('"coupling.joint.w_voxel" = 3', "must be a table"),
    ],
)
def test_a_bad_space_file_exits_2_naming_the_setting(tmp_path, space, message):
    result = CliRunner().invoke(
        main, [*TUNE, "--space", str(_space(tmp_path, space)), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists(), "a refused study writes nothing"


def test_a_space_file_setting_that_set_fixes_is_refused(tmp_path):
    space = _space(tmp_path, '"coupling.joint.w_voxel" = { low = 1.0, high = 20.0 }')
    result = CliRunner().invoke(main, [*TUNE, "--space", str(space), "--set", "coupling.joint.w_voxel=5"])
    assert result.exit_code == 2 and "which --set (or the suite) fixes" in result.output


def test_fixing_every_declared_setting_leaves_an_empty_space(tmp_path):
    keys = [
        dim.key for dim in plan_study(default_registry(), assignments=_method("none", "mdm", "single")).space
    ]
    values = {key: '"batch"' if key.endswith("norm") else "2" for key in keys}
    sets = [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]
    result = CliRunner().invoke(main, [*TUNE, "--synth", "none", "--diag", "mdm", *sets])
    assert result.exit_code == 2, result.output
    assert "The search space is empty" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--trials", "0"], "0 is not in the range"),
        (
            ["--trials", "1", "--synth", "none", "--diag", "mdm", "--metric", "mae"],
            "--metric mae is a synthesis metric",
        ),
        (["--trials", "1", "--metric", "recall"], "'recall' is not one of"),
    ],
)
def test_bad_tune_options_exit_2_naming_them(args, message):
    result = CliRunner().invoke(main, ["tune", "--preset", "tiny", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_without_optuna_tune_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    result = CliRunner().invoke(main, [*TUNE, "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "pip install 'cdsf-bench[tune]'" in result.output and "Traceback" not in result.output


def test_nothing_imports_optuna_unless_a_study_runs():
    code = (
        "import sys\n"
        "import cdsf_bench.cli, cdsf_bench.bench.report, cdsf_bench.bench.runner\n"
        "import cdsf_bench.bench.tuning, cdsf_bench.bench.tuning_report, cdsf_bench.tune.command\n"
        "from cdsf_bench.registry import default_registry\n"
        "from cdsf_bench.tune.plan import plan_study\n"
        "plan_study(default_registry(), assignments=('preset=tiny',))\n"
        "assert 'optuna' not in sys.modules, 'optuna was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "table, message",
    [
        ("[tune]\ntrials = 0", "[tune] trials must be an integer of at least 1"),
        ('[tune]\ntrials = 2\nsampler = "random"', "[tune] has unknown field(s) sampler"),
        ('[tune]\ntrials = 2\nmetric = "recall"', "[tune] metric must be one of"),
        ("tune = 3", "field 'tune' must be a table"),
    ],
)
def test_a_suites_tune_table_is_checked_naming_the_field(tmp_path, table, message):
    path = tmp_path / "suite.toml"
    path.write_text(
        f'name = "t"\npreset = "tiny"\nseeds = [0]\n{table}\n\n[[methods]]\nname = "CDSF"\nsynth = "ism"\n'
        'diag = "mdm"\ncoupling = "joint"\n'
    )
    with pytest.raises(InputError, match=re.escape(message)):
        load_suite(path)


def test_a_tuned_suite_keeps_its_budget_in_its_hash(tmp_path):
    base = (
        'name = "t"\npreset = "tiny"\nseeds = [0]\n'
        '[[methods]]\nname = "A"\nsynth = "ism"\ndiag = "mdm"\ncoupling = "joint"\n'
    )
    (tmp_path / "plain.toml").write_text(base)
    (tmp_path / "tuned.toml").write_text(base.replace("seeds = [0]\n", "seeds = [0]\n[tune]\ntrials = 4\n"))
    plain, tuned = load_suite(tmp_path / "plain.toml"), load_suite(tmp_path / "tuned.toml")
    assert plain.tune is None and "tune" not in plain.canonical()  # untuned suites keep their hash
    assert tuned.tune is not None and tuned.tune.trials == 4 and plain.hash != tuned.hash
