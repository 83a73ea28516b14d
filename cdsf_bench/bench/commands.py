"""Commands for suites: ``bench``, ``merge``, ``report``, ``export`` and ``regress``.

They are registered on the main ``cdsf-bench`` group in :mod:`cdsf_bench.cli`; the work is
done in :mod:`cdsf_bench.bench.runner`, :mod:`cdsf_bench.bench.report` and
:mod:`cdsf_bench.bench.regress` and :mod:`cdsf_bench.bench.export`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table

from cdsf_bench.errors import InputError
from cdsf_bench.interfaces import Method
from cdsf_bench.progress import console
from cdsf_bench.registry import Registry

FORMAT_CHOICES = {"md": ("md",), "html": ("html",), "both": ("md", "html")}


@click.command()
@click.argument("suite_file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--out", type=click.Path(path_type=Path), help="Suite folder (default runs/<suite name>).")
@click.option("--resume", is_flag=True, help="Skip finished runs and continue unfinished ones.")
@click.option(
    "--shard", metavar="I/N", help="Run only the I-th of N disjoint parts (round-robin over the runs)."
)
def bench(suite_file: Path, out: Path | None, resume: bool, shard: str | None) -> None:
    """Run every method of SUITE_FILE on every task and seed (or fold); write results.csv and the report."""
    from cdsf_bench.bench.report import print_summary, write_report
    from cdsf_bench.bench.runner import results_name, run_suite
    from cdsf_bench.bench.suite import check_components, load_suite, parse_shard
    from cdsf_bench.registry import default_registry

    suite = load_suite(suite_file)
    part = parse_shard(shard) if shard else None
    registry = default_registry()
    check_components(suite, registry)
    out = out or Path("runs") / suite.name
    results = run_suite(suite, registry, out, resume=resume, shard=part)
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
    from cdsf_bench.bench.report import load_results, print_summary, write_report
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
    shows; no checkpoints, no synthetic NIfTI. 'cdsf-bench report DEST' re-renders it.
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
    "--update", is_flag=True, help="Rewrite the baseline's values from RESULTS, keeping tolerances."
)
@click.option("--json", "as_json_flag", is_flag=True, help="Print one JSON object instead of a table.")
def regress(results: Path, baseline: Path, update: bool, as_json_flag: bool) -> None:
    """Compare RESULTS (a run folder, results.csv or suite folder) with a baseline; exit 1 on a regression."""
    from cdsf_bench.bench import regress as rg

    current = rg.read_current(results)
    entries = rg.load_baseline(baseline, need_values=not update)
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
