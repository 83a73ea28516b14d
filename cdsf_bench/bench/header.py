"""The head of a suite's report: what ran, when, on which machine and commit, against what.

Everything here comes from the suite folder itself (suite.json, each run's environment.json),
never from the clock or the machine that renders it, so a report re-rendered from a
committed results folder is byte for byte the one committed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from cdsf_bench.bench.render import Block, Bullets, Heading, Paragraph
from cdsf_bench.bench.suite import PER_REPLICATE
from cdsf_bench.bench.table import suite_record
from cdsf_bench.run_folder import RunFolder


def run_dates(folder: Path, done: pd.DataFrame) -> str:
    """When the runs started, from their environment.json (``time_utc``), not from the clock:
    a report re-rendered from a committed folder must be byte for byte the one committed."""
    stamps = []
    for run_folder in done["run_folder"]:
        stamp = RunFolder(folder / run_folder).environment().get("time_utc")
        if stamp:
            stamps.append(datetime.fromisoformat(stamp).astimezone(UTC))
    if not stamps:
        return "not recorded"
    first, last = (f"{t:%Y-%m-%d %H:%M} UTC" for t in (min(stamps), max(stamps)))
    return f"runs started {first}" + (f" to {last}" if last != first else "")


def _environment(folder: Path, done: pd.DataFrame) -> dict[str, Any]:
    """The environment record of the first finished run that kept one."""
    for run_folder in done["run_folder"]:
        run = RunFolder(folder / run_folder)
        if run.environment_path.exists():
            return run.environment()
    return {}


def _commit_line(folder: Path, done: pd.DataFrame) -> str:
    """The source commit of the runs; several are listed with their run counts (a merged suite)."""
    counts: dict[str, int] = {}
    for run_folder in done["run_folder"]:
        env = RunFolder(folder / run_folder).environment()
        commit = env.get("git_commit") or "not recorded (not a git checkout)"
        if env.get("git_uncommitted_changes"):
            commit += " with uncommitted changes"
        counts[commit] = counts.get(commit, 0) + 1
    if len(counts) <= 1:
        return f"Commit: {next(iter(counts), 'not recorded')}"
    return "Commits: " + "; ".join(f"{c} ({n} run{'s' * (n != 1)})" for c, n in counts.items())


def header_blocks(folder: Path, results: pd.DataFrame, done: pd.DataFrame, reference: str) -> list[Block]:
    env = _environment(folder, done)
    record = suite_record(folder)
    suite = record.get("suite", {})
    name = suite.get("name") or str(results["suite"].iloc[0])
    hardware = ", ".join(
        str(part)
        for part in (
            env.get("gpu") or env.get("cpu_model") or env.get("processor"),
            f"{env['cpu_count']} CPU cores" if env.get("cpu_count") else None,
            f"device {env['device']}" if env.get("device") else None,
            env.get("platform"),
            f"torch {env.get('packages', {}).get('torch')}" if env.get("packages") else None,
        )
        if part
    )
    if suite.get("folds") and len(suite["seeds"]) > 1:
        seeds = ", ".join(map(str, suite["seeds"]))
        replicates = (
            f"{len(suite['seeds'])} x {suite['folds']}-fold repeated stratified cross-validation "
            f"(seeds {seeds}, each reshuffling the folds)"
        )
    elif suite.get("folds"):
        replicates = f"{suite['folds']}-fold cross-validation (seed {suite['seeds'][0]})"
    elif suite.get("seeds"):
        count = len(suite["seeds"])
        replicates = (
            f"{count} seed{'s' if count > 1 else ''} ({', '.join(map(str, suite['seeds']))}), "
            "one hold-out split each"
        )
    else:
        replicates = "replicates as listed in results.csv"
    if suite.get("cohorts") == PER_REPLICATE:
        replicates += "; every seed draws its own phantom cohort (data.phantom_seed = the seed)"
    settings = ", ".join(f"{k} = {v}" for k, v in suite.get("settings", {}).items()) or "none"
    return [
        Heading(1, f"Benchmark report: {name}"),
        Bullets(
            (
                f"Date: {run_dates(folder, done)}",
                f"Hardware: {hardware or 'not recorded'}",
                _commit_line(folder, done),
                f"Suite: {name} (hash {str(record.get('hash', 'not recorded'))[:12]}); "
                f"data {suite.get('data', '?')}; preset {suite.get('preset', '?')}; "
                f"settings: {settings}",
                f"Runs: {len(done)} finished of {len(results)}",
                f"Reference method for paired comparisons: {reference}",
            )
        ),
        Paragraph(
            f"Protocol: {replicates}. Within a replicate every method uses the same subject-level, "
            "label-stratified split and the same batch order (both derived from the seed); models are "
            "selected on the validation split only, and the test split is predicted once. Summaries "
            "are mean ± sd over replicates. Paired comparisons use the test subjects both methods "
            "predicted (a complete-case method predicts only subjects with real PET)."
        ),
    ]
