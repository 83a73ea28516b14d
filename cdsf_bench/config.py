"""Run configuration: defaults < preset < TOML file < ``--set`` < explicit flags.

A configuration is plain data (nested dicts of TOML values); nothing in it is ever
evaluated as code. :func:`resolve` merges the layers, checks every key and type against the
defaults (derived from the settings types of :mod:`cdsf_bench.settings`) and the chosen
plugins' parameters, and returns the :class:`~cdsf_bench.settings.RunConfig` that every
command then passes on. Its ``raw`` data, with every plugin setting filled in, is written to
the run folder as ``config.toml``, so ``cdsf-bench run --config RUN/config.toml`` repeats
the run.
"""

from __future__ import annotations

import copy
import re
import tomllib
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

from cdsf_bench.cost import require_codecarbon
from cdsf_bench.data.conventions import TASKS
from cdsf_bench.data.grid import reference_grid
from cdsf_bench.data.labels import SYNTHESIS_SUBJECTS
from cdsf_bench.errors import ConfigError, InputError
from cdsf_bench.interfaces import DataSettings, Method
from cdsf_bench.metric_conventions import check_ms_ssim_grid, require_monai
from cdsf_bench.ranges import MAX_SEED, Range, check_section, check_value
from cdsf_bench.registry import Registry
from cdsf_bench.settings import (
    PATIENCE_FROM,
    TRACK,
    AugmentSettings,
    EvaluateSettings,
    PrecisionSettings,
    RunConfig,
    SeedSettings,
    SplitSettings,
    TrainSettings,
    check_against,
    data_defaults,
    section_defaults,
    type_ok,
)
from cdsf_bench.textfiles import read_text

PRESETS = ("quick", "paper", "tiny", "ci")
PLUGIN_SECTIONS = {"synth": "synthesiser", "diag": "diagnoser", "coupling": "coupling"}

DEFAULTS: dict[str, Any] = {
    "preset": "quick",
    "seed": 0,
    "task": "ad_cn",
    "device": "auto",
    # filled from the plugins' cdsf_bench_defaults (registry.method_defaults) when resolving
    "method": {f.name: "" for f in fields(Method)},
    # data.phantom is a table of any keys here: the phantom source checks it (sources.phantom_options)
    "data": data_defaults(),
    "split": section_defaults(SplitSettings),
    "train": section_defaults(TrainSettings),
    "augment": section_defaults(AugmentSettings),
    "precision": section_defaults(PrecisionSettings),
    "evaluate": section_defaults(EvaluateSettings),
    "seeds": section_defaults(SeedSettings),
    "synth": {},
    "diag": {},
    "coupling": {},
}
SELECTION_METRICS = ("auc", "bacc", "mcc", "ssim", "psnr", "mae")
#: the sections whose settings types declare their values' ranges
SECTION_TYPES: dict[str, type] = {
    "data": DataSettings,
    "split": SplitSettings,
    "train": TrainSettings,
    "augment": AugmentSettings,
    "evaluate": EvaluateSettings,
    "seeds": SeedSettings,
}
SEED_RANGE = Range(0, MAX_SEED)
DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
#: how deep a configuration's tables may nest (the deepest setting, data.phantom.*, is 3)
MAX_DEPTH = 8


