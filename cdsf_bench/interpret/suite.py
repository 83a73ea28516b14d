"""A suite interpreted: every finished run's maps, and one table of their scores for the report.

``cdsf-bench interpret SUITE_FOLDER`` interprets each finished run of ``results.csv`` into
``OUT/<run folder>`` (``OUT`` defaults to ``SUITE_FOLDER/interpret``) and writes
``SUITE_FOLDER/interpret.csv``: one row per run and scored map (diagnoser, attribution
method, channel, truth), the run's identity first. The suite report shows it, when present,
as one table per attribution method (:func:`interpretation_blocks`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from cdsf_bench.bench.render import Block, Heading, Paragraph, Table
from cdsf_bench.bench.table import RESULTS_FILE, load_results
from cdsf_bench.errors import InputError
from cdsf_bench.registry import Registry
from cdsf_bench.results import write_csv

if TYPE_CHECKING:
    from cdsf_bench.interpret.interpretation import Request

#: the table of a suite's interpretations, beside its results.csv
INTERPRET_TABLE = "interpret.csv"
#: the results.csv columns that name a run in interpret.csv
RUN_COLUMNS = ("scenario", "task", "seed", "fold", "method", "run_folder")
#: the folder, inside the suite folder, the maps go to unless --out names another
DEFAULT_FOLDER = "interpret"
#: what the report's tables say about the scores
SCORES_NOTE = (
    "Attribution maps of each run's diagnoser on its test subjects (cdsf-bench interpret; "
    "docs/interpret.md), scored against the regions the phantom planted: share is the positive "
    "attribution inside them over the brain's, hit the pointing game (the map's maximum inside them, "
    "dilated by one voxel). Means over runs of the per-run means over subjects, the standard "
    "deviation over runs in brackets; chance is the regions' share of brain voxels, random the same "
    "scores of random maps. A high share is necessary, not sufficient, for a diagnoser that reads the "
    "disease where it is."
)


def is_suite(folder: Path) -> bool:
    return (Path(folder) / RESULTS_FILE).is_file()


def interpret_suite(folder: Path, registry: Registry, request: Request, out: Path | None) -> pd.DataFrame:
    """Interpret every finished run of the suite in ``folder``; write and return interpret.csv."""
    from cdsf_bench.interpret.interpretation import interpret_run  # torch and the models: on use only

    results = load_results(folder)
    done = results[results["status"] == "done"]
    if done.empty:
        raise InputError(
            f"{folder}: no run of the suite has finished (results.csv), so none can be interpreted."
        )
    root = Path(out) if out is not None else Path(folder) / DEFAULT_FOLDER
    rows = []
    for _, run in done.iterrows():
        result = interpret_run(Path(folder) / run["run_folder"], registry, request, root / run["run_folder"])
        identity = {column: run[column] for column in RUN_COLUMNS}
        rows += [{**identity, **scored} for scored in result.metrics["scores"]]
    table = pd.DataFrame(rows)
    write_csv(Path(folder) / INTERPRET_TABLE, table)
    return table


def interpretation_blocks(folder: Path) -> list[Block]:
    """The report's section on interpret.csv, one table per attribution method; none without it."""
    path = Path(folder) / INTERPRET_TABLE
    if not path.is_file():
        return []
    table = pd.read_csv(path, keep_default_na=False, na_values=[""])
    if table.empty:
        return []
    blocks: list[Block] = [Heading(2, "Where the diagnosers look"), Paragraph(SCORES_NOTE)]
    keys = ["method", "diagnoser", "channel", "truth"]
    for attribution in dict.fromkeys(table["attribution"]):
        part = table[table["attribution"] == attribution]
        rows = []
        for key, group in part.groupby(keys, sort=False):
            rows.append(
                (
                    *(str(k) for k in key),
                    str(len(group)),
                    _mean_sd(group["share"]),
                    _mean_sd(group["hit_rate"]),
                    f"{group['chance_share'].mean():.3f}",
                    f"{group['random_share'].mean():.3f}",
                    f"{group['chance_hit'].mean():.3f}",
                )
            )
        blocks += [
            Heading(3, f"Attribution by {attribution}"),
            Table(
                (
                    "method",
                    "diagnoser",
                    "channel",
                    "truth",
                    "runs",
                    "share",
                    "hit rate",
                    "chance share",
                    "random share",
                    "chance hit",
                ),
                tuple(rows),
            ),
        ]
    return blocks


def _mean_sd(values: pd.Series) -> str:
    finite = values.dropna()
    if not len(finite):
        return "-"
    sd = finite.std(ddof=1) if len(finite) > 1 else math.nan
    return f"{finite.mean():.3f}" + (f" ({sd:.3f})" if math.isfinite(sd) else "")
