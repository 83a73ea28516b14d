"""The documentation names only what exists: every file path, module and function it names.

docs/architecture.md is held to four rules, every other page (docs/*.md, README.md) to the
first:

1. **Paths.** A path that starts at a folder of the repository (``cdsf_bench/``,
   ``cdsf_plugins/``, ``plugins/``, ``benchmarks/``, ``docs/``, ``tests/``) exists, wherever
   it is written but in a Python code block (an example of another project's code); so
   does, in backticks, a ``.py`` file or a folder (``data/``), looked up from the
   repository's root, from ``cdsf_bench/`` or from ``plugins/`` (``data/cache.py``,
   ``cdsf_plugins/cdsf.py``). A ``*`` is a glob that must match something. The layout tree
   (the first code block) is read by its indentation, two spaces a level: an entry's path is
   its folders' names joined with its own.
2. **The layout is complete.** Every module and package of ``cdsf_bench`` and
   ``cdsf_plugins`` has an entry in the tree.
3. **Dotted names.** A name in backticks made of identifiers joined by dots
   (``protocol.load``, ``RunFolder.config``, ``cdsf_bench.run_folder.RunFolder``, a call such
   as ``engine.evaluate(...)``) resolves, by the first of: its first part is a module of the
   project (``cdsf_bench.X``, ``cdsf_plugins.X`` or ``cdsf_bench.PACKAGE.X`` for a package of
   the core), or a top-level name of a module the page names (by a path or in backticks);
   or it is a configuration key (a section of ``config.DEFAULTS`` and one of its keys:
   ``precision.compile``); or its first part is an installed library
   (``torch.backends.cudnn.benchmark``). The rest is read attribute by attribute, a
   submodule before a name that shadows it; a dataclass's fields count as its attributes. A
   path with an attribute (``data/sources.py:detect_source``, ``data/sources.preflight``)
   names that module's attribute. Names ending as files do (``metrics.json``,
   ``interfaces.py``) are no Python names.
4. **Calls.** A bare name called in backticks (``prepare()``, ``mean(values)``) is defined in
   a module that its section (the text under its ``##`` heading) names, by a path or in
   backticks, at the top level or in one of that module's classes.

A code span may wrap onto the next line. The layers the page lists (the bullets
``- **LAYER**: `module`, `package/`, ...`` of its section "The layers") are the layers
``tests/test_imports.py`` declares, module for module.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from test_imports import LAYERS

from cdsf_bench.config import DEFAULTS

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
PAGES = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
#: folders a path in the text may start at, and where each is in the repository
PATH_ROOTS = {
    "cdsf_bench": ROOT / "cdsf_bench",
    "cdsf_plugins": ROOT / "plugins" / "cdsf_plugins",
    "plugins": ROOT / "plugins",
    "benchmarks": ROOT / "benchmarks",
    "docs": ROOT / "docs",
    "tests": ROOT / "tests",
}
#: where a backticked relative path (``data/cache.py``) is looked up
PATH_BASES = (ROOT, ROOT / "cdsf_bench", ROOT / "plugins")
PACKAGES = {"cdsf_bench": ROOT / "cdsf_bench", "cdsf_plugins": ROOT / "plugins" / "cdsf_plugins"}
#: endings of names in backticks that are files a command writes or reads, not Python names
FILE_ENDINGS = (
    ".py",
    ".json",
    ".csv",
    ".toml",
    ".pt",
    ".png",
    ".md",
    ".txt",
    ".html",
    ".tsv",
    ".nii",
    ".gz",
    ".sh",
)

PROSE_PATH = re.compile(r"(?<![\w./~-])(?:" + "|".join(PATH_ROOTS) + r")/[\w.*/-]*")
BACKTICKED = re.compile(r"`((?:[^`\n]|\n(?!\n))+)`")  # a code span may wrap, not cross a paragraph
DOTTED = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(\(.*\))?$")
CALLED = re.compile(r"^([A-Za-z_]\w*)\(.*\)$")
PATH_ATTRIBUTE = re.compile(r"^([\w/]+)(?:\.py:|\.)([A-Za-z_]\w*)$")
LAYER_BULLET = re.compile(r"^- \*\*(?P<name>[^*]+)\*\*: (?P<members>.+)$")


# -- reading a page ------------------------------------------------------------------------


def layout_block(text: str) -> tuple[str, str]:
    """The first code block of ``text`` (the layout tree) and the text without it."""
    match = re.search(r"^```\n(.*?)^```\n", text, flags=re.S | re.M)
    if match is None:
        return "", text
    return match.group(1), text[: match.start()] + text[match.end() :]


def tree_paths(block: str) -> list[str]:
    """Every path of a layout tree: an entry is names (``a.py, b.py`` or ``folder/``) then two
    spaces and its role; two spaces of indentation are one folder down; a line that starts
    with no file or folder name continues the role above it."""
    paths: list[str] = []
    folders: list[tuple[int, str]] = []  # (indentation, folder) of the enclosing entries
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        names = re.split(r"\s{2,}", line.strip())[0]
        entries = [name.strip() for name in names.split(",")]
        if not all(re.fullmatch(r"[\w.-]+(?:/[\w.-]+)*/|[\w-]+(?:\.\w+)+", name) for name in entries):
            continue  # the role of the entry above, continued
        while folders and folders[-1][0] >= indent:
            folders.pop()
        parent = "".join(folder for _, folder in folders)
        paths += [parent + name for name in entries]
        if len(entries) == 1 and entries[0].endswith("/"):
            folders.append((indent, entries[0]))
    return paths


def sections(text: str) -> Iterator[str]:
    """The text under each ``##`` heading (and the text before the first)."""
    yield from re.split(r"^## ", text, flags=re.M)


