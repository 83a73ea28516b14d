"""The subjects of every split of every replicate, so others can re-run a result on them.

A run folder's splits.csv (``RunFolder.splits``) says which subject trained, validated and
tested; a suite folder holds one per run. :func:`split_table` gathers them into one long
table (``splits.tsv``: one row per run and subject) and :func:`participants_table` into a
BIDS-style ``participants.tsv``: one row per participant, its diagnosis, and one column per
replicate (``split`` for a single run; for a suite ``split_<replicate>``, the replicate
being the run folder's parent path, ``[<scenario>/]<task>/<seed-N|fold-N>``, with ``/`` as
``_``) holding train, val or test, and "n/a" for a subject that replicate did not use. All
methods of a replicate share its split (the split depends on the seed and the data only);
a replicate whose runs disagree about a subject is refused, naming both runs.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pandas as pd

from cdsf_bench.bench.table import RESULTS_FILE, load_results
from cdsf_bench.errors import InputError
from cdsf_bench.run_folder import CONFIG, SPLITS, RunFolder
from cdsf_bench.settings import RunConfig

#: splits.tsv's columns: the run's identity, then the subject's
SPLIT_COLUMNS = (
    "suite",
    "scenario",
    "task",
    "method",
    "seed",
    "fold",
    "run_folder",
    "participant_id",
    "diagnosis",
    "labelled",
    "split",
)
#: BIDS's value for a cell that does not apply
NOT_APPLICABLE = "n/a"


def _run_splits(run: RunFolder, identity: dict[str, Any]) -> pd.DataFrame:
    table = run.splits()
    missing = [c for c in ("participant_id", "split") if c not in table.columns]
    if missing:
        raise InputError(f"{run.path / SPLITS} lacks the column(s) {', '.join(missing)}; it is damaged.")
    for column in ("diagnosis", "labelled"):
        if column not in table.columns:
            table[column] = NOT_APPLICABLE
    out = table[["participant_id", "diagnosis", "labelled", "split"]].assign(**identity)
    return out[list(SPLIT_COLUMNS)]


def _single_run(folder: Path) -> pd.DataFrame:
    run = RunFolder(folder)
    try:
        config = RunConfig(tomllib.loads(run.config_text()))
        identity: dict[str, Any] = {
            "suite": "",
            "scenario": "",
            "task": config.task,
            "method": config.name,
            "seed": config.seed,
            "fold": config.split.fold if config.split.folds else "",
            "run_folder": ".",
        }
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as error:
        raise InputError(f"{run.config_path} cannot be read ({error}); it is damaged.") from None
    return _run_splits(run, identity)


def _suite(folder: Path) -> pd.DataFrame:
    results = load_results(folder)
    parts = []
    for _, row in results.iterrows():
        run = RunFolder(folder / row["run_folder"])
        if not (run.path / SPLITS).is_file():
            continue  # a run that never started, or a results folder exported without splits
        identity = {key: row[key] for key in ("suite", "scenario", "task", "method", "seed", "fold")}
        identity = {key: "" if pd.isna(value) else value for key, value in identity.items()}
        parts.append(_run_splits(run, {**identity, "run_folder": row["run_folder"]}))
    if not parts:
        raise InputError(
            f"No run of the suite in {folder} has a {SPLITS} (an exported results folder keeps none); "
            "give the suite's own output folder."
        )
    return pd.concat(parts, ignore_index=True)


def split_table(folder: Path) -> pd.DataFrame:
    """splits.tsv of a run folder or a suite folder (:data:`SPLIT_COLUMNS`).

    A folder that is neither (no config.toml, no results.csv) is refused.
    """
    folder = Path(folder)
    if (folder / CONFIG).is_file():
        return _single_run(folder)
    if (folder / RESULTS_FILE).is_file():
        return _suite(folder)
    raise InputError(
        f"{folder} is neither a run folder (it has no {CONFIG}) nor a suite folder (no {RESULTS_FILE})."
    )


def replicate_column(run_folder: str) -> str:
    """The participants.tsv column of a run's replicate: ``split`` for a single run."""
    parent = Path(run_folder).parent.as_posix()
    return "split" if run_folder == "." else f"split_{parent.replace('/', '_')}"


def participants_table(splits: pd.DataFrame) -> pd.DataFrame:
    """participants.tsv: participant_id, diagnosis and one split column per replicate."""
    splits = splits.assign(replicate=splits["run_folder"].map(replicate_column))
    for (replicate, participant), group in splits.groupby(["replicate", "participant_id"], sort=False):
        if group["split"].nunique() > 1:
            runs = group.drop_duplicates("split")["run_folder"].tolist()
            raise InputError(
                f"The runs {runs[0]} and {runs[1]} of one replicate ({replicate}) put {participant} in "
                f"different splits ({', '.join(group['split'].unique())}); their splits cannot be one column."
            )
    first = splits.drop_duplicates(["replicate", "participant_id"])
    wide = first.pivot(index="participant_id", columns="replicate", values="split")
    wide = wide[list(dict.fromkeys(first["replicate"]))]  # the suite's order
    order = list(dict.fromkeys(splits["participant_id"]))
    diagnosis = splits.drop_duplicates("participant_id").set_index("participant_id")["diagnosis"]
    table = wide.reindex(order).fillna(NOT_APPLICABLE)
    table.insert(0, "diagnosis", diagnosis.reindex(order))
    table.columns.name = None
    return table.reset_index()
