"""The plan of the GPU check: which steps run, with which commands, sizes and timeouts.

Two profiles share one plan: ``GPU`` (the lent machine: the default 4 mm and the paper 2 mm
grids, every precision and layout, the paper epoch, the headline suite) and ``DRY_RUN`` (the
same steps on a CPU at tiny sizes, which ``tests/test_gpu_script.py`` runs). The steps are
listed in order of importance, so that a deadline cuts the least useful ones.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gpu_figures as figures
import tomli_w

from cdsf_bench.data.grid import reference_grid

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
#: the headline suite (README's headline result): its replicates fill the time left
HEADLINE_SUITE = ROOT / "benchmarks" / "suites" / "quick.toml"


@dataclass(frozen=True)
class Profile:
    """The sizes and limits of one plan: the GPU's, or the CPU dry run's."""

    device: str
    grids: tuple[tuple[str, float], ...]  # (label, resolution in mm)
    batch: int
    perf_repeats: int
    perf_warmup: int
    matmul_side: int
    eager: tuple[tuple[bool, bool], ...]  # (bf16, channels_last) timed eager
    compiled: tuple[tuple[bool, bool], ...]  # the same, compiled
    compile_skip: str | None  # why compiled steps do not run in this plan
    paper: tuple[str, ...]  # the options of the paper-epoch run
    suite_preset: str | None  # None: the suite's own
    suite_settings: dict[str, Any]  # [settings] added to the headline suite
    suite_seeds: tuple[int, ...] | None  # None: the suite's own
    suite_methods: int | None  # None: all of the suite's methods
    timeouts: dict[str, float]
    threads: str | None  # OMP_NUM_THREADS for every step (None: the machine's default)


ALL_LAYOUTS = ((True, True), (True, False), (False, True), (False, False))

GPU = Profile(
    device="cuda",
    grids=(("4mm", 4.0), ("2mm", 2.0)),
    batch=4,
    perf_repeats=10,
    perf_warmup=3,
    matmul_side=8192,
    eager=ALL_LAYOUTS,
    compiled=((True, True), (False, False)),
    compile_skip=None,
    paper=("--preset", "paper", "--epochs", "1", "--device", "cuda"),
    suite_preset=None,
    suite_settings={},
    suite_seeds=None,
    suite_methods=None,
    timeouts={"env": 60, "tests": 150, "precision": 90, "perf": 60, "perf-compiled": 150, "paper": 240},
    threads=None,
)

DRY_RUN = Profile(
    device="cpu",
    grids=(("16mm", 16.0),),
    batch=2,
    perf_repeats=1,
    perf_warmup=0,
    matmul_side=64,
    eager=((True, True),),
    compiled=((True, True),),
    compile_skip="torch.compile takes minutes on a CPU (benchmarks/results/2026-12-07-compile-cpu)",
    paper=(
        "--preset",
        "tiny",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--set",
        "data.subjects=16",
        "--set",
        "data.resolution_mm=16",
        "--set",
        "evaluate.bootstrap=0",
    ),
    suite_preset="tiny",
    suite_settings={
        "data.subjects": 16,
        "data.resolution_mm": 16.0,
        "train.epochs": 1,
        "evaluate.bootstrap": 0,
        "evaluate.phantom_test_subjects": 16,
        "device": "cpu",
    },
    suite_seeds=(0,),
    suite_methods=1,
    timeouts={"env": 60, "tests": 120, "precision": 120, "perf": 120, "perf-compiled": 60, "paper": 120},
    threads="1",
)


@dataclass
class Step:
    """One bounded process of the check and what it must leave in its folder."""

    name: str
    command: list[str]
    timeout: float
    outputs: list[str]
    stdout: str | None = None  # a file for the command's stdout (its stderr goes to log.txt)
    skip: str | None = None
    summarise: Callable[[Path], dict[str, Any]] | None = None


# -- the steps ----------------------------------------------------------------------------


def plan(profile: Profile, work: Path) -> list[Step]:
    """Every step of the check in the order it runs."""
    python = sys.executable
    steps = [
        Step(
            "env",
            [python, str(HERE / "gpu_environment.py"), str(work / "env")],
            profile.timeouts["env"],
            ["env.json", "nvidia-smi.txt"],
            summarise=figures.env,
        ),
        Step(
            "tests",
            [
                python,
                "-m",
                "pytest",
                "-m",
                "cuda",
                "-q",
                "-p",
                "no:cacheprovider",
                f"--junitxml={work / 'tests' / 'junit.xml'}",
                *cuda_test_files(),
            ],
            profile.timeouts["tests"],
            ["junit.xml"],
            summarise=figures.test,
        ),
    ]
    for label, resolution in profile.grids:
        out = work / f"precision-{label}" / "precision.json"
        steps.append(
            Step(
                f"precision-{label}",
                [
                    python,
                    str(HERE / "precision_check.py"),
                    "--device",
                    profile.device,
                    "--resolution",
                    str(resolution),
                    "--batch",
                    str(profile.batch),
                    "--out",
                    str(out),
                ],
                profile.timeouts["precision"],
                ["precision.json"],
                summarise=figures.precision,
            )
        )
    steps += _perf_steps(profile, profile.eager, compiled=False)
    paper = work / "paper-epoch"
    steps.append(
        Step(
            "paper-epoch",
            [
                python,
                str(HERE / "timed_run.py"),
                "--record",
                str(paper / "usage.json"),
                "--",
                "run",
                *profile.paper,
                "--out",
                str(paper / "run"),
            ],
            profile.timeouts["paper"],
            ["usage.json", "run/metrics.json", "run/history.csv", "run/timing.json"],
            summarise=figures.paper,
        )
    )
    steps += _perf_steps(profile, profile.compiled, compiled=True)
    suite_file = work / "suite.toml"
    steps.append(
        Step(
            "suite",
            [
                python,
                "-m",
                "cdsf_bench.cli",
                "bench",
                str(suite_file),
                "--out",
                str(work / "suite" / "suite"),
            ],
            0.0,  # the time left
            [],
            summarise=figures.suite,
        )
    )
    return steps


def cuda_test_files() -> list[str]:
    """The test modules that mark tests ``cuda``: collecting only them keeps the step short."""
    return [
        str(path) for path in sorted((ROOT / "tests").glob("test_*.py")) if "mark.cuda" in path.read_text()
    ]


def _perf_steps(profile: Profile, layouts: tuple[tuple[bool, bool], ...], compiled: bool) -> list[Step]:
    steps = []
    for label, resolution in profile.grids:
        size = [str(side) for side in reference_grid(resolution).shape]
        for bf16, channels_last in layouts:
            name = f"perf-{label}-{'bf16' if bf16 else 'fp32'}-{'cl' if channels_last else 'contig'}"
            command = [
                sys.executable,
                "-m",
                "cdsf_bench.cli",
                "perf",
                "--device",
                profile.device,
                "--size",
                *size,
                "--batch",
                str(profile.batch),
                "--repeats",
                str(profile.perf_repeats),
                "--warmup",
                str(profile.perf_warmup),
                "--matmul-side",
                str(profile.matmul_side),
                "--json",
            ]
            command += [] if bf16 else ["--no-bf16"]
            command += [] if channels_last else ["--no-channels-last"]
            command += ["--compile"] if compiled else []
            steps.append(
                Step(
                    f"{name}-compiled" if compiled else name,
                    command,
                    profile.timeouts["perf-compiled" if compiled else "perf"],
                    ["perf.json"],
                    stdout="perf.json",
                    skip=profile.compile_skip if compiled else None,
                    summarise=figures.perf,
                )
            )
    return steps


def write_suite(profile: Profile, path: Path) -> None:
    """The headline suite as this plan runs it: the profile's settings, seeds and methods added."""
    suite = tomllib.loads(HEADLINE_SUITE.read_text())
    suite["settings"] = {**suite.get("settings", {}), **profile.suite_settings}
    if profile.suite_seeds is not None:
        suite["seeds"] = list(profile.suite_seeds)
    if profile.suite_methods is not None:
        suite["methods"] = suite["methods"][-profile.suite_methods :]  # the last: the cheapest (MRI only)
    if profile.suite_preset is not None:
        suite["preset"] = profile.suite_preset
    path.write_text(tomli_w.dumps(suite))
