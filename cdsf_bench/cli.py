"""The ``cdsf-bench`` command line.

Exit codes: 0 success; 1 a failed run (or a metric regression); 2 a usage or input error,
reported as one paragraph without a traceback unless ``--debug`` is given.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from cdsf_bench import config as cfg
from cdsf_bench.errors import CdsfBenchError
from cdsf_bench.options import method_flags, method_options, set_option, track_option
from cdsf_bench.progress import console, metrics_table, out
from cdsf_bench.registry import KINDS, default_registry

DEBUG_ENV = "CDSF_BENCH_DEBUG"


class Cli(click.Group):
    """A group that turns the project's errors into messages and exit codes."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CdsfBenchError as error:
            if os.environ.get(DEBUG_ENV) == "1":
                raise
            # escaped: messages name sections like [train] and paths that rich would read as markup
            console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            sys.exit(error.exit_code)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]; a run can be continued with --resume RUN_DIR")
            sys.exit(130)


def _debug(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        os.environ[DEBUG_ENV] = "1"
    return value


debug_option = click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_debug,
    help="Show full tracebacks for errors.",
)


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cdsf-bench")
@debug_option
def main() -> None:
    """cdsf-bench: benchmark joint PET synthesis and diagnosis on incomplete MRI/PET cohorts."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def plugins(as_json: bool) -> None:
    """List every registered plugin component: kind, name, distribution, description."""
    registry = default_registry()
    rows = [
        {
            "kind": kind,
            "name": c.name,
            "plugin": c.plugin,
            "distribution": c.distribution,
            "version": c.version,
            "description": c.description,
        }
        for kind in KINDS
        for c in sorted(registry.components.get(kind, {}).values(), key=lambda c: c.name)
    ]
    failures = [{"plugin": name, "error": error} for name, error in registry.failures.items()]
    if as_json:
        click.echo(json.dumps({"components": rows, "failed": failures}, indent=2))
        return
    table = Table(title="cdsf-bench plugins")
    for column in ("kind", "name", "distribution", "description"):
        table.add_column(column)
    for row in rows:
        dist = f"{row['distribution']} {row['version']}".strip() or row["plugin"]
        table.add_row(row["kind"], row["name"], dist, row["description"])
    console.print(table)
    for failure in failures:
        console.print(f"[red]failed to load plugin {failure['plugin']}:[/] {failure['error']}")


@main.command()
@method_options
@click.option(
    "--data", "data_spec", help="phantom (default), a manifest, a CAPS directory or a phantom folder."
)
@click.option("--task", type=click.Choice(list(cfg.TASKS)), help="Diagnostic task.")
@click.option("--preset", type=click.Choice(cfg.PRESETS), help="Size preset (default quick).")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    help="A TOML config (a run's config.toml repeats it).",
)
@set_option(help="Override a setting, e.g. train.epochs=10.")
@click.option("--epochs", type=int, help="Training epochs (per stage).")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Run folder (default runs/<UTC>-<synth>-<diag>-<coupling>).",
)
@click.option("--seed", type=int, help="Seed of splits, initialisation and batch order.")
@click.option("--device", help="auto, cpu or cuda.")
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="Continue a killed run.",
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    help="Train with N data-parallel processes on this node (torchrun).",
)
@track_option(help="Report the run to tracker NAME too (settings: --set track.NAME.KEY=VALUE).")
@debug_option
def run(
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
    out: Path | None,
    seed: int | None,
    device: str | None,
    resume_dir: Path | None,
    nproc: int | None,
    track: tuple[str, ...],
) -> None:
    """Train and evaluate one method; write a self-contained run folder."""
    from cdsf_bench.run import execute
    from cdsf_bench.run_folder import RunFolder

    if nproc and nproc > 1 and "WORLD_SIZE" not in os.environ:
        sys.exit(_torchrun(nproc))

    registry = default_registry()
    flags = method_flags(synth, diag, coupling_flag, coupling)
    if resume_dir is not None:
        config_file = RunFolder(resume_dir).config_path
        out = resume_dir
    flags |= {
        "data.spec": data_spec,
        "task": task,
        "preset": preset,
        "train.epochs": epochs,
        "seed": seed,
        "device": device,
    }
    flags |= {f"{cfg.TRACK}.{name}": {} for name in track}
    if resume_dir is not None and (assignments or any(v is not None for v in flags.values())):
        raise click.UsageError("--resume continues a run with its own config; give no other settings.")
    config = cfg.resolve(registry, config_file, assignments, flags)
    result = execute(config, registry, out=out, resume=resume_dir is not None)
    _print_metrics(result.metrics, result.folder)


def _torchrun(nproc: int) -> int:
    """Relaunch this very command under torchrun with ``nproc`` processes on this node."""
    import subprocess

    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "cdsf_bench",
        *args,
    ]
    console.print(f"launching {nproc} processes: {' '.join(command[2:])}", highlight=False)
    return subprocess.run(command).returncode


def _print_metrics(metrics: dict, folder: Path) -> None:
    method = metrics["method"]
    name = f"{method['synth']} + {method['diag']} ({method['coupling']})"
    table = metrics_table(metrics, f"test metrics: {name}, {metrics['task']}")
    n = metrics["n"]
    held_out = " (held-out phantom cohort)" if "test_set" in metrics else ""
    table.add_row("subjects", f"train {n['train']} / val {n['val']} / test {n['test']}{held_out}")
    out.print(table)
    out.print(f"run folder: [bold]{escape(str(folder))}[/]", highlight=False)


@main.group()
def data() -> None:
    """Make the phantom cohort, or check a dataset."""


@data.command("phantom")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder to write.")
@click.option("--subjects", type=int, default=200, show_default=True)
@click.option("--resolution", type=float, default=4.0, show_default=True, help="Voxel size in mm.")
@click.option("--missing-pet", type=float, default=0.5, show_default=True, help="Fraction of PET withheld.")
@click.option("--seed", type=int, default=0, show_default=True)
@set_option(help="Phantom settings, e.g. data.phantom.scenario=independent (docs/data.md).")
def data_phantom(
    out: Path, subjects: int, resolution: float, missing_pet: float, seed: int, assignments: tuple[str, ...]
) -> None:
    """Write the phantom cohort as NIfTI (MNI space) plus participants.tsv."""
    from cdsf_bench.data.phantom import generate_phantom, phantom_settings, write_phantom
    from cdsf_bench.errors import InputError
    from cdsf_bench.host import cpu_workers
    from cdsf_bench.progress import track

    if subjects < 1 or resolution <= 0 or not 0 <= missing_pet < 1:
        raise InputError("--subjects must be >= 1, --resolution > 0 and --missing-pet in [0, 1).")
    outside = [a for a in assignments if not a.strip().startswith("data.phantom.")]
    if outside:
        raise InputError(f"--set '{outside[0]}': 'data phantom' takes data.phantom.* settings only.")
    flags = {"data.subjects": subjects, "data.resolution_mm": resolution, "data.missing_pet": missing_pet}
    flags["data.phantom_seed"] = seed
    data = cfg.data_settings(cfg.resolve(default_registry(), None, assignments, flags))
    settings = phantom_settings(
        dict(data.phantom),
        subjects=subjects,
        resolution_mm=resolution,
        missing_pet=missing_pet,
        seed=seed,
    )
    cohort = generate_phantom(settings, progress=track, workers=cpu_workers())
    table = write_phantom(cohort, settings, out, progress=track)
    console.print(f"wrote {subjects} subjects to {out} ({table})", highlight=False)


@data.command("check")
@click.argument("spec")
@click.option(
    "--task",
    type=click.Choice(list(cfg.TASKS)),
    default=None,
    help="Also check, as 'run --task' does, that the task can be split and trained on.",
)
@method_options
@set_option(help="Settings, e.g. data.session=ses-M00 or split.folds=5.")
def data_check(
    spec: str,
    task: str | None,
    synth: str | None,
    diag: str | None,
    coupling_flag: str | None,
    coupling: str | None,
    assignments: tuple[str, ...],
) -> None:
    """Validate a dataset and list every problem at once (exit 2 if any).

    With --task, everything 'run' refuses before preprocessing is checked by the same code
    (cdsf_bench/preflight.py), for the method given like run's (default: the plugins'),
    plus every volume's voxels.
    """
    from cdsf_bench.config import RunConfig
    from cdsf_bench.data.summary import cohort_summary, group_problems
    from cdsf_bench.preflight import preflight

    registry = default_registry()
    flags = {"data.spec": spec, "task": task, **method_flags(synth, diag, coupling_flag, coupling)}
    run = RunConfig(cfg.resolve(registry, None, assignments, flags))
    checked = preflight(run, registry, task=task is not None, voxels=True)
    where = f"{checked.source.name} {spec}"
    if task is None:
        scope = (
            "not checked: whether a task can be split and trained on (class sizes, folds, split sizes, "
            f"the method's PET needs); 'run' without --task uses task {run.task}: add --task {run.task} "
            "to check what it would refuse."
        )
    else:
        method = run.method
        given = any(flags[key] for key in ("method.synth", "method.diag", "method.coupling"))
        default = "" if given else ", the default; --synth / --diag / --coupling for another"
        scope = (
            f"checked as 'run --task {task}' would, for method {method.synth} + {method.diag} "
            f"({method.coupling} coupling{default})."
        )
    if checked.table is None and not checked.problems:
        out.print(
            f"[green]{escape(spec)} is generated by the '{checked.source.name}' source; "
            "there are no files to check.[/]"
        )
        return
    if not checked.problems:
        assert checked.table is not None
        table = checked.table
        out.print(f"[green]{escape(where)}: {len(table)} subjects, no problems found[/]", highlight=False)
        out.print(escape(scope), highlight=False)
        out.print(escape(cohort_summary(table, task)), highlight=False)
        return
    out.print(f"[bold red]{len(checked.problems)} problem(s)[/] in {escape(where)}:", highlight=False)
    for line in group_problems(checked.problems):
        out.print(f"  - {escape(line)}", highlight=False)
    out.print(escape(scope), highlight=False)
    sys.exit(2)


# suite commands (cdsf_bench/bench/commands.py): bench, merge, report, export, regress, power
from cdsf_bench.bench.commands import bench, export, merge, power, regress, report  # noqa: E402

for _command in (bench, merge, report, export, regress, power):
    main.add_command(_command)


# performance measurement (cdsf_bench/perf/): perf
from cdsf_bench.perf import perf_command  # noqa: E402

main.add_command(perf_command)

# applying a trained model (cdsf_bench/predict/): predict
from cdsf_bench.predict.command import predict_command  # noqa: E402

main.add_command(predict_command)
# tuning studies (cdsf_bench/tune/; Optuna is imported only when a study runs): tune
from cdsf_bench.tune.command import tune_command  # noqa: E402

main.add_command(tune_command)

if __name__ == "__main__":  # pragma: no cover
    main()
