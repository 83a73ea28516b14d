"""``torch.compile`` for a run's networks: compiled where this machine can, eager with a reason where not.

Why a probe: ``nn.Module.compile`` is lazy, so a machine that cannot compile (inductor on a
CPU needs a working C++ compiler; some platforms have no Dynamo) would fail at the first
training step, minutes into a run, with a compiler's traceback. Compiling a tiny function
first, once per process, turns that into one line in the run's log and a run that goes on
without compiling. A network that compiles at the probe but whose own graph later fails to
compile falls back to eager for that graph (``suppress_errors``), with torch's warning.

Compiled kernels are cached across runs in ``~/.cache/cdsf-bench/torch-compile`` (inductor's
cache; ``TORCHINDUCTOR_CACHE_DIR`` overrides it), so a run after the first one for the same
networks and shapes pays far less compile time.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

#: where compiled kernels persist between runs unless TORCHINDUCTOR_CACHE_DIR says otherwise
COMPILE_CACHE = Path.home() / ".cache" / "cdsf-bench" / "torch-compile"


def _use_persistent_cache() -> None:
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(COMPILE_CACHE))


@lru_cache(maxsize=4)
def compile_blocker(device_type: str) -> str | None:
    """Why ``torch.compile`` cannot be used on this device type here, or None when it can."""
    _use_persistent_cache()
    try:
        probe = torch.compile(lambda x: torch.relu(x) * 2.0 + 1.0)
        result = probe(torch.linspace(-1.0, 1.0, 8, device=device_type))
        if not bool((result >= 1.0).all()):
            return "the compiled probe computed a wrong result"
    except Exception as error:  # any failure of the compiler stack means: run eager
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        return f"{type(error).__name__}: {first_line}"
    return None


def compile_in_place(modules: Iterable[nn.Module], device: torch.device) -> str | None:
    """Compile ``modules`` in place (optimisers, checkpoints and state_dict keys stay theirs).

    Returns None when they were compiled, else the reason they were left eager.
    """
    blocker = compile_blocker(device.type)
    if blocker is not None:
        return blocker
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True  # a graph that cannot compile runs eager
    for module in modules:
        module.compile()
    return None
