"""Commands for suites: ``bench``, ``merge``, ``report``, ``export``, ``regress`` and ``power``.

They are registered on the main ``cdsf-bench`` group in :mod:`cdsf_bench.cli`; the work is
done in :mod:`cdsf_bench.bench.runner`, :mod:`cdsf_bench.bench.report`,
:mod:`cdsf_bench.bench.regress`, :mod:`cdsf_bench.bench.export` and :mod:`cdsf_bench.bench.sizing`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table

from cdsf_bench.errors import InputError
from cdsf_bench.interfaces import Method
from cdsf_bench.options import threads_option, track_option
from cdsf_bench.progress import console
from cdsf_bench.registry import Registry

if TYPE_CHECKING:
    from cdsf_bench.bench.sizing import Components, Plan, Target

FORMAT_CHOICES = {"md": ("md",), "html": ("html",), "both": ("md", "html")}


@click.command()
@click.argument("suite_file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--out", type=click.Path(path_type=Path), help="Suite folder (default runs/<suite name>).")
@click.option("--resume", is_flag=True, help="Skip finished runs and continue unfinished ones.")
@click.option(
    "--shard", metavar="I/N", help="Run only the I-th of N disjoint parts (round-robin over the runs)."
)
@track_option(help="Report the suite and its runs to tracker NAME too (besides the suite's [track]).")
@threads_option
def bench(
    suite_file: Path, out: Path | None, resume: bool, shard: str | None, track: tuple[str, ...]
) -> None:
    """Run every method of SUITE_FILE on every task and seed (or fold); write results.csv and the report."""
    from cdsf_bench.bench.report import print_summary, write_report
    from cdsf_bench.bench.runner import run_suite
    from cdsf_bench.bench.suite import parse_shard
    from cdsf_bench.bench.suite_file import check_components, load_suite
    from cdsf_bench.bench.table import results_name
    from cdsf_bench.registry import default_registry

    suite = load_suite(suite_file)
    part = parse_shard(shard) if shard else None
    registry = default_registry()
    check_components(suite, registry)
    out = out or Path("runs") / suite.name
    results = run_suite(suite, registry, out, resume=resume, shard=part, track=dict.fromkeys(track, {}))
    failed = int((results["status"] != "done").sum())
    console.print(f"{len(results) - failed} run(s) finished, {failed} failed: {out / results_name(part)}")
    if part is not None:
        console.print(
            f"shard {part[0]}/{part[1]} done ({out}). When every shard is: "
            "cdsf-bench merge SHARD_FOLDERS... --out MERGED"
        )
        return
    written = write_report(out, default=default_method(registry))
    print_summary(results)
    console.print("wrote " + ", ".join(str(p) for p in written))


@click.command()
@click.argument(
    "shards", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True, file_okay=False)
)
@click.option(
    "--out", type=click.Path(path_type=Path, file_okay=False), required=True, help="Merged suite folder."
)
@click.option("--no-report", is_flag=True, help="Only write results.csv.")
def merge(shards: tuple[Path, ...], out: Path, no_report: bool) -> None:
    """Merge the shard folders SHARDS of one suite into OUT/results.csv and write the report.

    Run folders from the shards are copied into OUT (a shard that wrote into OUT itself is
    read in place). Shards of different suites are refused.
    """
    from cdsf_bench.bench.report import print_summary, write_report
    from cdsf_bench.bench.runner import merge_shards
    from cdsf_bench.registry import default_registry

    results = merge_shards(out, list(shards))
    if not no_report:
        for path in write_report(out, default=default_method(default_registry())):
            console.print(f"wrote {path}")
    print_summary(results)


@click.command()
@click.argument("folder", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(list(FORMAT_CHOICES)), default="both", show_default=True)
@click.option(
    "--reference",
    help="Method the others are compared with (default: the plugins' default method, else the first).",
)
def report(folder: Path, fmt: str, reference: str | None) -> None:
    """Write report.md / report.html for a suite folder: summaries, paired tests and figures."""
    from cdsf_bench.bench.report import print_summary, write_report
    from cdsf_bench.bench.table import load_results
    from cdsf_bench.registry import default_registry

    default = None if reference is not None else default_method(default_registry())
    for path in write_report(folder, FORMAT_CHOICES[fmt], reference, default):
        console.print(f"wrote {path}")
    print_summary(load_results(folder))


@click.command()
@click.argument("folder", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("dest", type=click.Path(path_type=Path))
def export(folder: Path, dest: Path) -> None:
    """Copy what the report of suite FOLDER reads into DEST, a small folder to commit.

    DEST gets results.csv, suite.json, the report, comparisons, checks and figures, and per
    finished run metrics.json, predictions.csv, environment.json and the montage the report
    shows; no checkpoints, no synthetic NIfTI. DEST's README.md (FOLDER's, else a new one) gets
    a machine section generated from the runs' records. 'cdsf-bench report DEST' re-renders it.
    """
    from cdsf_bench.bench.export import export_results

    copied = export_results(folder, dest)
    size = sum((dest / name).stat().st_size for name in copied)
    console.print(f"exported {len(copied)} files ({size / 1e6:.1f} MB) to {dest}", highlight=False)


@click.command()
@click.argument("results", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--baseline",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Baseline TOML or JSON.",
)
@click.option(
    "--update",
    is_flag=True,
    help="Rewrite the baseline's values and thread count from RESULTS, keeping tolerances.",
)
@click.option("--json", "as_json_flag", is_flag=True, help="Print one JSON object instead of a table.")
def regress(results: Path, baseline: Path, update: bool, as_json_flag: bool) -> None:
    """Compare RESULTS (a run folder, results.csv or suite folder) with a baseline; exit 1 on a regression.

    Runs that trained at another thread count than the baseline's "threads" are refused (exit 2).
    """
    from cdsf_bench.bench import regress as rg

    current = rg.read_current(results)
    entries = rg.load_baseline(baseline, need_values=not update)
    if not update:
        rg.refuse_other_threads(baseline, current)
    checks = rg.compare(entries, current)
    if update:
        rg.update_baseline(baseline, entries, current)
    if as_json_flag:
        click.echo(rg.as_json(checks, current.source, baseline, update))
    else:
        _print_checks(checks, current.source, baseline)
        if update:
            console.print(f"[green]updated[/] {baseline} from {current.source}")
    if not update and not rg.passed(checks):
        sys.exit(1)


@click.command()
@click.argument("folder", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option(
    "--half-width", type=float, help="Target ΔAUC half-width of the paired interval [default: 0.05]."
)
@click.option("--mdd", type=float, help="Target minimal detectable ΔAUC at --power, two-sided --alpha.")
@click.option(
    "--margin", type=float, help="Equivalence margin: the TOST at --alpha has --power at a true ΔAUC of 0."
)
@click.option("--power", "power_level", type=float, help="Power of --mdd and --margin [default: 0.8].")
@click.option("--alpha", type=float, help="Level: intervals at 1 - alpha, tests at alpha [default: 0.05].")
@click.option("--reference", help="Method the others are compared with (default as in report).")
@click.option("--max-replicates", type=click.IntRange(2, 100), default=10, show_default=True)
@click.option(
    "--test-subjects",
    type=click.IntRange(2, None),
    help="Also predict the half-width and MDD at this many test subjects of the task per replicate.",
)
@click.option("--json", "as_json_flag", is_flag=True, help="Print one JSON object instead of tables.")
def power(
    folder: Path,
    half_width: float | None,
    mdd: float | None,
    margin: float | None,
    power_level: float | None,
    alpha: float | None,
    reference: str | None,
    max_replicates: int,
    test_subjects: int | None,
    as_json_flag: bool,
) -> None:
    """Size a suite from the finished suite FOLDER: replicates and test subjects for a ΔAUC target.

    From each comparison's replicate ΔAUCs and DeLong variances: the training and the
    test-sampling variance, then per number of independent replicates the fewest test
    subjects (of the task, per replicate) that reach one target: the paired interval's
    --half-width (the default), a minimal detectable difference --mdd, or an equivalence
    --margin (docs/benchmark.md, "Sizing a suite").
    """
    from cdsf_bench.bench.inputs import groups
    from cdsf_bench.bench.report import choose_reference, comparisons
    from cdsf_bench.bench.sizing import components, plan
    from cdsf_bench.bench.table import load_results
    from cdsf_bench.registry import default_registry

    target = _target(half_width, mdd, margin, power_level, alpha)
    results = load_results(folder)
    done = results[results["status"] == "done"]
    reference = choose_reference(results, reference, default_method(default_registry()))
    replicates = range(2, max_replicates + 1)
    found = []
    for scenario, task in groups(results):
        part = done[(done["scenario"] == scenario) & (done["task"] == task)]
        label = f"{scenario + ' ' if scenario else ''}{task}"
        parts = components(comparisons(folder, part, reference)) if len(part) else []
        plans = [plan(p, target, replicates) for p in parts]
        found.append({"scenario": scenario, "task": task, "components": parts, "plans": plans})
        if as_json_flag:
            continue
        if not parts:
            console.print(f"{label}: no method has two paired replicates against {reference}")
            continue
        console.print(_components_table(label, reference, parts))
        console.print(_plan_table(label, target, parts, plans))
        if test_subjects is not None:
            at = Table(title=f"{label}: predicted half-width (MDD) at {test_subjects} test subjects")
            at.add_column("replicates", justify="right")
            for p in parts:
                at.add_column(p.method, justify="right")
            for count in replicates:
                at.add_row(str(count), *(predicted(p, count, test_subjects, target) for p in parts))
            console.print(at)
    if as_json_flag:
        click.echo(_power_json(target, reference, found))


def _target(
    half_width: float | None,
    mdd: float | None,
    margin: float | None,
    power_level: float | None,
    alpha: float | None,
) -> Target:
    """The one target the options name (a half-width of 0.05 when none), checked; power and
    alpha default to the checks' (``bench.stats.POWER`` and ``ALPHA``)."""
    from cdsf_bench.bench.sizing import Target
    from cdsf_bench.bench.stats import ALPHA, POWER

    alpha = ALPHA if alpha is None else alpha
    power_level = POWER if power_level is None else power_level
    given = {"half_width": half_width, "mdd": mdd, "margin": margin}
    named = [kind for kind, value in given.items() if value is not None]
    if len(named) > 1:
        options = " and ".join(f"--{kind.replace('_', '-')}" for kind in named)
        raise InputError(f"{options}: size for one target at a time (--half-width, --mdd or --margin).")
    kind = named[0] if named else "half_width"
    value = given[kind] if named else 0.05
    if value is None or not 0 < value < 1:
        raise InputError(f"--{kind.replace('_', '-')} must be in (0, 1), got {value}.")
    if not 0 < alpha < 0.5:
        raise InputError(f"--alpha must be in (0, 0.5), got {alpha}.")
    if not alpha < power_level < 1:
        raise InputError(f"--power must be in (alpha, 1) = ({alpha:g}, 1), got {power_level}.")
    return Target(kind, value, alpha, power_level)  # type: ignore[arg-type]


