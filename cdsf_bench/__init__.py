"""cdsf-bench: benchmark collaborative PET synthesis and diagnosis (CDSF) against its alternatives.

The plugin contract is re-exported here for plugin authors (``from cdsf_bench import Coupling``).
The types live in :mod:`cdsf_bench.interfaces`, which imports torch; they are loaded on first
access (PEP 562), so that importing the package, and commands that train nothing
(``cdsf-bench --help``), do not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cdsf_bench.hookspecs import hookimpl

if TYPE_CHECKING:
    from cdsf_bench.interfaces import (
        Batch,
        Choice,
        Component,
        Coupling,
        DataSource,
        DiagnoserOutput,
        Flag,
        FloatRange,
        IntRange,
        Prediction,
        TrainingContext,
        TrainingStage,
    )

__all__ = [
    "Batch",
    "Choice",
    "Component",
    "Coupling",
    "DataSource",
    "DiagnoserOutput",
    "Flag",
    "FloatRange",
    "IntRange",
    "Prediction",
    "TrainingContext",
    "TrainingStage",
    "hookimpl",
]
#: the names of ``__all__`` that :mod:`cdsf_bench.interfaces` defines
_INTERFACES = frozenset(__all__) - {"hookimpl"}


def __getattr__(name: str) -> Any:
    """The contract's types, imported from :mod:`cdsf_bench.interfaces` when first asked for."""
    if name in _INTERFACES:
        return getattr(importlib.import_module("cdsf_bench.interfaces"), name)
    raise AttributeError(f"module 'cdsf_bench' has no attribute '{name}'")
