"""Reading a suite file: every field checked, every error naming the file and the field.

A suite file (TOML, docs/benchmark.md) names the methods, tasks and replicates of a suite
(:class:`~cdsf_bench.bench.suite.Suite`). Optional ``[scenarios.NAME]`` tables (dotted
settings, like ``[settings]``) run every task, replicate and method once per scenario, in
folders ``<scenario>/<task>/...``; optional ``[[checks]]`` state, before anything runs, what
the results must show (the expected findings, :mod:`cdsf_bench.bench.checks`); the report
evaluates each and prints pass / fail; a method entry with ``aa_of`` is an A/A copy of
another method (the same components and settings, its own training seed) and brings its
A/A check. An optional ``alpha`` sets the level of the checks and answers (default 0.05).
An optional ``test_data`` (with ``[test_settings]``,
its data settings) tests every run's selected model on another cohort too: external
validation (:mod:`cdsf_bench.bench.external`). An optional ``[tune]`` table gives every
method the same number of tuning trials in every replicate (:mod:`cdsf_bench.bench.budget`,
:mod:`cdsf_bench.bench.tuning`). Optional ``[track.NAME]`` tables (the settings of tracker
NAME, maybe none) report the suite and each of its runs to experiment trackers
(:mod:`cdsf_bench.tracking`); tracking changes no result, so they are not part of the hash.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cdsf_bench import config as cfg
from cdsf_bench.bench.budget import parse_budget
from cdsf_bench.bench.checks import aa_checks, parse_checks
from cdsf_bench.bench.stats import ALPHA
from cdsf_bench.bench.suite import (
    COHORT_SEED,
    PER_REPLICATE,
    SHARED,
    MethodSpec,
    Suite,
    toml_value,
)
from cdsf_bench.data.conventions import TASKS
from cdsf_bench.data.sources import PhantomSource
from cdsf_bench.errors import InputError
from cdsf_bench.predict.settings import check_data_assignments
from cdsf_bench.registry import Registry

#: how a field's error names the file: ``fail("message")`` is raised
Fail = Callable[[str], InputError]

SUITE_FIELDS = (
    "name",
    "task",
    "tasks",
    "data",
    "preset",
    "seeds",
    "folds",
    "seed",
    "settings",
    "methods",
    "scenarios",
    "checks",
    "test_data",
    "test_settings",
    "tune",
    "track",
    "alpha",
)
METHOD_FIELDS = ("name", "synth", "diag", "coupling", "settings", "aa_of")
#: what an A/A copy takes from its original, so may not give itself
AA_TAKEN = ("synth", "diag", "coupling", "settings")
#: settings a suite sets through its own fields; overriding them in [settings] would unpair runs
SUITE_OWNED = {
    "preset": "preset",
    "task": "task / tasks",
    "seed": "seeds (or seed with folds)",
    "data.spec": "data",
    "split.folds": "folds",
    "split.fold": "folds",
    "method.synth": "the method's synth",
    "method.diag": "the method's diag",
    "method.coupling": "the method's coupling",
}
DEFAULT_SEEDS = (0, 1, 2)


def load_suite(path: Path) -> Suite:
    """Read and validate a suite file; every error names the file and the field."""
    raw = cfg.read_toml(Path(path))
    where = f"Suite {path}"

    def fail(message: str) -> InputError:
        return InputError(f"{where}: {message}")

    unknown = sorted(set(raw) - set(SUITE_FIELDS))
    if unknown:
        raise fail(f"unknown field(s) {', '.join(unknown)}; a suite has {', '.join(SUITE_FIELDS)}.")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise fail("field 'name' is required: a non-empty string naming the suite.")
    tasks = _tasks(raw, fail)
    data = raw.get("data", cfg.DEFAULTS["data"]["spec"])
    if not isinstance(data, str) or not data:
        raise fail(f"field 'data' must be a data spec string (like \"phantom\"), got {data!r}.")
    preset = raw.get("preset", cfg.DEFAULTS["preset"])
    if preset not in cfg.PRESETS:
        raise fail(f"field 'preset' must be one of {', '.join(cfg.PRESETS)}, got {preset!r}.")
    seeds, folds = _replicates(raw, fail)
    settings = _settings(raw.get("settings", {}), "settings", fail)
    methods = _methods(raw.get("methods"), fail)
    scenarios = _scenarios(raw.get("scenarios", {}), fail)
    _cohort_pinned_in_settings_only(methods, scenarios, fail)
    names, scenario_names = [m.name for m in methods], [n for n, _ in scenarios]
    checks = parse_checks(raw.get("checks", []), names, tasks, scenario_names, fail)
    checks += aa_checks([(m.name, m.aa_of) for m in methods if m.aa_of], tasks, scenario_names)
    alpha = raw.get("alpha", ALPHA)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 0.5:
        raise fail(f"field 'alpha' must be a number in (0, 0.5), the level of checks and answers: {alpha!r}.")
    test_data, test_settings = _test_data(raw, fail)
    tune = parse_budget(raw.get("tune"), fail)
    track = _track(raw.get(cfg.TRACK, {}), fail)
    return Suite(
        name=name.strip(),
        tasks=tasks,
        data=data,
        preset=preset,
        seeds=seeds,
        folds=folds,
        settings=settings,
        methods=methods,
        path=Path(path),
        scenarios=scenarios,
        checks=checks,
        test_data=test_data,
        test_settings=test_settings,
        cohorts=cohort_design(data, settings),
        tune=tune,
        track=track,
        alpha=float(alpha),
    )


def _track(given: Any, fail: Fail) -> dict[str, dict[str, Any]]:
    """``[track.NAME]`` tables; the names and settings are checked against the installed
    trackers when the suite runs (cdsf_bench.config.resolve_trackers)."""
    if not isinstance(given, dict) or not all(isinstance(v, dict) for v in given.values()):
        raise fail(
            "field 'track' must hold one [track.NAME] table per tracker (its settings, maybe none); "
            "'cdsf-bench plugins' lists the trackers."
        )
    return {name: dict(settings) for name, settings in given.items()}


def cohort_design(data: str, settings: dict[str, Any]) -> str:
    """PER_REPLICATE when the data are the built-in phantom and [settings] does not pin its
    seed: each replicate seed then draws its own cohort. SHARED otherwise (real data, a
    phantom folder, a pinned phantom)."""
    return PER_REPLICATE if PhantomSource().detect(data) and COHORT_SEED not in settings else SHARED


def _cohort_pinned_in_settings_only(
    methods: tuple[MethodSpec, ...], scenarios: tuple[tuple[str, dict[str, Any]], ...], fail: Fail
) -> None:
    """A method's own cohort would unpair its runs; a scenario's would mix designs in one suite."""
    owners = [f"methods '{m.name}' settings" for m in methods if COHORT_SEED in m.settings]
    owners += [f"scenarios.{name}" for name, settings in scenarios if COHORT_SEED in settings]
    if owners:
        raise fail(
            f"'{owners[0]}' sets '{COHORT_SEED}'; the cohort is the suite's: pin it in [settings] "
            "(one cohort for every replicate) or leave it to follow each replicate's seed."
        )


def _tasks(raw: dict[str, Any], fail: Fail) -> tuple[str, ...]:
    if "task" in raw and "tasks" in raw:
        raise fail("give 'task' or 'tasks', not both.")
    given = raw.get("tasks", [raw.get("task", cfg.DEFAULTS["task"])])
    if not isinstance(given, list) or not given:
        raise fail("field 'tasks' must be a non-empty list of task names.")
    for task in given:
        if task not in TASKS:
            raise fail(f"unknown task {task!r} in 'task'/'tasks'; choose from {', '.join(TASKS)}.")
    if len(set(given)) != len(given):
        raise fail("field 'tasks' lists a task twice.")
    return tuple(given)


def _replicates(raw: dict[str, Any], fail: Fail) -> tuple[tuple[int, ...], int]:
    """(seeds, folds): seeds and no folds (repeated hold-out), one seed and k folds (k-fold),
    or seeds and k folds (repeated k-fold: each seed reshuffles the folds)."""
    if "seed" in raw and "seeds" in raw:
        raise fail("give 'seed' (one k-fold) or 'seeds' (repeated), not both.")
    if "folds" in raw:
        folds = raw["folds"]
        if not isinstance(folds, int) or isinstance(folds, bool) or folds < 2:
            raise fail(f"field 'folds' must be an integer of at least 2, got {folds!r}.")
        if "seeds" not in raw:
            seed = raw.get("seed", 0)
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise fail(f"field 'seed' must be an integer, got {seed!r}.")
            return (seed,), folds
        return _seeds(raw["seeds"], fail), folds
    if "seed" in raw:
        raise fail("field 'seed' goes with 'folds'; for hold-out splits list them as seeds = [...].")
    return _seeds(raw.get("seeds", list(DEFAULT_SEEDS)), fail), 0


def _seeds(seeds: Any, fail: Fail) -> tuple[int, ...]:
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise fail(f"field 'seeds' must be a non-empty list of distinct integers, got {seeds!r}.")
    return tuple(seeds)


def _settings(given: Any, where: str, fail: Fail) -> dict[str, Any]:
    """Flatten a settings table to dotted keys (``"train.epochs" = 10`` or ``[..train] epochs = 10``)."""
    if not isinstance(given, dict):
        raise fail(f"field '{where}' must be a table of dotted settings, like \"train.epochs\" = 10.")
    flat: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, dotted + ".")
            else:
                flat[dotted] = value

    walk(given, "")
    for key in flat:
        if key.split(".")[0] == cfg.TRACK:
            raise fail(f"'{where}' sets '{key}'; a suite's trackers are its [track.NAME] tables.")
        owner = SUITE_OWNED.get(key)
        if owner:
            raise fail(f"'{where}' sets '{key}', which the suite controls; use {owner} instead.")
    return flat


def _methods(given: Any, fail: Fail) -> tuple[MethodSpec, ...]:
    if not isinstance(given, list) or not given:
        raise fail(
            "needs at least one [[methods]] entry with name, synth, coupling (and optionally diag, settings)."
        )
    entries: list[dict[str, Any]] = []
    for number, entry in enumerate(given, start=1):
        label = f"[[methods]] entry {number}"
        if not isinstance(entry, dict):
            raise fail(f"{label} must be a table.")
        unknown = sorted(set(entry) - set(METHOD_FIELDS))
        if unknown:
            raise fail(
                f"{label} has unknown field(s) {', '.join(unknown)}; a method has {', '.join(METHOD_FIELDS)}."
            )
        entries.append(entry)
    by_name = {e["name"].strip(): e for e in entries if isinstance(e.get("name"), str)}
    methods = [_method(entry, number, by_name, fail) for number, entry in enumerate(entries, start=1)]
    slugs = [m.slug for m in methods]
    for slug in slugs:
        if slugs.count(slug) > 1:
            clash = [m.name for m in methods if m.slug == slug]
            raise fail(f"method names {clash} share the folder name '{slug}'; make them distinct.")
    originals = [m.aa_of for m in methods if m.aa_of]
    for original in originals:
        if originals.count(original) > 1:
            raise fail(f"method '{original}' has several A/A copies (aa_of); give it one.")
    return tuple(methods)


def _method(entry: dict[str, Any], number: int, by_name: dict[str, dict[str, Any]], fail: Fail) -> MethodSpec:
    """One [[methods]] entry; an A/A copy (``aa_of``) takes its original's components and settings."""
    label = f"[[methods]] entry {number}"
    if not isinstance(entry.get("name"), str) or not entry["name"].strip():
        raise fail(f"{label} needs field 'name' (a non-empty string).")
    name = entry["name"].strip()
    aa_of = entry.get("aa_of", "")
    if "aa_of" in entry:
        original = by_name.get(aa_of) if isinstance(aa_of, str) else None
        if original is None or aa_of == name or "aa_of" in original:
            raise fail(
                f"{label} ('{name}'): field 'aa_of' must name another method of the suite that is not "
                f"itself an A/A copy, got {aa_of!r}."
            )
        given = [key for key in AA_TAKEN if key in entry]
        if given:
            raise fail(
                f"{label} ('{name}') is an A/A copy of '{aa_of}' and takes its {', '.join(AA_TAKEN)}; "
                f"remove {', '.join(given)}."
            )
        entry = {**original, "name": name}
    for key in ("synth", "diag", "coupling"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise fail(f"{label} needs field '{key}' (a non-empty string).")
    settings = _settings(entry.get("settings", {}), f"methods '{name}' settings", fail)
    method = MethodSpec(
        name, entry["synth"].strip(), entry["diag"].strip(), entry["coupling"].strip(), settings, aa_of
    )
    if not method.slug:
        raise fail(f"{label}: name {name!r} needs at least one letter or digit.")
    return method


def _test_data(raw: dict[str, Any], fail: Fail) -> tuple[str, dict[str, Any]]:
    """``test_data`` (a data spec) and ``[test_settings]`` (its data.* settings), checked."""
    spec = raw.get("test_data", "")
    if not isinstance(spec, str) or ("test_data" in raw and not spec.strip()):
        raise fail(f"field 'test_data' must be a data spec string (like \"phantom\"), got {spec!r}.")
    settings = _settings(raw.get("test_settings", {}), "test_settings", fail)
    if settings and not spec:
        raise fail("field 'test_settings' sets the data of 'test_data', which the suite does not give.")
    try:
        check_data_assignments(
            (f"{key}={toml_value(value)}" for key, value in settings.items()), "test_settings"
        )
    except InputError as error:
        raise fail(str(error)) from None
    return spec.strip(), settings


def _scenarios(given: Any, fail: Fail) -> tuple[tuple[str, dict[str, Any]], ...]:
    """``[scenarios.NAME]`` tables of dotted settings, in the file's order."""
    if not isinstance(given, dict):
        raise fail("field 'scenarios' must be a table of [scenarios.NAME] settings tables.")
    out = []
    for name, settings in given.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
            raise fail(f"scenario name {name!r} must be letters, digits, '.', '_', '+', '-' (a folder name).")
        out.append((name, _settings(settings, f"scenarios.{name}", fail)))
    return tuple(out)


def check_components(suite: Suite, registry: Registry) -> None:
    """Check every method's synthesiser against its coupling before hours of compute are spent."""
    for method in suite.methods:
        coupling = registry.get("coupling", method.coupling).factory
        needs = getattr(coupling, "needs_synthesiser", None)
        if needs is True and method.synth == "none":
            mri_only = registry.defaults.mri_only_coupling if registry.defaults else "an MRI-only one"
            raise InputError(
                f"Suite '{suite.name}', method '{method.name}': coupling '{method.coupling}' trains a "
                f'synthesiser, but synth is "none"; name a synthesiser or use coupling "{mri_only}".'
            )
        if needs is False and method.synth != "none":
            raise InputError(
                f"Suite '{suite.name}', method '{method.name}': coupling '{method.coupling}' uses no "
                f'synthesiser; set synth = "none" (not {method.synth!r}).'
            )
