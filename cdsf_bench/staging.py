"""Folders a command writes appear whole or not at all, and never over an existing one.

A command that fails half way (a NaN weight, a full disk, Ctrl-C) must not leave a partial
folder behind that looks finished, or that blocks running the same command again. The rule:
a new output folder is written into a hidden staging folder beside it (same file system, so
the final rename is atomic) and moved into place only when complete; a folder that exists and
is not empty is refused before anything is computed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from cdsf_bench.errors import InputError


def refuse_existing(path: Path, what: str) -> None:
    """An ``InputError`` when ``path`` is a file or a folder that is not empty."""
    path = Path(path)
    if path.is_file() or path.is_symlink():
        raise InputError(f"{what} {path} is a file; give the path of a new folder.")
    if path.is_dir() and any(path.iterdir()):
        raise InputError(
            f"{what} {path} exists and is not empty; nothing there is replaced, choose a new folder."
        )


@contextlib.contextmanager
def staged_folder(path: Path, what: str) -> Iterator[Path]:
    """Yield a staging folder to fill; on success it becomes ``path``, on failure it is removed.

    ``path`` is checked first (``refuse_existing``) and again at the move, so a folder that
    appeared meanwhile is not replaced.
    """
    path = Path(path)
    refuse_existing(path, what)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        refuse_existing(path, what)
        if path.is_dir():
            path.rmdir()  # empty: the user made it for us
        os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
