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
from cdsf_bench.results import write_json, write_text
from cdsf_bench.run_folder import METRICS, RunFolder

SPEC_KEYS = ("value", "direction", "abs_tol", "rel_tol")
DIRECTIONS = ("higher", "lower")
#: numeric results.csv columns a baseline may check besides the metrics
EXTRA_COLUMNS = ("n_test", "wall_seconds")
FAILING = ("worse", "missing", "failed")


@dataclass(frozen=True)
class Current:
    """What RESULTS holds per method: metric values, and whether any of its runs failed."""

    values: dict[str, dict[str, float]]
    failed: dict[str, list[str]]  # method -> run folders that did not finish
    source: str


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
    return Current(values, failed, str(table))


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
    return Current({run_key: finite}, {}, str(run.path))


def load_baseline(path: Path, need_values: bool = True) -> dict[str, dict[str, dict]]:
    """Read and validate a baseline; ``need_values=False`` lets an entry lack its value (for --update)."""
    path = Path(path)
    if path.suffix == ".json":
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"Baseline {path} does not exist.") from None
        except json.JSONDecodeError as error:
            raise InputError(f"Baseline {path} is not valid JSON: {error}.") from None
    else:
        raw = read_toml(path)
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
    """Rewrite every value from ``current``, keeping directions and tolerances; atomic."""
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
    ordered = {
        m: {k: {key: spec[key] for key in SPEC_KEYS if key in spec} for k, spec in ms.items()}
        for m, ms in updated.items()
    }
    if Path(path).suffix == ".json":
        return write_json(path, {"methods": ordered})
    stamp = (
        f"# Values written by 'cdsf-bench regress --update' from {current.source} "
        f"on {datetime.now(UTC).strftime('%Y-%m-%d')}; tolerances and directions are kept.\n"
    )
    return write_text(path, _leading_comments(path) + stamp + "\n" + tomli_w.dumps({"methods": ordered}))


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
