"""Test support: a training context for couplings driven directly, and benchmark scripts.

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
