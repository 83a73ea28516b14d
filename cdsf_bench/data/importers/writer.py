"""Writing an imported cohort: NIfTI volumes, a manifest and ``import.json``, whole or not at all.

The folder holds ``participants.tsv`` (a manifest that ``run``, ``data check`` and ``bench``
read as it is: ``participant_id``, ``diagnosis``, ``mri``, ``pet`` with paths relative to the
folder, ``session_id`` where the source has visits, ``source`` naming the file and field each
row came from, and the source's other columns), one folder per participant with
``<participant>[_<session>]_T1w.nii.gz`` and ``..._pet.nii.gz``, and ``import.json``: the layout,
the source, the geometry assumed for arrays without an affine, the labels as mapped, the
subjects left out and every voxel changed.

The rules, checked for every subject: ids that are one safe file name, a known diagnosis, one
row per participant and session, 3D finite voxels, and one shape for every array without an
affine (MRI and PET, every subject); the first subject that breaks one stops the import with an
``InputError`` naming its file and field. The folder is written into a
staging folder beside ``--out`` and moved into place when complete, so a refused import leaves
nothing. An existing ``--out`` is refused unless it is empty, or ``force`` is given and it holds
an earlier import (its ``import.json``): a typo cannot replace a folder ``data import`` did not write.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import nibabel
import numpy as np
import pandas as pd

from cdsf_bench.data.importers.cohort import (
    ImportOptions,
    NiftiFile,
    Reading,
    Subject,
    Volume,
    checked_voxels,
    map_diagnosis,
)
from cdsf_bench.data.manifest import session_name
from cdsf_bench.data.nifti import inspect_header, save_nifti
from cdsf_bench.errors import InputError
from cdsf_bench.safe_names import inside, safe_component
from cdsf_bench.staging import refuse_existing, staged_folder

MANIFEST = "participants.tsv"
RECORD = "import.json"
FORMAT_VERSION = 1
#: qform / sform codes: 4 (MNI) for arrays placed by assumption, 1 (scanner) for a source's own affine
MNI_CODE, SCANNER_CODE = 4, 1
Progress = Callable[[Iterable[Subject], int, str], Iterator[Subject]]


def write_import(
    layout: str,
    source: Path,
    reading: Reading,
    out: Path,
    options: ImportOptions,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> dict:
    """Write ``reading``'s subjects under ``out`` (see the module's rules); returns the record written."""
    out = Path(out)
    replacing = force and out.is_dir() and any(out.iterdir())
    if replacing and not (out / RECORD).is_file():
        raise InputError(
            f"--force replaces only a folder that 'data import' wrote, and {out} holds no {RECORD}; "
            "choose a new folder."
        )
    if not replacing:
        refuse_existing(out, "Import output folder")
    target = out.parent / f".{out.name}.import-{os.getpid()}-{uuid.uuid4().hex[:8]}" if replacing else out
    subjects: Iterable[Subject] = reading.subjects
    if progress is not None:
        subjects = progress(subjects, reading.total, "import")
    with staged_folder(target, "Import output folder") as staging, contextlib.closing(reading.subjects):
        record = _write_subjects(subjects, staging, options)
        record = {
            "format_version": FORMAT_VERSION,
            "layout": layout,
            "source": str(Path(source).resolve()),
            **reading.facts,
            **record,
            "options": _options_json(options),
        }
        (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if replacing:
        aside = out.parent / f".{out.name}.replaced-{uuid.uuid4().hex[:8]}"
        os.replace(out, aside)
        os.replace(target, out)
        shutil.rmtree(aside, ignore_errors=True)
    return record


def _options_json(options: ImportOptions) -> dict:
    return {
        "nan_to_zero": options.nan_to_zero,
        "pet_scale": options.pet_scale,
        "skip_diagnoses": list(options.skip_diagnoses),
    }


def _write_subjects(subjects: Iterable[Subject], folder: Path, options: ImportOptions) -> dict:
    rows: list[dict] = []
    seen: dict[tuple[str, str], str] = {}
    labels: Counter[str] = Counter()
    skipped: list[dict] = []
    nan_replaced: dict[str, int] = {}
    shapes: set[tuple[int, ...]] = set()
    pet_p99: list[float] = []
    for subject in subjects:
        if options.skips(subject.diagnosis):
            skipped.append({"source": subject.where, "diagnosis": str(subject.diagnosis)})
            continue
        pid = safe_component(str(subject.participant_id), f"{subject.where}: participant id")
        session = session_name(
            safe_component(subject.session_id, f"{subject.where}: session") if subject.session_id else ""
        )
        diagnosis = map_diagnosis(subject.diagnosis, subject.where)
        key = (pid, session)
        if key in seen:
            visit = f" session {session}" if session else ""
            raise InputError(
                f"{subject.where}: participant {pid}{visit} is also {seen[key]}; give each participant and "
                "session once (a source with several visits needs their visit codes)."
            )
        seen[key] = subject.where
        stem = f"{pid}_{session}" if session else pid
        row: dict[str, object] = {"participant_id": pid, "session_id": session, "diagnosis": diagnosis}
        for volume in (subject.mri, subject.pet):
            if isinstance(volume, Volume) and not volume.affine_from_source and volume.data.ndim == 3:
                shapes.add(tuple(volume.data.shape))
                if len(shapes) > 1:
                    raise InputError(
                        f"{volume.where} has shape {volume.data.shape}, other arrays {sorted(shapes)[0]}; "
                        "arrays without an affine must share one shape (one pipeline, one grid)."
                    )
        row["mri"], replaced, _ = _place(subject.mri, folder, pid, f"{stem}_T1w", options, scale=1.0)
        row["pet"] = ""
        if subject.pet is not None:
            row["pet"], pet_replaced, pet = _place(
                subject.pet, folder, pid, f"{stem}_pet", options, options.pet_scale
            )
            replaced += pet_replaced
            if pet is not None:
                pet_p99.append(float(np.percentile(pet, 99)))
        if replaced:
            nan_replaced[stem] = replaced
        row["source"] = subject.where
        clash = sorted(set(subject.extra) & set(row))
        if clash:
            raise InputError(
                f"{subject.where}: the source's columns {clash} would replace the manifest's; rename them."
            )
        row.update(subject.extra)
        rows.append(row)
        labels[diagnosis] += 1
    if not rows:
        raise InputError(
            "The source holds no subject to import (every one was left out by --skip-diagnosis)."
        )
    table = pd.DataFrame(rows)
    if not table["session_id"].astype(bool).any():
        table = table.drop(columns="session_id")
    table.to_csv(folder / MANIFEST, sep="\t", index=False)
    return {
        "manifest": MANIFEST,
        "subjects": len(rows),
        "subjects_with_pet": int((table["pet"] != "").sum()),
        "diagnoses": dict(sorted(labels.items())),
        "skipped": skipped,
        "nan_set_to_zero": nan_replaced,
        "array_shape": list(shapes.pop()) if shapes else None,
        "pet_p99_max": max(pet_p99) if pet_p99 else None,
    }


def _place(
    volume: Volume | NiftiFile, folder: Path, pid: str, stem: str, options: ImportOptions, scale: float
) -> tuple[str, int, np.ndarray | None]:
    """Write (or copy) one volume into the participant's folder: its path relative to ``folder``,
    the NaN voxels set to 0, and the voxels written (None for a copied file)."""
    if isinstance(volume, NiftiFile):
        inspect_header(volume.path, "MRI")
        suffix = ".nii.gz" if volume.path.name.lower().endswith(".gz") else ".nii"
        relative = f"{pid}/{stem}{suffix}"
        destination = inside(folder, folder / relative)
        destination.parent.mkdir(exist_ok=True)
        shutil.copyfile(volume.path, destination)
        return relative, 0, None
    data, replaced = checked_voxels(volume.data, volume.where, nan_to_zero=options.nan_to_zero)
    if scale != 1.0:
        data = data / np.float32(scale)
    image = nibabel.Nifti1Image(data, volume.affine)
    code = SCANNER_CODE if volume.affine_from_source else MNI_CODE
    image.set_qform(volume.affine, code=code)
    image.set_sform(volume.affine, code=code)
    image.header.set_xyzt_units("mm")
    relative = f"{pid}/{stem}.nii.gz"
    save_nifti(image, inside(folder, folder / relative))
    return relative, replaced, data
