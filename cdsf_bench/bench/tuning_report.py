"""The tuning section of a tuned suite's report: the budget, and each method's chosen settings.

Read from the suite folder alone (suite.json's ``tune`` and each study's summary.json under
``tuning/``), so a committed results folder re-renders it. Nothing here imports Optuna.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from cdsf_bench.bench.render import Block, Heading, Paragraph, Table
from cdsf_bench.bench.tuning import TUNING

SUMMARY = "summary.json"


def summary_path(run_folder: str) -> str:
    """A run's study summary, relative to the suite folder (what an export keeps)."""
    return f"{TUNING}/{run_folder}/{SUMMARY}"


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _setting(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return "[" + ", ".join(map(_setting, value)) + "]"
    return str(value)


def tuning_blocks(folder: Path, results: pd.DataFrame, budget: dict | None) -> list[Block]:
    """The report's "Tuning" section; nothing for a suite without ``[tune]``."""
    if not budget:
        return []
    metric = budget.get("metric") or "each run's train.select_on"
    blocks: list[Block] = [
        Heading(2, "Tuning"),
        Paragraph(
            f"Equal budgets: every method was given {budget['trials']} trials in every replicate "
            f"(TPE sampler seeded per study, {budget.get('pruner', 'median')} pruner on the per-epoch "
            f"validation metric), scored by validation {metric}. Each study used its replicate's "
            "training subjects to train and its validation subjects to score; the replicate's test "
            "subjects were never predicted while tuning. Trial 0 of every study is the method's "
            "defaults. The runs reported below are each study's best trial trained again and tested "
            "once. Budget counts finished trials (complete, pruned, or failed on their own)."
        ),
    ]
    rows = []
    for _, run in results.iterrows():
        path = Path(folder) / summary_path(run["run_folder"])
        if not path.is_file():
            rows.append((str(run["method"]), _replicate(run["run_folder"]), "not recorded", "-", "-", "-"))
            continue
        summary = json.loads(path.read_text())
        counts, best = summary["trials"], summary["best"]
        settings = "; ".join(f"{k} = {_setting(v)}" for k, v in (best or {}).get("settings", {}).items())
        rows.append(
            (
                str(run["method"]),
                _replicate(run["run_folder"]),
                f"{counts['complete']} / {counts['pruned']} / {counts['failed']}",
                _value(summary.get("defaults_value")),
                _value(best["value"]) if best else "-",
                settings or "-",
            )
        )
    blocks.append(
        Table(
            (
                "method",
                "replicate",
                "trials complete / pruned / failed",
                "validation, defaults",
                "validation, best",
                "chosen settings",
            ),
            tuple(rows),
        )
    )
    return blocks


def _replicate(run_folder: str) -> str:
    parts = Path(run_folder).parts
    return "/".join(parts[:-1])
