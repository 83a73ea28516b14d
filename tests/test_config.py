"""Configuration precedence, validation and the round trip through config.toml."""

from __future__ import annotations

from pathlib import Path

import pytest

from cdsf_bench import config as cfg
from cdsf_bench.errors import ConfigError
from cdsf_bench.registry import default_registry


@pytest.fixture(scope="module")
def registry():
    return default_registry()


def test_defaults_resolve_with_plugin_settings(registry):
    config = cfg.resolve(registry)
    assert config.raw["method"] == {"synth": "ism", "diag": "mdm", "coupling": "joint"}
    assert config.raw["synth"]["ism"]["n_residual"] == 6
    assert config.raw["coupling"]["joint"]["w_voxel"] > 0


def test_precedence_defaults_preset_file_set_flags(registry, tmp_path: Path):
    file = tmp_path / "c.toml"
    file.write_text('preset = "tiny"\nseed = 3\n[train]\nepochs = 7\nbatch_size = 6\n')
    config = cfg.resolve(registry, file, ("train.epochs=9", "seed=4"), {"seed": 5})
    assert config.raw["data"]["resolution_mm"] == 8.0  # from the tiny preset
    assert config.raw["train"]["batch_size"] == 6  # file beats preset
    assert config.raw["train"]["epochs"] == 9  # --set beats file
    assert config.raw["seed"] == 5  # flag beats --set


def test_resolved_config_round_trips(registry, tmp_path: Path):
    config = cfg.resolve(registry, None, ("synth.ism.widths=[4, 8, 16]",))
    path = tmp_path / "config.toml"
    path.write_text(config.toml())
    again = cfg.resolve(registry, path)
    assert again == config
    assert again.raw["synth"]["ism"]["widths"] == (4, 8, 16)


@pytest.mark.parametrize(
    ("assignment", "fragment"),
    [
        ("train.epoch=3", "Unknown setting 'train.epoch'"),
        ("train.epochs=many", "must be int"),
        ("coupling.joint.w_nothing=1", "Unknown setting 'coupling.joint.w_nothing'"),
        ("synth.ism.norm=3", "must be str"),
        ("task=ad_mci", "Unknown task"),
        ("split.val=0.9", "split.val and split.test"),
        ("novalue", "is not KEY=VALUE"),
    ],
)
def test_bad_settings_are_named(registry, assignment, fragment):
    with pytest.raises(ConfigError, match=fragment):
        cfg.resolve(registry, None, (assignment,))


def test_toml_syntax_error_names_file(registry, tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nepochs = 3\n")
    with pytest.raises(ConfigError, match="bad.toml is not valid TOML"):
        cfg.resolve(registry, bad)


def test_integer_accepted_for_float(registry):
    config = cfg.resolve(registry, None, ("train.learning_rate=1",))
    learning_rate = config.raw["train"]["learning_rate"]
    assert learning_rate == 1.0 and isinstance(learning_rate, float)


def test_resolving_imports_no_data_source():
    """A source checks its own settings (the phantom its data.phantom.* options, in the preflight):
    resolving a configuration, even one with phantom options, does not import the phantom."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from cdsf_bench import config\n"
        "from cdsf_bench.registry import default_registry\n"
        "config.resolve(default_registry(), None, ('data.phantom.scenario=independent',))\n"
        "print('cdsf_bench.data.phantom' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_section_defaults_are_the_settings_types_defaults():
    """Every section's defaults are declared once, in its settings type, in config.toml's key order."""
    from dataclasses import fields

    from cdsf_bench import settings
    from cdsf_bench.interfaces import DataSettings

    sections = {
        "split": settings.SplitSettings,
        "train": settings.TrainSettings,
        "augment": settings.AugmentSettings,
        "precision": settings.PrecisionSettings,
        "evaluate": settings.EvaluateSettings,
    }
    for section, kind in sections.items():
        assert list(cfg.DEFAULTS[section]) == [f.name for f in fields(kind)]
        assert cfg.DEFAULTS[section] == {f.name: f.default for f in fields(kind)}
    assert [k for k in cfg.DEFAULTS["data"] if k not in ("spec", "synthesis_subjects")] == [
        f.name for f in fields(DataSettings)
    ]
