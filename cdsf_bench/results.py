"""The run folder: every file written atomically, plus the environment record.

A file is written to a temporary sibling, flushed to disk and renamed over its target, so a
process killed at any moment leaves either the previous file or the new one, never half.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd
import torch

from cdsf_bench.errors import InputError
from cdsf_bench.host import machine_record


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` through ``write(handle)`` into a temporary file, then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes files private; results are for sharing
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def remove_leftover_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files that writers killed mid-write left under ``folder``.

    ``atomic_write`` renames its temporary over the target only once it is complete, so a
    leftover is never a result: the target holds the previous complete version. Call it
    only while no other process writes into ``folder`` (a resumed run owns its folder).
    """
    leftovers = [p for p in Path(folder).rglob(".*.tmp") if p.is_file()]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda h: h.write(text.encode()))


def json_safe(value: Any) -> Any:
    """NaN and infinity are not JSON; write them as null so any reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> Path:
    return write_text(path, json.dumps(json_safe(data), indent=2, sort_keys=False) + "\n")


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    return write_text(path, frame.to_csv(index=False))


def save_torch(path: Path, obj: Any) -> Path:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write(path, lambda h: h.write(buffer.getvalue()))


def load_torch(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint safely: tensors and plain containers only, never pickled code.

    A file that holds anything else (or is damaged) is refused with an ``InputError``
    naming it, instead of a traceback from the unpickler.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        # torch's message opens with advice to load unsafely; the refused global is the fact
        first = lines[0] if lines else type(error).__name__
        reason = next((line for line in lines if "GLOBAL" in line), first)
        raise InputError(
            f"Checkpoint {path} cannot be loaded safely ({reason[:300]}): it is damaged, or holds objects "
            "other than tensors and plain containers, which are never unpickled. Delete it to start "
            "the run over, or point to a checkpoint written by cdsf-bench."
        ) from error


def utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def _git(*args: str) -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


#: The commit of the source this process imported, and whether tracked files differed from
#: it, read once at import: a suite runs for an hour in one process, and HEAD may move
#: meanwhile, but the code that runs is still what was imported at the start.
_SOURCE_COMMIT = _git("rev-parse", "HEAD") or None
_SOURCE_DIRTY = bool(_git("status", "--porcelain", "--untracked-files=no")) if _SOURCE_COMMIT else None


def source_commit() -> str | None:
    """The git commit of the source this process imported (None outside a git checkout)."""
    return _SOURCE_COMMIT


def environment(device: torch.device, plugins: list[dict[str, str]]) -> dict[str, Any]:
    """Versions, machine, device and commit: what a reader needs to reproduce or doubt a number."""

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    info: dict[str, Any] = {
        "time_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        **machine_record(),  # the CPU, its bf16 features, torch's thread counts
        "packages": {
            name: version(name)
            for name in ("cdsf-bench", "torch", "numpy", "nibabel", "nilearn", "scikit-learn", "pluggy")
        },
        "device": str(device),
        "git_commit": _SOURCE_COMMIT,
        "git_uncommitted_changes": _SOURCE_DIRTY,
        "plugins": plugins,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
