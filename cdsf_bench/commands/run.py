"""``cdsf-bench run``: train and evaluate one method (the work is :func:`cdsf_bench.run.execute`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
from rich.markup import escape

from cdsf_bench import config as cfg
from cdsf_bench.options import (
    MethodCommand,
    debug_option,
    method_flags,
    method_options,
    set_option,
    threads_option,
    track_option,
)
from cdsf_bench.progress import console, metrics_table, out


@click.command(cls=MethodCommand)
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
@threads_option
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
    from cdsf_bench.registry import default_registry
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
    run = cfg.resolve(registry, config_file, assignments, flags)
    result = execute(run, registry, out=out, resume=resume_dir is not None)
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
