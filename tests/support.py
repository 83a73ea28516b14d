"""Test support: a training context for couplings driven directly, benchmark scripts, and the
tiny suite and the tiny run that conftest.py runs once for the modules that read them.

``benchmarks/`` is a folder of scripts, not a package on the import path (a script run as
``python benchmarks/perf_step.py`` imports its neighbours by their bare names), so tests
load a script's module from its file instead of relying on the working directory.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

from cdsf_bench.interfaces import TrainingContext
from cdsf_bench.registry import default_registry

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """The module of ``benchmarks/<name>.py``, imported once under its bare name."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def training_context(shape: tuple[int, int, int], **overrides: object) -> TrainingContext:
    """What the core would tell a coupling in a one-process CPU run of ``shape`` volumes."""
    values: dict = {
        "device": torch.device("cpu"),
        "input_shape": shape,
        "num_classes": 2,
        "epochs": 1,
        "learning_rate": 1e-3,
        "patience": None,
        "select_on": "auc",
        "train_pet_mean": torch.zeros(1, 1, *shape),
        "has_pet_truth": False,
    }
    values.update(overrides)
    return TrainingContext(**values)


#: a tiny MRI-only run's options (conftest.py trains one per session): seconds, one epoch
TINY_RUN = ["--synth", "none", "--diag", "mdm", "--preset", "tiny", "--set", "data.subjects=24"]
TINY_RUN += ["--epochs", "1", "--set", "evaluate.bootstrap=10"]


def second_method() -> str:
    """MRI alone when the 'single' coupling is installed, else CDSF without the feature term."""
    if "single" in default_registry().names("coupling"):
        return 'name = "MRI only"\nsynth = "none"\ndiag = "mdm"\ncoupling = "single"'
    method = 'name = "CDSF no feature"\nsynth = "ism"\ndiag = "mdm"\ncoupling = "joint"\n'
    return method + "settings.coupling.joint.w_feature = 0"


TINY_SUITE = """
name = "tiny"
task = "ad_cn"
preset = "tiny"
seeds = [0, 1]

[settings]
"data.subjects" = 24
"train.epochs" = 1
"evaluate.bootstrap" = 10

[[methods]]
name = "CDSF"
synth = "ism"
diag = "mdm"
coupling = "joint"

[[methods]]
{second}
"""


def tiny_suite_text() -> str:
    """:data:`TINY_SUITE` with its second method: two methods, two seeds, 8 mm, one epoch."""
    return TINY_SUITE.format(second=second_method())
