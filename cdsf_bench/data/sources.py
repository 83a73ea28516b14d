"""The built-in data sources: the phantom, a phantom folder, a manifest and a CAPS directory.

Every source ends in the same ``Cohort`` on the reference grid and goes through the
cache, so a second run on unchanged inputs starts in seconds. The three file-based
sources differ only in how they build the subject table; reading, checking and
preprocessing the volumes is one shared function, ``cohort_from_table``, so they cannot
drift apart. Problems are reported before the slow part: labels, duplicates and missing
files first, then headers, and only then are volumes resampled.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from cdsf_bench.data.cache import (
    cache_root,
    cohort_key,
    file_fingerprint,
    load_or_build,
    settings_fingerprint,
)
from cdsf_bench.data.caps import scan_caps
from cdsf_bench.data.check import (
    ROLES,
    file_problems,
    missing_file_problems,
    registration_problem,
    table_problems,
)
from cdsf_bench.data.conventions import normalise_mri, normalise_pet
from cdsf_bench.data.grid import reference_grid
from cdsf_bench.data.manifest import read_manifest, select_session
from cdsf_bench.data.nifti import read_volume, to_grid
from cdsf_bench.data.problems import Problem, format_problems
from cdsf_bench.errors import ConfigError, InputError
from cdsf_bench.host import cpu_workers
from cdsf_bench.interfaces import Cohort, DataSettings, DataSource
from cdsf_bench.progress import track
from cdsf_bench.settings import check_against

MANIFEST_SUFFIXES = (".csv", ".tsv", ".txt")
#: Separates a CAPS directory from its diagnosis TSV in ``--data CAPS::LABELS.tsv``.
CAPS_TSV_SEPARATOR = "::"


def raise_problems(problems: list[Problem], where: str) -> None:
    """One error listing every problem, so a user fixes them in one pass."""
    if problems:
        raise InputError(f"{where} has {len(problems)} problem(s):\n{format_problems(problems)}")


def cohort_from_table(table: pd.DataFrame, settings: DataSettings, source_desc: str) -> Cohort:
    """Read, check and preprocess every subject of ``table`` onto the reference grid.

    MRI and PET go through ``read_volume``, the registration check against the ICBM152
    template (``registration_problem``: inputs must be in MNI space, on any grid) and
    ``to_grid``; the brain mask that scales each MRI is the ICBM152 template's on the same grid. PET is
    zero for subjects without one. ``pet_truth`` is kept only when every subject has a
    known PET (its ``pet_truth`` cell, else its ``pet``), as a phantom folder provides;
    ``pet_expected`` (E[PET | MRI]) only when every subject has a ``pet_expected`` cell.
    Every subject is attempted; all failures are raised together at the end.
    """
    from cdsf_bench.data.templates import load_templates

    grid = reference_grid(settings.resolution_mm)
    mask = np.asarray(load_templates(settings.resolution_mm).brain_mask, dtype=bool)
    rows = table.to_dict("records")
    n = len(rows)
    pet_paths = [str(row.get("pet") or "") for row in rows]
    truth_paths = [str(row.get("pet_truth") or "") or pet for row, pet in zip(rows, pet_paths, strict=True)]
    keep_truth = "pet_truth" in table.columns and all(truth_paths)
    expected_paths = [str(row.get("pet_expected") or "") for row in rows]
    keep_expected = "pet_expected" in table.columns and all(expected_paths)
    has_pet = np.array([bool(path) for path in pet_paths], dtype=bool)
    mri = np.zeros((n, *grid.shape), dtype=np.float16)
    pet = np.zeros((n, *grid.shape), dtype=np.float16)
    pet_truth = np.zeros((n, *grid.shape), dtype=np.float16) if keep_truth else None
    pet_expected = np.zeros((n, *grid.shape), dtype=np.float16) if keep_expected else None
    problems: list[Problem] = []

    def volume(participant: str, path: str, kind: Literal["mri", "pet"]) -> np.ndarray | None:
        role = "MRI" if kind == "mri" else "PET"
        try:
            image = read_volume(Path(path), role)
            misplaced = registration_problem(participant, path, role, image, settings)
            if misplaced is not None:
                problems.append(misplaced)
                return None
            return to_grid(image, grid, kind, brain_mask=mask, pet_suvr_max=settings.pet_suvr_max)
        except InputError as error:
            problems.append(Problem(participant, path, str(error)))
            return None

    for i in track(range(n), n, "Preprocessing"):
        participant = str(rows[i]["participant_id"])
        result = volume(participant, str(rows[i]["mri"]), "mri")
        if result is not None:
            mri[i] = result
        if has_pet[i]:
            result = volume(participant, pet_paths[i], "pet")
            if result is not None:
                pet[i] = result
        if pet_truth is not None:
            if truth_paths[i] == pet_paths[i]:
                pet_truth[i] = pet[i]
            else:
                result = volume(participant, truth_paths[i], "pet")
                if result is not None:
                    pet_truth[i] = result
        if pet_expected is not None:
            result = volume(participant, expected_paths[i], "pet")
            if result is not None:
                pet_expected[i] = result
    raise_problems(problems, source_desc)
    participants = table.reset_index(drop=True).copy()
    participants["has_pet"] = has_pet
    return Cohort(
        participants=participants,
        mri=mri,
        pet=pet,
        has_pet=has_pet,
        affine=grid.affine.copy(),
        brain_mask=mask,
        pet_truth=pet_truth,
        pet_expected=pet_expected,
        source=source_desc,
    )


def _load_table(
    table: pd.DataFrame, problems: list[Problem], settings: DataSettings, source_desc: str
) -> Cohort:
    """Check a table cheaply, then return its cohort from the cache or by preprocessing it.

    The cache key covers the table itself, each file's size and modification time, the
    settings and the data package's code (``cohort_key``), so editing a scan or a label rebuilds the cohort.
    """
    problems = list(problems) + table_problems(table)
    if not table.empty:
        problems += missing_file_problems(table)
    raise_problems(problems, source_desc)
    files = sorted({str(row.get(c)) for row in table.to_dict("records") for c in ROLES if row.get(c)})
    key = cohort_key(
        {
            "kind": "table",
            "table": table.to_dict("split"),
            "files": [file_fingerprint(path) for path in files],
            "settings": settings_fingerprint(settings),
        }
    )

    def build() -> Cohort:
        # headers before voxels: a bad file among hundreds is named before minutes of resampling
        raise_problems(file_problems(table), source_desc)
        return cohort_from_table(table, settings, source_desc)

    return cached(key, build, settings)


def cached(key: str, build: Callable[[], Cohort], settings: DataSettings) -> Cohort:
    """The cohort of ``key`` from the cache or built, with ``extra["cache_hit"]`` and
    ``extra["cache_entry"]`` saying which, for data.json and the run's log."""
    cohort, hit = load_or_build(key, build, settings)
    cohort.extra = {**cohort.extra, "cache_hit": hit, "cache_entry": str(cache_root(settings) / key)}
    return cohort


