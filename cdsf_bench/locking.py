"""One writer per folder: an exclusive lock held for as long as a process writes a folder.

Two processes writing one run folder (``run --resume`` twice, say) would interleave their
checkpoints and records and leave a run that neither trained. The rule: a process that writes
a folder holds an exclusive ``flock`` on a lock file inside it for as long as it writes, and a
second process is refused at once (exit 2) with a message naming the holder's process, host
and start time. The lock is the kernel's, on an open file: it ends with its process however
that ends (SIGKILL included), so a lock file a dead process left behind is no lock; its text
is only the holder's description for the message. A lock released in order removes its file,
and the folder too when the lock created it and nothing else was written there (a command
refused by its checks leaves no folder behind).

A process may take a lock it already holds (a tuning trial's folder is also the run folder
its training prepares): the nested hold is counted and the lock ends with the outermost.
Locks are advisory: only cdsf-bench's writers take them, readers never wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from cdsf_bench.errors import InputError

#: the lock file of a folder a process writes
LOCK_FILE = ".cdsf-bench.lock"

#: locks this process holds: lock file (resolved) -> [open file descriptor, holds]
_HELD: dict[Path, list[int]] = {}


def lock_name(tag: str) -> str:
    """The name of a lock file of its own (``tag``: what it guards), beside ``LOCK_FILE``."""
    return f".cdsf-bench.{tag}.lock"


def is_lock_file(path: Path) -> bool:
    """Whether ``path`` is a lock file: no part of what a folder holds."""
    return path.name == LOCK_FILE or (path.name.startswith(".cdsf-bench.") and path.name.endswith(".lock"))


def holder(lock: Path) -> str:
    """The description the holder of ``lock`` wrote ("process 1234 on host h since 12:01 UTC")."""
    try:
        text = lock.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process (it has not yet written who it is)"


@contextlib.contextmanager
def folder_lock(folder: Path, what: str, *, lock_file: Path | None = None, hint: str) -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created if missing) while the block runs.

    ``lock_file`` defaults to ``folder / LOCK_FILE``; a folder that exists only once complete
    (a staged prediction folder) is locked by a file beside it. ``what`` names the folder in
    the refusal ("run folder"), ``hint`` says what to do ("choose another --out").
    """
    folder = Path(folder)
    lock = Path(lock_file) if lock_file is not None else folder / LOCK_FILE
    created = _make_folders(lock.parent)
    key = lock.resolve()
    try:
        if key in _HELD:
            _HELD[key][1] += 1
        else:
            _HELD[key] = [_acquire(lock, folder, what, hint), 1]
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield lock
    finally:
        _HELD[key][1] -= 1
        if _HELD[key][1] == 0:
            descriptor = _HELD.pop(key)[0]
            with contextlib.suppress(OSError):
                lock.unlink()  # while still held: no waiter can lock a file that is then removed
            os.close(descriptor)
            _remove_empty(created)


def _acquire(lock: Path, folder: Path, what: str, hint: str) -> int:
    """An open descriptor of ``lock`` holding its flock, or an InputError naming the holder."""
    while True:
        try:
            descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            reason = f"{error.strerror}: {lock}"
            raise InputError(f"{what} {folder} cannot be locked ({reason}); {hint}.") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise InputError(
                f"{what} {folder} is being written by {holder(lock)}; wait for it or {hint}."
            ) from None
        except OSError as error:
            os.close(descriptor)
            raise InputError(f"{what} {folder} cannot be locked ({error.strerror}); {hint}.") from None
        try:
            same = os.fstat(descriptor).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else its holder removed the file as we opened it: lock the new one
            break
        os.close(descriptor)
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"process {os.getpid()} on host {socket.gethostname()} since {stamp} UTC\n".encode())
    return descriptor


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and missing parents; the folders created, innermost first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"{folder} is a file, not a folder; choose another --out.") from None
    except OSError as error:
        raise InputError(f"{folder} cannot be created ({error.strerror}); choose another --out.") from None
    return missing


def _remove_empty(created: list[Path]) -> None:
    """Remove the folders a lock created, innermost first, while they are empty."""
    for path in created:
        try:
            path.rmdir()
        except OSError:
            return