def _components_table(label: str, reference: str, parts: list[Components]) -> Table:
    table = Table(title=f"{label}: ΔAUC against {reference}, variance per replicate")
    for column in ("method", "replicates", "mean Δ", "observed", "DeLong (test)", "n test", "training"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for p in parts:
        table.add_row(
            p.method,
            str(p.replicates),
            f"{p.mean_difference:+.3f}",
            *(f"{v:.5f}" for v in (p.observed_variance, p.test_variance)),
            f"{p.test_subjects:.0f}",
            f"{p.training_variance:.5f}",
        )
    return table


def _plan_table(label: str, target: Target, parts: list[Components], plans: list[list[Plan]]) -> Table:
    """Per replicate count, each method's fewest test subjects and what that design reaches."""
    if target.kind == "half_width":
        title, cell = f"half-width ≤ {target.value:g}", "n (MDD)"
    elif target.kind == "mdd":
        title = f"MDD ≤ {target.value:g} ({target.power:.0%} power, two-sided α {target.alpha:g})"
        cell = "n (MDD)"
    else:
        title = (
            f"equivalence within ±{target.value:g} (TOST at α {target.alpha:g}, {target.power:.0%} power "
            f"at Δ = 0; evaluable: MDD ≤ {target.value:g})"
        )
        cell = "n (power, MDD)"
    table = Table(title=f"{label}: test subjects per replicate for {title}")
    table.add_column("replicates", justify="right")
    for p in parts:
        table.add_column(f"{p.method}: {cell}", justify="right")
    for row in zip(*plans, strict=True):
        table.add_row(str(row[0].replicates), *(_plan_cell(r) for r in row))
    return table


def _plan_cell(row: Plan) -> str:
    if row.test_subjects is None:
        return "unreachable"
    if row.tost_power is None:
        return f"{row.test_subjects} ({row.mdd:.3f})"
    return f"{row.test_subjects} ({row.tost_power:.2f}, {row.mdd:.3f})"


def _power_json(target: Target, reference: str, found: list[dict]) -> str:
    """``power --json``: the target, and per scenario and task each method's components and plan."""
    import dataclasses
    import json

    groups_out = [
        {
            "scenario": group["scenario"],
            "task": group["task"],
            "methods": [
                {
                    **dataclasses.asdict(parts),
                    "per_subject": parts.per_subject,
                    "plan": [dataclasses.asdict(row) for row in plans],
                }
                for parts, plans in zip(group["components"], group["plans"], strict=True)
            ],
        }
        for group in found
    ]
    body = {"target": dataclasses.asdict(target), "reference": reference, "groups": groups_out}
    return json.dumps(body, indent=2)


def predicted(parts: Components, replicates: int, test_subjects: int, target: Target) -> str:
    """``half-width (MDD)`` predicted for a design (:mod:`cdsf_bench.bench.sizing`)."""
    from cdsf_bench.bench.sizing import half_width
    from cdsf_bench.bench.stats import minimal_detectable_difference

    sd = parts.replicate_variance(test_subjects) ** 0.5
    width = half_width(parts, replicates, test_subjects, 1 - target.alpha)
    mdd = minimal_detectable_difference(sd, replicates, alpha=target.alpha, power=target.power)
    return f"{width:.3f} ({mdd:.3f})"


def default_method(registry: Registry) -> Method | None:
    """The plugins' default method, which a report compares the others with; None without one."""
    try:
        return registry.method_defaults().method
    except InputError:
        return None


VERDICT_STYLE = {
    "ok": "green",
    "better": "cyan",
    "new": "cyan",
    "worse": "bold red",
    "missing": "bold red",
    "failed": "bold red",
}


def _print_checks(checks: list, source: str, baseline: Path) -> None:
    from cdsf_bench.bench.regress import FAILING

    def number(value: float | None, signed: bool = False) -> str:
        return "-" if value is None else (f"{value:+.4g}" if signed else f"{value:.4g}")

    table = Table(title=f"regression check: {source} against {baseline}")
    for column in ("method", "metric", "baseline", "now", "change", "allowed loss", "verdict"):
        table.add_column(column, justify="left" if column in ("method", "metric", "verdict") else "right")
    for c in checks:
        style = VERDICT_STYLE[c.verdict]
        table.add_row(
            c.method,
            f"{c.metric} ({c.direction})",
            number(c.baseline),
            number(c.now),
            number(c.change, signed=True),
            number(c.allowed),
            f"[{style}]{c.verdict}[/]",
        )
    console.print(table)
    bad = [c for c in checks if c.verdict in FAILING]
    if bad:
        console.print(
            "[bold red]regression:[/] " + "; ".join(f"{c.method} {c.metric} {c.verdict}" for c in bad),
            highlight=False,
        )
    else:
        console.print("[green]no regression[/]")
