"""Reading the text files a user names (configs, suites, baselines, subject tables) safely.

A path given on the command line can be anything: a FIFO that blocks forever, ``/dev/zero``
that never ends, a directory, a binary file, a file in another encoding. The rule: a text file
is read only if it is a regular file of at most its kind's size limit, and it is decoded as
UTF-8 (a leading byte-order mark is dropped, as editors on Windows write one); anything else is
an ``InputError`` that names the file and what is wrong with it, before a byte is parsed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cdsf_bench.errors import InputError

#: a configuration, suite or baseline: a few KiB in practice
CONFIG_LIMIT = 4 * 2**20
#: a subject table: a few hundred bytes a subject
TABLE_LIMIT = 256 * 2**20


def check_regular_file(path: Path, what: str, limit: int) -> None:
    """Refuse what is not a regular file of at most ``limit`` bytes (named ``what`` in the message)."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist; check the path.") from None
    except OSError as error:
        raise InputError(f"{what} {path} cannot be read ({error.strerror}); check the path.") from None
    if not stat.S_ISREG(status.st_mode):
        kind = "a folder" if stat.S_ISDIR(status.st_mode) else "not a regular file (a device, pipe or socket)"
        raise InputError(f"{what} {path} is {kind}; give the path of a file.")
    if status.st_size > limit:
        raise InputError(
            f"{what} {path} is {status.st_size / 2**20:.1f} MiB, more than the {limit / 2**20:.0f} MiB "
            "such a file can be; is it the right file?"
        )


def read_text(path: Path, what: str, limit: int = CONFIG_LIMIT) -> str:
    """The text of a regular UTF-8 file of at most ``limit`` bytes, a byte-order mark dropped."""
    path = Path(path)
    check_regular_file(path, what, limit)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as error:
        raise InputError(f"{what} {path} cannot be read ({error.strerror}); check its permissions.") from None
    if len(raw) > limit:
        raise InputError(f"{what} {path} grew beyond {limit / 2**20:.0f} MiB while it was read.")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(
            f"{what} {path} is not UTF-8 text (byte {error.start} is {raw[error.start]:#04x}); "
            "save it as UTF-8."
        ) from None
