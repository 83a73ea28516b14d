"""Benchmark suites: a TOML file that names methods, tasks and seeds (or folds) to compare.

A suite expands into runs in one stable order (task, then seed or fold, then method). Every
run's configuration is resolved by :func:`cdsf_bench.config.resolve` from ``--set``-style
assignments, so a run of a suite is exactly the run ``cdsf-bench run --set ...`` would make.
All methods of one seed (or fold) share that seed, and the core derives the split and the
batch order from it: comparisons between methods are paired by construction.

Replicates are seeds (one hold-out split each) or folds: ``folds = k`` with one ``seed`` is
one stratified k-fold, with several ``seeds`` a repeated k-fold (each seed reshuffles the
folds). On the phantom each replicate seed also draws its own cohort (``data.phantom_seed``
follows the seed), so hold-out replicates are independent and the report can use the plain
paired t-test across them; a suite that pins ``data.phantom_seed`` in ``[settings]`` keeps
one shared cohort, like real data, and the report corrects for the overlap (Nadeau-Bengio).

A suite's hash (sha256 of its normalised content) identifies it across shards: shards of a
suite may be run anywhere and merged only with shards of the same suite.

Optional ``[scenarios.NAME]`` tables (dotted settings, like ``[settings]``) run every task,
replicate and method once per scenario, in folders ``<scenario>/<task>/...``; optional
``[[checks]]`` state, before anything runs, what the results must show (the expected
findings, :mod:`cdsf_bench.bench.checks`); the report evaluates each and prints pass / fail
(docs/benchmark.md). An optional ``test_data`` (with ``[test_settings]``, its data settings)
tests every run's selected model on another cohort too: external validation
(:mod:`cdsf_bench.bench.external`). An optional ``[tune]`` table gives every method the same
number of tuning trials in every replicate (:mod:`cdsf_bench.bench.tuning`). Optional
``[track.NAME]`` tables (the settings of tracker NAME, maybe none) report the suite and each
of its runs to experiment trackers (:mod:`cdsf_bench.tracking`); tracking changes no result,
so they are not part of the hash.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from cdsf_bench import config as cfg
from cdsf_bench.bench.checks import Check, checks_from_canonical, parse_checks
from cdsf_bench.bench.tuning import TuningBudget, budget_from_canonical, parse_budget
from cdsf_bench.data.conventions import TASKS
from cdsf_bench.errors import ConfigError, InputError
from cdsf_bench.registry import Registry
from cdsf_bench.settings import RunConfig

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
)
METHOD_FIELDS = ("name", "synth", "diag", "coupling", "settings")
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
#: the setting that chooses the phantom's cohort; a suite may pin it in [settings] only
COHORT_SEED = "data.phantom_seed"
#: how the replicates' cohorts relate: each seed draws its own, or all share one
PER_REPLICATE, SHARED = "per-replicate", "shared"


@dataclass(frozen=True)
class MethodSpec:
    """One method of a suite: a display name, its three components and its own overrides."""

    name: str
    synth: str
    diag: str
    coupling: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        """The method's folder name: its display name in lower case, other characters as '-'."""
        return re.sub(r"[^a-z0-9._+]+", "-", self.name.lower()).strip("-")


@dataclass(frozen=True)
class RunSpec:
    """One run of a suite and the assignments that configure it."""

    suite: str
    task: str
    seed: int
    fold: int | None
    method: MethodSpec
    assignments: tuple[str, ...]
    scenario: str = ""
    repeated: bool = False  # a fold of a repeated k-fold (several seeds)

    @property
    def replicate(self) -> str:
        """``seed-N``, ``fold-K`` or (repeated k-fold) ``seed-N-fold-K``: what distinguishes
        runs of one method and task."""
        if self.fold is None:
            return f"seed-{self.seed}"
        return f"seed-{self.seed}-fold-{self.fold}" if self.repeated else f"fold-{self.fold}"

    @property
    def folder(self) -> Path:
        """The run folder relative to the suite's output folder: ``[scenario/]task/replicate/method``."""
        path = Path(self.task) / self.replicate / self.method.slug
        return Path(self.scenario) / path if self.scenario else path

    def resolve(self, registry: Registry) -> RunConfig:
        """The run's full configuration, its data settings accepted by their source; errors name
        the method and replicate."""
        from cdsf_bench.preflight import checked_source  # the training stack, once runs are resolved

        try:
            config = cfg.resolve(registry, None, self.assignments)
            checked_source(config, registry)
            return config
        except ConfigError as error:
            raise InputError(
                f"Suite '{self.suite}', method '{self.method.name}' ({self.task}, {self.replicate}): {error}"
            ) from None


