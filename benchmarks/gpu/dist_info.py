"""Register the working tree as the installed ``cdsf-bench``, without building or installing it.

On the GPU machine the code travels as the working tree and runs from ``PYTHONPATH``; what
an install would add is the distribution's metadata: the plugin entry points the registry
loads (``importlib.metadata``) and the ``cdsf-bench`` command. Both are written here, from
``pyproject.toml``, into a folder on ``PYTHONPATH`` (``SITE``): a ``.dist-info`` with
``METADATA`` and ``entry_points.txt``, and ``SITE/bin/cdsf-bench``. Nothing needs setuptools
or the network, and the machine's own packages (torch) are not touched.

    python benchmarks/gpu/dist_info.py SITE
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def write_dist_info(site: Path, pyproject: Path = ROOT / "pyproject.toml") -> Path:
    """Write the metadata and the console script; return the ``.dist-info`` folder."""
    project = tomllib.loads(pyproject.read_text())["project"]
    name, version = project["name"], project["version"]
    folder = site / f"{name.replace('-', '_')}-{version}.dist-info"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (folder / "INSTALLER").write_text("benchmarks/gpu/dist_info.py\n")
    groups = {"console_scripts": project.get("scripts", {}), **project.get("entry-points", {})}
    text = "".join(
        f"[{group}]\n" + "".join(f"{key} = {value}\n" for key, value in entries.items()) + "\n"
        for group, entries in groups.items()
    )
    (folder / "entry_points.txt").write_text(text)
    bin_folder = site / "bin"
    bin_folder.mkdir(exist_ok=True)
    for script, target in project.get("scripts", {}).items():
        module, function = target.split(":")
        path = bin_folder / script
        path.write_text(
            f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\nsys.exit({function}())\n"
        )
        path.chmod(0o755)
    return folder


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(f"registered {write_dist_info(Path(sys.argv[1]))}")
