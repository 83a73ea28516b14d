"""Command-line options that several commands share, declared once.

``--set KEY=VALUE`` reaches the same configuration resolver from every command, so it is
one declaration here rather than a copy per command that could drift (metavar, multiplicity);
so do the options that name a method (``run``, ``data check``, ``tune``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def set_option(help: str) -> Callable[[F], F]:
    """``--set KEY=VALUE``, repeatable, passed to the command as the ``assignments`` tuple."""
    return click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE", help=help)


def track_option(help: str) -> Callable[[F], F]:
    """``--track NAME``, repeatable: report to tracker NAME (see 'cdsf-bench plugins'),
    passed to the command as the ``track`` tuple."""
    return click.option("--track", "track", multiple=True, metavar="NAME", help=help)


def method_options(command):
    """--synth, --diag, --joint / --decoupled and --coupling: how ``run``, ``data check`` and
    ``tune`` name a method, one definition so that all read it alike."""
    for option in reversed(
        (
            click.option("--synth", help="Synthesiser name, or 'none' for MRI alone."),
            click.option("--diag", help="Diagnoser name."),
            click.option(
                "--joint",
                "coupling_flag",
                flag_value="joint",
                help="Train synthesis and diagnosis together (CDSF).",
            ),
            click.option(
                "--decoupled",
                "coupling_flag",
                flag_value="decoupled",
                help="Train a GAN first, then the diagnoser.",
            ),
            click.option("--coupling", help="Coupling name (see 'cdsf-bench plugins')."),
        )
    ):
        command = option(command)
    return command


def method_flags(
    synth: str | None, diag: str | None, coupling_flag: str | None, coupling: str | None
) -> dict[str, object]:
    """The method options as config flags; a flag and a --coupling that disagree are refused."""
    if coupling_flag and coupling and coupling != coupling_flag:
        raise click.UsageError(f"--{coupling_flag} and --coupling {coupling} disagree; give one.")
    return {"method.synth": synth, "method.diag": diag, "method.coupling": coupling or coupling_flag}
