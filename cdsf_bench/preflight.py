"""What ``run`` refuses before it preprocesses a volume; ``data check`` asks the very same.

One function serves both, so that ``data check`` cannot call a cohort sound that ``run``
then refuses: first the source's check of its own settings (``DataSource.check_settings``:
the phantom's options), then the source's own row problems, then rows, files, headers
and, for the run's task, class sizes, fold counts, split sizes, an explicit ``split``
column and the method's needs on PET (read from its coupling's declared attributes, so the
core names no method), and the settings that need files (``evaluate.native_space``).
``data check`` adds the voxel checks, which ``run`` meets while preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from cdsf_bench.assemble import data_source, method_mismatch
from cdsf_bench.data.check import Needs, check_table
from cdsf_bench.data.problems import Problem
from cdsf_bench.data.sources import raise_problems
from cdsf_bench.interfaces import DataSource
from cdsf_bench.registry import Registry
from cdsf_bench.settings import RunConfig


def method_needs(run: RunConfig, registry: Registry) -> Needs:
    """What the run's method asks of the cohort, from its coupling's declared attributes."""
    coupling = registry.coupling_class(run.method.coupling)
    return Needs(
        pet_to_learn_from=run.method.synth != "none" and coupling.needs_synthesiser is not False,
        pet_in_every_class=coupling.subjects == "with_pet",
        pet_truth=coupling.needs_pet_truth,
    )


def checked_source(run: RunConfig, registry: Registry) -> DataSource:
    """The source that reads the run's data, once it has accepted its settings (reads nothing)."""
    source = data_source(run.data_spec, registry)
    source.check_settings(run.data)
    return source


@dataclass(frozen=True)
class Preflight:
    """The source that reads the data, its subject table (None for a generated cohort,
    which has no files) and every problem found, in the order the checks ran."""

    source: DataSource
    table: pd.DataFrame | None
    problems: list[Problem]


def preflight(
    run: RunConfig, registry: Registry, *, task: bool = True, voxels: bool = False, progress: bool = True
) -> Preflight:
    """Every problem ``run`` would refuse before preprocessing, all collected.

    ``task=False`` leaves out the task's feasibility (``data check`` without ``--task``);
    ``voxels`` adds the checks that read every volume (NaN, all-zero, SUVR, registration).
    """
    spec = run.data_spec
    source = checked_source(run, registry)
    found = source.subject_table(spec, run.data)
    table, problems = (None, []) if found is None else (found[0], list(found[1]))
    if table is not None:
        split = run.split
        problems += check_table(
            table,
            run.data,
            run.task if task else None,
            voxels=voxels,
            progress=progress,
            folds=split.folds,
            needs=method_needs(run, registry),
            val=split.val,
            test=split.test,
        )
    if run.evaluate.native_space and (table is None or "mri" not in table.columns):
        problems.append(
            Problem(
                "",
                "",
                "evaluate.native_space = true writes synthetic PET on each subject's own MRI grid, but "
                f"--data {spec} has no MRI files (it is generated on the MNI grid); give a manifest, a "
                "CAPS directory or a phantom folder, or set evaluate.native_space = false.",
            )
        )
    mismatch = method_mismatch(run, registry) if task else None
    if mismatch is not None:
        problems.append(Problem("", "", mismatch))
    return Preflight(source, table, problems)


def refuse_early(run: RunConfig, registry: Registry) -> pd.DataFrame | None:
    """``run``'s preflight: raise every problem together; return the subject table (None for
    a generated cohort). A refused run costs seconds and writes nothing."""
    checked = preflight(run, registry)
    raise_problems(checked.problems, f"--data {run.data_spec}")
    return checked.table