def _merge(base: dict, overlay: dict, where: str = "") -> dict:
    """Recursively overlay ``overlay`` on ``base``; plugin sections accept any keys here."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        path = f"{where}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, path + ".")
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_toml(path: Path, what: str = "Config file") -> dict:
    """Read a TOML file (a regular UTF-8 file of at most ``textfiles.CONFIG_LIMIT`` bytes, its
    tables at most :data:`MAX_DEPTH` deep), turning syntax errors into a message with the
    file and line."""
    try:
        text = read_text(Path(path), what)
    except InputError as error:
        raise ConfigError(str(error)) from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{what} {path} is not valid TOML: {error}. Fix the syntax there.") from None
    _refuse_deep(table, f"{what} {path}")
    return table


def _refuse_deep(table: dict, where: str) -> None:
    """Tables nested deeper than :data:`MAX_DEPTH` name no setting (and would exhaust the
    merge's recursion): refused by name, walked without recursion."""
    stack: list[tuple[dict, int, str]] = [(table, 1, "")]
    while stack:
        node, depth, key = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(
                f"{where}: '{key.lstrip('.')[:80]}' nests tables {depth} deep; settings are at most "
                f"{MAX_DEPTH} deep (e.g. data.phantom.scenario)."
            )
        stack += [
            (value, depth + 1, f"{key}.{name}") for name, value in node.items() if isinstance(value, dict)
        ]


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset '{name}'; choose one of {', '.join(PRESETS)}.")
    text = resources.files("cdsf_bench.presets").joinpath(f"{name}.toml").read_text()
    return tomllib.loads(text)


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=VALUE`` where VALUE is a TOML value; a bare word is taken as a string."""
    if "=" not in text:
        raise ConfigError(f"--set '{text}' is not KEY=VALUE (for example --set train.epochs=10).")
    key, raw = text.split("=", 1)
    keys = [k for k in key.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"--set '{text}' has an empty key.")
    if len(keys) > MAX_DEPTH:
        raise ConfigError(
            f"--set '{text[:80]}...' names a key {len(keys)} levels deep; "
            f"settings are at most {MAX_DEPTH} deep."
        )
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return keys, value


def _assign(config: dict, keys: list[str], value: Any) -> None:
    node = config
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {'.'.join(keys)}: '{k}' is a value, not a section.")
    node[keys[-1]] = value


def resolve(
    registry: Registry,
    config_file: Path | None = None,
    assignments: tuple[str, ...] = (),
    flags: dict[str, Any] | None = None,
    base: RunConfig | None = None,
) -> RunConfig:
    """Resolve the full run configuration and validate every key and type against defaults.

    ``base``, a configuration already resolved (a run's), takes the config file's place:
    ``cdsf-bench predict`` changes a trained run's data settings through it.
    """
    layers: list[dict] = []
    if config_file is not None:
        # a config file's relative data path is read from the file's folder first
        layers.append(_absolute_data_spec(read_toml(config_file), Path(config_file).parent))
    if base is not None:
        layers.append(copy.deepcopy(base.raw))
    set_layer: dict = {}
    for text in assignments:
        keys, value = parse_assignment(text)
        _assign(set_layer, keys, value)
    layers.append(_absolute_data_spec(set_layer))
    flag_layer: dict = {}
    for dotted, value in (flags or {}).items():
        if value is not None:
            _assign(flag_layer, dotted.split("."), value)
    layers.append(_absolute_data_spec(flag_layer))

    chosen_preset = DEFAULTS["preset"]
    for layer in layers:
        chosen_preset = layer.get("preset", chosen_preset)
    merged = _merge(default_config(registry), preset(str(chosen_preset)))
    for layer in layers:
        merged = _merge(merged, layer)
    method = merged.get("method")
    coupling_given = any("coupling" in layer.get("method", {}) for layer in layers)
    if isinstance(method, dict) and method.get("synth") == "none" and not coupling_given:
        method["coupling"] = registry.method_defaults().mri_only_coupling

    resolved: dict[str, Any] = {}
    for key, default in DEFAULTS.items():
        if key in PLUGIN_SECTIONS:
            continue
        value = merged.get(key, default)
        if isinstance(default, dict) and not isinstance(value, dict):
            raise ConfigError(
                f"Setting '{key}' is a section, not a value (got {value!r}); set its keys instead, "
                f"e.g. --set {key}.{next(iter(default))}=... (known keys: {', '.join(sorted(default))})."
            )
        resolved[key] = check_against(default, value, key) if isinstance(default, dict) else value
        if not isinstance(default, dict) and not type_ok(default, value):
            raise ConfigError(f"Setting '{key}' must be {type(default).__name__}, got {value!r}.")
    unknown = set(merged) - set(DEFAULTS) - {TRACK}
    if unknown:
        raise ConfigError(
            f"Unknown top-level setting(s): {', '.join(sorted(unknown))}. "
            f"Known: {', '.join(sorted(DEFAULTS))}."
        )
    _validate_values(resolved)

    for section, kind in PLUGIN_SECTIONS.items():
        name = resolved["method"][section]
        given = merged.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(f"[{section}] must be a table of plugin settings.")
        if section == "synth" and name == "none":
            resolved[section] = {}
            continue
        component = registry.get(kind, name)  # type: ignore[arg-type]
        own = given.get(name, {})
        if not isinstance(own, dict):
            raise ConfigError(f"[{section}.{name}] must be a table of settings.")
        resolved[section] = {name: check_against(component.parameters(), own, f"{section}.{name}")}
    tracked = resolve_trackers(registry, merged.get(TRACK, {}))
    if tracked:
        resolved[TRACK] = tracked
    return RunConfig(resolved)


def resolve_trackers(registry: Registry, given: Any, where: str = TRACK) -> dict[str, dict[str, Any]]:
    """``[track]``: each named tracker's settings checked against its factory's defaults.

    The names are the trackers selected (``--track NAME`` adds an empty table; setting
    ``track.NAME.KEY`` selects NAME too); an unknown name fails with the known ones.
    """
    if not isinstance(given, dict):
        raise ConfigError(
            f"[{where}] must be a table of trackers, one [{where}.NAME] table of settings each "
            f"(got {given!r}); select one with --track NAME."
        )
    resolved: dict[str, dict[str, Any]] = {}
    for name, own in given.items():
        component = registry.get("tracker", name)
        if not isinstance(own, dict):
            raise ConfigError(f"[{where}.{name}] must be a table of settings, got {own!r}.")
        resolved[name] = check_against(component.parameters(), own, f"{where}.{name}")
    return resolved


def _absolute_data_spec(layer: dict, *folders: Path) -> dict:
    """``layer`` with ``data.spec``'s paths absolute (read from ``folders``, then the working
    directory), so the config.toml a run writes repeats it from any directory."""
    data = layer.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("spec"), str):
        return layer
    from cdsf_bench.data.sources import absolute_spec

    return {**layer, "data": {**data, "spec": absolute_spec(data["spec"], *folders, Path.cwd())}}


def default_config(registry: Registry) -> dict[str, Any]:
    """The defaults, with the method the plugins propose."""
    method = registry.method_defaults().method
    return _merge(
        DEFAULTS, {"method": {"synth": method.synth, "diag": method.diag, "coupling": method.coupling}}
    )


def _validate_values(config: dict) -> None:
    """Every value against its declared range (``cdsf_bench.ranges``), then the rules that tie
    settings together; the first failure is raised, naming the setting."""
    check_value("seed", config["seed"], SEED_RANGE)
    for section, settings in SECTION_TYPES.items():
        check_section(settings, config[section], section)
    if config["task"] not in TASKS:
        raise ConfigError(f"Unknown task '{config['task']}'; choose one of {', '.join(TASKS)}.")
    if not DEVICE.fullmatch(str(config["device"])):
        raise ConfigError(
            f"Unknown device '{config['device']}'; choose auto, cpu, cuda or cuda:N (N = 0, 1, ...)."
        )
    train = config["train"]
    if train["select_on"] not in SELECTION_METRICS:
        raise ConfigError(
            f"train.select_on '{train['select_on']}' is not one of {', '.join(SELECTION_METRICS)}."
        )
    if train["patience_from"] not in PATIENCE_FROM:
        raise ConfigError(
            f"train.patience_from '{train['patience_from']}' is not one of {', '.join(PATIENCE_FROM)}."
        )
    split = config["split"]
    if not split["val"] + split["test"] < 1:
        raise ConfigError("split.val and split.test must be in (0, 1) and sum to less than 1.")
    if split["folds"] == 1:
        raise ConfigError("split.folds must be 0 (a single hold-out split) or at least 2.")
    if split["folds"] and not 0 <= split["fold"] < split["folds"]:
        raise ConfigError(f"split.fold must be in 0..{split['folds'] - 1}, got {split['fold']}.")
    data = config["data"]
    for key, role in (("phantom_test_subjects", "test"), ("phantom_val_subjects", "validation")):
        if config["evaluate"][key] and data["spec"].strip().lower() != "phantom":
            raise ConfigError(
                f"evaluate.{key} draws a fresh {role} cohort from the phantom's generative model; "
                f"the data here are {data['spec']!r}, not the phantom. Set it to 0."
            )
    evaluate = config["evaluate"]
    if evaluate["ms_ssim"]:  # the extra, and a grid its kernel and scales fit
        require_monai()
        check_ms_ssim_grid(reference_grid(data["resolution_mm"]).shape)
    if evaluate["carbon"]:
        require_codecarbon(evaluate["carbon_country"])
    if data["synthesis_subjects"] not in SYNTHESIS_SUBJECTS:
        raise ConfigError(
            f"data.synthesis_subjects must be one of {', '.join(SYNTHESIS_SUBJECTS)}, "
            f"got {data['synthesis_subjects']!r}."
        )
