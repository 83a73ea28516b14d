"""The plugin registry: loads plugins by entry point and finds components by name.

Names are the user interface (as in timm's ``create_model``): an unknown name fails with
the known names and the closest match. A broken plugin is reported by name (in
``Registry.failures`` and as a warning) and does not stop the others: one that fails to
import, whose hook raises, that implements a hook no specification names (a misspelt
``cdsf_bench_synthesiser``: pluggy's ``check_pending``), or whose component declares a bad
flag. ``CDSF_BENCH_PLUGINS`` (comma-separated entry-point names) restricts which plugins
load; unset, every installed plugin loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import os
import re
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import pluggy

from cdsf_bench import hookspecs
from cdsf_bench.errors import InputError
from cdsf_bench.interfaces import Component, Coupling, Flag, MethodDefaults

Kind = Literal["synthesiser", "diagnoser", "coupling", "data_source", "tracker"]
KINDS: dict[Kind, str] = {
    "synthesiser": "cdsf_bench_synthesisers",
    "diagnoser": "cdsf_bench_diagnosers",
    "coupling": "cdsf_bench_couplings",
    "data_source": "cdsf_bench_data_sources",
    "tracker": "cdsf_bench_trackers",
}
ALLOWLIST_ENV = "CDSF_BENCH_PLUGINS"
#: what a coupling's flag may be called (``--NAME``)
FLAG_NAME = re.compile(r"[a-z][a-z0-9-]*")


@dataclass
class Registry:
    """Every loaded component by kind and name, and the plugins that failed to load."""

    components: dict[Kind, dict[str, Component]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # plugin name -> error
    #: the plugins' answer to ``cdsf_bench_defaults``; None where no plugin gives one
    defaults: MethodDefaults | None = None

    def get(self, kind: Kind, name: str) -> Component:
        known = self.components.get(kind, {})
        if name in known:
            return known[name]
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        label = kind.replace("_", " ")
        raise InputError(
            f"Unknown {label} '{name}'.{hint} Known {label}s: {', '.join(sorted(known)) or 'none'}. "
            "Run 'cdsf-bench plugins' to see every installed plugin."
        )

    def coupling_class(self, name: str) -> type[Coupling]:
        """The coupling registered as ``name``; a component that is no Coupling subclass is refused."""
        factory = self.get("coupling", name).factory
        if not (isinstance(factory, type) and issubclass(factory, Coupling)):
            raise InputError(
                f"Coupling '{name}' is not a subclass of cdsf_bench.Coupling; its plugin is broken."
            )
        return factory

    def method_defaults(self) -> MethodDefaults:
        """The plugins' default method; without one the user must name every part of a method."""
        if self.defaults is None:
            raise InputError(
                "No installed plugin proposes a default method; name one with --synth, --diag and "
                "--coupling (see 'cdsf-bench plugins')."
            )
        return self.defaults

    def names(self, kind: Kind) -> list[str]:
        return sorted(self.components.get(kind, {}))

    def all(self) -> list[tuple[Kind, Component]]:
        return [(kind, c) for kind, comps in self.components.items() for c in comps.values()]

    def coupling_flags(self) -> list[tuple[Flag, Component]]:
        """Every coupling's command-line flag with its coupling, in the plugins' order."""
        return [(c.flag, c) for c in self.components.get("coupling", {}).values() if c.flag is not None]


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    found = importlib.metadata.entry_points(group=hookspecs.PROJECT)
    allowed = os.environ.get(ALLOWLIST_ENV, "").strip()
    if not allowed:
        return list(found)
    names = {n.strip() for n in allowed.split(",") if n.strip()}
    return [ep for ep in found if ep.name in names]


