"""A suite folder's results table and its record of the suite: the columns, a run's row, reading both.

``results.csv`` (``results.shard-I-of-N.csv`` for a shard) holds one row per run of the
suite, in the suite's order, with the columns :data:`COLUMNS`, and after the synthesis
columns those of :data:`~cdsf_bench.metric_conventions.CONVENTION_KEYS` that a run recorded
(``evaluate.peer_psnr``, ``evaluate.ms_ssim``: a suite without them has none); a finished run's metrics come
from its run folder (:class:`~cdsf_bench.run_folder.RunFolder`). ``suite.json`` records the
suite that wrote the folder (name, hash, canonical definition). The runner writes both, the
report, export and regression read them; this module imports neither of those, so the
table has one owner that every one of them may import.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from cdsf_bench.bench.suite import RunSpec
from cdsf_bench.errors import InputError
from cdsf_bench.metric_conventions import CONVENTION_KEYS
from cdsf_bench.metrics import DIAGNOSIS_KEYS, DISEASE_SYNTHESIS_KEYS, SYNTHESIS_KEYS
from cdsf_bench.run_folder import RunFolder

SUITE_FILE = "suite.json"
RESULTS_FILE = "results.csv"
IDENTITY_COLUMNS = (
    "suite",
    "scenario",
    "task",
    "seed",
    "fold",
    "method",
    "synth",
    "diag",
    "coupling",
    "status",
)
#: the synthesis columns: image metrics, then the disease-specific ones
SYNTHESIS_COLUMNS = (*SYNTHESIS_KEYS, *DISEASE_SYNTHESIS_KEYS)
#: the subjects a run tested, trained and selected on (the corrected t-test reads the ratio)
SPLIT_SIZES = ("n_test", "n_train", "n_val")
COLUMNS = (
    *IDENTITY_COLUMNS,
    *DIAGNOSIS_KEYS,
    *SYNTHESIS_COLUMNS,
    *SPLIT_SIZES,
    "wall_seconds",
    "run_folder",
    "error",
)


def results_name(shard: tuple[int, int] | None) -> str:
    return RESULTS_FILE if shard is None else f"results.shard-{shard[0]}-of-{shard[1]}.csv"


def result_row(spec: RunSpec, out: Path, status: str, error: str = "") -> dict[str, Any]:
    """One results.csv row for a run, read from its run folder when it finished."""
    row: dict[str, Any] = {
        "suite": spec.suite,
        "scenario": spec.scenario,
        "task": spec.task,
        "seed": spec.seed,
        "fold": spec.fold,
        "method": spec.method.name,
        "synth": spec.method.synth,
        "diag": spec.method.diag,
        "coupling": spec.method.coupling,
        "status": status,
        **dict.fromkeys((*DIAGNOSIS_KEYS, *SYNTHESIS_COLUMNS, *SPLIT_SIZES, "wall_seconds"), math.nan),
        "run_folder": spec.folder.as_posix(),
        "error": error,
    }
    if status == "done":
        run = RunFolder(out / spec.folder)
        metrics = run.metrics()
        row.update({k: metrics["diagnosis"].get(k) for k in DIAGNOSIS_KEYS})
        synthesis = metrics.get("synthesis") or {}
        row.update({k: synthesis.get(k, math.nan) for k in SYNTHESIS_COLUMNS})
        row.update({k: synthesis[k] for k in CONVENTION_KEYS if k in synthesis})
        row.update({f"n_{name}": metrics.get("n", {}).get(name) for name in ("test", "train", "val")})
        timing = run.timing()
        if timing:
            row["wall_seconds"] = timing.get("wall_seconds")
    return row


def results_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The table of ``rows``: :data:`COLUMNS`, with the conventions' columns that a row has."""
    columns = list(COLUMNS)
    at = columns.index(SPLIT_SIZES[0])
    columns[at:at] = [key for key in CONVENTION_KEYS if any(key in row for row in rows)]
    frame = pd.DataFrame(rows, columns=columns)
    # "" for a suite without scenarios (a merged shard table reads it back as missing)
    frame["scenario"] = frame["scenario"].astype(object).where(frame["scenario"].notna(), "").astype(str)
    return frame.astype({"seed": "Int64", "fold": "Int64", **dict.fromkeys(SPLIT_SIZES, "Int64")})


def load_results(folder: Path) -> pd.DataFrame:
    """A suite folder's results.csv; a table without a scenario column gets an empty one."""
    path = Path(folder) / RESULTS_FILE
    if not path.exists():
        raise InputError(
            f"{folder} has no {RESULTS_FILE}; give a folder written by 'cdsf-bench bench' "
            "(for shards, run 'cdsf-bench merge' first)."
        )
    results = pd.read_csv(path, keep_default_na=False, na_values=[""])
    if "scenario" not in results.columns:
        results.insert(1, "scenario", "")
    scenario = results["scenario"].astype(object)
    results["scenario"] = scenario.where(scenario.notna(), "").astype(str)
    return results


def suite_record(folder: Path) -> dict[str, Any]:
    """The suite folder's suite.json (empty without one)."""
    path = Path(folder) / SUITE_FILE
    return json.loads(path.read_text()) if path.exists() else {}
