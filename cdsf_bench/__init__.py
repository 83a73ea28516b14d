"""cdsf-bench: benchmark collaborative PET synthesis and diagnosis (CDSF) against its alternatives."""

from cdsf_bench.hookspecs import hookimpl
from cdsf_bench.interfaces import (
    Batch,
    Choice,
    Component,
    Coupling,
    DataSource,
    DiagnoserOutput,
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
    "FloatRange",
    "IntRange",
    "Prediction",
    "TrainingContext",
    "TrainingStage",
    "hookimpl",
]
