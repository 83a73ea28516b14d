"""The ``cdsf-bench perf`` command: options in, a measurement out as tables or JSON.

Only the translation between the command line and :class:`PerfSettings` lives here, so the
measurement can be driven the same way from scripts (``benchmarks/perf_step.py``).
"""

from __future__ import annotations

import click

from cdsf_bench.options import set_option, threads_option
from cdsf_bench.perf.measure import measure
from cdsf_bench.perf.parts import MATMUL_SIDE
from cdsf_bench.perf.render import render, to_json
from cdsf_bench.perf.settings import DEFAULT_BATCH, DEFAULT_SIZE, PerfSettings


@click.command("perf")
@click.option("--synth", help="Synthesiser name, or 'none' (default: the run's default).")
@click.option("--diag", help="Diagnoser name.")
@click.option("--coupling", help="Coupling name.")
@click.option(
    "--size", nargs=3, type=int, default=DEFAULT_SIZE, show_default=True, metavar="D H W", help="Volume size."
)
@click.option("--batch", type=int, default=DEFAULT_BATCH, show_default=True, help="Subjects per batch.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--repeats", type=int, default=5, show_default=True, help="Timed steps per measurement.")
@click.option("--warmup", type=int, default=2, show_default=True, help="Untimed steps before timing.")
@click.option("--no-bf16", "no_bf16", is_flag=True, help="Plain float32 instead of bf16 autocast.")
@click.option("--no-channels-last", "no_channels_last", is_flag=True, help="Contiguous (NCDHW) memory.")
@click.option(
    "--compile", "use_compile", is_flag=True, help="Wrap modules with torch.compile (slow first steps)."
)
@set_option(help="Plugin settings, e.g. synth.NAME.norm=batch.")
@click.option("--seed", type=int, default=0, show_default=True)
@threads_option
@click.option(
    "--matmul-side",
    type=int,
    default=MATMUL_SIDE,
    show_default=True,
    help="Side of the reference matrix multiplies (a large GPU needs 8192 to reach its peak).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def perf_command(
    synth: str | None,
    diag: str | None,
    coupling: str | None,
    size: tuple[int, int, int],
    batch: int,
    device: str,
    repeats: int,
    warmup: int,
    no_bf16: bool,
    no_channels_last: bool,
    use_compile: bool,
    assignments: tuple[str, ...],
    seed: int,
    matmul_side: int,
    as_json: bool,
) -> None:
    """Time one training step of synthesiser, diagnoser and coupling, and the data pipeline.

    Random volumes of --size stand in for a cohort; the method is built as a run builds it.
    Medians over --repeats steps after --warmup; FLOPs counted with torch's flop counter.
    """
    if use_compile:
        click.echo(
            "warning: --compile compiles each module on its first steps (and again for new "
            "batch shapes); that time is in the warm-up, not in the figures.",
            err=True,
        )
    settings = PerfSettings(
        synth=synth,
        diag=diag,
        coupling=coupling,
        size=size,
        batch=batch,
        device=device,
        repeats=repeats,
        warmup=warmup,
        bf16=not no_bf16,
        channels_last=not no_channels_last,
        compile=use_compile,
        seed=seed,
        matmul_side=matmul_side,
        assignments=assignments,
    )
    result = measure(settings)
    if as_json:
        click.echo(to_json(result))
    else:
        render(result)