def exists(path: str, bases: tuple[Path, ...]) -> bool:
    """Whether ``path`` (a glob where it has a ``*``) names something under one of ``bases``."""
    path = path.rstrip("/")
    return any((any(base.glob(path)) if "*" in path else (base / path).exists()) for base in bases)


def prose_paths(text: str) -> Iterator[str]:
    """Every path in ``text`` that starts at a folder of the repository (rule 1)."""
    for match in PROSE_PATH.finditer(text):
        yield match.group(0).rstrip(".,:;")


def dead_paths(page: Path) -> list[str]:
    """The paths of ``page`` that name nothing (rule 1)."""
    block, text = layout_block(page.read_text())
    text = re.sub(r"^```python\n.*?^```\n", "", text, flags=re.S | re.M)
    dead = [f"{path} (layout)" for path in tree_paths(block) if not exists(path, (ROOT,))]
    for path in sorted(set(prose_paths(text))):
        first = path.split("/")[0]
        if not exists(path.removeprefix(first + "/"), (PATH_ROOTS[first],)):
            dead.append(path)
    if page == ARCHITECTURE:
        for token in sorted(set(BACKTICKED.findall(text))):
            if re.fullmatch(r"[\w/*-]+\.py|[\w/*-]+/", token) and not exists(token, PATH_BASES):
                dead.append(token)
    return dead


# -- resolving a Python name ---------------------------------------------------------------


def project_modules() -> set[str]:
    """Every module of the project by dotted name, but ``__main__`` (importing it runs the CLI)."""
    found = set()
    for name, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            if path.name == "__main__.py":
                continue
            parts = [name, *path.relative_to(folder).with_suffix("").parts]
            found.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


MODULES = project_modules()
#: the core's packages, whose modules a name may give without the package (``labels.training_cohort``)
CORE_PACKAGES = sorted(p.name for p in (ROOT / "cdsf_bench").iterdir() if (p / "__init__.py").is_file())


def candidates(first: str) -> list[str]:
    """The project modules a name's first part may mean: ``labels`` is ``cdsf_bench.data.labels``."""
    if first in PACKAGES:
        return [first]
    names = [f"cdsf_bench.{first}", f"cdsf_plugins.{first}"] + [
        f"cdsf_bench.{p}.{first}" for p in CORE_PACKAGES
    ]
    return [name for name in names if name in MODULES]


def attribute(owner: Any, name: str) -> Any:
    """``owner.name``, counting a dataclass's fields (and annotated class attributes)."""
    if hasattr(owner, name):
        return getattr(owner, name)
    if inspect.isclass(owner):
        for cls in inspect.getmro(owner):
            if name in getattr(cls, "__annotations__", {}) or (
                dataclasses.is_dataclass(cls) and name in {f.name for f in dataclasses.fields(cls)}
            ):
                return object()
    raise AttributeError(name)


