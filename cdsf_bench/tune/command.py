"""The ``cdsf-bench tune`` command: a study's inputs in, its best settings and tables out.

Only the translation between the command line and a :class:`~cdsf_bench.tune.plan.StudyPlan`
lives here; tuned suites drive the same plan and loop (:mod:`cdsf_bench.bench.tuning`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.markup import escape
from rich.table import Table

from cdsf_bench.config import PRESETS, SELECTION_METRICS
from cdsf_bench.data.conventions import TASKS
from cdsf_bench.options import MethodCommand, method_flags, method_options, set_option, threads_option
from cdsf_bench.progress import console, out
from cdsf_bench.tune.plan import PRUNERS

if TYPE_CHECKING:
    from cdsf_bench.settings import RunConfig


@click.command("tune", cls=MethodCommand)
@method_options
@click.option(
    "--data", "data_spec", help="phantom (default), a manifest, a CAPS directory or a phantom folder."
)
@click.option("--task", type=click.Choice(list(TASKS)), help="Diagnostic task.")
@click.option("--preset", type=click.Choice(PRESETS), help="Size preset (default quick).")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="A TOML config to start from.")
@set_option(help="Fix a setting (it leaves the search space), e.g. coupling.joint.w_adv=0.")
@click.option("--epochs", type=int, help="Training epochs of every trial (per stage).")
@click.option("--seed", type=int, help="Seed of the split, the trials' training and the sampler.")
@click.option("--device", help="auto, cpu or cuda.")
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    required=True,
    help="Finished trials the study should hold; a resumed or joined study runs only the rest.",
)
@click.option(
    "--metric",
    type=click.Choice(SELECTION_METRICS),
    help="Validation metric to optimise (default: train.select_on, auc).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="Study folder (default runs/tune-<method>-<hash>; the same inputs resume it).",
)
@click.option(
    "--storage",
    type=click.Path(path_type=Path, dir_okay=False),
    help="An Optuna journal file, for workers sharing a filesystem (default: SQLite in --out).",
)
@click.option(
    "--space",
    "space_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="A TOML search space that replaces the one the plugins declare.",
)
@click.option("--pruner", type=click.Choice(PRUNERS), default="median", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@threads_option
def tune_command(
    synth: str | None,
    diag: str | None,
    coupling_flag: str | None,
    coupling: str | None,
    data_spec: str | None,
    task: str | None,
    preset: str | None,
    config_file: Path | None,
    assignments: tuple[str, ...],
    epochs: int | None,
    seed: int | None,
    device: str | None,
    trials: int,
    metric: str | None,
    out: Path | None,
    storage: Path | None,
    space_file: Path | None,
    pruner: str,
    as_json: bool,
) -> None:
    """Tune a method on the training and validation splits; write its best settings as a config.

    Each trial trains on the training split and is scored on validation by --metric; the test
    split is never predicted. TPE samples the space the plugins declare (or --space), a median
    pruner stops poor trials early. Writes best.toml (for 'run --config'), trials.csv,
    figures/history.png and summary.json; run it again with the same --out to continue.
    """
    from cdsf_bench.registry import default_registry
    from cdsf_bench.tune.plan import plan_study
    from cdsf_bench.tune.run import run_study
    from cdsf_bench.tune.study import require_optuna

    require_optuna()
    registry = default_registry()
    flags = method_flags(synth, diag, coupling_flag, coupling) | {
        "data.spec": data_spec,
        "task": task,
        "preset": preset,
        "train.epochs": epochs,
        "seed": seed,
        "device": device,
    }
    plan = plan_study(
        registry,
        config_file=config_file,
        assignments=assignments,
        flags=flags,
        metric=metric,
        pruner=pruner,
        space_file=space_file,
    )
    folder = out or Path("runs") / f"tune-{plan.name}"
    try:
        summary = run_study(plan, registry, folder, trials, storage)
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted[/]; continue the study with the same command (--out {escape(str(folder))})"
        )
        sys.exit(130)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    _print_summary(summary, plan.base, folder)


def _print_summary(summary: dict, base: RunConfig, folder: Path) -> None:
    counts = summary["trials"]
    best = summary["best"]
    metric = summary["metric"]
    table = Table(title=f"tuned {summary['study']}: validation {metric}")
    table.add_column("setting")
    table.add_column("default", justify="right")
    table.add_column("best", justify="right")
    settings = best["settings"] if best else {}
    for key, value in settings.items():
        table.add_row(key, _text(base.setting(key)), _text(value))
    if best:
        table.add_row(f"validation {metric}", _text(summary["defaults_value"]), _text(best["value"]))
    out.print(table)
    out.print(
        f"trials: {counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed"
        + (f", {counts['lost']} killed and re-run" if counts["lost"] else "")
        + f" (budget {summary['budget']})",
        highlight=False,
    )
    if best:
        out.print(
            f"best settings: [bold]{escape(str(folder / best['config']))}[/] "
            f"(cdsf-bench run --config {escape(str(folder / best['config']))})",
            highlight=False,
        )
    out.print(f"study folder: [bold]{escape(str(folder))}[/]", highlight=False)


def _text(value: object) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(map(_text, value))
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
