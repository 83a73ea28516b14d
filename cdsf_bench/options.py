"""Command-line options that several commands share, declared once.

``--set KEY=VALUE`` reaches the same configuration resolver from every command, so it is
one declaration here rather than a copy per command that could drift (metavar, multiplicity);
so do ``--track``, ``--debug``, ``--threads`` (every command that trains) and the options that
name a method (:class:`MethodCommand`: ``run``, ``data check``, ``tune``). This module imports
no plugin and no torch (``--threads`` reaches torch only when it is parsed): the command line
is listed (``cdsf-bench --help``) without them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from cdsf_bench.interfaces import Component, Flag
    from cdsf_bench.registry import Registry

F = TypeVar("F", bound=Callable[..., Any])

#: set to "1" by ``--debug``: errors are raised with their traceback instead of reported
DEBUG_ENV = "CDSF_BENCH_DEBUG"
#: ``--threads``'s value where the option is not given (a machine's or a job's own setting)
THREADS_ENV = "CDSF_BENCH_THREADS"


def set_option(help: str) -> Callable[[F], F]:
    """``--set KEY=VALUE``, repeatable, passed to the command as the ``assignments`` tuple."""
    return click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE", help=help)


def track_option(help: str) -> Callable[[F], F]:
    """``--track NAME``, repeatable: report to tracker NAME (see 'cdsf-bench plugins'),
    passed to the command as the ``track`` tuple."""
    return click.option("--track", "track", multiple=True, metavar="NAME", help=help)


def _debug(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        os.environ[DEBUG_ENV] = "1"
    return value


#: ``--debug``: full tracebacks for errors (eager, so that it holds while the rest is parsed)
debug_option = click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_debug,
    help="Show full tracebacks for errors.",
)


def _threads(_ctx: click.Context, _param: click.Parameter, value: int | None) -> None:
    """Set the process's thread count before the command works; warn when the machine is busy."""
    from cdsf_bench.host import load_warning, use_threads
    from cdsf_bench.progress import console

    threads = use_threads(value)
    warning = load_warning(threads)
    if warning is not None:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False)


#: ``--threads N`` (or ``CDSF_BENCH_THREADS``) for every command that trains: torch's intra-op
#: and inter-op threads, set once per process as the command line is parsed, before any work
#: (the command reads the count from torch, as environment.json records it)
threads_option = click.option(
    "--threads",
    type=click.IntRange(min=1),
    envvar=THREADS_ENV,
    expose_value=False,
    callback=_threads,
    help=(
        f"CPU threads to train with (also {THREADS_ENV}; default: torch's, OMP_NUM_THREADS or one "
        "per usable core). On a busy machine --threads 1 is often fastest."
    ),
)


def method_options(command: F) -> F:
    """``--synth``, ``--diag`` and ``--coupling``: how ``run``, ``data check`` and ``tune`` name a
    method, one definition so that all read it alike; for a :class:`MethodCommand`, which adds
    the couplings' flags before ``--coupling``."""
    for option in reversed(
        (
            click.option("--synth", help="Synthesiser name, or 'none' for MRI alone."),
            click.option("--diag", help="Diagnoser name."),
            click.option("--coupling", help="Coupling name (see 'cdsf-bench plugins')."),
        )
    ):
        command = option(command)
    return command


class MethodCommand(click.Command):
    """A command that names a method (:func:`method_options`), as ``run``, ``data check`` and ``tune``.

    Beside ``--synth``, ``--diag`` and ``--coupling`` it offers one flag per coupling that
    declares one (:class:`~cdsf_bench.interfaces.Flag`, as the built-in ``--joint`` and
    ``--decoupled``); the callback receives ``coupling_flag``, the coupling a flag chose, or
    None. The core names no coupling: the flags come from the plugins, which import torch, so
    they are added when click first asks for the command's parameters (to parse its arguments
    or show its help), not when the command is built, and listing the commands loads no
    plugin. Two flags at once are refused by name, and so are a flag and a ``--coupling`` that
    disagree; a flag that is already one of the command's options is left out with a warning.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: the flag options, and the registry they were built from
        self._flags: tuple[Registry, list[tuple[click.Option, Component]]] | None = None

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        flags = [option for option, _ in self._coupling_flags(params)]
        at = next(i for i, param in enumerate(params) if param.name == "coupling")
        return [*params[:at], *flags, *params[at:]]

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        rest = super().parse_args(ctx, args)
        chosen = [
            (option, component)
            for option, component in self._coupling_flags(self.params)
            if ctx.params.pop(str(option.name), False)
        ]
        if len(chosen) > 1:
            given = " and ".join(option.opts[0] for option, _ in chosen)
            raise click.UsageError(f"{given} each choose a coupling; give one.", ctx)
        flagged = chosen[0][1].name if chosen else None
        named = ctx.params.get("coupling")
        if flagged and named and named != flagged:
            raise click.UsageError(f"{chosen[0][0].opts[0]} and --coupling {named} disagree; give one.", ctx)
        ctx.params["coupling_flag"] = flagged
        return rest

    def _coupling_flags(self, params: list[click.Parameter]) -> list[tuple[click.Option, Component]]:
        """One flag option per coupling flag of the plugins' registry, built once per registry."""
        from cdsf_bench import registry as plugins

        registry = plugins.default_registry()
        if self._flags is None or self._flags[0] is not registry:
            taken = {opt for param in params for opt in [*param.opts, *param.secondary_opts]}
            flags = []
            for index, (flag, component) in enumerate(registry.coupling_flags()):
                if f"--{flag.name}" in taken:
                    warnings.warn(
                        f"coupling '{component.name}' (plugin '{component.plugin}') declares flag "
                        f"--{flag.name}, already an option of '{self.name}'; it is left out",
                        stacklevel=2,
                    )
                    continue
                flags.append((_flag_option(flag, index), component))
            self._flags = (registry, flags)
        return self._flags[1]


def _flag_option(flag: Flag, index: int) -> click.Option:
    """``--NAME``, a boolean under a private name that :class:`MethodCommand` turns into a coupling."""
    return click.Option([f"--{flag.name}", f"_coupling_flag_{index}"], is_flag=True, help=flag.help)


def method_flags(
    synth: str | None, diag: str | None, coupling_flag: str | None, coupling: str | None
) -> dict[str, object]:
    """The method options of a :class:`MethodCommand` as config flags (its flag and ``--coupling``
    agree: it refuses them otherwise)."""
    return {"method.synth": synth, "method.diag": diag, "method.coupling": coupling or coupling_flag}
