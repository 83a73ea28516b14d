"""The prepared GPU check: every measurement a lent GPU should make, as one bounded command.

A GPU machine is lent for minutes, bare and without network, so the check is planned here
and run there as one command (``benchmarks/gpu/run.sh``, which installs the carried wheels
and then calls this driver). Each step is a separate process under its own timeout, killed
with its children when it overruns, so one slow step costs only its own figures; a
deadline over the whole check (``--budget``) shortens the last steps' timeouts and leaves
unstarted what no longer fits. Steps, in order of importance:

- ``env``: nvidia-smi, torch / CUDA / cuDNN versions, the GPU's properties, the packages;
- ``tests``: the tests marked ``cuda`` (``pytest -m cuda``), as JUnit XML;
- ``precision-*``: bf16 against fp32, forward and backward, of every shipped network
  (``precision_check.py``) at the default and the paper grid;
- ``perf-*``: ``cdsf-bench perf`` at the default (4 mm) and paper (2 mm) grids, bf16 and fp32,
  channels-last on and off, eager; then compiled, bf16 channels-last and fp32 contiguous;
- ``paper-epoch``: one epoch of ``--preset paper`` (1000 phantom subjects at 2 mm), with its
  wall time, peak GPU memory (``timed_run.py``) and the run folder's own timings;
- ``suite``: the headline suite (``benchmarks/suites/quick.toml``) for the time left;
  whatever replicates finish are kept.

``--dry-run`` is the same plan on the CPU at tiny sizes with short timeouts: the test suite
runs it (``tests/test_gpu_script.py``) so the check cannot rot between GPU sessions.

Outputs, in ``--out`` (the machine's ``$OUT``, which returns at most 8 files): ``summary.json``
(every step's status, time and headline figures), ``summary.txt`` (the same as a table, also
printed last) and ``results.tar.gz`` (every step's folder: logs, JSON, run folders without
checkpoints or volumes). ``benchmarks/gpu/README.md`` says how to read and commit them.

This module runs and packs; the steps and the two profiles are ``gpu_plan.py``, the figures
read from each step's files ``gpu_figures.py``, and the ``env`` step ``gpu_environment.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpu_plan import DRY_RUN, GPU, ROOT, Profile, Step, plan, write_suite

#: a step is not started with less than this many seconds left before the deadline
MIN_START_S = 15.0
#: heavy files left out of the archive: checkpoints, synthetic volumes, the cohort cache
HEAVY = ("checkpoints", "synth", "*.pt", "*.nii.gz", "cache")


@dataclass
class Outcome:
    """What became of a step: ``ok``, ``failed``, ``timed_out``, ``skipped`` or ``not_started``."""

    name: str
    status: str
    command: list[str]
    timeout_s: float
    seconds: float = 0.0
    exit_status: int | None = None
    missing_outputs: list[str] = field(default_factory=list)
    note: str = ""
    figures: dict[str, Any] = field(default_factory=dict)


# -- running ------------------------------------------------------------------------------


def run_step(step: Step, folder: Path, timeout: float, env: dict[str, str]) -> Outcome:
    """Run ``step`` in its own process group, killing the group when it overruns ``timeout``."""
    folder.mkdir(parents=True, exist_ok=True)
    outcome = Outcome(step.name, "ok", step.command, round(timeout, 1))
    started = time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        stdout = open(folder / step.stdout, "w") if step.stdout else log  # noqa: SIM115  (closed below)
        process = subprocess.Popen(
            step.command, cwd=ROOT, env=env, stdout=stdout, stderr=log, start_new_session=True
        )
        try:
            outcome.exit_status = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            outcome.status = "timed_out"
            outcome.note = f"killed after {timeout:.0f} s"
        finally:
            if stdout is not log:
                stdout.close()
    outcome.seconds = round(time.perf_counter() - started, 2)
    outcome.missing_outputs = [name for name in step.outputs if not (folder / name).is_file()]
    if outcome.status == "ok" and (outcome.exit_status != 0 or outcome.missing_outputs):
        outcome.status = "failed"
    if step.summarise is not None and not outcome.missing_outputs:
        try:
            outcome.figures = step.summarise(folder)
        except Exception as error:  # noqa: BLE001  (a step's odd output must not stop the check)
            outcome.note = (outcome.note + f"; outputs unreadable: {type(error).__name__}: {error}").lstrip(
                "; "
            )
    return outcome


def run_plan(
    steps: list[Step], work: Path, budget: float, env: dict[str, str], only: set[str] | None
) -> list[Outcome]:
    """Every step in order, each under min(its timeout, the time left)."""
    deadline = time.monotonic() + budget
    outcomes = []
    for step in steps:
        left = deadline - time.monotonic()
        timeout = left if step.timeout <= 0 else min(step.timeout, left)
        if only is not None and step.name not in only:
            outcomes.append(Outcome(step.name, "skipped", step.command, 0.0, note="not selected (--only)"))
        elif step.skip is not None:
            outcomes.append(Outcome(step.name, "skipped", step.command, 0.0, note=step.skip))
        elif left < MIN_START_S:
            outcomes.append(Outcome(step.name, "not_started", step.command, 0.0, note=f"{left:.0f} s left"))
        else:
            print(f"[{time.strftime('%H:%M:%S')}] {step.name} (timeout {timeout:.0f} s)", flush=True)
            outcomes.append(run_step(step, work / step.name, timeout, env))
            print(
                f"    {outcomes[-1].status} in {outcomes[-1].seconds:.1f} s {outcomes[-1].note}", flush=True
            )
    return outcomes


def step_environment(profile: Profile, overrides: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **overrides, "PYTHONUNBUFFERED": "1", "CDSF_BENCH_QUIET": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "plugins"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    if profile.threads is not None:
        env["OMP_NUM_THREADS"] = profile.threads
    return env


# -- packing ------------------------------------------------------------------------------


def _keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    parts = Path(info.name).parts
    if any(Path(part).match(pattern) for part in parts for pattern in HEAVY):
        return None
    return info


def pack(work: Path, out: Path, outcomes: list[Outcome], profile: Profile, started: str) -> str:
    """Write summary.json, summary.txt and results.tar.gz into ``out``; return the table."""
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "started_utc": started,
        "profile": "dry-run (CPU)" if profile.device == "cpu" else "gpu",
        "host": platform.node(),
        "steps": [asdict(o) for o in outcomes],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    lines = [f"{'step':<32} {'status':<12} {'seconds':>8}  figures / note"]
    for o in outcomes:
        figures = json.dumps(o.figures, default=str)
        text = f"{figures[:300]}{'...' if len(figures) > 300 else ''}" if o.figures else ""
        lines.append(
            f"{o.name:<32} {o.status:<12} {o.seconds:>8.1f}  {' '.join(filter(None, [o.note, text]))}"
        )
    table = "\n".join(lines) + "\n"
    (out / "summary.txt").write_text(table)
    with tarfile.open(out / "results.tar.gz", "w:gz") as archive:
        archive.add(work, arcname="results", filter=_keep)
    return table


# -- the command --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT"), help="where the outputs go (default: $OUT)")
    parser.add_argument("--work", help="the steps' folder (default: a fresh folder under /tmp)")
    parser.add_argument("--dry-run", action="store_true", help="the same plan on the CPU at tiny sizes")
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds for the whole check (GPU 540, dry run 300)"
    )
    parser.add_argument(
        "--only", action="append", help="run only this step (repeatable); the others are recorded as skipped"
    )
    parser.add_argument(
        "--timeout", action="append", default=[], metavar="STEP=SECONDS", help="override one step's timeout"
    )
    args = parser.parse_args(argv)
    if not args.out:
        parser.error("--out is needed where $OUT is not set")
    profile = DRY_RUN if args.dry_run else GPU
    budget = args.budget if args.budget is not None else (300.0 if args.dry_run else 540.0)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    work = Path(args.work) if args.work else Path(f"/tmp/cdsf-gpu-check-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    env = step_environment(
        profile, {"CDSF_BENCH_CACHE": os.environ.get("CDSF_BENCH_CACHE", str(work / "cache"))}
    )
    steps = plan(profile, work)
    overrides = dict(item.split("=", 1) for item in args.timeout)
    unknown = set(overrides) - {s.name for s in steps}
    if unknown:
        parser.error(f"--timeout names no step: {', '.join(sorted(unknown))}")
    for step in steps:
        if step.name in overrides:
            step.timeout = float(overrides[step.name])
    write_suite(profile, work / "suite.toml")
    outcomes = run_plan(steps, work, budget, env, set(args.only) if args.only else None)
    table = pack(work, Path(args.out), outcomes, profile, started)
    print(table, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
