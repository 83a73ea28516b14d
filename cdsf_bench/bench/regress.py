"""Metric regression checks: compare results with a stored baseline, within tolerances.

A baseline file (TOML or JSON) has one table per method and metric::

    [methods."CDSF".auc]
    value = 0.91          # what the method scored when the baseline was written
    direction = "higher"  # optional; by default from cdsf_bench.metrics.HIGHER_IS_BETTER
    abs_tol = 0.05        # optional: how much worse than value is still accepted
    rel_tol = 0.10        # optional: the same as a fraction of |value|

The allowed loss is the larger of ``abs_tol`` and ``rel_tol * |value|`` (zero if neither is
given). Methods are keyed by their display name when RESULTS is a suite (the value compared
is the mean over the suite's finished runs of that method; ``task/name`` when the suite has
several tasks) and by ``synth+diag+coupling`` when RESULTS is a single run folder.

A baseline may say at how many torch threads its runs trained (a top-level ``threads = 2``):
on a CPU one and two threads give different metrics, each repeating bit for bit, so results
of runs at another count (their environment.json's ``torch_threads``) are not compared with
it (:func:`refuse_other_threads`). A run whose record lacks the count is not counted, as in
the report's provenance; a baseline without ``threads`` is compared whatever the runs' count.
``--update`` records the count its runs trained with.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pandas as pd
import tomli_w

from cdsf_bench.bench.table import RESULTS_FILE
from cdsf_bench.config import read_toml
from cdsf_bench.errors import InputError
from cdsf_bench.metrics import DIAGNOSIS_KEYS, HIGHER_IS_BETTER, SYNTHESIS_KEYS
from cdsf_bench.options import THREADS_ENV
from cdsf_bench.results import write_json, write_text
from cdsf_bench.run_folder import METRICS, RunFolder

SPEC_KEYS = ("value", "direction", "abs_tol", "rel_tol")
DIRECTIONS = ("higher", "lower")
#: numeric results.csv columns a baseline may check besides the metrics
EXTRA_COLUMNS = ("n_test", "wall_seconds")
FAILING = ("worse", "missing", "failed")
#: the baseline's top-level key: the torch intra-op thread count its runs trained with
THREADS = "threads"


@dataclass(frozen=True)
class Current:
    """What RESULTS holds per method: metric values, and whether any of its runs failed."""

    values: dict[str, dict[str, float]]
    failed: dict[str, list[str]]  # method -> run folders that did not finish
    source: str
    threads: dict[str, int]  # finished run folder -> the torch threads its environment.json records


@dataclass(frozen=True)
class Check:
    method: str
    metric: str
    baseline: float | None
    now: float | None
    change: float | None  # now - baseline
    allowed: float | None  # the largest accepted loss (None until the entry has a value)
    direction: str
    verdict: str  # ok, better, worse, missing, failed; new (no value yet, --update fills it)


def _finite(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def read_current(path: Path) -> Current:
    """Metric values of a run folder, a results.csv, or a suite folder holding results.csv."""
    path = Path(path)
    run = RunFolder(path)
    if path.is_dir() and run.finished:
        return _read_run(run)
    table = path / RESULTS_FILE if path.is_dir() else path
    if not table.is_file():
        raise InputError(
            f"{path} is neither a run folder (with {METRICS}), a results.csv, nor a suite folder "
            f"holding {RESULTS_FILE}."
        )
    try:
        results = pd.read_csv(table, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise InputError(f"{table} is not a readable CSV table: {error}") from None
    missing = {"task", "method", "status", "run_folder"} - set(results.columns)
    if missing:
        raise InputError(
            f"{table} lacks column(s) {', '.join(sorted(missing))}; is it a cdsf-bench results.csv?"
        )
    several_tasks = results["task"].nunique() > 1
    results = results.assign(
        key=results["method"] if not several_tasks else results["task"] + "/" + results["method"]
    )
    columns = [c for c in (*DIAGNOSIS_KEYS, *SYNTHESIS_KEYS, *EXTRA_COLUMNS) if c in results.columns]
    values: dict[str, dict[str, float]] = {}
    failed: dict[str, list[str]] = {}
    for group, part in results.groupby("key", sort=False):
        key = cast(str, group)  # the method's display name (task/name when there are several tasks)
        done = part[part["status"] == "done"]
        try:
            means = done[columns].apply(pd.to_numeric, errors="raise").mean()
        except (TypeError, ValueError) as error:
            raise InputError(
                f"{table}: a metric column holds text ({error}); is it a cdsf-bench results.csv?"
            ) from None
        values[key] = {cast(str, c): float(v) for c, v in means.items() if math.isfinite(v)}
        unfinished = part.loc[part["status"] != "done", "run_folder"].tolist()
        if unfinished:
            failed[key] = unfinished
    finished = results.loc[results["status"] == "done", "run_folder"]
    threads = recorded_threads(table.parent, [str(run) for run in finished])
    return Current(values, failed, str(table), threads)


def recorded_threads(folder: Path, runs: list[str]) -> dict[str, int]:
    """The torch threads each run under ``folder`` trained with (its environment.json's
    ``torch_threads``), by run folder; runs whose record lacks it are left out."""
    counts = {run: RunFolder(Path(folder) / run).environment().get("torch_threads") for run in runs}
    return {
        run: count for run, count in counts.items() if isinstance(count, int) and not isinstance(count, bool)
    }


def _read_run(run: RunFolder) -> Current:
    """The metrics of one finished run, keyed ``synth+diag+coupling``; a metrics.json lacking what
    a finished run writes is refused naming the file and the keys."""
    metrics = run.metrics()
    method = metrics.get("method")
    lacking = sorted({"synth", "diag", "coupling"} - set(method)) if isinstance(method, dict) else ["method"]
    if not isinstance(metrics.get("diagnosis"), dict):
        lacking.append("diagnosis")
    if not isinstance(metrics.get("synthesis") or {}, dict):
        lacking.append("synthesis")
    if lacking or not isinstance(method, dict):
        raise InputError(
            f"{run.metrics_path} lacks {', '.join(lacking)} (or holds no table there); it was not "
            "written by a finished cdsf-bench run of this version. Run it again."
        )
    run_key = f"{method['synth']}+{method['diag']}+{method['coupling']}"
    recorded = {**metrics["diagnosis"], **(metrics.get("synthesis") or {})}
    finite = {k: v for k, v in recorded.items() if _finite(v) is not None}
    return Current({run_key: finite}, {}, str(run.path), recorded_threads(run.path.parent, [run.path.name]))


def _read_baseline(path: Path) -> object:
    if path.suffix != ".json":
        return read_toml(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"Baseline {path} does not exist.") from None
    except json.JSONDecodeError as error:
        raise InputError(f"Baseline {path} is not valid JSON: {error}.") from None


def load_baseline(path: Path, need_values: bool = True) -> dict[str, dict[str, dict]]:
    """Read and validate a baseline; ``need_values=False`` lets an entry lack its value (for --update)."""
    path = Path(path)
    raw = _read_baseline(path)
    if isinstance(raw, dict):
        _check_threads(path, raw)
    methods = raw.get("methods") if isinstance(raw, dict) else None
    if not isinstance(methods, dict) or not methods:
        raise InputError(
            f"Baseline {path} needs a 'methods' table: [methods.\"NAME\".METRIC] value = ..., abs_tol = ..."
        )
    for method, metrics in methods.items():
        if not isinstance(metrics, dict) or not metrics:
            raise InputError(f'Baseline {path}: methods."{method}" must be a table of metrics.')
        for metric, spec in metrics.items():
            _check_spec(path, method, metric, spec, need_values)
    return methods


def _check_threads(path: Path, raw: dict) -> None:
    count = raw.get(THREADS)
    if THREADS in raw and (not isinstance(count, int) or isinstance(count, bool) or count < 1):
        raise InputError(
            f"Baseline {path}: {THREADS} must be the positive whole number of torch threads its runs "
            f"trained with, got {count!r}."
        )


def baseline_threads(path: Path) -> int | None:
    """The thread count a baseline says its runs trained with; None when it says none."""
    path = Path(path)
    raw = _read_baseline(path)
    if not isinstance(raw, dict):
        return None
    _check_threads(path, raw)
    return cast(int | None, raw.get(THREADS))


def _runs_at(threads: dict[str, int]) -> dict[int, list[str]]:
    """The run folders at each thread count, counts in ascending order."""
    runs: dict[int, list[str]] = {}
    for run, count in threads.items():
        runs.setdefault(count, []).append(run)
    return dict(sorted(runs.items()))


def _listed(runs: dict[int, list[str]]) -> str:
    shown = 3
    parts = []
    for count, folders in runs.items():
        more = f" and {len(folders) - shown} more" if len(folders) > shown else ""
        parts.append(f"{count} thread(s) in {', '.join(folders[:shown])}{more}")
    return "; ".join(parts)


def refuse_other_threads(path: Path, current: Current) -> None:
    """Refuse (exit 2) to compare runs that trained at another thread count than the baseline
    says its runs did: the metrics would differ by the thread count alone."""
    expected = baseline_threads(path)
    others = {run: count for run, count in current.threads.items() if count != expected}
    if expected is None or not others:
        return
    raise InputError(
        f"{current.source}: runs trained with {_listed(_runs_at(others))}, but baseline {path} "
        f"was recorded at {THREADS} = {expected}; metrics differ with the thread count alone, so "
        f"they are not compared. Rerun the suite at {expected} thread(s) (cdsf-bench bench SUITE "
        f"--threads {expected}, or {THREADS_ENV}={expected}), or record a baseline at their count "
        "with regress --update."
    )


def _check_spec(path: Path, method: str, metric: str, spec: object, need_value: bool) -> None:
    where = f'Baseline {path}: methods."{method}".{metric}'
    if not isinstance(spec, dict):
        raise InputError(f"{where} must be a table with value and abs_tol and/or rel_tol.")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise InputError(f"{where} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(SPEC_KEYS)}.")
    if "value" in spec and (_finite(spec["value"]) is None or isinstance(spec["value"], bool)):
        raise InputError(f"{where}.value must be a finite number, got {spec['value']!r}.")
    if need_value and "value" not in spec:
        raise InputError(f"{where} has no value; fill it from results with --update.")
    for tol in ("abs_tol", "rel_tol"):
        if tol in spec and (_finite(spec[tol]) is None or spec[tol] < 0 or isinstance(spec[tol], bool)):
            raise InputError(f"{where}.{tol} must be a non-negative number, got {spec[tol]!r}.")
    if "direction" in spec and spec["direction"] not in DIRECTIONS:
        raise InputError(f'{where}.direction must be "higher" or "lower", got {spec["direction"]!r}.')
    if "direction" not in spec and metric not in HIGHER_IS_BETTER:
        raise InputError(
            f'{where}: \'{metric}\' has no default direction; set direction = "higher" or "lower".'
        )


def direction_of(metric: str, spec: dict) -> str:
    return spec.get("direction") or ("higher" if HIGHER_IS_BETTER[metric] else "lower")


def allowed_loss(spec: dict) -> float:
    """The largest accepted loss: max(abs_tol, rel_tol * |value|)."""
    return max(float(spec.get("abs_tol", 0.0)), float(spec.get("rel_tol", 0.0)) * abs(float(spec["value"])))


def compare(baseline: dict[str, dict[str, dict]], current: Current) -> list[Check]:
    """One check per baseline entry, in the baseline's order."""
    checks = []
    for method, metrics in baseline.items():
        for metric, spec in metrics.items():
            direction = direction_of(metric, spec)
            now = current.values.get(method, {}).get(metric)
            if "value" not in spec:  # an entry added to be filled by --update
                checks.append(Check(method, metric, None, now, None, None, direction, "new"))
                continue
            value, allowed = float(spec["value"]), allowed_loss(spec)
            if method in current.failed:
                verdict, change = "failed", None if now is None else now - value
            elif now is None:
                verdict, change = "missing", None
            else:
                change = now - value
                loss = -change if direction == "higher" else change
                # a hair of slack so values read back from text compare equal to themselves
                slack = 1e-9 * max(1.0, abs(value))
                verdict = (
                    "worse" if loss > allowed + slack else ("better" if -loss > allowed + slack else "ok")
                )
            checks.append(Check(method, metric, value, now, change, allowed, direction, verdict))
    return checks