def walk(owner: Any, parts: list[str]) -> bool:
    """Whether ``owner.parts[0].parts[1]...`` exists; a submodule wins over a name it shadows."""
    for part in parts:
        if isinstance(owner, ModuleType) and f"{owner.__name__}.{part}" in MODULES:
            owner = importlib.import_module(f"{owner.__name__}.{part}")
            continue
        try:
            owner = attribute(owner, part)
        except AttributeError:
            return False
    return True


def resolves_in_module(module: str, parts: list[str]) -> bool:
    """Whether the project module ``module`` has the attribute path ``parts``."""
    return walk(importlib.import_module(module), parts)


def module_of_path(path: str) -> str | None:
    """The project module a path names (``data/cache.py``, ``plugins/cdsf_plugins/cdsf.py``), if one."""
    parts = [part for part in path.removesuffix(".py").split("/") if part]
    if parts[:1] == ["plugins"]:
        parts = parts[1:]
    if parts[:1] and parts[0] not in PACKAGES:
        parts = ["cdsf_bench", *parts]
    dotted = ".".join(parts)
    return dotted if dotted in MODULES else None


def named_modules(text: str) -> set[str]:
    """The project modules ``text`` names: by a path, or by a backticked name's first parts."""
    found = {module_of_path(path) for path in prose_paths(text)}
    for token in BACKTICKED.findall(text):
        token = " ".join(token.split())
        if "/" in token:
            found.add(module_of_path(token.partition(":")[0]))
            continue
        parts = re.split(r"[.(]", token)[:-1] if "(" in token else token.split(".")
        for end in range(len(parts), 0, -1):
            whole = ".".join(parts[:end])
            hits = {whole} if whole in MODULES else set()
            hits |= {f"{c}.{'.'.join(parts[1:end])}".rstrip(".") for c in candidates(parts[0])}
            hits &= MODULES
            if hits:
                found |= hits
                break
    return {module for module in found if module is not None}


def top_level(modules: set[str], name: str) -> list[Any]:
    """The objects called ``name`` at the top level of ``modules``."""
    found = []
    for module in sorted(modules):
        imported = importlib.import_module(module)
        if hasattr(imported, name):
            found.append(getattr(imported, name))
    return found


def config_key(parts: list[str]) -> bool:
    """Whether ``parts`` is a key of the run configuration (``precision.compile``)."""
    table: Any = DEFAULTS
    for part in parts:
        if not isinstance(table, dict) or part not in table:
            return False
        table = table[part]
    return True


def library(parts: list[str]) -> bool:
    """Whether ``parts`` names something in an installed library outside the project."""
    first = parts[0]
    try:
        if first in PACKAGES or importlib.util.find_spec(first) is None:
            return False
    except (ImportError, ValueError):
        return False
    return walk(importlib.import_module(first), parts[1:])


def dotted_resolves(name: str, modules: set[str]) -> bool:
    """Rule 3 for one name (``a.b.c``, without a call's arguments)."""
    parts = name.split(".")
    for module in candidates(parts[0]):
        if resolves_in_module(module, parts[1:]):
            return True
    if any(walk(owner, parts[1:]) for owner in top_level(modules, parts[0])):
        return True
    return config_key(parts) or library(parts)


def path_attribute_resolves(path: str, name: str) -> bool:
    """``data/sources.py:detect_source``: the module at the path has the attribute ``name``."""
    module = module_of_path(path)
    return module is not None and resolves_in_module(module, [name])


def called_resolves(name: str, modules: set[str]) -> bool:
    """Rule 4: ``name`` is defined at the top level of ``modules`` or in one of their classes."""
    for module in sorted(modules):
        for value in vars(importlib.import_module(module)).values():
            if inspect.isclass(value) and value.__module__ == module:
                try:
                    attribute(value, name)
                    return True
                except AttributeError:
                    pass
    return bool(top_level(modules, name))


