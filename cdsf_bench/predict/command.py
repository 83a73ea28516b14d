"""The ``cdsf-bench predict`` command: options in, a prediction folder and a metrics table out."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from cdsf_bench.options import set_option, threads_option
from cdsf_bench.progress import metrics_table
from cdsf_bench.progress import out as results


@click.command("predict")
@click.argument("run_folder", type=click.Path(path_type=Path))
@click.option(
    "--data",
    "data_spec",
    required=True,
    help="The cohort to predict: phantom, a manifest, a CAPS directory or a phantom folder.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Prediction folder (default predictions/<UTC>-<run folder name>); never inside the run folder.",
)
@set_option(help="A data setting of the cohort, e.g. data.phantom_seed=7 or data.session=ses-M12.")
@click.option("--device", help="auto, cpu or cuda (default: the run's).")
@threads_option
def predict_command(
    run_folder: Path, data_spec: str, out: Path | None, assignments: tuple[str, ...], device: str | None
) -> None:
    """Apply a finished run's model to a cohort: probabilities, synthetic PET, metrics.

    The cohort is preprocessed as the run's data were (grid, intensity mapping); every
    subject of the run's task is predicted with the selected weights, classified at the
    operating point the run chose on validation. The run folder is only read.
    """
    from cdsf_bench.predict.output import predict_run
    from cdsf_bench.registry import default_registry

    result = predict_run(
        run_folder, data_spec, default_registry(), assignments=assignments, out=out, device=device
    )
    metrics = result.metrics
    method = metrics["method"]
    name = f"{method['synth']} + {method['diag']} ({method['coupling']})"
    table = metrics_table(metrics, f"{name} on {data_spec}, {metrics['task']}")
    table.add_row("subjects predicted", str(metrics["n"]["test"]))
    table.add_row("threshold (the run's)", f"{metrics['threshold']:.4f}")
    results.print(table)
    results.print(f"prediction folder: [bold]{escape(str(result.folder))}[/]", highlight=False)
