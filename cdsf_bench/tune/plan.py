"""What a study is: its base configuration, its space, its metric and its pruner.

The plan is plain data, fixed before any trial runs, and its hash is the study's identity:
workers that plan the same study (Slurm array tasks, a resumed study) join it; a different
plan in the same output folder is refused. A trial's configuration is the base with the
trial's values as ``--set`` assignments over it, resolved (and so checked) by the config
resolver, exactly as ``run`` resolves a command line. Nothing here imports Optuna.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdsf_bench import config as cfg
from cdsf_bench.errors import InputError
from cdsf_bench.metrics import HIGHER_IS_BETTER, SYNTHESIS_KEYS
from cdsf_bench.registry import Registry
from cdsf_bench.settings import RunConfig
from cdsf_bench.tune.space import Dimension, Resolver, assignment, fixed_keys, study_space

PRUNERS = ("median", "none")


@dataclass(frozen=True)
class StudyPlan:
    """A study's definition; ``resolve`` gives the base configuration with extra assignments."""

    base: RunConfig
    space: tuple[Dimension, ...]
    metric: str
    pruner: str
    resolve: Resolver = field(compare=False, repr=False)

    @property
    def direction(self) -> str:
        return "maximize" if HIGHER_IS_BETTER[self.metric] else "minimize"

    @property
    def method(self) -> str:
        return self.base.name

    def canonical(self) -> dict[str, Any]:
        """Everything that decides the study's trials (what the hash covers)."""
        return {
            "base": self.base.toml(),
            "space": [dim.canonical() for dim in self.space],
            "metric": self.metric,
            "pruner": self.pruner,
        }

    @property
    def hash(self) -> str:
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def name(self) -> str:
        """The study's name in its storage: the method and the start of the hash."""
        return f"{self.method}-{self.hash[:12]}"

    def trial_config(self, values: dict[str, Any]) -> RunConfig:
        """The full configuration of a trial that takes ``values`` (dotted key -> value)."""
        return self.resolve(tuple(assignment(key, value) for key, value in values.items()))


def plan_study(
    registry: Registry,
    *,
    config_file: Path | None = None,
    assignments: tuple[str, ...] = (),
    flags: dict[str, Any] | None = None,
    metric: str | None = None,
    pruner: str = "median",
    space_file: Path | None = None,
) -> StudyPlan:
    """The plan of a study of the method that ``run`` would train with these inputs.

    ``metric`` (default: the configuration's ``train.select_on``) scores the trials on
    validation; a diagnosis metric also selects each trial's epoch (``train.select_on``), so
    that what a trial keeps and what it is scored by agree. Settings given by ``assignments``
    and ``flags`` are held fixed; a space file replaces the declared space.
    """
    if pruner not in PRUNERS:
        raise InputError(f"--pruner {pruner!r} is not one of {', '.join(PRUNERS)}.")
    given = cfg.resolve(registry, config_file, assignments, flags)
    chosen = metric or given.train.select_on
    if chosen not in cfg.SELECTION_METRICS:
        raise InputError(f"--metric {chosen!r} is not one of {', '.join(cfg.SELECTION_METRICS)}.")
    fixed = fixed_keys(assignments, flags)
    select: tuple[str, ...] = ()
    if chosen not in SYNTHESIS_KEYS:
        if "train.select_on" in fixed and given.train.select_on != chosen:
            raise InputError(
                f"--metric {chosen} and train.select_on = {given.train.select_on} disagree: a trial "
                "is scored by the metric that selects its epoch. Give one of them."
            )
        select = (f"train.select_on={chosen}",)
    elif given.method.synth == "none":
        raise InputError(
            f"--metric {chosen} is a synthesis metric, and method {given.method.coupling} (--synth "
            "none) synthesises nothing; choose auc, bacc or mcc."
        )

    def resolve(extra: tuple[str, ...]) -> RunConfig:
        return cfg.resolve(registry, config_file, (*assignments, *select, *extra), flags)

    base = resolve(())
    space = study_space(base, registry, resolve, fixed, space_file)
    return StudyPlan(base, tuple(space), chosen, pruner, resolve)
