"""Identifiers that become file names: a participant or session id is one safe path component.

Ids come from users' tables and end up in file names (``synth/<participant>_desc-synthetic_pet
.nii.gz``), so an id holding ``../`` or starting with ``/`` would write outside the folder the
user named. The rule: an id is a single component that every common file system accepts
unchanged, so it names the same file wherever the folder is copied: no separator (``/``, ``\\``),
not ``.`` or ``..``, no control characters, no characters Windows refuses (``<>:"|?*``), no
leading ``-`` (read as an option by shell tools) and at most 200 bytes in UTF-8 (names are
suffixed, and most file systems stop at 255).
"""

from __future__ import annotations

from pathlib import Path

from cdsf_bench.errors import InputError

#: bytes an id may take; the longest suffix a run adds is under 55 bytes of the usual 255
MAX_ID_BYTES = 200
_REFUSED = set('/\\<>:"|?*')


def unsafe_reason(name: str) -> str | None:
    """Why ``name`` is not one safe path component, or None when it is."""
    if name in ("", ".", ".."):
        return f"{name!r} names no file of its own"
    bad = sorted({c for c in name if c in _REFUSED or ord(c) < 32 or ord(c) == 127})
    if bad:
        shown = ", ".join(repr(c) for c in bad)
        return f"{name!r} holds {shown}, which cannot stand in a file name"
    if name.startswith("-"):
        return f"{name!r} starts with '-', which tools read as an option"
    if name != name.strip():
        return f"{name!r} starts or ends with white space"
    if len(name.encode("utf-8")) > MAX_ID_BYTES:
        return f"{name[:20]!r}... is longer than {MAX_ID_BYTES} bytes"
    return None


def safe_component(name: str, what: str) -> str:
    """``name`` itself when it is one safe path component, else an ``InputError`` naming ``what``."""
    reason = unsafe_reason(name)
    if reason is not None:
        raise InputError(f"{what} {reason}; use letters, digits, '-', '_' and '.' only.")
    return name


def inside(folder: Path, path: Path) -> Path:
    """``path`` when it lies inside ``folder`` once both are resolved, else an ``InputError``.

    The last line of defence where a name becomes a path: everything a command writes lies
    inside the folder the user named.
    """
    root, target = folder.resolve(), path.resolve()
    if target != root and root not in target.parents:
        raise InputError(f"{path} would lie outside {folder}; nothing is written outside the folder named.")
    return path
