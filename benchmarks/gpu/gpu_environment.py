"""The environment step of the GPU check: what the figures were measured on.

Writes ``env.json`` (Python, torch, CUDA, cuDNN, the GPU's properties, TF32 defaults, the
carried packages' versions, the plugins registered and from which metadata, ``pip list``)
and ``nvidia-smi.txt`` into the folder given.

    python benchmarks/gpu/gpu_environment.py FOLDER
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def write_environment(folder: Path) -> None:
    """env.json and nvidia-smi.txt: what the figures were measured on."""
    folder.mkdir(parents=True, exist_ok=True)
    smi = shutil.which("nvidia-smi")
    text = "nvidia-smi not found\n"
    if smi is not None:
        text = ""
        for args in ([smi], [smi, "-q"]):
            done = subprocess.run(args, capture_output=True, text=True, timeout=30)
            text += f"$ {' '.join(args)}\n{done.stdout}{done.stderr}\n"
    (folder / "nvidia-smi.txt").write_text(text)
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": None,
        "bf16_supported": torch.cuda.is_bf16_supported() if torch.cuda.is_available() else None,
        "allow_tf32": {
            "cudnn": torch.backends.cudnn.allow_tf32,
            "matmul": torch.backends.cuda.matmul.allow_tf32,
        },
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "PYTHONPATH", "CUDA_VISIBLE_DEVICES")},
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_mib": props.total_memory // 2**20,
            "multiprocessors": props.multi_processor_count,
            "count": torch.cuda.device_count(),
        }
    versions: dict[str, str | None] = {}
    missing = []
    for module in (
        "cdsf_bench",
        "nibabel",
        "nilearn",
        "tomli_w",
        "monai",
        "einops",
        "pluggy",
        "numpy",
        "scipy",
    ):
        try:
            versions[module] = getattr(importlib.import_module(module), "__version__", "?")
        except Exception as error:  # noqa: BLE001  (recorded: the steps that need it will fail)
            versions[module] = None
            missing.append(f"{module}: {type(error).__name__}: {error}")
    env["packages"] = versions
    env["missing_imports"] = missing
    import cdsf_bench
    from cdsf_bench.registry import default_registry

    env["cdsf_bench_path"] = cdsf_bench.__file__
    # which metadata the plugins were registered from: benchmarks/gpu/dist_info.py's, or an install's
    env["cdsf_bench_installer"] = (
        importlib.metadata.distribution("cdsf-bench").read_text("INSTALLER") or ""
    ).strip()
    registry = default_registry()
    env["plugins"] = {kind: sorted(names) for kind, names in registry.components.items()}
    env["plugin_failures"] = registry.failures
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, timeout=60
    )
    env["pip_freeze"] = freeze.stdout.splitlines()
    (folder / "env.json").write_text(json.dumps(env, indent=2, default=str))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    write_environment(Path(sys.argv[1]))
