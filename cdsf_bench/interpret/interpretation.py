"""One finished run interpreted: its diagnoser's maps for chosen subjects, scored where truth is known.

The run is read by the code ``predict`` applies it with (``predict.trained.load_trained``,
``predict.apply.prepare``): the model rebuilt from its checkpoint (``weights_only``), the
cohort preprocessed as the run's data were. Networks run eager (``precision.compile`` off)
and are attributed in float32. Each subject is predicted alone, as a one-subject batch of
the same pipeline, while the diagnosers' inputs are captured
(:mod:`cdsf_bench.interpret.capture`); each call is attributed
(:mod:`cdsf_bench.interpret.attribution`), the calls of one diagnoser averaged (a coupling
that calls it several times averages their predictions). Maps are written as they are made,
so memory holds one subject's maps and the class sums, whatever the cohort's size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cdsf_bench.assemble import configure_backends, resolve_device
from cdsf_bench.errors import InputError
from cdsf_bench.interpret.attribution import (
    COMBINED,
    IG_STEPS,
    AttributionSettings,
    attribute,
    require_captum,
)
from cdsf_bench.interpret.capture import calls_by_diagnoser, capture
from cdsf_bench.interpret.output import map_name, montage, plan_output, write_map
from cdsf_bench.interpret.scoring import (
    RANDOM_SEED,
    TRUTH_OF_CHANNEL,
    PlantedTruth,
    planted_truth,
    random_map,
    score,
)
from cdsf_bench.predict.apply import Application, prepare, source_config
from cdsf_bench.predict.output import model_record
from cdsf_bench.predict.trained import TrainedModel, load_trained
from cdsf_bench.progress import track
from cdsf_bench.registry import Registry
from cdsf_bench.results import utc_stamp, write_csv, write_json
from cdsf_bench.settings import RunConfig
from cdsf_bench.staging import staged_folder
from cdsf_bench.textfiles import read_text

#: which subjects ``--split`` names: the run's test split, or every subject of the task
SPLITS = ("test", "all")
#: the columns of scores.csv after the subject's and the map's identity
SCORE_COLUMNS = ("share", "hit", "random_share", "random_hit")
#: what a score row is keyed by in metrics.json and a suite's interpret.csv
MAP_KEYS = ("diagnoser", "attribution", "channel", "truth")


@dataclass(frozen=True)
class Request:
    """What to interpret: the cohort (None: the run's own), the subjects and the methods."""

    methods: tuple[str, ...]
    ig_steps: int = IG_STEPS
    spec: str | None = None
    subjects: tuple[str, ...] = ()
    split: str | None = None  # None: "test" on the run's own cohort, "all" on another
    device: str | None = None


@dataclass(frozen=True)
class Interpretation:
    folder: Path
    metrics: dict[str, Any]


def eager(model: TrainedModel) -> TrainedModel:
    """The trained model with ``precision.compile`` off: hooks and gradients on eager modules."""
    raw = {**model.config.raw, "precision": {**model.config.raw["precision"], "compile": False}}
    return replace(model, config=RunConfig(raw))


def interpret_run(run_folder: Path, registry: Registry, request: Request, out: Path | None) -> Interpretation:
    """Attribute the diagnoser of the run in ``run_folder`` for the subjects ``request`` names."""
    require_captum()
    path = plan_output(out, run_folder)
    model = eager(load_trained(run_folder, registry))
    config = model.config if request.spec is None else source_config(model.config, request.spec, (), registry)
    target = resolve_device(request.device or model.config.device)
    configure_backends(target)
    application = prepare(model, registry, config, target)
    rows = select_rows(application, request)
    truths = truth_of(application)
    voxel_mm = float(np.linalg.norm(np.asarray(application.cohort.affine)[:3, 0]))
    settings = AttributionSettings(request.methods, voxel_mm, request.ig_steps)
    with staged_folder(path, "--out") as staging:
        write_json(
            staging / "interpretation.json", _record(application, request, settings, rows, truths, target)
        )
        metrics = _interpret(application, rows, settings, truths, staging)
        write_json(staging / "metrics.json", metrics)
    return Interpretation(path, metrics)


def select_rows(application: Application, request: Request) -> np.ndarray:
    """The cohort rows to interpret, refused with the reason when there are none or an id is unknown."""
    cohort = application.cohort
    ids = cohort.participants["participant_id"].astype(str).to_numpy()
    with_pet_only = application.assembly.coupling.subjects == "with_pet"
    usable = cohort.has_pet if with_pet_only else np.ones(len(cohort), dtype=bool)
    if request.subjects:
        if request.split is not None:
            raise InputError("Give --subjects or --split, not both.")
        where = {participant: row for row, participant in enumerate(ids)}
        unknown = [p for p in request.subjects if p not in where]
        if unknown:
            raise InputError(
                f"--subjects: {', '.join(unknown)} not among the {len(ids)} subjects of the task "
                f"({application.model.config.task}) in the cohort {application.source}."
            )
        rows = np.array([where[p] for p in request.subjects], dtype=np.int64)
        unusable = [ids[r] for r in rows if not usable[r]]
        if unusable:
            raise InputError(
                f"--subjects: {', '.join(unusable)} without acquired PET; this run's coupling predicts "
                "only subjects with PET."
            )
        return rows
    own = bool(application.groups)
    split = request.split or ("test" if own else "all")
    if split == "test":
        if not own:
            raise InputError(
                "--split test names the run's own test subjects, which another cohort (--data) does not "
                "hold; use --split all or --subjects."
            )
        rows = application.groups[0]
        if not len(rows):
            raise InputError(
                f"{application.model.folder} has no splits.csv, so its test subjects are unknown; "
                "name them with --subjects or use --split all."
            )
    else:
        rows = np.arange(len(cohort))
    rows = rows[usable[rows]]
    if not len(rows):
        raise InputError(
            "No subject to interpret: the coupling predicts only subjects with PET, and none has it."
        )
    return rows


def truth_of(application: Application) -> dict[str, PlantedTruth]:
    """The planted truth of a phantom cohort, by the cohort's own phantom settings; {} otherwise.

    The generated phantom's settings are the run's (or ``--data``'s) ``data.phantom.*``; a
    folder written by ``cdsf-bench data phantom`` records its own in ``phantom.json``.
    """
    from cdsf_bench.data.phantom import PhantomSettings, phantom_settings
    from cdsf_bench.data.sources import phantom_options

    if application.source == "phantom":
        settings = phantom_settings(phantom_options(application.config.data))
    elif application.source == "phantom-folder":
        path = Path(application.config.data_spec) / "phantom.json"
        try:
            settings = PhantomSettings.from_json(json.loads(read_text(path, "phantom.json"))["settings"])
        except (ValueError, KeyError, TypeError) as error:
            raise InputError(
                f"{path}: no phantom settings to score against ({type(error).__name__} {error})."
            ) from None
    else:
        return {}
    cohort = application.cohort
    return planted_truth(settings, cohort.affine, cohort.brain_mask)


def _interpret(
    application: Application,
    rows: np.ndarray,
    settings: AttributionSettings,
    truths: dict[str, PlantedTruth],
    folder: Path,
) -> dict[str, Any]:
    """Every subject's maps written and scored; the class means and their montages; the summary."""
    cohort, assembly = application.cohort, application.assembly
    coupling, pipeline = assembly.coupling, assembly.pipeline
    ids = cohort.participants["participant_id"].astype(str).to_numpy()
    diagnoses = cohort.participants["diagnosis"].astype(str).to_numpy()
    affine = np.asarray(cohort.affine)
    rng = np.random.default_rng(RANDOM_SEED)
    sums: dict[tuple[str, str, str, str], np.ndarray] = {}
    counts: dict[tuple[str, str, str, str], int] = {}
    subjects, scores = [], []
    for row in track(rows, len(rows), "interpreting"):
        batch = next(iter(pipeline.eval_batches("test", coupling.subjects, (np.array([row]),))))
        captured = capture(coupling, assembly.diagnosers, batch)
        grouped = calls_by_diagnoser(captured.calls)
        probability = float(captured.prediction.probability[0])
        subjects.append(
            {
                "participant_id": ids[row],
                "diagnosis": diagnoses[row],
                "label": int(application.labels[row]),
                "probability": probability,
                "prediction": int(probability >= application.model.threshold),
                "pet_source": captured.pet_source,
                "diagnosers": " ".join(grouped),
            }
        )
        for name, calls in grouped.items():
            for method in settings.methods:
                maps = np.mean([attribute(method, c.module, name, c.inputs, settings) for c in calls], axis=0)
                channels = (COMBINED,) if method == "gradcam" else calls[0].channels
                for volume, channel in zip(maps, channels, strict=True):
                    write_map(
                        folder / "maps" / ids[row] / f"{map_name(name, method, channel)}.nii.gz",
                        volume,
                        affine,
                    )
                    key = (name, method, channel, diagnoses[row])
                    sums[key] = sums.get(key, 0.0) + volume
                    counts[key] = counts.get(key, 0) + 1
                    for kind in TRUTH_OF_CHANNEL.get(channel, ()):
                        if kind in truths:
                            random = score(random_map(rng, volume.shape), truths[kind])
                            scores.append(
                                {
                                    "participant_id": ids[row],
                                    "diagnosis": diagnoses[row],
                                    **dict(zip(MAP_KEYS, (name, method, channel, kind), strict=True)),
                                    **score(volume, truths[kind]),
                                    "random_share": random["share"],
                                    "random_hit": random["hit"],
                                }
                            )
    write_csv(folder / "subjects.csv", pd.DataFrame(subjects))
    _write_means(folder, sums, counts, truths, cohort.brain_mask, affine)
    table = pd.DataFrame(scores, columns=["participant_id", "diagnosis", *MAP_KEYS, *SCORE_COLUMNS])
    if truths:
        write_csv(folder / "scores.csv", table)
    model = application.model
    return {
        "run_folder": str(model.folder.resolve()),
        "method": dict(model.config.raw["method"]),
        "task": model.config.task,
        "subjects": len(rows),
        "methods": list(settings.methods),
        "truth": {
            kind: {"regions": list(t.regions), "chance_share": t.chance_share, "chance_hit": t.chance_hit}
            for kind, t in truths.items()
        },
        "scores": summarise(table, truths),
    }


def summarise(table: pd.DataFrame, truths: dict[str, PlantedTruth]) -> list[dict[str, Any]]:
    """One summary per map kind (diagnoser, attribution method, channel, truth): means over the subjects."""
    summary = []
    for key, part in table.groupby(list(MAP_KEYS), sort=False):
        truth = truths[str(key[3])]
        summary.append(
            {
                **dict(zip(MAP_KEYS, (str(k) for k in key), strict=True)),
                "n": len(part),
                "share": _mean(part["share"]),
                "hit_rate": _mean(part["hit"]),
                "random_share": _mean(part["random_share"]),
                "random_hit_rate": _mean(part["random_hit"]),
                "chance_share": truth.chance_share,
                "chance_hit": truth.chance_hit,
            }
        )
    return summary


def _mean(values: pd.Series) -> float:
    """The mean of the defined values (a map without positive attribution has no share)."""
    finite = values.dropna()
    return float(finite.mean()) if len(finite) else float("nan")


def _write_means(
    folder: Path,
    sums: dict[tuple[str, str, str, str], np.ndarray],
    counts: dict[tuple[str, str, str, str], int],
    truths: dict[str, PlantedTruth],
    brain: np.ndarray,
    affine: np.ndarray,
) -> None:
    """Each class's mean map as NIfTI, and one montage per diagnoser, method and class."""
    figures: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
    for (name, method, channel, diagnosis), total in sums.items():
        mean = total / counts[name, method, channel, diagnosis]
        write_map(folder / "means" / diagnosis / f"{map_name(name, method, channel)}.nii.gz", mean, affine)
        figures.setdefault((name, method, diagnosis), {})[channel] = mean
    brain = np.asarray(brain, dtype=bool)
    for (name, method, diagnosis), maps in figures.items():
        shown = {
            channel: [truths[kind] for kind in TRUTH_OF_CHANNEL.get(channel, ()) if kind in truths]
            for channel in maps
        }
        montage(
            folder / "figures" / f"{map_name(name, method, diagnosis)}.png",
            maps,
            shown,
            brain,
            affine,
            f"{name}, {method}: mean map of {counts[name, method, next(iter(maps)), diagnosis]} {diagnosis}",
        )


def _record(
    application: Application,
    request: Request,
    settings: AttributionSettings,
    rows: np.ndarray,
    truths: dict[str, PlantedTruth],
    device: torch.device,
) -> dict[str, Any]:
    model, cohort = application.model, application.cohort
    return {
        **model_record(application),
        "data": {
            "spec": request.spec or model.config.data_spec,
            "source": application.source,
            "description": cohort.source,
        },
        "subjects": [str(cohort.participants["participant_id"].iloc[r]) for r in rows],
        "attribution": settings.record(),
        "truth": {kind: list(t.regions) for kind, t in truths.items()},
        "device": str(device),
        "time_utc": utc_stamp(),
    }