def absolute_spec(spec: str, *bases: Path) -> str:
    """``spec`` with its path parts made absolute, read from the first of ``bases`` where they exist.

    A run's config.toml then names its data wherever it is repeated from. Specs that name no
    existing path (``phantom``, another source's identifiers, a typo the source will report)
    are returned unchanged.
    """
    parts = spec.split(CAPS_TSV_SEPARATOR)
    resolved = []
    for part in parts:
        if not part or part.strip().lower() == "phantom":
            resolved.append(part)
            continue
        candidates = [Path(base) / Path(part).expanduser() for base in bases]
        found = next((c for c in candidates if c.exists()), None)
        resolved.append(os.path.abspath(found) if found is not None else part)
    return CAPS_TSV_SEPARATOR.join(resolved)


def phantom_options(settings: DataSettings) -> dict[str, Any]:
    """``data.phantom.*`` checked against the phantom's settings: names, types, then ranges.

    The one check of the phantom's options: the preflight asks it (through
    :meth:`PhantomSource.check_settings`), the source before it generates a cohort, and
    ``cdsf-bench data phantom`` before it writes one. Returns the options with their types
    coerced (a float for an integer given to a float setting). The cohort settings that
    ``[data]`` holds itself (subjects, missing_pet ...) are refused as options.
    """
    from cdsf_bench.data.phantom import COHORT_SETTINGS, PhantomSettings, phantom_settings

    given = dict(settings.phantom)
    if not given:
        return {}
    known = {f.name: f.default for f in fields(PhantomSettings) if f.name not in COHORT_SETTINGS}
    owned = sorted(set(given) & set(COHORT_SETTINGS))
    if owned:
        raise ConfigError(
            f"Setting 'data.phantom.{owned[0]}' is set as '{COHORT_SETTINGS[owned[0]]}', not data.phantom.*."
        )
    checked = check_against(known, given, "data.phantom")
    options = {key: checked[key] for key in given}
    try:
        phantom_settings(
            options,
            subjects=settings.subjects,
            resolution_mm=settings.resolution_mm,
            missing_pet=settings.missing_pet,
            missing_mechanism=settings.missing_mechanism,
            seed=settings.phantom_seed,
        ).validate()
    except ConfigError as error:
        raise ConfigError(f"data.phantom: {error}.") from None
    return options


