"""Running a suite: every run through :func:`cdsf_bench.run.execute`, one results table.

The suite's output folder holds ``suite.json`` (name, hash, definition), one run folder per
run at ``[<scenario>/]<task>/<seed-N|fold-N>/<method>``, and the results table: ``results.csv`` for a
whole suite, ``results.shard-I-of-N.csv`` for a shard. The table is rewritten atomically
after every run, so a killed suite leaves a table of what finished. A run that fails
(:class:`~cdsf_bench.errors.RunFailed`) is recorded as failed and the suite goes on. A suite
with ``test_data`` also tests each run's model on that cohort (``external/``, ``external.csv``:
:mod:`cdsf_bench.bench.external`). A tuned suite (``[tune]``) tunes each run first, in
``tuning/<run folder>/`` (:mod:`cdsf_bench.bench.tuning`). With trackers (the suite's
``[track.NAME]`` tables, ``bench --track NAME``) the suite is a tracked run of its own and
each of its runs a child of it (:mod:`cdsf_bench.tracking`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cdsf_bench.bench import external
from cdsf_bench.bench.budget import TuningBudget
from cdsf_bench.bench.suite import RunSpec, Suite, shard_runs, suite_from_canonical
from cdsf_bench.bench.table import RESULTS_FILE, SUITE_FILE, result_row, results_frame, results_name
from cdsf_bench.bench.tuning import plan_for, tuned_config
from cdsf_bench.config import resolve_trackers
from cdsf_bench.errors import InputError, RunFailed
from cdsf_bench.locking import folder_lock, lock_name
from cdsf_bench.progress import console, make_progress
from cdsf_bench.registry import Registry
from cdsf_bench.results import source_commit, write_csv, write_json
from cdsf_bench.run_folder import RunFolder
from cdsf_bench.settings import RunConfig
from cdsf_bench.tracking import NO_TRACKERS, Trackers, flatten, open_trackers


def claim_folder(suite: Suite, out: Path) -> None:
    """Record the suite in ``out/suite.json``, refusing a folder that holds another suite."""
    existing = out / SUITE_FILE
    if existing.exists():
        try:
            recorded = dict(json.loads(existing.read_text()))
        except (ValueError, TypeError, OSError) as error:  # not UTF-8, not JSON, not an object
            raise InputError(
                f"{existing} cannot be read ({error}); restore it, or use another --out."
            ) from None
        if recorded.get("hash") != suite.hash:
            raise InputError(
                f"{out} holds runs of a different suite ('{recorded.get('name')}', hash "
                f"{str(recorded.get('hash'))[:12]}; this suite's is {suite.hash[:12]}). Use another --out."
            )
        return
    write_json(existing, {"name": suite.name, "hash": suite.hash, "suite": suite.canonical()})


def run_suite(
    suite: Suite,
    registry: Registry,
    out: Path,
    *,
    resume: bool = False,
    shard: tuple[int, int] | None = None,
    track: Mapping[str, Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """Run the suite (or one shard of it) into ``out``; return and write the results table.

    With ``resume``, a run whose folder holds metrics.json is not repeated and a run with a
    checkpoint continues from it. Without it, existing run folders of this shard are refused.
    While it runs, the process holds the lock of its results table in ``out`` (another process
    running the same suite or shard there is refused, exit 2) and each run the lock of its
    own run folder (``RunFolder.lock``).
    ``track`` adds trackers (name -> settings) to the suite's own ``[track]``.
    """
    runs = suite.runs()
    if shard is not None:
        runs = shard_runs(runs, *shard)
    configs = [spec.resolve(registry) for spec in runs]  # every config error before any compute
    if suite.tune is not None:  # and every study's space and metric (cdsf_bench.bench.tuning)
        from cdsf_bench.tune.study import require_optuna

        require_optuna()
        for spec in runs:
            plan_for(spec, registry, suite.tune)
    # one writer per results table: the shards of one suite share its folder, each run its own lock
    table_lock = out / lock_name(results_name(shard))
    with folder_lock(out, "Suite folder", lock_file=table_lock, hint="choose another --out"):
        if not resume:
            taken = [str(spec.folder) for spec in runs if (out / spec.folder).exists()]
            if taken:
                raise InputError(
                    f"{out} already holds run folder(s) of this suite ({', '.join(taken[:3])}"
                    f"{', ...' if len(taken) > 3 else ''}); continue them with --resume or choose another "
                    "--out."
                )
        if suite.test_data:
            external.check_external(suite, configs, registry)
        trackers = _suite_trackers(suite, registry, track or {})
        claim_folder(suite, out)
        from cdsf_bench.run import execute  # torch-heavy; imported when runs are about to start

        table = out / results_name(shard)
        tags = {"suite": suite.name, "suite_hash": suite.hash, "git_commit": source_commit()}
        if shard is not None:
            tags["shard"] = f"{shard[0]}/{shard[1]}"
        trackers.start(suite.name, flatten(suite.canonical()), tags, out)
        try:
            rows = _run_all(suite, runs, configs, registry, out, resume, shard, table, execute, trackers)
        except BaseException:
            trackers.abandon(0)
            raise
        failed = sum(row["status"] != "done" for row in rows)
        trackers.finish({"runs_done": len(rows) - failed, "runs_failed": failed}, [out / SUITE_FILE, table])
        return results_frame(rows)


def _suite_trackers(suite: Suite, registry: Registry, extra: Mapping[str, Mapping[str, Any]]) -> Trackers:
    """The suite's trackers and those the command adds, built before any compute."""
    section = {name: dict(settings) for name, settings in suite.track.items()}
    for name, settings in extra.items():
        section[name] = {**section.get(name, {}), **settings}
    if not section:
        return NO_TRACKERS
    return open_trackers(resolve_trackers(registry, section), registry)


