"""One test per hook specification, and a meta-test that keeps it that way."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from cdsf_bench import config, hookspecs
from cdsf_bench.errors import InputError
from cdsf_bench.interfaces import Coupling, DataSource, DiagnoserOutput
from cdsf_bench.registry import KINDS, build_registry, default_registry

SHAPE = (16, 20, 16)


def _hook_names() -> list[str]:
    return [
        name
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if name.startswith("cdsf_bench_")
    ]


def test_every_hook_specification_has_its_own_test():
    """A new hook must come with a test named test_hook_<hook name> in this folder."""
    source = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    missing = [name for name in _hook_names() if f"def test_hook_{name}(" not in source]
    assert not missing, f"hook specifications without a test: {missing}"
    assert set(_hook_names()) == {*KINDS.values(), "cdsf_bench_defaults"}


def test_hook_cdsf_bench_synthesisers():
    components = default_registry().components["synthesiser"]
    assert "ism" in components
    for component in components.values():
        module = component.factory()
        mri = torch.rand(2, 1, *SHAPE) * 2 - 1
        pet = module(mri)
        assert pet.shape == mri.shape
        assert pet.min() >= -1 and pet.max() <= 1


def test_hook_cdsf_bench_diagnosers():
    components = default_registry().components["diagnoser"]
    assert "mdm" in components
    for component in components.values():
        module = component.factory(in_channels=2, input_shape=SHAPE, num_classes=2)
        out = module(torch.rand(2, 2, *SHAPE))
        assert isinstance(out, DiagnoserOutput)
        assert out.logits.shape == (2, 2)
        assert out.features.shape[0] == 2


def test_hook_cdsf_bench_couplings():
    components = default_registry().components["coupling"]
    assert "joint" in components
    for component in components.values():
        assert issubclass(component.factory, Coupling)
        assert component.factory.needs_synthesiser in (True, False, None)


def test_hook_cdsf_bench_data_sources():
    components = default_registry().components["data_source"]
    assert {"phantom", "manifest", "caps", "phantom-folder"} <= set(components)
    for component in components.values():
        source = component.factory()
        assert isinstance(source, DataSource)
        assert source.detect("phantom") == (component.name == "phantom")


def test_hook_cdsf_bench_defaults():
    """The proposed default method names installed components, and the config resolves to it."""
    registry = default_registry()
    defaults = registry.method_defaults()
    method = defaults.method
    assert method.synth in registry.components["synthesiser"]
    assert method.diag in registry.components["diagnoser"]
    assert method.coupling in registry.components["coupling"]
    assert registry.components["coupling"][defaults.mri_only_coupling].factory.needs_synthesiser is not True
    resolved = config.resolve(registry)
    assert resolved.raw["method"] == {"synth": method.synth, "diag": method.diag, "coupling": method.coupling}
    mri_only = config.resolve(registry, flags={"method.synth": "none"})
    assert mri_only.method.coupling == defaults.mri_only_coupling


def test_without_a_default_method_the_user_is_told_to_name_one():
    registry = build_registry()
    registry.defaults = None
    with pytest.raises(InputError, match="--synth, --diag and --coupling"):
        config.resolve(registry)
