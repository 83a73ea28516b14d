"""The ``cdsf-bench`` command line.

Exit codes: 0 success; 1 a failed run (or a metric regression); 2 a usage or input error,
reported as one paragraph without a traceback unless ``--debug`` is given.

Every command lives in its own module, imported when the command is used: listing the
commands (``cdsf-bench --help``) imports none of them, and so neither torch nor a plugin.
That is also why the OpenMP wait policy is chosen here (:func:`passive_openmp_waits`): the
OpenMP runtime reads it once, when torch is first imported.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import click
from click.utils import make_default_short_help
from rich.markup import escape

from cdsf_bench.errors import CdsfBenchError
from cdsf_bench.options import DEBUG_ENV, debug_option
from cdsf_bench.progress import console


@dataclass(frozen=True)
class LazyCommand:
    """Where a command is defined (``module:attribute``) and the summary the listing shows.

    ``summary`` is the first paragraph of the command's own help, written here so that the
    listing needs no import (tests/test_cli.py holds the two together).
    """

    target: str
    summary: str


#: every command of ``cdsf-bench``, by name
COMMANDS: dict[str, LazyCommand] = {
    "bench": LazyCommand(
        "cdsf_bench.bench.commands:bench",
        "Run every method of SUITE_FILE on every task and seed (or fold); write results.csv and the report.",
    ),
    "data": LazyCommand(
        "cdsf_bench.commands.data:data",
        "Make the phantom cohort, check a dataset, or import one from a peer's layout.",
    ),
    "export": LazyCommand(
        "cdsf_bench.bench.commands:export",
        "Copy what the report of suite FOLDER reads into DEST, a small folder to commit.",
    ),
    "interpret": LazyCommand(
        "cdsf_bench.interpret.command:interpret_command",
        "Attribution maps of a finished run's diagnoser, scored against the phantom's planted disease.",
    ),
    "export-splits": LazyCommand(
        "cdsf_bench.commands.splits:export_splits",
        "Write the subject ids of every split of every replicate of a run or suite FOLDER as TSV.",
    ),
    "merge": LazyCommand(
        "cdsf_bench.bench.commands:merge",
        "Merge the shard folders SHARDS of one suite into OUT/results.csv and write the report.",
    ),
    "perf": LazyCommand(
        "cdsf_bench.perf.command:perf_command",
        "Time one training step of synthesiser, diagnoser and coupling, and the data pipeline.",
    ),
    "plugins": LazyCommand(
        "cdsf_bench.commands.plugins:plugins",
        "List every registered plugin component: kind, name, distribution, description.",
    ),
    "power": LazyCommand(
        "cdsf_bench.bench.commands:power",
        "Size a suite from the finished suite FOLDER: replicates and test subjects for a ΔAUC target.",
    ),
    "predict": LazyCommand(
        "cdsf_bench.predict.command:predict_command",
        "Apply a finished run's model to a cohort: probabilities, synthetic PET, metrics.",
    ),
    "regress": LazyCommand(
        "cdsf_bench.bench.commands:regress",
        "Compare RESULTS (a run folder, results.csv or suite folder) with a baseline; "
        "exit 1 on a regression.",
    ),
    "report": LazyCommand(
        "cdsf_bench.bench.commands:report",
        "Write report.md / report.html for a suite folder: summaries, paired tests and figures.",
    ),
    "run": LazyCommand(
        "cdsf_bench.commands.run:run", "Train and evaluate one method; write a self-contained run folder."
    ),
    "tune": LazyCommand(
        "cdsf_bench.tune.command:tune_command",
        "Tune a method on the training and validation splits; write its best settings as a config.",
    ),
}


#: the OpenMP runtime's settings for how a thread waits for its team; any of them given by the
#: user (or a job script) is theirs to keep
OPENMP_WAIT_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def passive_openmp_waits(environ: MutableMapping[str, str] = os.environ) -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` unless a wait setting is given: waiting threads sleep.

    OpenMP's default keeps a waiting thread spinning for a while: on a machine whose cores
    other processes also use, a team of several threads then burns the cores its preempted
    members need, and a step takes several times longer than on one thread (docs/scaling.md,
    "Threads on a shared machine"). Sleeping costs little on an idle machine. Effective only
    before torch is first imported, which no command module does before :class:`Cli` runs it.
    """
    if not any(name in environ for name in OPENMP_WAIT_SETTINGS):
        environ["OMP_WAIT_POLICY"] = "PASSIVE"


def load_command(name: str) -> click.Command:
    """The command ``name`` of :data:`COMMANDS`, importing its module."""
    module, attribute = COMMANDS[name].target.split(":")
    command: click.Command = getattr(importlib.import_module(module), attribute)
    return command


class Cli(click.Group):
    """The main group: commands imported on use, the project's errors turned into exit codes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return load_command(cmd_name) if cmd_name in COMMANDS else None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The listing, as click writes it, from the summaries: no command is imported."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, make_default_short_help(COMMANDS[name].summary, limit)) for name in sorted(COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def main(self, *args: Any, **kwargs: Any) -> Any:
        passive_openmp_waits()  # before any command's module imports torch
        return super().main(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (CdsfBenchError, OSError, UnicodeDecodeError, MemoryError) as error:
            if os.environ.get(DEBUG_ENV) == "1":
                raise
            # escaped: messages name sections like [train] and paths that rich would read as markup
            console.print(f"[bold red]error:[/] {escape(_message(error))}", highlight=False, soft_wrap=True)
            sys.exit(error.exit_code if isinstance(error, CdsfBenchError) else 2)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]; a run can be continued with --resume RUN_DIR")
            sys.exit(130)


#: what to do about an operating-system error, by its errno
_OS_ADVICE = {
    errno.ENOSPC: "the disk is full: free space there, or write elsewhere (--out, CDSF_BENCH_CACHE)",
    errno.EDQUOT: "the disk quota is used up: free space there, or write elsewhere",
    errno.EROFS: "that file system is read-only: choose a folder you can write (--out)",
    errno.EACCES: "permission denied: choose a path you may read or write",
    errno.EPERM: "operation not permitted: choose a path you may read or write",
    errno.ENOTDIR: "a part of that path is a file, not a folder: check the path",
    errno.EISDIR: "that path is a folder where a file was expected: check the path",
    errno.ENOENT: "it does not exist: check the path",
}


def _message(error: BaseException) -> str:
    """The one paragraph a user reads for an error that is theirs to fix.

    The project's errors carry their own message; errors of the machine (a full disk, a
    read-only folder, a file that is not UTF-8, memory) are named with the path they hit and
    what to do, in this one place, whichever command met them.
    """
    if isinstance(error, CdsfBenchError):
        return str(error)
    if isinstance(error, OSError):
        where = " -> ".join(str(name) for name in (error.filename, error.filename2) if name) or "a file"
        advice = _OS_ADVICE.get(error.errno or 0, "check the path and the machine")
        return f"{where}: {error.strerror or error}; {advice}."
    if isinstance(error, UnicodeDecodeError):
        return f"a file is not UTF-8 text ({error}); save it as UTF-8."
    return (
        "out of memory: lower data.subjects, data.resolution_mm's detail (a larger voxel size) or "
        "train.batch_size, or use a machine with more memory."
    )


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cdsf-bench")
@debug_option
def main() -> None:
    """cdsf-bench: benchmark joint PET synthesis and diagnosis on incomplete MRI/PET cohorts."""


if __name__ == "__main__":  # pragma: no cover
    main()
