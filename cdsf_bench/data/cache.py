"""The on-disk cache of preprocessed cohorts, so resampling hundreds of scans happens once.

An entry is a directory named by a hash of everything the cohort depends on (each input
file's size and modification time, every data setting, the cache format's version and the
source of every module of the data package, so a code change rebuilds the cohort); it
holds the arrays as ``.npy`` (volumes in float16, memory-mapped on load), the subject
table and a ``meta.json``. Entries are written into a temporary sibling and renamed into
place, so a reader never sees half an entry and two concurrent builders cannot mix their
files: the loser of the race discards its copy. A damaged entry is rebuilt, not fatal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from cdsf_bench.interfaces import Cohort, DataSettings

#: Bump when the layout of an entry or the preprocessing changes, to invalidate old entries
#: (2: ``pet_expected``).
CACHE_VERSION = 2
_VOLUMES = ("mri", "pet", "pet_truth", "pet_expected")
_BOOL_TEXT = {"True": True, "False": False, "true": True, "false": False}
#: The data package, whose code shapes every cohort (reading, grid, preprocessing, checks, phantom).
DATA_PACKAGE = Path(__file__).resolve().parent


def cache_root(settings: DataSettings) -> Path:
    """``settings.cache_dir``, else ``$CDSF_BENCH_CACHE``, else ``~/.cache/cdsf-bench``."""
    if settings.cache_dir:
        return Path(settings.cache_dir).expanduser()
    if os.environ.get("CDSF_BENCH_CACHE"):
        return Path(os.environ["CDSF_BENCH_CACHE"]).expanduser()
    return Path.home() / ".cache" / "cdsf-bench"


def file_fingerprint(path: str | Path) -> dict:
    """What identifies a file's content cheaply: its absolute path, size and mtime in ns."""
    stat = os.stat(path)
    return {"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def settings_fingerprint(settings: DataSettings) -> dict:
    """Every data setting except where the cache lives, which does not change the cohort."""
    fields = dataclasses.asdict(settings)
    fields.pop("cache_dir", None)
    return fields


@functools.cache
def code_fingerprint(package: Path = DATA_PACKAGE) -> str:
    """SHA-256 of the name and source of every ``.py`` file of ``package``, in name order.

    Read once per process: the code does not change under a running benchmark.
    """
    digest = hashlib.sha256()
    for path in sorted(package.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cohort_key(parts: dict) -> str:
    """SHA-256 of the canonical JSON of ``parts``, the cache version and the data package's code."""
    canonical = json.dumps(
        {"cache_version": CACHE_VERSION, "code": code_fingerprint(), **parts},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _save(cohort: Cohort, folder: Path) -> None:
    for name in _VOLUMES:
        array = getattr(cohort, name)
        if array is not None:
            np.save(folder / f"{name}.npy", np.asarray(array, dtype=np.float16))
    np.save(folder / "has_pet.npy", np.asarray(cohort.has_pet, dtype=bool))
    np.save(folder / "affine.npy", np.asarray(cohort.affine, dtype=np.float64))
    np.save(folder / "brain_mask.npy", np.asarray(cohort.brain_mask, dtype=bool))
    cohort.participants.to_csv(folder / "participants.tsv", sep="\t", index=False)
    meta = {
        "cache_version": CACHE_VERSION,
        "source": cohort.source,
        "subjects": len(cohort),
        "shape": list(cohort.shape),
        "volumes": [name for name in _VOLUMES if getattr(cohort, name) is not None],
        "dtypes": {column: str(dtype) for column, dtype in cohort.participants.dtypes.items()},
        "extra": cohort.extra,
    }
    # meta.json is written last: its presence marks a complete entry
    (folder / "meta.json").write_text(json.dumps(meta, indent=2, default=str))


def _read_participants(path: Path, dtypes: dict[str, str]) -> pd.DataFrame:
    """The subject table with its column types restored (ids stay text, flags booleans)."""
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    for column, dtype in dtypes.items():
        if dtype == "bool":
            table[column] = table[column].map(_BOOL_TEXT).astype(bool)
        elif dtype.startswith(("int", "float", "uint")):
            table[column] = pd.to_numeric(table[column].replace("", np.nan)).astype(np.dtype(dtype))
    return table


def _load(folder: Path) -> Cohort:
    """An entry as a cohort, volumes memory-mapped; raises if anything is missing or inconsistent."""
    meta = json.loads((folder / "meta.json").read_text())
    if meta.get("cache_version") != CACHE_VERSION:
        raise ValueError("cache version differs")
    stored = set(meta["volumes"])
    if not {"mri", "pet"} <= stored:
        raise ValueError("cache entry lacks its MRI or PET")
    volumes = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in _VOLUMES if name in stored}
    participants = _read_participants(folder / "participants.tsv", meta["dtypes"])
    cohort = Cohort(
        participants=participants,
        mri=volumes["mri"],
        pet=volumes["pet"],
        has_pet=np.load(folder / "has_pet.npy"),
        affine=np.load(folder / "affine.npy"),
        brain_mask=np.load(folder / "brain_mask.npy"),
        pet_truth=volumes.get("pet_truth"),
        pet_expected=volumes.get("pet_expected"),
        source=meta["source"],
        extra=meta.get("extra", {}),
    )
    expected = (meta["subjects"], *meta["shape"])
    arrays = list(volumes.values())
    if (
        any(a.shape != expected for a in arrays)
        or cohort.has_pet.shape != (len(participants),)
        or len(participants) != meta["subjects"]
    ):
        raise ValueError("cache entry is inconsistent")
    return cohort


def _discard(folder: Path) -> None:
    """Move a folder out of the way atomically, then delete it (readers never see it half gone)."""
    if not folder.exists():
        return
    graveyard = Path(tempfile.mkdtemp(prefix=f".trash-{folder.name[:16]}-", dir=folder.parent))
    with contextlib.suppress(OSError):  # someone else moved it first
        os.replace(folder, graveyard / "entry")
    shutil.rmtree(graveyard, ignore_errors=True)


def load_or_build(key: str, build: Callable[[], Cohort], settings: DataSettings) -> tuple[Cohort, bool]:
    """The cached cohort for ``key`` if there is a sound entry, else ``build()`` stored under it.

    Returns the cohort and whether it came from the cache.
    """
    root = cache_root(settings)
    folder = root / key
    if (folder / "meta.json").is_file():
        try:
            return _load(folder), True
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError, pd.errors.ParserError):
            _discard(folder)  # damaged or from another version: rebuild below
    elif folder.exists():
        _discard(folder)  # no meta.json: an entry someone started but never finished
    cohort = build()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{key[:16]}-", dir=root))
    try:
        _save(cohort, staging)
        try:
            os.replace(staging, folder)
        except OSError:
            # another process stored the same key meanwhile: its entry is as good as ours
            if not (folder / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    try:
        # the stored copy, so a fresh build and a cache hit give the very same arrays and types
        return _load(folder), False
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError, pd.errors.ParserError):
        return cohort, False