class PhantomSource(DataSource):
    """The built-in synthetic cohort, generated from the data settings."""

    name = "phantom"
    description = "the word 'phantom': the built-in synthetic cohort on ICBM152 anatomy (no download)"

    def detect(self, spec: str) -> bool:
        return spec.strip().lower() == "phantom"

    def check_settings(self, settings: DataSettings) -> None:
        phantom_options(settings)

    def load(self, spec: str, settings: DataSettings) -> Cohort:
        key = cohort_key({"kind": "phantom", "settings": settings_fingerprint(settings)})
        return cached(key, lambda: self._build(settings), settings)

    @staticmethod
    def _build(settings: DataSettings) -> Cohort:
        """Generate, then normalise as real data are: MRI by its own percentiles, PET by the SUVR map."""
        from cdsf_bench.data.phantom import phantom_settings, plan_phantom

        plan = plan_phantom(
            phantom_settings(
                phantom_options(settings),
                subjects=settings.subjects,
                resolution_mm=settings.resolution_mm,
                missing_pet=settings.missing_pet,
                missing_mechanism=settings.missing_mechanism,
                seed=settings.phantom_seed,
            )
        )
        mask = plan.brain_mask
        has_pet = np.asarray(plan.has_pet, dtype=bool)
        n = len(plan)
        # each subject goes straight to float16: the float32 cohort is never held (memory)
        mri = np.empty((n, *plan.shape), dtype=np.float16)
        truth = np.empty_like(mri)
        expected = np.empty_like(mri)
        pet = np.zeros_like(mri)
        rows = []
        for i, subject in enumerate(plan.subjects(progress=track, workers=cpu_workers())):
            mri[i] = normalise_mri(subject.mri, mask)
            truth[i] = normalise_pet(subject.pet, settings.pet_suvr_max)
            expected[i] = normalise_pet(subject.pet_expected, settings.pet_suvr_max)
            if has_pet[i]:
                pet[i] = truth[i]
            rows.append(subject.row)
        return Cohort(
            participants=plan.participants(rows),
            mri=mri,
            pet=pet,
            has_pet=has_pet,
            affine=np.asarray(plan.affine, dtype=np.float64),
            brain_mask=mask,
            pet_truth=truth,
            pet_expected=expected,
            source=f"phantom ({n} subjects, seed {settings.phantom_seed})",
        )


class PhantomFolderSource(DataSource):
    """A folder written by ``cdsf-bench data phantom``: its manifest, hidden PET included."""

    name = "phantom-folder"
    description = "a folder written by 'cdsf-bench data phantom' (it holds phantom.json and participants.tsv)"

    def detect(self, spec: str) -> bool:
        return Path(spec).is_dir() and (Path(spec) / "phantom.json").is_file()

    def subject_table(self, spec: str, settings: DataSettings) -> tuple[pd.DataFrame, list[Problem]]:
        return read_manifest(Path(spec) / "participants.tsv", strict=False), []

    def load(self, spec: str, settings: DataSettings) -> Cohort:
        return _load_table(*self.subject_table(spec, settings), settings, f"phantom folder {spec}")


class ManifestSource(DataSource):
    """A CSV / TSV table naming each subject's label and volumes."""

    name = "manifest"
    description = (
        "a .csv, .tsv or .txt table with columns participant_id, diagnosis, mri and optionally pet, "
        "pet_truth, split (paths relative to the table's folder)"
    )

    def detect(self, spec: str) -> bool:
        return CAPS_TSV_SEPARATOR not in spec and spec.lower().endswith(MANIFEST_SUFFIXES)

    def subject_table(self, spec: str, settings: DataSettings) -> tuple[pd.DataFrame, list[Problem]]:
        return select_session(read_manifest(Path(spec), strict=False), settings.session, Path(spec))

    def load(self, spec: str, settings: DataSettings) -> Cohort:
        return _load_table(*self.subject_table(spec, settings), settings, f"manifest {spec}")


def _split_caps_spec(spec: str) -> tuple[Path, Path | None]:
    caps, separator, tsv = spec.partition(CAPS_TSV_SEPARATOR)
    return Path(caps), (Path(tsv) if separator and tsv else None)


class CapsSource(DataSource):
    """A Clinica CAPS directory (t1-linear and pet-linear outputs) and a diagnosis TSV."""

    name = "caps"
    description = (
        "a Clinica CAPS directory (subjects/sub-*/ses-*/t1_linear and pet_linear) with its diagnosis TSV "
        "at CAPS/participants.tsv, or given as CAPS::LABELS.tsv"
    )

    def detect(self, spec: str) -> bool:
        subjects = _split_caps_spec(spec)[0] / "subjects"
        if not subjects.is_dir():
            return False
        return any(entry.name.startswith("sub-") for entry in subjects.iterdir())

    def subject_table(self, spec: str, settings: DataSettings) -> tuple[pd.DataFrame, list[Problem]]:
        caps, tsv = _split_caps_spec(spec)
        return scan_caps(caps, tsv, settings.session, settings.tracer, settings.suvr_reference)

    def load(self, spec: str, settings: DataSettings) -> Cohort:
        table, problems = self.subject_table(spec, settings)
        return _load_table(table, problems, settings, f"CAPS directory {_split_caps_spec(spec)[0]}")


def detect_source(spec: str, sources: list[DataSource]) -> DataSource:
    """The first source that reads ``spec``; an error listing what each accepts otherwise."""
    for source in sources:
        try:
            if source.detect(spec):
                return source
        except OSError:
            continue
    accepted = "\n".join(f"  - {source.name}: {source.description}" for source in sources)
    hint = (
        ""
        if Path(spec.partition(CAPS_TSV_SEPARATOR)[0]).exists() or spec == "phantom"
        else " (no such file or directory)"
    )
    raise InputError(f"could not tell what --data {spec} is{hint}: give one of\n{accepted}")
