"""The run folder: the one place that knows its layout, writes its files and reads them back.

Everything a run leaves behind is written through :class:`RunFolder`, atomically (see
``results.atomic_write``), so a reader finds either the previous complete file or the new
one; and every reader of a run (``report``, ``regress``, ``export``, ``predict``, suites,
``run --resume``, tuning) goes through it too, so no other module names a file of the
layout. A run's files inside an exported results folder or a suite folder are read the same
way (``RunFolder(suite_folder / run_folder)``). The layout::

    config.toml        the resolved configuration (``run --config`` repeats the run)
    log.txt            timestamped log lines
    splits.csv         every subject's split
    environment.json   versions, CPU and its bf16 features, torch threads, device, commit, precision
    data.json          what was read, split sizes, leak check, cache
    history.csv        one row per epoch and stage
    checkpoints/       last.pt, written after every epoch (``run --resume``)
    failure.json       where a non-finite loss stopped the run, if one did
    metrics.json       the test metrics (written last: a run is finished when it exists)
    predictions.csv    one row per test subject
    reliability.csv    the test predictions' calibration bins (``metrics.reliability_table``):
                       bin, low, high, subjects, mean_probability, fraction_positive
    timing.json        wall and data seconds
    energy.json        with evaluate.carbon: CodeCarbon's energy and CO2-equivalent estimate
                       (``cost.energy_record``)
    figures/           roc.png, reliability.png, learning_curves.png, montage.png
    synth/             synthetic PET of the test subjects as NIfTI (SUVR units, MNI grid; with
                       evaluate.native_space also *_space-T1w_* on each subject's MRI grid)
    predictions_test_split.csv   with evaluate.phantom_test_subjects: the test split's predictions,
                       predictions.csv then holding the held-out cohort's
    .cdsf-bench.lock   while a process writes the folder: its lock (``RunFolder.lock``), naming it

A prediction folder (``cdsf-bench predict``, ``cdsf_bench.predict.output``) is laid out like
the test outputs of a run folder, plus ``prediction.json``, and written through this class too.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
from rich.markup import escape

from cdsf_bench import config as cfg
from cdsf_bench.data.nifti import save_nifti
from cdsf_bench.errors import ConfigError, InputError
from cdsf_bench.locking import folder_lock, is_lock_file
from cdsf_bench.progress import console
from cdsf_bench.registry import Registry
from cdsf_bench.results import remove_leftover_temporaries, utc_stamp, write_csv, write_json, write_text
from cdsf_bench.safe_names import safe_component
from cdsf_bench.settings import RunConfig

CONFIG = "config.toml"
LOG = "log.txt"
SPLITS = "splits.csv"
ENVIRONMENT = "environment.json"
DATA = "data.json"
HISTORY = "history.csv"
CHECKPOINTS = "checkpoints"
CHECKPOINT = "last.pt"
FAILURE = "failure.json"
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
TEST_SPLIT_PREDICTIONS = "predictions_test_split.csv"
PREDICTION_RECORD = "prediction.json"
RELIABILITY = "reliability.csv"
TIMING = "timing.json"
ENERGY = "energy.json"
FIGURES = "figures"
SYNTH = "synth"


class RunFolder:
    """The paths and writers of one run's folder; only the main process writes."""

    def __init__(self, path: Path, *, writes: bool = True) -> None:
        self.path = Path(path)
        self.writes = writes

    # -- creation ------------------------------------------------------------------------

    @staticmethod
    def place(out: Path | None, name: str) -> Path:
        """The folder a run writes: ``out``, by default ``runs/<UTC>-<name>``."""
        return Path(out) if out is not None else Path("runs") / f"{utc_stamp()}-{name}"

    @staticmethod
    @contextlib.contextmanager
    def lock(path: Path) -> Iterator[None]:
        """Hold the run folder's lock (``cdsf_bench.locking``) while its run writes it.

        Taken before the folder's contents are judged, so a run that is still alive is named
        as such (not offered to ``--resume``); the folder it creates is removed again when
        the run is refused before it wrote a file.
        """
        if path.exists() and not path.is_dir():
            raise InputError(f"Output folder {path} is a file, not a folder; choose another --out.")
        with folder_lock(path, "Run folder", hint="choose another --out"):
            yield

    @classmethod
    def plan(cls, config_text: str, path: Path, resume: bool) -> Path:
        """Check the folder a run will write (``place``); nothing is written here.

        A folder is reused only to resume the same configuration; anything else there is
        refused before a file is written, so no earlier run is ever overwritten. Its lock
        file is no content of the folder.
        """
        folder = cls(path)
        existing = folder.config_path
        if path.exists() and not path.is_dir():
            raise InputError(f"Output folder {path} is a file, not a folder; choose another --out.")
        if path.exists() and any(not is_lock_file(p) for p in path.iterdir()):
            if not existing.exists():
                raise InputError(
                    f"Output folder {path} exists and is not a cdsf-bench run; choose another --out."
                )
            if existing.read_text() != config_text:
                raise InputError(
                    f"Output folder {path} holds a run of a different config; choose another --out, "
                    f"or repeat that run with --config {existing}."
                )
            if not resume:
                done = folder.finished
                raise InputError(
                    f"Output folder {path} already holds {'a finished' if done else 'an unfinished'} run of "
                    f"this config; {'choose another --out' if done else f'continue it with --resume {path}'}."
                )
        return path

    @classmethod
    def prepare(cls, config_text: str, path: Path, resume: bool) -> RunFolder:
        """Create the folder (checking it again, see ``plan``) and write its config.toml.

        The caller holds the folder's ``lock`` for as long as it writes the folder.
        """
        cls.plan(config_text, path, resume)
        folder = cls(path)
        path.mkdir(parents=True, exist_ok=True)
        if resume:
            remove_leftover_temporaries(path)  # of writes the killed run did not finish
        write_text(folder.config_path, config_text)
        return folder

    # -- paths ---------------------------------------------------------------------------

    # A RunFolder of a relative path gives relative paths: a suite folder's inventory of its
    # runs' files (``RunFolder(Path(run_folder)).predictions_path().as_posix()``).

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINTS / CHECKPOINT

    @property
    def failure_path(self) -> Path:
        return self.path / FAILURE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def environment_path(self) -> Path:
        return self.path / ENVIRONMENT

    def predictions_path(self, *, test_split: bool = False) -> Path:
        """predictions.csv; with ``test_split``, the test split's table of a run whose
        predictions.csv holds its held-out cohort's."""
        return self.path / (TEST_SPLIT_PREDICTIONS if test_split else PREDICTIONS)

    @property
    def energy_path(self) -> Path:
        return self.path / ENERGY

    @property
    def reliability_path(self) -> Path:
        return self.path / RELIABILITY

    @property
    def finished(self) -> bool:
        """A run is finished when its metrics.json exists: it is written last."""
        return self.metrics_path.exists()

    def figure(self, name: str) -> Path:
        return self.path / FIGURES / f"{name}.png"

    def synthetic_pet_path(self, participant: str, native: bool = False) -> Path:
        """synth/<participant>[_space-T1w]_desc-synthetic_pet.nii.gz; an id that is not one safe
        path component (``cdsf_bench.safe_names``) is refused, so the file lies inside the folder."""
        space = "_space-T1w" if native else ""
        name = safe_component(participant, "participant_id")
        return self.path / SYNTH / f"{name}{space}_desc-synthetic_pet.nii.gz"

    # -- readers -------------------------------------------------------------------------
    # A file a person may have deleted or edited is refused with an InputError naming it;
    # a record a copied or exported folder may lack (environment, timing) reads as empty.

    def config_text(self) -> str:
        """config.toml as the run wrote it (the text ``run --config`` repeats)."""
        if not self.config_path.is_file():
            raise InputError(f"{self.path} is not a cdsf-bench run folder: it has no {CONFIG}.")
        return self.config_path.read_text()

    def config(self, registry: Registry) -> RunConfig:
        """config.toml resolved and validated against the installed plugins."""
        self.config_text()  # refuses a folder without one
        try:
            return cfg.resolve(registry, self.config_path)
        except ConfigError as error:
            raise InputError(
                f"{self.config_path} cannot be read by this version of cdsf-bench ({error}); "
                "use the version that wrote it, or run it again."
            ) from None

    def metrics(self) -> dict[str, Any]:
        """metrics.json of a finished run."""
        if not self.finished:
            raise InputError(
                f"The run in {self.path} has not finished ({METRICS} is missing), so it has no test "
                "metrics, selected model or operating point yet; finish it with "
                f"'cdsf-bench run --resume {self.path}'."
            )
        return self._read_json(self.metrics_path)

    def environment(self) -> dict[str, Any]:
        """environment.json; empty for a folder copied without it."""
        return self._read_json(self.environment_path) if self.environment_path.exists() else {}

    def timing(self) -> dict[str, Any]:
        """timing.json (wall and data seconds); empty for a run that recorded none."""
        path = self.path / TIMING
        return self._read_json(path) if path.exists() else {}

    def energy(self) -> dict[str, Any]:
        """energy.json (``cost.energy_record``); empty for a run that measured none."""
        return self._read_json(self.energy_path) if self.energy_path.exists() else {}

    def predictions(self, *, test_split: bool = False) -> pd.DataFrame:
        """The per-subject predictions (see :meth:`predictions_path`), participant ids as text."""
        path = self.predictions_path(test_split=test_split)
        if not path.is_file():
            raise InputError(f"Run folder {self.path} has no {path.name}.")
        return self._read_csv(path, dtype={"participant_id": str})

    def reliability(self) -> pd.DataFrame:
        """reliability.csv: the calibration bins of the test predictions (one row per bin)."""
        if not self.reliability_path.is_file():
            raise InputError(f"Run folder {self.path} has no {RELIABILITY}.")
        return self._read_csv(self.reliability_path)

    def splits(self) -> pd.DataFrame:
        """splits.csv: every subject's split, participant ids as written (no value read as missing)."""
        path = self.path / SPLITS
        if not path.is_file():
            raise InputError(f"Run folder {self.path} has no {SPLITS}.")
        return self._read_csv(path, dtype={"participant_id": str}, keep_default_na=False)

    def test_participants(self) -> list[str]:
        """The participant ids of the run's test split, in the order the run predicted them.

        Empty for a folder without splits.csv (copied without it): only the batching order of a
        later prediction depends on it, so its absence is no reason to refuse one.
        """
        if not (self.path / SPLITS).exists():
            return []
        table = self.splits()
        return table.loc[table["split"] == "test", "participant_id"].tolist()

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any]:
        try:
            record = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise InputError(f"{path} cannot be read: {error}. It is damaged; run again.") from None
        if not isinstance(record, dict):
            raise InputError(f"{path} holds no JSON object; it is damaged.")
        return record

    @staticmethod
    def _read_csv(path: Path, **options: Any) -> pd.DataFrame:
        try:
            return pd.read_csv(path, **options)
        except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            raise InputError(f"{path} is not a readable CSV table: {error}.") from None

    # -- writers -------------------------------------------------------------------------

    def log(self, message: str, *, echo: bool = True) -> None:
        """Append a timestamped line to log.txt and, with ``echo``, show it on the console."""
        if not self.writes:
            return
        with open(self.path / LOG, "a") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        if echo:  # a plain line: rich's log table would pad every line to the console's width
            console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {escape(message)}", highlight=False)

    def _json(self, name: str, data: Any) -> None:
        if self.writes:
            write_json(self.path / name, data)

    def _csv(self, name: str, frame: pd.DataFrame) -> None:
        if self.writes:
            write_csv(self.path / name, frame)

    def write_splits(self, table: pd.DataFrame) -> None:
        self._csv(SPLITS, table)

    def write_environment(self, record: dict[str, Any]) -> None:
        self._json(ENVIRONMENT, record)

    def write_data(self, record: dict[str, Any]) -> None:
        self._json(DATA, record)

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        self._csv(HISTORY, pd.DataFrame(rows))

    def write_failure(self, record: dict[str, Any]) -> None:
        self._json(FAILURE, record)

    def write_predictions(self, table: pd.DataFrame, *, test_split: bool = False) -> None:
        """The per-subject predictions (see :meth:`predictions_path`)."""
        self._csv(self.predictions_path(test_split=test_split).name, table)

    def write_reliability(self, table: pd.DataFrame) -> None:
        self._csv(RELIABILITY, table)

    def write_prediction_record(self, record: dict[str, Any]) -> None:
        """prediction.json: what a prediction folder applied to what."""
        self._json(PREDICTION_RECORD, record)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        self._json(METRICS, metrics)

    def write_timing(self, wall_seconds: float, data_seconds: float) -> None:
        self._json(TIMING, {"wall_seconds": wall_seconds, "data_seconds": data_seconds})

    def write_energy(self, record: dict[str, Any]) -> None:
        self._json(ENERGY, record)

    def write_synthetic_pet(
        self, participant: str, suvr: np.ndarray, affine: np.ndarray, *, mni: bool
    ) -> None:
        """One synthetic PET in SUVR units on the cohort's grid; sform and qform code 4 (MNI)
        when the cohort is in MNI space, so viewers overlay it on the template, else 2 (aligned)."""
        if not self.writes:
            return
        image = nib.Nifti1Image(suvr.astype(np.float32), np.asarray(affine))
        code = 4 if mni else 2
        image.set_sform(np.asarray(affine), code=code)
        image.set_qform(np.asarray(affine), code=code)
        image.header.set_xyzt_units("mm")
        save_nifti(image, self.synthetic_pet_path(participant))

    def write_native_pet(self, participant: str, image: nib.Nifti1Image) -> None:
        """One synthetic PET already resampled to the subject's own MRI grid (``space-T1w``)."""
        if self.writes:
            save_nifti(image, self.synthetic_pet_path(participant, native=True))
