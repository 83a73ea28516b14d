"""What a suite's report reads from the suite folder, and the order it reads it in.

The report groups the results table by (scenario, task) in the suite's order and, per
finished run, reads its test predictions (required), its environment record (the header
and the compute cost), its energy record where it measured one (``evaluate.carbon``) and,
for the first finished run of each synthesising method, its montage; a tuned suite's
study summaries and a suite's external predictions come with them. :func:`report_inputs`
lists those files, so an export keeps exactly what a re-render needs.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cdsf_bench.bench.external import external_inputs
from cdsf_bench.bench.table import load_results
from cdsf_bench.bench.tuning_report import summary_path
from cdsf_bench.errors import InputError
from cdsf_bench.run_folder import PREDICTIONS, RunFolder


def groups(results: pd.DataFrame) -> list[tuple[str, str]]:
    """(scenario, task) pairs in the suite's order; the scenario is "" without scenarios."""
    return list(dict.fromkeys(zip(results["scenario"], results["task"], strict=True)))


def in_group(frame: pd.DataFrame, scenario: str, task: str) -> pd.DataFrame:
    return frame[(frame["scenario"] == scenario) & (frame["task"] == task)]


def method_order(results: pd.DataFrame) -> list[str]:
    """Methods in the suite's order (their first appearance in results.csv)."""
    return list(dict.fromkeys(results["method"]))


def synthesising_methods(done: pd.DataFrame, methods: list[str]) -> list[str]:
    """The methods with a synthesis score: those whose montage the report shows."""
    return [m for m in methods if done.loc[done["method"] == m, "ssim"].notna().any()]


def montage_runs(done: pd.DataFrame, methods: list[str]) -> list[tuple[str, pd.Series]]:
    """The run whose montage shows each of ``methods``: its first finished one."""
    return [(m, done[done["method"] == m].iloc[0]) for m in methods]


def montage_path(run_folder: Path) -> Path:
    """The montage figure of the run in ``run_folder``."""
    return RunFolder(run_folder).figure("montage")


def missing_run_files(folder: Path, done: pd.DataFrame) -> list[Path]:
    """The required per-run files (predictions.csv) that the finished runs lack."""
    paths = [RunFolder(Path(folder) / run_folder).predictions_path() for run_folder in done["run_folder"]]
    return [path for path in paths if not path.is_file()]


def require_run_files(folder: Path, done: pd.DataFrame) -> None:
    """Refuse, naming the file, a folder whose finished runs lack what the report reads."""
    missing = missing_run_files(folder, done)
    if missing:
        listed = ", ".join(str(path) for path in missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise InputError(
            f"{folder} cannot be reported: {len(missing)} finished run(s) lack {PREDICTIONS} ({listed}). "
            "The report pairs methods on each run's test predictions; a results folder that should "
            "re-render keeps them (make one with 'cdsf-bench export SUITE_FOLDER DEST')."
        )


def report_inputs(folder: Path) -> list[str]:
    """Every run file the report of ``folder`` reads, relative to the folder, that exists.

    What a committed results folder keeps so that ``report`` re-renders it: each finished
    run's predictions, environment and energy record, and the montage the report shows per method.
    """
    folder = Path(folder)
    results = load_results(folder)
    done = results[results["status"] == "done"]
    require_run_files(folder, done)
    runs = [RunFolder(Path(run_folder)) for run_folder in done["run_folder"]]
    wanted = [
        path.as_posix()
        for run in runs
        for path in (run.predictions_path(), run.environment_path, run.energy_path)
    ]
    wanted += [summary_path(r) for r in results["run_folder"]]  # a tuned suite's studies
    for scenario, task in groups(results):
        task_done = in_group(done, scenario, task)
        methods = synthesising_methods(task_done, method_order(in_group(results, scenario, task)))
        shown = montage_runs(task_done, methods)
        wanted += [montage_path(Path(run["run_folder"])).as_posix() for _, run in shown]
    wanted += external_inputs(folder)
    return [name for name in dict.fromkeys(wanted) if (folder / name).is_file()]