def dead_names(text: str) -> list[str]:
    """The backticked Python names of ``text`` that resolve to nothing (rules 3 and 4)."""
    dead: list[str] = []
    page_modules = named_modules(text)
    for section in sections(text):
        near = named_modules(section)
        for token in BACKTICKED.findall(section):
            token = " ".join(token.split())
            if token.endswith(FILE_ENDINGS):
                continue
            path = PATH_ATTRIBUTE.fullmatch(token)
            if path is not None and "/" in path.group(1):
                if not path_attribute_resolves(path.group(1), path.group(2)):
                    dead.append(token)
                continue
            dotted = DOTTED.fullmatch(token)
            if dotted is not None:
                if not dotted_resolves(dotted.group(1), page_modules):
                    dead.append(token)
                continue
            called = CALLED.fullmatch(token)
            if called is not None and not called_resolves(called.group(1), near):
                dead.append(f"{token} (named in no module of its section)")
    return sorted(set(dead))


def doc_layers(text: str) -> list[tuple[str, set[str]]]:
    """The layers of the section "The layers", bottom first: each bullet's name and its modules."""
    layers = []
    section = next((s for s in sections(text) if s.startswith("The layers")), "")
    for line in section.splitlines():
        match = LAYER_BULLET.match(line)
        if match is not None:
            members = set(re.findall(r"`([^`]+)`", match.group("members")))
            layers.append((match.group("name"), members))
    return layers


# -- the tests -----------------------------------------------------------------------------


def test_architecture_names_only_paths_that_exist() -> None:
    dead = dead_paths(ARCHITECTURE)
    assert not dead, "docs/architecture.md names paths that do not exist:\n" + "\n".join(dead)


def test_architecture_layout_lists_every_module() -> None:
    block, _ = layout_block(ARCHITECTURE.read_text())
    listed = {path.rstrip("/") for path in tree_paths(block)}
    missing = []
    for folder in PACKAGES.values():
        for path in sorted(folder.rglob("*.py")):
            file = path.relative_to(ROOT)
            shown = file.parent if path.name == "__init__.py" else file
            if str(shown) not in listed:
                missing.append(str(shown) + ("/" if path.name == "__init__.py" else ""))
    assert not missing, "modules missing from the layout of docs/architecture.md:\n" + "\n".join(missing)


def test_architecture_names_only_python_names_that_exist() -> None:
    _, text = layout_block(ARCHITECTURE.read_text())
    dead = dead_names(text)
    assert not dead, "docs/architecture.md names what the code does not define:\n" + "\n".join(dead)


def test_architecture_layers_are_those_of_the_import_check() -> None:
    declared = [
        (
            name,
            {m.removeprefix("cdsf_bench.") for m in modules}
            | {p.removeprefix("cdsf_bench.") + "/" for p in packages},
        )
        for name, modules, packages in LAYERS
    ]
    assert doc_layers(ARCHITECTURE.read_text()) == declared, (
        "the layers of docs/architecture.md are not LAYERS"
    )


@pytest.mark.parametrize("page", [p for p in PAGES if p != ARCHITECTURE], ids=lambda p: p.name)
def test_page_names_only_paths_that_exist(page: Path) -> None:
    dead = dead_paths(page)
    assert not dead, f"{page.relative_to(ROOT)} names paths that do not exist:\n" + "\n".join(dead)


def test_the_check_finds_dead_names_and_paths(tmp_path: Path) -> None:
    """A misspelt module, function, method, call and path are each reported; real ones are not."""
    text = (
        "## One\n`protocol.prepare`, `RunFolder.config`, `engine.evaluate(coupling)`, `precision.compile`,\n"
        "`torch.backends.cudnn.benchmark`, `TrainingStage.step`, `metrics.json`,\n"
        "`data/sources.py:detect_source`, "
        "`interfaces.py`: `mean(values)`.\n"
        "## Two\n`protocl.prepare`, `run._preflight`, `RunFolder.confg`, `data/sources.preflight`,\n"
        "`interfaces.py`: `prepare()`.\n"
    )
    assert dead_names(text) == [
        "RunFolder.confg",
        "data/sources.preflight",
        "prepare() (named in no module of its section)",
        "protocl.prepare",
        "run._preflight",
    ]
    page = tmp_path / "page.md"
    page.write_text(
        "```\ncdsf_bench/\n  protocol.py  the protocol\n  protocl.py   a typo\n```\n"
        "see tests/test_nothing.py\n"
    )
    assert dead_paths(page) == ["cdsf_bench/protocl.py (layout)", "tests/test_nothing.py"]
