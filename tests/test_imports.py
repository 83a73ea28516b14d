"""The project's own import check: no circle among its modules, and no import up a layer.

Every import of a project module is an edge, wherever it is written: at the top of a module,
inside a function (an import deferred for speed is still a dependency) or under
``TYPE_CHECKING`` (an annotation that names a module depends on it too). Imports of other
packages are not edges, so deferring an optional heavy library (Optuna, matplotlib,
nilearn) is a matter of speed, not of structure.

The layers run from the plugin contract at the bottom to the command line at the top; a
module may import its own layer and the layers below it, never one above. The built-in
plugins (``cdsf_plugins``) are loaded like a third party's: they may import the core's
public API only, and the core never imports them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"cdsf_bench": ROOT / "cdsf_bench", "cdsf_plugins": ROOT / "plugins" / "cdsf_plugins"}

#: the core's layers, bottom first: (name, modules, packages); a module is in the layer that
#: names it, a package's submodules in the layer that names the package
LAYERS: tuple[tuple[str, frozenset[str], frozenset[str]], ...] = (
    (
        "contract and utilities",
        frozenset(
            {
                "cdsf_bench",
                "cdsf_bench.errors",
                "cdsf_bench.interfaces",
                "cdsf_bench.hookspecs",
                "cdsf_bench.rows",
                "cdsf_bench.results",
                "cdsf_bench.figures",
                "cdsf_bench.progress",
                "cdsf_bench.host",
                "cdsf_bench.distributed",
                "cdsf_bench.compiling",
                "cdsf_bench.settings",
                "cdsf_bench.safe_names",
                "cdsf_bench.staging",
                "cdsf_bench.locking",
                "cdsf_bench.textfiles",
                "cdsf_bench.ranges",
                "cdsf_bench.metric_conventions",
                "cdsf_bench.cost",
            }
        ),
        frozenset(),
    ),
    ("data", frozenset(), frozenset({"cdsf_bench.data"})),
    (
        "configuration and the run folder",
        frozenset(
            {"cdsf_bench.registry", "cdsf_bench.config", "cdsf_bench.run_folder", "cdsf_bench.tracking"}
        ),
        frozenset({"cdsf_bench.presets"}),
    ),
    (
        "engine",
        frozenset(
            {
                "cdsf_bench.engine",
                "cdsf_bench.recipe",
                "cdsf_bench.batchnorm",
                "cdsf_bench.checkpoints",
                "cdsf_bench.assemble",
                "cdsf_bench.preflight",
                "cdsf_bench.metrics",
            }
        ),
        frozenset(),
    ),
    (
        "workflows",
        frozenset(
            {"cdsf_bench.protocol", "cdsf_bench.run", "cdsf_bench.options", "cdsf_bench.splits_export"}
        ),
        frozenset(
            {
                "cdsf_bench.tune",
                "cdsf_bench.bench",
                "cdsf_bench.predict",
                "cdsf_bench.perf",
                "cdsf_bench.testing",
                "cdsf_bench.interpret",
            }
        ),
    ),
    (
        "command line",
        frozenset({"cdsf_bench.cli", "cdsf_bench.__main__"}),
        frozenset({"cdsf_bench.commands"}),
    ),
)
#: what a plugin may import of the core: the package's own exports, the contract, the hooks,
#: the errors a plugin raises, the tracker protocol and the MNI atlas (a diagnoser reads regions)
PUBLIC_API = frozenset(
    {
        "cdsf_bench",
        "cdsf_bench.interfaces",
        "cdsf_bench.hookspecs",
        "cdsf_bench.errors",
        "cdsf_bench.tracking",
        "cdsf_bench.data.regions",
    }
)

Graph = dict[str, set[str]]


def modules_of(packages: dict[str, Path]) -> dict[str, tuple[Path, bool]]:
    """Every module of the packages by dotted name: its file and whether it is a package."""
    found: dict[str, tuple[Path, bool]] = {}
    for name, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [name, *path.relative_to(folder).with_suffix("").parts]
            package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


def import_graph(packages: dict[str, Path]) -> Graph:
    """Module -> the project modules it imports, anywhere in its file."""
    modules = modules_of(packages)

    def known(name: str) -> str | None:
        """The module ``name`` names, or the nearest enclosing one (``a.b.attribute`` is ``a.b``)."""
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: Graph = {}
    for module, (path, package) in modules.items():
        here = module if package else module.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {known(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                for alias in node.names:  # ``from a import b``: the module a.b, else a
                    targets.add(
                        known(f"{base}.{alias.name}") if f"{base}.{alias.name}" in modules else known(base)
                    )
        graph[module] = {target for target in targets if target is not None and target != module}
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """One circle per edge that closes one, found by depth-first search (each as a path)."""
    found: list[list[str]] = []
    state: dict[str, str] = {}  # "open" while on the current path, "done" after
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def layer_of(module: str) -> int | None:
    for index, (_, modules, packages) in enumerate(LAYERS):
        if module in modules or any(module == p or module.startswith(p + ".") for p in packages):
            return index
    return None


def upward(graph: Graph) -> list[str]:
    """Every import of a core module from a lower layer, as ``importer (layer) -> imported (layer)``."""
    arrows = []
    for module, targets in sorted(graph.items()):
        low = layer_of(module)
        for target in sorted(targets):
            high = layer_of(target)
            if low is not None and high is not None and high > low:
                arrows.append(f"{module} ({LAYERS[low][0]}) -> {target} ({LAYERS[high][0]})")
    return arrows


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(PACKAGES)


def test_every_core_module_has_a_layer(graph: Graph) -> None:
    unplaced = [m for m in sorted(graph) if m.startswith("cdsf_bench") and layer_of(m) is None]
    assert not unplaced, f"modules without a layer (add each to LAYERS in {Path(__file__).name}): {unplaced}"


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_cycle(graph: Graph, package: str) -> None:
    own = {
        m: {t for t in ts if t.split(".")[0] == package}
        for m, ts in graph.items()
        if m.split(".")[0] == package
    }
    found = [" -> ".join(circle) for circle in cycles(own)]
    assert not found, "import circles:\n" + "\n".join(found)


def test_no_import_runs_up_a_layer(graph: Graph) -> None:
    arrows = upward(graph)
    assert not arrows, "imports up a layer:\n" + "\n".join(arrows)


def test_plugins_import_only_the_public_api_and_the_core_never_the_plugins(graph: Graph) -> None:
    wrong = [
        f"{module} -> {target}"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if (
            module.startswith("cdsf_plugins") and target.startswith("cdsf_bench") and target not in PUBLIC_API
        )
        or (module.startswith("cdsf_bench") and target.startswith("cdsf_plugins"))
    ]
    assert not wrong, "imports across the plugin boundary:\n" + "\n".join(wrong)


def test_the_check_sees_imports_in_functions_relative_imports_and_type_checking_blocks(
    tmp_path: Path,
) -> None:
    """A circle held open by a deferred import, and one through relative imports, are found."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("import json\n\ndef later():\n    from pkg import b\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import later\n"
    )
    (package / "sub" / "__init__.py").write_text("from . import c\n")
    (package / "sub" / "c.py").write_text("from ..sub import d\n")
    (package / "sub" / "d.py").write_text("from .c import anything\nfrom .. import a\n")
    found = import_graph({"pkg": package})
    assert found["pkg.a"] == {"pkg.b"} and found["pkg.b"] == {"pkg.a"}
    assert found["pkg.sub"] == {"pkg.sub.c"} and found["pkg.sub.d"] == {"pkg.sub.c", "pkg.a"}
    assert sorted(map(tuple, cycles(found))) == [
        ("pkg.a", "pkg.b", "pkg.a"),
        ("pkg.sub.c", "pkg.sub.d", "pkg.sub.c"),
    ]


def test_the_check_sees_an_import_up_a_layer() -> None:
    assert upward({"cdsf_bench.interfaces": {"cdsf_bench.data.rows"}}) == [
        "cdsf_bench.interfaces (contract and utilities) -> cdsf_bench.data.rows (data)"
    ]
    assert upward({"cdsf_bench.cli": {"cdsf_bench.data.rows"}}) == []
