"""A study's Optuna storage, opened safely: a torn journal repaired, a damaged storage refused.

- **A torn journal**: a journal writer killed mid-append, or a full disk, leaves a last line
  without its newline. Optuna's ``JournalFileBackend`` skips such a line when it reads, but
  appends the next record to it: the two become one undecodable line, that record is lost
  and every later read fails, so the study could never resume. The torn record is an
  operation its writer never saw succeed (it died, or its append raised), so dropping it
  loses nothing a worker relies on: ``repair_torn_journal`` cuts the file after its last
  complete record, under the journal's own lock (so a record being appended is not taken for
  torn), keeps the original beside it as ``<file>.torn`` and says so.
- **A damaged storage** (a journal with a line that is not a record, a file that is no
  journal, an unreadable SQLite file) is refused with exit 2, naming the file and what to
  do (``opened``); nothing is changed in it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cdsf_bench.errors import InputError
from cdsf_bench.progress import console

#: the suffix of the copy of a journal whose torn last record was dropped
TORN_SUFFIX = ".torn"
#: what to do with a storage that cannot be read
RESTORE = (
    "Restore it from a backup, or start the study afresh with another --out (and --storage); "
    "the trials' folders keep what they trained."
)


def _is_record(line: bytes) -> bool:
    """Whether ``line`` is an Optuna journal record: a JSON object with an ``op_code``."""
    try:
        record = json.loads(line)
    except ValueError:  # not JSON, or not UTF-8
        return False
    return isinstance(record, dict) and isinstance(record.get("op_code"), int)


def _first_damaged(lines: list[bytes]) -> int | None:
    """The 1-based number of the first line of ``lines`` that is not a journal record."""
    return next((number for number, line in enumerate(lines, 1) if not _is_record(line)), None)


def _torn_copy(path: Path) -> Path:
    """A free name beside ``path`` for its original: ``<name>.torn``, else ``<name>.torn.2``, ..."""
    copy, number = path.with_name(path.name + TORN_SUFFIX), 1
    while copy.exists():
        number += 1
        copy = path.with_name(f"{path.name}{TORN_SUFFIX}.{number}")
    return copy


def check_journal(path: Path) -> None:
    """Refuse a journal file with a line that is not a record; repair a torn last record.

    An absent or empty file is a new journal. A file whose complete lines are not all
    records, or that holds none, is damaged or no journal and is refused (exit 2).
    """
    if path.exists() and not path.is_file():
        raise InputError(f"--storage {path} is not a regular file; give an Optuna journal file.")
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    if not data.endswith(b"\n"):
        repair_torn_journal(path)
        return
    damaged = _first_damaged(lines)
    if damaged is not None:
        raise InputError(
            f"--storage {path}: line {damaged} is not an Optuna journal record; the file is damaged "
            f"or is not a journal. {RESTORE}"
        )


def repair_torn_journal(path: Path) -> Path | None:
    """Drop the torn last record of the journal ``path``; the copy of the original, or None.

    Under the journal's lock (the lock Optuna's writers take; a lock left by a killed writer
    is released after its grace period), the file is read again: nothing is done unless its
    last line still lacks a newline. It is repaired only when every complete line is a
    record and the torn one starts as a record does; anything else is refused (exit 2).
    """
    from optuna.storages.journal import JournalFileSymlinkLock

    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        if not data or data.endswith(b"\n"):
            return None  # a writer was appending it; it is whole now
        cut = data.rfind(b"\n") + 1
        complete, torn = data[:cut].splitlines(), data[cut:]
        damaged = _first_damaged(complete)
        if not complete or damaged is not None or not torn.startswith(b"{"):
            where = f"line {damaged}" if damaged is not None else f"line {len(complete) + 1}"
            raise InputError(
                f"--storage {path}: {where} is not an Optuna journal record; the file is damaged "
                f"or is not a journal. {RESTORE}"
            )
        copy = _torn_copy(path)
        shutil.copy2(path, copy)
        with path.open("r+b") as handle:
            handle.truncate(cut)
    finally:
        lock.release()
    console.print(
        f"[yellow]{path}: its last record was torn (a writer killed mid-write, or a full disk); "
        f"dropped it and kept the original as {copy}[/]",
        highlight=False,
    )
    return copy


@contextmanager
def opened(path: Path) -> Iterator[None]:
    """Turn an error of reading the storage ``path`` (a damaged or foreign file) into exit 2.

    Opening a study replays its storage: a journal whose records do not replay raises
    whatever Optuna's replay meets (a missing key, an unknown operation), and a file that is
    no SQLite database raises SQLAlchemy's ``DatabaseError``.
    """
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (SQLAlchemyError, ValueError, KeyError, TypeError, AttributeError, AssertionError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{path} cannot be read as a study's Optuna storage ({reason}). {RESTORE}") from None


def open_storage(path: Path, *, journal: bool) -> Any:
    """The Optuna storage in ``path``: a journal file (checked first) or a SQLite database."""
    import optuna

    if journal:
        path.parent.mkdir(parents=True, exist_ok=True)
        check_journal(path)
    with opened(path):
        if journal:
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        return optuna.storages.RDBStorage(f"sqlite:///{path.resolve()}")
