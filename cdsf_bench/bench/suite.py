"""Benchmark suites: the methods, tasks and seeds (or folds) a suite compares, and its runs.

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

A method may be an A/A copy of another (``aa_of``): the same components and settings under
a second name, trained from independent training seeds (``seeds.init`` and ``seeds.batches``,
whatever the suite pins them to) on the same replicates, so the same cohort and split. Its
comparison with the original measures nothing but training noise and must contain 0 (an
``aa`` check, :mod:`cdsf_bench.bench.checks`).

A suite's hash (sha256 of its normalised content) identifies it across shards: shards of a
suite may be run anywhere and merged only with shards of the same suite. A suite file is
read and checked by :mod:`cdsf_bench.bench.suite_file`.
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
from cdsf_bench.bench.budget import TuningBudget, budget_from_canonical
from cdsf_bench.bench.checks import Check, checks_from_canonical
from cdsf_bench.bench.stats import ALPHA
from cdsf_bench.errors import ConfigError, InputError
from cdsf_bench.registry import Registry
from cdsf_bench.settings import RunConfig

#: the setting that chooses the phantom's cohort; a suite may pin it in [settings] only
COHORT_SEED = "data.phantom_seed"
#: how the replicates' cohorts relate: each seed draws its own, or all share one
PER_REPLICATE, SHARED = "per-replicate", "shared"
#: the setting an A/A copy's runs differ in, and how far its seed lies from the replicate's
#: the seeds an A/A copy draws afresh: initialisation, batch order and augmentation
TRAINING_SEEDS = ("seeds.init", "seeds.batches")
AA_SEED_OFFSET = 2**31


@dataclass(frozen=True)
class MethodSpec:
    """One method of a suite: a display name, its three components and its own overrides."""

    name: str
    synth: str
    diag: str
    coupling: str
    settings: dict[str, Any] = field(default_factory=dict)
    #: the method this one is an A/A copy of (its components and settings, another training seed)
    aa_of: str = ""

    def canonical(self) -> dict[str, Any]:
        """The method in the suite's canonical content; ``aa_of`` only where given."""
        out = {
            "name": self.name,
            "synth": self.synth,
            "diag": self.diag,
            "coupling": self.coupling,
            "settings": self.settings,
        }
        return out | ({"aa_of": self.aa_of} if self.aa_of else {})

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
    #: a tuned suite's budget (``[tune]``): every method's trials per replicate
    tune: TuningBudget | None = None
    #: the trackers the suite reports to, name -> settings (``[track.NAME]``); not in the hash
    track: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the level of the checks and the answers (two-sided intervals at 1 - alpha, TOST at alpha)
    alpha: float = ALPHA

    @property
    def test_assignments(self) -> tuple[str, ...]:
        """``test_settings`` as ``--set``-style assignments (what ``cdsf-bench predict`` takes)."""
        return tuple(f"{key}={toml_value(value)}" for key, value in self.test_settings.items())

    def canonical(self) -> dict[str, Any]:
        """The normalised definition (no comments or formatting): what the hash covers.

        An optional field (scenarios, checks, external test data, the tuning budget, a level
        other than the default alpha, a method's ``aa_of``) appears only when given, so a
        suite that does not use it hashes as if the field did not exist. ``cohorts`` appears
        only for per-replicate cohorts, so a suite whose replicates draw their own cohorts
        never shares a hash, or a folder to resume, with the same suite on one shared cohort.
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
        if self.alpha != ALPHA:
            extra["alpha"] = self.alpha
        return extra | {
            "name": self.name,
            "tasks": list(self.tasks),
            "data": self.data,
            "preset": self.preset,
            "seeds": list(self.seeds),
            "folds": self.folds,
            "settings": self.settings,
            "methods": [m.canonical() for m in self.methods],
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
        if method.aa_of:  # the same replicate (seed: cohort and split), its own training seed
            layers.append(dict.fromkeys(TRAINING_SEEDS, (seed + AA_SEED_OFFSET) % 2**32))
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


def suite_from_canonical(content: dict[str, Any]) -> Suite:
    """Rebuild a suite from :meth:`Suite.canonical` (as recorded in a suite folder's suite.json)."""
    methods = tuple(MethodSpec(**method) for method in content["methods"])
    scenarios = tuple((entry["name"], entry["settings"]) for entry in content.get("scenarios", []))
    external = content.get("test_data", {"spec": "", "settings": {}})
    return Suite(
        name=content["name"],
        tasks=tuple(content["tasks"]),
        data=content["data"],
        preset=content["preset"],
        seeds=tuple(content["seeds"]),
        folds=content["folds"],
        settings=content["settings"],
        methods=methods,
        scenarios=scenarios,
        checks=checks_from_canonical(content),
        test_data=external["spec"],
        test_settings=external["settings"],
        cohorts=content.get("cohorts", SHARED),  # canonical() records per-replicate cohorts only
        tune=budget_from_canonical(content.get("tune")),
        alpha=content.get("alpha", ALPHA),
    )