def build_registry(extra_plugins: list[object] | None = None) -> Registry:
    """Load every allowed entry-point plugin (and ``extra_plugins``) and collect their components."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    registry = Registry()
    origins: dict[int, tuple[str, str, str]] = {}
    for ep in _entry_points():
        try:
            module = ep.load()
            manager.register(module, name=ep.name)
        except Exception as error:  # a broken plugin must not stop the others
            _fail(registry, ep.name, f"{type(error).__name__}: {error}", "failed to load")
            continue
        dist = ep.dist
        origins[id(module)] = (ep.name, dist.name if dist else "", dist.version if dist else "")
    for plugin in extra_plugins or []:
        manager.register(plugin)
        origins[id(plugin)] = (getattr(plugin, "__name__", type(plugin).__name__), "", "")
    _refuse_unknown_hooks(manager, registry, origins)
    flags: dict[str, Component] = {}
    for kind, hook_name in KINDS.items():
        registry.components[kind] = {}
        hook = getattr(manager.hook, hook_name)
        for impl in hook.get_hookimpls():
            plugin_name, dist, version = origins.get(id(impl.plugin), (impl.plugin_name, "", ""))
            try:
                provided = list(impl.function() or [])
            except Exception as error:  # reported like an import failure; the others go on
                _fail(registry, plugin_name, f"{hook_name}: {type(error).__name__}: {error}", "failed in")
                continue
            for comp in provided:
                if comp.name in registry.components[kind]:
                    other = registry.components[kind][comp.name]
                    warnings.warn(
                        f"{kind} '{comp.name}' from plugin '{plugin_name}' is shadowed by "
                        f"the one from '{other.plugin}'",
                        stacklevel=2,
                    )
                    continue
                comp = dataclasses.replace(comp, plugin=plugin_name, distribution=dist, version=version)
                if comp.flag is not None:
                    problem = _flag_problem(kind, comp, flags)
                    if problem:
                        _fail(registry, plugin_name, problem, "declares a bad flag:")
                        continue
                    flags[comp.flag.name] = comp
                registry.components[kind][comp.name] = comp
    registry.defaults = manager.hook.cdsf_bench_defaults()
    return registry


def _fail(registry: Registry, plugin: str, error: str, what: str) -> None:
    """Record a broken plugin and warn; the registry goes on with the others."""
    registry.failures[plugin] = error
    warnings.warn(f"cdsf-bench plugin '{plugin}' {what} {error}", stacklevel=3)


def _refuse_unknown_hooks(
    manager: pluggy.PluginManager, registry: Registry, origins: dict[int, tuple[str, str, str]]
) -> None:
    """Unregister, as broken, every plugin implementing a hook that no specification names.

    Pluggy accepts such an implementation silently (it could be a later specification's);
    here it is a misspelling that would drop the plugin's components without a word.
    """
    specified = {name for name in vars(hookspecs) if name.startswith(f"{hookspecs.PROJECT}_")}
    while True:
        try:
            manager.check_pending()
            return
        except pluggy.PluginValidationError as error:
            plugin = error.plugin
            name = origins.get(id(plugin), (manager.get_name(plugin) or repr(plugin), "", ""))[0]
            unknown = sorted(
                caller.name for caller in manager.get_hookcallers(plugin) or [] if not caller.has_spec()
            )
            hints = []
            for hook in unknown:
                close = difflib.get_close_matches(hook, sorted(specified), n=1)
                hints.append(f"'{hook}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
            _fail(
                registry,
                name,
                f"implements {', '.join(hints)}, which no hook specification names "
                f"(known hooks: {', '.join(sorted(specified))})",
                "is broken:",
            )
            manager.unregister(plugin)


def _flag_problem(kind: Kind, component: Component, taken: dict[str, Component]) -> str:
    """Why ``component``'s flag cannot be offered (empty when it can)."""
    assert component.flag is not None
    flag = component.flag.name
    if kind != "coupling":
        return f"{kind} '{component.name}' declares flag --{flag}; only couplings take flags"
    if not FLAG_NAME.fullmatch(flag):
        return (
            f"coupling '{component.name}' declares flag '{flag}': a flag is lowercase letters, "
            "digits and dashes, starting with a letter"
        )
    if flag in taken:
        return f"coupling '{component.name}' declares flag --{flag}, taken by coupling '{taken[flag].name}'"
    return ""


@lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry of installed plugins, loaded once per process."""
    return build_registry()
