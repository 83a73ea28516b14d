"""The search space of a study: what the plugins declare, what the core adds, what a file says.

A dimension is a dotted setting (``coupling.joint.w_voxel``, ``train.learning_rate``) and how
it is searched (:class:`~cdsf_bench.interfaces.FloatRange`, ``IntRange``, ``Choice``). By
default the space is the core's training dimensions plus what each chosen component declares
in ``Component.space``; ``--space FILE`` replaces it. Settings the user fixes (``--set``, a
suite's own settings) leave the space: a method whose suite entry sets ``w_adv = 0`` is tuned
as that method. Nothing here imports Optuna.

Every dimension is checked before a trial runs: its setting must be one of the chosen
method's or of ``[train]`` / ``[augment]`` (a study never changes the data, the split or the
seed, which would change what is compared), its range must be proper, and its ends and
choices must be values the setting accepts, as the config resolver itself decides.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdsf_bench import config as cfg
from cdsf_bench.errors import ConfigError, InputError
from cdsf_bench.interfaces import Choice, FloatRange, IntRange, SearchParam
from cdsf_bench.registry import Registry
from cdsf_bench.settings import RunConfig, to_toml

#: sections of the core whose settings a study may search (besides the chosen components')
TUNABLE_SECTIONS = ("train", "augment")
#: settings of those sections that a study sets itself
HELD = {"train.select_on": "the study's --metric sets it"}
#: the fields of a dimension in a space file: a range (low, high, log) or a list of values
RANGE_FIELDS = {"low", "high", "log"}
CHOICE_FIELDS = {"values"}

#: resolves the study's base configuration with extra ``KEY=VALUE`` assignments
Resolver = Callable[[tuple[str, ...]], RunConfig]


@dataclass(frozen=True)
class Dimension:
    """One searched setting: its dotted key, how it is searched, and who declared it."""

    key: str
    param: SearchParam
    origin: str  # "the core", "coupling 'joint' (plugin cdsf)", "space file PATH"

    def canonical(self) -> dict[str, Any]:
        """A JSON form (study.json, the study's identity)."""
        match self.param:
            case Choice(values):
                return {"key": self.key, "values": [plain(v) for v in values]}
            case FloatRange(low, high, log) | IntRange(low, high, log):
                kind = "int" if isinstance(self.param, IntRange) else "float"
                return {"key": self.key, "kind": kind, "low": low, "high": high, "log": log}
        raise TypeError(f"not a search parameter: {self.param!r}")

    def describe(self) -> str:
        """One line for the console and the docs: ``key in [low, high] (log)`` or ``key in {a, b}``."""
        match self.param:
            case Choice(values):
                return f"{self.key} in {{{', '.join(str(label(v)) for v in values)}}}"
            case FloatRange(low, high, log) | IntRange(low, high, log):
                return f"{self.key} in [{low:g}, {high:g}]{' (log)' if log else ''}"
        raise TypeError(f"not a search parameter: {self.param!r}")


def plain(value: Any) -> Any:
    """A setting's value as TOML and JSON hold it (tuples as lists)."""
    return [plain(v) for v in value] if isinstance(value, list | tuple) else value


def label(value: Any) -> str | int | float | bool:
    """What Optuna records for a choice: the value itself, or its JSON text for a list."""
    return json.dumps(plain(value)) if isinstance(value, list | tuple) else value


def training_space(config: RunConfig) -> dict[str, SearchParam]:
    """The core's dimensions, searched for every method alike.

    The learning rate spans [1e-4, 1e-2] on a log scale, the default 1e-3 in its middle.
    Early stopping's patience runs from a quarter of the epochs to all of them (no early
    stop), so a trial may stop early or train to the end. The epochs stay fixed: they are
    one trial's budget, the same for every method. A run of one epoch has no patience to tune.
    """
    epochs = config.train.epochs
    space: dict[str, SearchParam] = {"learning_rate": FloatRange(1e-4, 1e-2, log=True)}
    if epochs >= 2:
        space["patience"] = IntRange(max(1, epochs // 4), epochs)
    return space


def declared_space(config: RunConfig, registry: Registry) -> list[Dimension]:
    """The core's training dimensions and every chosen component's own declared space.

    A plugin that declares a dimension for a parameter its factory does not take is broken:
    refused, naming the plugin, the parameter and the settings it does have.
    """
    dims = [Dimension(f"train.{key}", param, "the core") for key, param in training_space(config).items()]
    for section, kind in cfg.PLUGIN_SECTIONS.items():
        name = config.plugin(section)[0]
        if section == "synth" and name == "none":
            continue
        component = registry.get(kind, name)  # type: ignore[arg-type]
        origin = f"{kind} '{name}' (plugin {component.plugin or 'unregistered'})"
        settings = component.parameters()
        for key, param in component.space.items():
            if key not in settings:
                raise InputError(
                    f"Search space of {origin}: '{key}' is not one of its settings "
                    f"({', '.join(sorted(settings)) or 'it has none'}); the plugin is broken."
                )
            dims.append(Dimension(f"{section}.{name}.{key}", param, origin))
    return dims


def read_space_file(path: Path, config: RunConfig) -> list[Dimension]:
    """The dimensions of a space file: one table per setting, ``low``/``high``/``log`` or ``values``.

    Either form works: ``"coupling.joint.w_voxel" = { low = 1.0, high = 100.0, log = true }``
    or a ``[coupling.joint.w_voxel]`` table. A range is an ``IntRange`` when the setting is an
    integer, else a ``FloatRange``.
    """
    raw = cfg.read_toml(Path(path))
    origin = f"space file {path}"
    dims = []
    for key, leaf in _leaves(raw, "", origin):
        dims.append(Dimension(key, _param_from_table(key, leaf, config, origin), origin))
    return dims


def _leaves(node: dict, prefix: str, origin: str) -> Iterable[tuple[str, dict]]:
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if not isinstance(value, dict):
            raise InputError(
                f"{origin}: '{dotted}' must be a table, like {{ low = 1e-4, high = 1e-2, log = true }} "
                'or { values = ["a", "b"] }.'
            )
        if set(value) & (RANGE_FIELDS | CHOICE_FIELDS):
            yield dotted, value
        else:
            yield from _leaves(value, dotted + ".", origin)


def _param_from_table(key: str, table: dict, config: RunConfig, origin: str) -> SearchParam:
    where = f"{origin}: '{key}'"
    unknown = sorted(set(table) - RANGE_FIELDS - CHOICE_FIELDS)
    if unknown:
        raise InputError(
            f"{where} has unknown field(s) {', '.join(unknown)}; give low, high (and log) or values."
        )
    if "values" in table:
        if set(table) & RANGE_FIELDS:
            raise InputError(f"{where} gives both values and a range; give one.")
        values = table["values"]
        if not isinstance(values, list):
            raise InputError(f"{where}: values must be a list, got {values!r}.")
        return Choice(tuple(values))
    if not {"low", "high"} <= set(table):
        raise InputError(f"{where}: a range needs both low and high.")
    low, high, log = table["low"], table["high"], table.get("log", False)
    if not isinstance(log, bool):
        raise InputError(f"{where}: log must be true or false, got {log!r}.")
    default = config.setting(key)
    if default is None:  # not a setting: check_space says so, with the settings that are
        return FloatRange(low, high, log)
    if isinstance(default, bool) or not isinstance(default, int | float):
        raise InputError(
            f"{where}: a range needs a numeric setting; this one is {type(default).__name__}. "
            "Search it with values = [...]."
        )
    if isinstance(default, int):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
            raise InputError(
                f"{where} is an integer setting: low and high must be integers, got {low!r}, {high!r}."
            )
        return IntRange(low, high, log)
    return FloatRange(low, high, log)


def tunable_keys(config: RunConfig) -> list[str]:
    """Every setting a study may search for this configuration's method."""
    keys = [
        f"{section}.{name}"
        for section in TUNABLE_SECTIONS
        for name in config.raw[section]
        if f"{section}.{name}" not in HELD
    ]
    for section in cfg.PLUGIN_SECTIONS:
        for component, settings in config.raw[section].items():
            keys += [f"{section}.{component}.{name}" for name in settings]
    return keys


def check_space(dims: list[Dimension], config: RunConfig, resolve: Resolver) -> None:
    """Refuse a dimension whose setting, range or values cannot be searched; name it and why."""
    tunable = tunable_keys(config)
    seen: set[str] = set()
    for dim in dims:
        where = f"Search space ({dim.origin}): '{dim.key}'"
        if dim.key in seen:
            raise InputError(f"{where} is given twice.")
        seen.add(dim.key)
        if dim.key in HELD:
            raise InputError(f"{where} cannot be searched: {HELD[dim.key]}.")
        if dim.key not in tunable:
            section = dim.key.split(".")[0]
            if section not in (*TUNABLE_SECTIONS, *cfg.PLUGIN_SECTIONS):
                reason = (
                    f"[{section}] is not searched: a study changes training and the method's own "
                    "settings only, never the data, the split or the seed"
                )
            else:
                reason = "it is not a setting of this method"
            raise InputError(f"{where}: {reason}. Settings that can be searched: {', '.join(tunable)}.")
        _check_param(dim, where)
        for value in _probe_values(dim.param):
            try:
                resolve((assignment(dim.key, value),))
            except ConfigError as error:
                raise InputError(f"{where}: the value {label(value)!r} is refused: {error}") from None


def _check_param(dim: Dimension, where: str) -> None:
    match dim.param:
        case Choice(values):
            labels = [label(v) for v in values]
            if len(values) < 2:
                raise InputError(
                    f"{where}: a choice needs at least two values (one value is a fixed setting: use --set)."
                )
            if len(set(map(str, labels))) != len(labels):
                raise InputError(f"{where}: the values {labels} repeat one another.")
        case FloatRange(low, high, log) | IntRange(low, high, log):
            if not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in (low, high)
            ):
                raise InputError(f"{where}: low and high must be finite numbers, got {low!r}, {high!r}.")
            if not low < high:
                raise InputError(f"{where}: low ({low}) must be below high ({high}).")
            if log and low <= 0:
                raise InputError(f"{where}: a log-scale range needs low > 0, got {low}.")
        case _:
            raise InputError(f"{where}: {dim.param!r} is not a FloatRange, IntRange or Choice.")


def _probe_values(param: SearchParam) -> tuple[Any, ...]:
    """The values whose acceptance by the setting decides the whole dimension's."""
    if isinstance(param, Choice):
        return param.values
    return (param.low, param.high)


def assignment(key: str, value: Any) -> str:
    """``KEY=VALUE`` as ``--set`` takes it (the value as TOML text)."""
    return f"{key}={to_toml({'v': plain(value)}).strip().removeprefix('v = ')}"


def fixed_keys(assignments: Iterable[str], flags: Mapping[str, Any] | None = None) -> set[str]:
    """The settings the user set explicitly (``--set``, flags): a study holds them fixed."""
    keys = {".".join(cfg.parse_assignment(text)[0]) for text in assignments}
    return keys | {key for key, value in (flags or {}).items() if value is not None}


def study_space(
    config: RunConfig, registry: Registry, resolve: Resolver, fixed: set[str], space_file: Path | None = None
) -> list[Dimension]:
    """The checked space of a study: the declared one less the fixed settings, or a file's.

    A space file says exactly what to search, so a setting it names that is also fixed is a
    contradiction, refused; an empty space (nothing declared, or all of it fixed) is refused.
    """
    if space_file is not None:
        dims = read_space_file(space_file, config)
        clash = sorted(dim.key for dim in dims if dim.key in fixed)
        if clash:
            raise InputError(
                f"space file {space_file} searches {', '.join(clash)}, which --set (or the suite) fixes; "
                "drop one of the two."
            )
        if not dims:
            raise InputError(f"The search space is empty: space file {space_file} names no setting.")
    else:
        declared = declared_space(config, registry)
        dims = [dim for dim in declared if dim.key not in fixed]
        if not dims:
            held = ", ".join(dim.key for dim in declared) or "none"
            raise InputError(
                f"The search space is empty: every setting it searches is fixed by --set or the suite "
                f"({held}). Fix fewer settings, or give a --space file."
            )
    check_space(dims, config, resolve)
    return dims


def default_point(dims: list[Dimension], config: RunConfig) -> dict[str, Any]:
    """Each dimension's value in ``config`` where the space holds it (the defaults' trial)."""
    point = {}
    for dim in dims:
        value = config.setting(dim.key)
        match dim.param:
            case Choice(values):
                if label(value) in [label(v) for v in values]:
                    point[dim.key] = value
            case FloatRange(low, high) | IntRange(low, high):
                if isinstance(value, int | float) and low <= value <= high:
                    point[dim.key] = value
    return point