@dataclass(frozen=True)
class Suite:
    """A parsed, validated suite definition."""

    name: str
    tasks: tuple[str, ...]
    data: str
    preset: str
    seeds: tuple[int, ...]
    folds: int
    settings: dict[str, Any]
    methods: tuple[MethodSpec, ...]
    path: Path | None = None
    scenarios: tuple[tuple[str, dict[str, Any]], ...] = ()
    checks: tuple[Check, ...] = ()
    #: the cohort every run's model is also tested on (external validation), and its data settings
    test_data: str = ""
    test_settings: dict[str, Any] = field(default_factory=dict)
    cohorts: str = SHARED  # PER_REPLICATE: each replicate seed draws its own phantom cohort

    @property
    def test_assignments(self) -> tuple[str, ...]:
        """``test_settings`` as ``--set``-style assignments (what ``cdsf-bench predict`` takes)."""
        return tuple(f"{key}={toml_value(value)}" for key, value in self.test_settings.items())

    #: a tuned suite's budget (``[tune]``): every method's trials per replicate
    tune: TuningBudget | None = None
    #: the trackers the suite reports to, name -> settings (``[track.NAME]``); not in the hash
    track: dict[str, dict[str, Any]] = field(default_factory=dict)

    def canonical(self) -> dict:
        """The normalised definition (no comments or formatting): what the hash covers.

        Scenarios, checks and external test data appear only when given, so older suites keep
        their hash. ``cohorts`` appears only for per-replicate cohorts: a phantom suite that
        older code ran on one shared cohort gets a new hash, so its folder is never resumed
        with replicates of another design; everything else keeps its hash.
        """
        extra: dict[str, Any] = {}
        if self.test_data:
            extra["test_data"] = {"spec": self.test_data, "settings": self.test_settings}
        if self.cohorts == PER_REPLICATE:
            extra["cohorts"] = PER_REPLICATE
        if self.scenarios:
            extra["scenarios"] = [{"name": n, "settings": settings} for n, settings in self.scenarios]
        if self.checks:
            extra["checks"] = [check.canonical() for check in self.checks]
        if self.tune:
            extra["tune"] = self.tune.canonical()
        return extra | {
            "name": self.name,
            "tasks": list(self.tasks),
            "data": self.data,
            "preset": self.preset,
            "seeds": list(self.seeds),
            "folds": self.folds,
            "settings": self.settings,
            "methods": [
                {
                    "name": m.name,
                    "synth": m.synth,
                    "diag": m.diag,
                    "coupling": m.coupling,
                    "settings": m.settings,
                }
                for m in self.methods
            ],
        }

    @property
    def hash(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def runs(self) -> list[RunSpec]:
        """Every run in the stable order: task, then seed (then fold), then method."""
        replicates: list[tuple[int, int | None]] = (
            [(seed, fold) for seed in self.seeds for fold in range(self.folds)]
            if self.folds
            else [(seed, None) for seed in self.seeds]
        )
        repeated = bool(self.folds) and len(self.seeds) > 1
        out = []
        for scenario, overrides in self.scenarios or (("", {}),):
            for task in self.tasks:
                for seed, fold in replicates:
                    for method in self.methods:
                        assignments = self._assignments(task, seed, fold, method, overrides)
                        out.append(
                            RunSpec(self.name, task, seed, fold, method, assignments, scenario, repeated)
                        )
        return out

    def _assignments(
        self, task: str, seed: int, fold: int | None, method: MethodSpec, scenario: dict[str, Any]
    ) -> tuple[str, ...]:
        base: dict[str, Any] = {"preset": self.preset, "task": task, "data.spec": self.data, "seed": seed}
        if self.cohorts == PER_REPLICATE:
            base[COHORT_SEED] = seed  # this replicate's own cohort (every fold of a seed shares it)
        if fold is not None:
            base.update({"split.folds": self.folds, "split.fold": fold})
        chosen = {
            "method.synth": method.synth,
            "method.diag": method.diag,
            "method.coupling": method.coupling,
        }
        layers = [base, {**self.settings, **scenario}, chosen, method.settings]
        return tuple(f"{key}={toml_value(value)}" for layer in layers for key, value in layer.items())


def toml_value(value: Any) -> str:
    """A value as TOML text, the form ``--set KEY=VALUE`` parses."""
    return tomli_w.dumps({"v": value}).strip().removeprefix("v = ")


def shard_runs(runs: list[RunSpec], index: int, count: int) -> list[RunSpec]:
    """Shard ``index`` (1-based) of ``count``: every count-th run, so shards are disjoint and balanced."""
    return runs[index - 1 :: count]


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``I/N`` (1 <= I <= N)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise InputError(f"--shard '{text}' must be I/N with 1 <= I <= N, for example --shard 2/4.")
    return int(match[1]), int(match[2])


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
    test_data, test_settings = _test_data(raw, fail)
    tune = parse_budget(raw.get("tune"), fail)
    track = _track(raw.get(cfg.TRACK, {}), fail)
    return Suite(
        name.strip(),
        tasks,
        data,
        preset,
        seeds,
        folds,
        settings,
        methods,
        Path(path),
        scenarios,
        checks,
        test_data,
        test_settings,
        cohort_design(data, settings),
        tune,
        track,
    )


def _track(given: Any, fail) -> dict[str, dict[str, Any]]:
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
    from cdsf_bench.data.sources import PhantomSource

    return PER_REPLICATE if PhantomSource().detect(data) and COHORT_SEED not in settings else SHARED


def _cohort_pinned_in_settings_only(methods, scenarios, fail) -> None:
    """A method's own cohort would unpair its runs; a scenario's would mix designs in one suite."""
    owners = [f"methods '{m.name}' settings" for m in methods if COHORT_SEED in m.settings]
    owners += [f"scenarios.{name}" for name, settings in scenarios if COHORT_SEED in settings]
    if owners:
        raise fail(
            f"'{owners[0]}' sets '{COHORT_SEED}'; the cohort is the suite's: pin it in [settings] "
            "(one cohort for every replicate) or leave it to follow each replicate's seed."
        )


def suite_from_canonical(content: dict) -> Suite:
    """Rebuild a suite from :meth:`Suite.canonical` (as recorded in a suite folder's suite.json)."""
    methods = tuple(MethodSpec(**method) for method in content["methods"])
    scenarios = tuple((entry["name"], entry["settings"]) for entry in content.get("scenarios", []))
    external = content.get("test_data", {"spec": "", "settings": {}})
    return Suite(
        content["name"],
        tuple(content["tasks"]),
        content["data"],
        content["preset"],
        tuple(content["seeds"]),
        content["folds"],
        content["settings"],
        methods,
        None,
        scenarios,
        checks_from_canonical(content),
        external["spec"],
        external["settings"],
        content.get("cohorts", SHARED),  # absent: a shared cohort, as every older suite ran
        budget_from_canonical(content.get("tune")),
    )


def _tasks(raw: dict, fail) -> tuple[str, ...]:
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


def _replicates(raw: dict, fail) -> tuple[tuple[int, ...], int]:
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


def _seeds(seeds: Any, fail) -> tuple[int, ...]:
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise fail(f"field 'seeds' must be a non-empty list of distinct integers, got {seeds!r}.")
    return tuple(seeds)


def _settings(given: Any, where: str, fail) -> dict[str, Any]:
    """Flatten a settings table to dotted keys (``"train.epochs" = 10`` or ``[..train] epochs = 10``)."""
    if not isinstance(given, dict):
        raise fail(f"field '{where}' must be a table of dotted settings, like \"train.epochs\" = 10.")
    flat: dict[str, Any] = {}

    def walk(node: dict, prefix: str) -> None:
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


def _methods(given: Any, fail) -> tuple[MethodSpec, ...]:
    if not isinstance(given, list) or not given:
        raise fail(
            "needs at least one [[methods]] entry with name, synth, coupling (and optionally diag, settings)."
        )
    methods = []
    for number, entry in enumerate(given, start=1):
        label = f"[[methods]] entry {number}"
        if not isinstance(entry, dict):
            raise fail(f"{label} must be a table.")
        unknown = sorted(set(entry) - set(METHOD_FIELDS))
        if unknown:
            raise fail(
                f"{label} has unknown field(s) {', '.join(unknown)}; a method has {', '.join(METHOD_FIELDS)}."
            )
        for key in ("name", "synth", "diag", "coupling"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise fail(f"{label} needs field '{key}' (a non-empty string).")
        name = entry["name"].strip()
        settings = _settings(entry.get("settings", {}), f"methods '{name}' settings", fail)
        method = MethodSpec(
            name, entry["synth"].strip(), entry["diag"].strip(), entry["coupling"].strip(), settings
        )
        if not method.slug:
            raise fail(f"{label}: name {name!r} needs at least one letter or digit.")
        methods.append(method)
    slugs = [m.slug for m in methods]
    for slug in slugs:
        if slugs.count(slug) > 1:
            clash = [m.name for m in methods if m.slug == slug]
            raise fail(f"method names {clash} share the folder name '{slug}'; make them distinct.")
    return tuple(methods)


def _test_data(raw: dict, fail) -> tuple[str, dict[str, Any]]:
    """``test_data`` (a data spec) and ``[test_settings]`` (its data.* settings), checked."""
    from cdsf_bench.predict.settings import check_data_assignments

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


def _scenarios(given: Any, fail) -> tuple[tuple[str, dict[str, Any]], ...]:
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