def passed(checks: list[Check]) -> bool:
    return not any(c.verdict in FAILING for c in checks)


def update_baseline(path: Path, baseline: dict[str, dict[str, dict]], current: Current) -> Path:
    """Rewrite every value from ``current``, keeping directions and tolerances, and the thread
    count its runs trained with (none when no run recorded one); atomic."""
    gaps = [
        f"{method}.{metric}"
        for method, metrics in baseline.items()
        for metric in metrics
        if method in current.failed or current.values.get(method, {}).get(metric) is None
    ]
    if gaps:
        raise InputError(
            f"Cannot update {path}: {current.source} has no finished value for {', '.join(gaps)}. "
            "Remove those entries from the baseline or rerun the methods."
        )
    updated = {
        method: {
            metric: {**spec, "value": current.values[method][metric]} for metric, spec in metrics.items()
        }
        for method, metrics in baseline.items()
    }
    counts = _runs_at(current.threads)
    if len(counts) > 1:
        raise InputError(
            f"Cannot update {path}: {current.source} holds runs at several thread counts "
            f"({_listed(counts)}); a baseline is recorded at one. Rerun them with --threads N."
        )
    ordered = {
        m: {k: {key: spec[key] for key in SPEC_KEYS if key in spec} for k, spec in ms.items()}
        for m, ms in updated.items()
    }
    content: dict[str, object] = {"methods": ordered}
    if counts:
        content = {THREADS: next(iter(counts)), **content}
    if Path(path).suffix == ".json":
        return write_json(path, content)
    stamp = (
        f"# Values written by 'cdsf-bench regress --update' from {current.source} "
        f"on {datetime.now(UTC).strftime('%Y-%m-%d')}; tolerances and directions are kept.\n"
    )
    return write_text(path, _leading_comments(path) + stamp + "\n" + tomli_w.dumps(content))


def _leading_comments(path: Path) -> str:
    """The comment block a baseline file opens with (how its tolerances were derived), which
    an update keeps, less the stamp of an earlier update; a generic title when it has none."""
    lines = []
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# Values written by 'cdsf-bench regress --update'"):
            lines.append(line + "\n")
    return "".join(lines) or "# cdsf-bench regression baseline (docs/regression.md).\n"


def as_json(checks: list[Check], results: str, baseline: Path, updated: bool) -> str:
    return json.dumps(
        {
            "results": results,
            "baseline": str(baseline),
            "passed": passed(checks),
            "updated": updated,
            "checks": [asdict(c) for c in checks],
        },
        indent=2,
    )
