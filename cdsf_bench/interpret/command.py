"""The ``cdsf-bench interpret`` command: a run (or a suite) in, attribution maps and scores out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from cdsf_bench.interpret.attribution import IG_STEPS, METHODS, parse_methods
from cdsf_bench.options import threads_option
from cdsf_bench.progress import out as results
from cdsf_bench.results import json_safe

#: the methods computed when --method is not given: integrated gradients, defined for every
#: differentiable diagnoser and far cheaper than occlusion
DEFAULT_METHODS = "ig"


@click.command("interpret")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option(
    "--data",
    "data_spec",
    help="The cohort whose subjects are attributed (default: the run's own), preprocessed as the run's.",
)
@click.option("--subjects", help="Comma-separated participant ids to attribute (default: see --split).")
@click.option(
    "--split",
    type=click.Choice(["test", "all"]),
    help="test: the run's test subjects (the default on the run's own cohort); all: every subject of "
    "the task (the default with --data).",
)
@click.option(
    "--method",
    "methods",
    default=DEFAULT_METHODS,
    show_default=True,
    help=f"Attribution methods, comma-separated, among {', '.join(METHODS)}.",
)
@click.option(
    "--ig-steps",
    type=click.IntRange(1, 1000),
    default=IG_STEPS,
    show_default=True,
    help="Integrated gradients' steps.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Interpretation folder (default interpretations/<UTC>-<run folder name>; for a suite "
    "SUITE_FOLDER/interpret); never inside a run folder.",
)
@click.option("--device", help="auto, cpu or cuda (default: the run's).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@threads_option
def interpret_command(
    folder: Path,
    data_spec: str | None,
    subjects: str | None,
    split: str | None,
    methods: str,
    ig_steps: int,
    out: Path | None,
    device: str | None,
    as_json: bool,
) -> None:
    """Attribution maps of a finished run's diagnoser, scored against the phantom's planted disease.

    FOLDER is a run folder, or a suite folder (with results.csv) whose finished runs are each
    interpreted, their scores gathered in FOLDER/interpret.csv for the report. Maps are
    per subject and input channel (MRI, PET real or synthetic, as the coupling fed its
    diagnoser), and their class means, as NIfTI on the run's grid, with PNG montages. The
    run folder is only read. See docs/interpret.md.
    """
    from cdsf_bench.interpret.interpretation import Request, interpret_run
    from cdsf_bench.interpret.suite import INTERPRET_TABLE, interpret_suite, is_suite
    from cdsf_bench.registry import default_registry

    ids = tuple(dict.fromkeys(p.strip() for p in (subjects or "").split(",") if p.strip()))  # each once
    request = Request(parse_methods(methods), ig_steps, data_spec, ids, split, device)
    registry = default_registry()
    if is_suite(folder):
        table = interpret_suite(folder, registry, request, out)
        if as_json:
            click.echo(json.dumps(json_safe(table.to_dict(orient="records")), indent=2))
        else:
            where = escape(str(folder / INTERPRET_TABLE))
            runs = table["run_folder"].nunique() if len(table) else 0
            results.print(f"scores of {runs} run(s): [bold]{where}[/]", highlight=False)
        return
    result = interpret_run(folder, registry, request, out)
    if as_json:
        click.echo(json.dumps(json_safe({"folder": str(result.folder), **result.metrics}), indent=2))
        return
    if result.metrics["scores"]:
        results.print(scores_table(result.metrics))
    results.print(f"interpretation folder: [bold]{escape(str(result.folder))}[/]", highlight=False)


def scores_table(metrics: dict[str, Any]) -> Table:
    """The scores against the planted truth, one row per map kind, with their chance levels."""
    method = metrics["method"]
    table = Table(
        title=f"{method['synth']} + {method['diag']} ({method['coupling']}): {metrics['subjects']} subjects"
    )
    for column in (
        "diagnoser",
        "attribution",
        "channel",
        "truth",
        "share",
        "chance",
        "random",
        "hit rate",
        "chance",
    ):
        table.add_column(
            column,
            justify="right" if column not in ("diagnoser", "attribution", "channel", "truth") else "left",
        )
    for row in metrics["scores"]:
        table.add_row(
            row["diagnoser"],
            row["attribution"],
            row["channel"],
            row["truth"],
            f"{row['share']:.3f}",
            f"{row['chance_share']:.3f}",
            f"{row['random_share']:.3f}",
            f"{row['hit_rate']:.2f}",
            f"{row['chance_hit']:.2f}",
        )
    return table
