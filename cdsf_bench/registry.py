"""The plugin registry: loads plugins by entry point and finds components by name.

Names are the user interface (as in timm's ``create_model``): an unknown name fails with
the known names and the closest match. A plugin that fails to import is reported by name
and does not stop the others. ``CDSF_BENCH_PLUGINS`` (comma-separated entry-point names)
restricts which plugins load; unset, every installed plugin loads.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.metadata
import os
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

import pluggy

from cdsf_bench import hookspecs
from cdsf_bench.errors import InputError
from cdsf_bench.interfaces import Component, Coupling, MethodDefaults

Kind = Literal["synthesiser", "diagnoser", "coupling", "data_source", "tracker"]
KINDS: dict[Kind, str] = {
    "synthesiser": "cdsf_bench_synthesisers",
    "diagnoser": "cdsf_bench_diagnosers",
    "coupling": "cdsf_bench_couplings",
    "data_source": "cdsf_bench_data_sources",
    "tracker": "cdsf_bench_trackers",
}
ALLOWLIST_ENV = "CDSF_BENCH_PLUGINS"


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
            registry.failures[ep.name] = f"{type(error).__name__}: {error}"
            warnings.warn(f"cdsf-bench plugin '{ep.name}' failed to load: {error}", stacklevel=2)
            continue
        dist = ep.dist
        origins[id(module)] = (ep.name, dist.name if dist else "", dist.version if dist else "")
    for plugin in extra_plugins or []:
        manager.register(plugin)
        origins[id(plugin)] = (getattr(plugin, "__name__", type(plugin).__name__), "", "")
    for kind, hook_name in KINDS.items():
        registry.components[kind] = {}
        hook = getattr(manager.hook, hook_name)
        for impl in hook.get_hookimpls():
            plugin_name, dist, version = origins.get(id(impl.plugin), (impl.plugin_name, "", ""))
            try:
                provided = list(impl.function() or [])
            except Exception as error:  # reported like an import failure; the others go on
                registry.failures[plugin_name] = f"{hook_name}: {type(error).__name__}: {error}"
                warnings.warn(
                    f"cdsf-bench plugin '{plugin_name}' failed in {hook_name}: {error}", stacklevel=2
                )
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
                registry.components[kind][comp.name] = dataclasses.replace(
                    comp, plugin=plugin_name, distribution=dist, version=version
                )
    registry.defaults = manager.hook.cdsf_bench_defaults()
    return registry


@lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The registry of installed plugins, loaded once per process."""
    return build_registry()
