"""cdsf-bench: benchmark collaborative PET synthesis and diagnosis (CDSF) against its alternatives."""

from cdsf_bench.hookspecs import hookimpl
from cdsf_bench.interfaces import (
    Batch,
    Component,
    Coupling,
    DataSource,
    DiagnoserOutput,
    Prediction,
    TrainingContext,
    TrainingStage,
)

__all__ = [
    "Batch",
    "Component",
    "Coupling",
    "DataSource",
    "DiagnoserOutput",
    "Prediction",
    "TrainingContext",
    "TrainingStage",
    "hookimpl",
]