def _run_all(
    suite: Suite,
    runs: list[RunSpec],
    configs: list[RunConfig],
    registry: Registry,
    out: Path,
    resume: bool,
    shard: tuple[int, int] | None,
    table: Path,
    execute: Callable[..., object],
    trackers: Trackers,
) -> list[dict[str, Any]]:
    """Every run in order, the results table rewritten after each; the rows."""
    rows: list[dict[str, Any]] = []
    external_rows: list[dict[str, Any]] = []
    with make_progress() as progress:
        task = progress.add_task(f"suite {suite.name}", total=len(runs), status="")
        for spec, config in zip(runs, configs, strict=True):
            progress.update(task, status=f"{spec.task} {spec.replicate} {spec.method.name}")
            if resume and RunFolder(out / spec.folder).finished:
                rows.append(result_row(spec, out, "done"))
            else:
                rows.append(_execute_one(execute, spec, config, registry, out, suite.tune, trackers))
            write_csv(table, results_frame(rows))
            if suite.test_data:
                done = rows[-1]["status"] == "done"
                external_rows.append(external.predict_external(spec, suite, registry, out, done))
                write_csv(out / external.external_name(shard), results_frame(external_rows))
            progress.advance(task)
    return rows


def _execute_one(
    execute: Callable[..., object],
    spec: RunSpec,
    config: RunConfig,
    registry: Registry,
    out: Path,
    budget: TuningBudget | None = None,
    trackers: Trackers = NO_TRACKERS,
) -> dict[str, Any]:
    """Run one spec (tuned first, with a budget); a failed run becomes a 'failed' row instead of
    stopping the suite. With trackers, the run is tracked as a child of the suite's run."""
    folder = out / spec.folder
    tracking = {"trackers": trackers, "track_name": spec.folder.as_posix()} if trackers else {}
    started = time.perf_counter()
    continuing = RunFolder(folder).config_path.exists()
    try:
        if budget is not None:
            config = tuned_config(spec, registry, out, budget)
        execute(config, registry, out=folder, resume=continuing, **tracking)
    except RunFailed as error:
        console.print(f"[red]run {spec.folder} failed:[/] {error}", highlight=False)
        row = result_row(spec, out, "failed", str(error))
        row["wall_seconds"] = round(time.perf_counter() - started, 2)
        return row
    return result_row(spec, out, "done")


def merge_shards(out: Path, sources: list[Path]) -> pd.DataFrame:
    """Combine shard tables (and, from other folders, their run folders) into ``out/results.csv``.

    Every source must record the same suite hash. Rows follow the suite's stable order; a
    run that no shard reports gets a row with status 'missing'. External predictions are
    copied with their runs and ``external.csv`` is rebuilt from them.
    """
    recorded = []
    for source in sources:
        path = source / SUITE_FILE
        if not path.exists():
            raise InputError(f"{source} has no {SUITE_FILE}; it is not the output of 'cdsf-bench bench'.")
        recorded.append(json.loads(path.read_text()))
    if (out / SUITE_FILE).exists() and out.resolve() not in {s.resolve() for s in sources}:
        recorded.append(json.loads((out / SUITE_FILE).read_text()))
        sources = [*sources, out]
    if len({r["hash"] for r in recorded}) > 1:
        names = ", ".join(
            f"{s} ('{r['name']}', {r['hash'][:12]})" for s, r in zip(sources, recorded, strict=True)
        )
        raise InputError(f"Refusing to merge shards of different suites: {names}.")
    found: dict[str, dict] = {}
    for source in sources:
        for table in sorted(source.glob("results*.csv")):
            frame = pd.read_csv(table, keep_default_na=False, na_values=[""])
            for row in frame.to_dict("records"):
                if source.resolve() != out.resolve():
                    _copy_run(source / row["run_folder"], out / row["run_folder"], row["status"])
                    external.copy_external(source, out, row["run_folder"])
                found[row["run_folder"]] = row
    out.mkdir(parents=True, exist_ok=True)
    if not (out / SUITE_FILE).exists():
        shutil.copyfile(sources[0] / SUITE_FILE, out / SUITE_FILE)
    rows = []
    suite = suite_from_canonical(recorded[0]["suite"])
    if suite.test_data:
        write_csv(out / external.EXTERNAL_RESULTS, external.external_frame(out, suite))
    for spec in suite.runs():
        key = spec.folder.as_posix()
        if key not in found:
            console.print(f"[yellow]no shard reports run {key}[/]", highlight=False)
        rows.append(found.get(key) or result_row(spec, out, "missing"))
    frame = results_frame(rows)
    write_csv(out / RESULTS_FILE, frame)
    return frame


def _copy_run(source: Path, target: Path, status: str) -> None:
    """Copy a shard's run folder into the merged folder (a finished run must have one)."""
    if not source.exists():
        if status == "done":
            raise InputError(f"Run folder {source} is listed as done in its shard's table but is gone.")
        return
    if not target.exists():
        shutil.copytree(source, target)
