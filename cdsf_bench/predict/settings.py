"""Which settings a prediction may change: the cohort's, never the trained run's.

Kept apart from the prediction itself so that a suite can check its ``test_settings`` when
it is read, before any run starts.
"""

from __future__ import annotations

from collections.abc import Iterable

from cdsf_bench import config as cfg
from cdsf_bench.errors import InputError

#: [data] settings that define the preprocessing a model was trained with (and the cohort,
#: named by --data / test_data): a prediction uses the run's
RUN_PREPROCESSING = ("spec", "resolution_mm", "pet_suvr_max")


def check_data_assignments(assignments: Iterable[str], where: str) -> None:
    """Refuse any ``KEY=VALUE`` that is not a ``data.*`` setting a prediction may change."""
    for text in assignments:
        keys, _ = cfg.parse_assignment(text)
        if keys[0] != "data" or len(keys) < 2:
            raise InputError(
                f"{where} '{text}': a trained model is applied with its run's settings; only the "
                "data.* settings of the cohort to predict may be given (data.phantom_seed, data.phantom.*, "
                "data.subjects, data.session ...)."
            )
        if keys[1] in RUN_PREPROCESSING:
            what = "named by --data / test_data" if keys[1] == "spec" else "the run's preprocessing"
            raise InputError(
                f"{where} '{text}': data.{keys[1]} is {what}; the cohort is preprocessed exactly as the "
                "run's data were, so it cannot be changed here."
            )
