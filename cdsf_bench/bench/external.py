"""External validation in suites: every run's selected model tested on another cohort.

A suite with ``test_data = SPEC`` (and ``[test_settings]``, that cohort's ``data.*``
settings) trains and selects every run on the suite's data as usual; after each run its
model is applied to SPEC by ``cdsf-bench predict``'s own path
(:func:`cdsf_bench.predict.output.predict_run`). The prediction folders mirror the run
folders under ``external/`` (``external/[scenario/]task/replicate/method``), and their
rows form a second table, ``external.csv``, with the columns of ``results.csv``. Every
method of a replicate predicts the same external subjects, so the report pairs them as it
pairs the in-site test, and it sets each method's in-site AUC beside its external one.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from cdsf_bench.bench.render import Block, Figure, Heading, Paragraph, Table
from cdsf_bench.bench.stats import interval_text, mean_sd
from cdsf_bench.bench.suite import RunSpec, Suite
from cdsf_bench.bench.table import result_row, results_frame, suite_record
from cdsf_bench.errors import InputError
from cdsf_bench.figures import plt, save_figure
from cdsf_bench.progress import console
from cdsf_bench.registry import Registry
from cdsf_bench.run_folder import RunFolder
from cdsf_bench.settings import RunConfig

#: the folder of the prediction folders, and the table of their results, in a suite folder
EXTERNAL = "external"
EXTERNAL_RESULTS = "external.csv"
EXTERNAL_NOTE = (
    "Each run's selected model (weights chosen on its validation split, threshold chosen there too) "
    "applied once to the external cohort, preprocessed as the run's data were; nothing is tuned on it. "
    "In-site: the run's own test metrics (its test split, or its held-out phantom cohort where "
    "evaluate.phantom_test_subjects is set). ΔAUC external − in-site: per replicate, the external AUC "
    "minus the in-site AUC of the same model (mean and 95% t-interval over replicates). The paired "
    "comparisons below are those of the in-site test, on the external subjects both methods predicted."
)


def external_name(shard: tuple[int, int] | None) -> str:
    return EXTERNAL_RESULTS if shard is None else f"external.shard-{shard[0]}-of-{shard[1]}.csv"


def check_external(suite: Suite, configs: list[RunConfig], registry: Registry) -> None:
    """Before any run: the external cohort's settings resolve for every run, and its source exists."""
    from cdsf_bench.predict.apply import source_config
    from cdsf_bench.preflight import checked_source

    for config in configs:
        resolved = source_config(config, suite.test_data, suite.test_assignments, registry)
        checked_source(resolved, registry)


def predict_external(spec: RunSpec, suite: Suite, registry: Registry, out: Path, run_done: bool) -> dict:
    """The external row of one run: predicted now, read back if a resumed suite has it, or not run."""
    from cdsf_bench.predict.output import predict_run

    root = out / EXTERNAL
    folder = root / spec.folder
    if not run_done:
        return result_row(spec, root, "failed", "the run did not finish, so there is no model to test")
    if RunFolder(folder).finished:
        return result_row(spec, root, "done")
    if folder.exists():  # a prediction killed before its metrics.json: redo it (inference only)
        shutil.rmtree(folder)
    try:
        predict_run(
            out / spec.folder, suite.test_data, registry, assignments=suite.test_assignments, out=folder
        )
    except InputError as error:
        console.print(f"[red]external test of {spec.folder} failed:[/] {error}", highlight=False)
        return result_row(spec, root, "failed", str(error))
    return result_row(spec, root, "done")


def external_frame(out: Path, suite: Suite) -> pd.DataFrame:
    """``external.csv`` rebuilt from the prediction folders (merging shards), in the suite's order."""
    root = Path(out) / EXTERNAL
    rows = [
        result_row(spec, root, "done" if RunFolder(root / spec.folder).finished else "missing")
        for spec in suite.runs()
    ]
    return results_frame(rows)


def copy_external(source: Path, out: Path, run_folder: str) -> None:
    """Copy a shard's prediction folder of one run into the merged suite folder."""
    origin, target = Path(source) / EXTERNAL / run_folder, Path(out) / EXTERNAL / run_folder
    if origin.is_dir() and not target.exists() and origin.resolve() != target.resolve():
        shutil.copytree(origin, target)


# -- the report ----------------------------------------------------------------------------


