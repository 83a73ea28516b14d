"""What ``cdsf-bench perf`` is asked to measure, checked, and the run configuration it means.

The settings are plain data so the command, the benchmark scripts and tests can all build
a measurement the same way; the configuration comes from the core's resolver, so defaults,
``--set`` and the method chosen for ``--synth none`` are exactly a run's.
"""

from __future__ import annotations

from dataclasses import dataclass

from cdsf_bench import config as cfg
from cdsf_bench.errors import InputError
from cdsf_bench.perf.parts import MATMUL_SIDE
from cdsf_bench.registry import Registry
from cdsf_bench.settings import RunConfig

#: the default volume and batch: the size the project's performance work is stated at
DEFAULT_SIZE = (64, 64, 64)
DEFAULT_BATCH = 2
#: extra warm-up steps under --compile, which compiles (and may recompile) on first calls
COMPILE_EXTRA_WARMUP = 3


@dataclass(frozen=True)
class PerfSettings:
    """What to measure and how; ``None`` method names take the run's defaults."""

    synth: str | None = None
    diag: str | None = None
    coupling: str | None = None
    size: tuple[int, int, int] = DEFAULT_SIZE
    batch: int = DEFAULT_BATCH
    device: str = "auto"
    repeats: int = 5
    warmup: int = 2
    bf16: bool = True
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    #: side of the reference matrix multiplies; a large GPU needs more than the default to fill it
    matmul_side: int = MATMUL_SIDE
    assignments: tuple[str, ...] = ()


def check(settings: PerfSettings) -> None:
    """Refuse settings that cannot be measured, naming the option to fix."""
    if len(settings.size) != 3 or min(settings.size) < 1:
        raise InputError(f"--size needs three positive sides (D H W), got {settings.size}.")
    if settings.batch < 1:
        raise InputError(f"--batch must be at least 1, got {settings.batch}.")
    if settings.repeats < 1 or settings.warmup < 0:
        raise InputError("--repeats must be at least 1 and --warmup at least 0.")
    if settings.matmul_side < 1:
        raise InputError(f"--matmul-side must be at least 1, got {settings.matmul_side}.")


def resolve_config(settings: PerfSettings, registry: Registry) -> RunConfig:
    """The run configuration these settings stand for (defaults, --set, method names).

    Unnamed methods are left to ``config.resolve``, which takes them from the plugins'
    defaults (including the coupling for ``--synth none``), so perf names no method itself.
    """
    flags = {
        "method.synth": settings.synth,
        "method.diag": settings.diag,
        "method.coupling": settings.coupling,
        "device": settings.device,
        "seed": settings.seed,
        "precision.mixed": settings.bf16,
        "precision.channels_last": settings.channels_last,
        "train.batch_size": settings.batch,
    }
    return cfg.resolve(registry, None, settings.assignments, flags)