def load_external(folder: Path) -> pd.DataFrame | None:
    """``external.csv`` of a suite folder, or None for a suite without external test data."""
    path = Path(folder) / EXTERNAL_RESULTS
    if not path.is_file():
        return None
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    frame["scenario"] = frame["scenario"].astype(object).where(frame["scenario"].notna(), "").astype(str)
    return frame


def external_inputs(folder: Path) -> list[str]:
    """The external files the report reads (and an export keeps), relative to the suite folder."""
    external = load_external(folder)
    if external is None:
        return []
    done = external[external["status"] == "done"]
    runs = [RunFolder(Path(EXTERNAL) / run) for run in done["run_folder"]]
    wanted = [path.as_posix() for run in runs for path in (run.predictions_path(), run.metrics_path)]
    missing = [name for name in wanted if not (Path(folder) / name).is_file()]
    if missing:
        raise InputError(
            f"{folder} cannot be reported: {len(missing)} external prediction file(s) are missing "
            f"({', '.join(missing[:3])}); {EXTERNAL_RESULTS} lists them as done."
        )
    return [EXTERNAL_RESULTS, *wanted]


def external_source(folder: Path) -> str:
    """The external cohort as the suite names it: its spec and settings."""
    given = suite_record(Path(folder)).get("suite", {}).get("test_data", {})
    settings = ", ".join(f"{key} = {value}" for key, value in given.get("settings", {}).items())
    return f"{given.get('spec', '?')}" + (f" ({settings})" if settings else "")


def external_runs(folder: Path, scenario: str, task: str) -> pd.DataFrame | None:
    """The finished external predictions of one (scenario, task); None without ``test_data``."""
    external = load_external(folder)
    if external is None:
        return None
    external_inputs(folder)  # refuses, naming them, prediction files that are missing
    part = external[(external["scenario"] == scenario) & (external["task"] == task)]
    return part[part["status"] == "done"]


def shift_blocks(
    folder: Path, done: pd.DataFrame, external: pd.DataFrame, methods: list[str], label: str, task: str
) -> list[Block]:
    """Heading, each method's in-site against external AUC and BACC, and the figure.

    The report follows these with its paired comparisons on the external subjects.
    """
    source = external_source(folder)
    if external.empty:
        return [Heading(3, f"External validation on {source}"), Paragraph("No external prediction finished.")]
    subjects = int(external["n_test"].max())
    joined = done.merge(external, on="run_folder", suffixes=("", "_external"))
    rows = [
        (
            method,
            str(len(mine)),
            mean_sd(mine["auc"]),
            mean_sd(mine["auc_external"]),
            interval_text(mine["auc_external"] - mine["auc"]),
            mean_sd(mine["bacc"]),
            mean_sd(mine["bacc_external"]),
        )
        for method in methods
        if not (mine := joined[joined["method"] == method]).empty
    ]
    columns = (
        "method",
        "replicates",
        "AUC in-site",
        "AUC external",
        "ΔAUC external − in-site",
        "BACC in-site",
        "BACC external",
    )
    _shift_figure(joined, methods, Path(folder) / "figures" / f"{label}_external.png", task)
    return [
        Heading(3, f"External validation on {source}: up to {subjects} subjects per model"),
        Table(columns, tuple(rows)),
        Paragraph(EXTERNAL_NOTE),
        Figure(
            f"figures/{label}_external.png", f"{task}: AUC of each replicate's model in-site and on {source}"
        ),
    ]


def _shift_figure(joined: pd.DataFrame, methods: list[str], path: Path, task: str) -> Path:
    """Per method, each replicate's AUC in-site and external joined by a line."""
    figure, axis = plt.subplots(figsize=(1.8 + 1.3 * len(methods), 3.8))
    for x, method in enumerate(methods):
        mine = joined[joined["method"] == method]
        for _, run in mine.iterrows():
            inside, outside = float(run["auc"]), float(run["auc_external"])
            if math.isfinite(inside) and math.isfinite(outside):
                axis.plot([x - 0.18, x + 0.18], [inside, outside], color="grey", linewidth=1, alpha=0.7)
        axis.scatter(np.full(len(mine), x - 0.18), mine["auc"], s=18, color="tab:blue")
        axis.scatter(np.full(len(mine), x + 0.18), mine["auc_external"], s=18, color="tab:red")
    axis.scatter([], [], color="tab:blue", label="in-site test")
    axis.scatter([], [], color="tab:red", label="external")
    axis.set_xticks(range(len(methods)), methods, rotation=35, ha="right", fontsize=8)
    axis.set(ylabel="AUC", title=f"{task}: AUC in-site and external, per replicate")
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    return save_figure(figure, path)
