"""Data-side throughput at a run's sizes: phantom generation and test-time evaluation (issue 20).

Powered suites draw a phantom cohort per replicate and test each on a large held-out cohort,
so two costs outside the training step decide how many runs this machine can afford:
simulating the phantom, and predicting and scoring (SSIM included) the test subjects. This
prints both, with the settings and the machine's load, in one command:

    python benchmarks/perf_data.py                          # 1000 subjects at 4 mm
    python benchmarks/perf_data.py --subjects 200 --json    # smaller, as JSON

- phantom: simulating every subject of the cohort (``PhantomPlan.subjects``) with one thread
  and with ``--workers`` threads (default: torch's thread count, the cores), each a full pass;
  the shared anatomy (templates, region weights) is built once before and timed apart;
- evaluate: ``engine.evaluate`` on every labelled subject of that cohort as the test split,
  as a run's final test scores it (synthesis against the hidden PET, SSIM, regional uptake,
  bootstrap AUC interval), with the method a run of the preset builds (CDSF by default).
  Its weights are untrained: the cost of predicting does not depend on them. The cohort is
  read from the cache (built first if missing), so no generation time is counted here.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch
from rich.table import Table

from cdsf_bench import config as cfg
from cdsf_bench.assemble import assemble, configure_backends, load_cohort, resolve_device, split_cohort
from cdsf_bench.data.phantom import phantom_settings, plan_phantom
from cdsf_bench.data.splits import Splits
from cdsf_bench.engine import EvaluationSettings, evaluate
from cdsf_bench.host import cpu_workers, device_name
from cdsf_bench.perf.harness import load_average
from cdsf_bench.progress import console
from cdsf_bench.registry import default_registry


def _seconds(call: Any) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def time_phantom(subjects: int, resolution: float, seed: int, workers: int) -> dict[str, Any]:
    """Seconds to simulate the cohort with one thread and with ``workers`` threads."""
    settings = phantom_settings(None, subjects=subjects, resolution_mm=resolution, seed=seed)
    plan = None

    def build() -> None:
        nonlocal plan
        plan = plan_phantom(settings)

    anatomy = _seconds(build)
    assert plan is not None
    passes = {}
    for count in sorted({1, workers}):
        passes[count] = _seconds(lambda count=count: sum(1 for _ in plan.subjects(workers=count)))
    return {"anatomy_s": anatomy, "simulate_s": passes}


def time_evaluation(
    subjects: int, resolution: float, seed: int, method: dict[str, str], preset: str, device: str
) -> dict[str, Any]:
    """Seconds of a run's final test evaluation over every labelled subject of the cohort."""
    registry = default_registry()
    flags = {
        "preset": preset,
        "device": device,
        "data.subjects": subjects,
        "data.resolution_mm": resolution,
        "data.phantom_seed": seed,
        **{f"method.{key}": value for key, value in method.items()},
    }
    run = cfg.resolve(registry, None, (), flags)
    target = resolve_device(run.device)
    configure_backends(target)
    cohort, _ = load_cohort(run, registry)
    cohort, labels, splits, _ = split_cohort(run, cohort)
    labelled = np.flatnonzero(labels >= 0)
    # every labelled subject is tested; the training split keeps its subjects for the PET mean
    everyone = Splits(splits.train, splits.val, labelled)
    assembly = assemble(run, registry, cohort, labels, everyone, target)
    record: dict[str, Any] = {"tested": int(len(labelled)), "device": str(target)}

    def final_test() -> None:
        settings = EvaluationSettings(
            "test", bootstrap=run.evaluate.bootstrap, seed=run.seed, score_withheld=True
        )
        evaluate(assembly.coupling, assembly.pipeline, settings)

    def predict_only() -> None:
        evaluate(assembly.coupling, assembly.pipeline, EvaluationSettings("test", with_ssim=False))

    predict_only()  # warm-up: first calls allocate and pick kernels
    record["predict_and_cheap_scores_s"] = _seconds(predict_only)
    record["final_test_s"] = _seconds(final_test)
    record["bootstrap"] = run.evaluate.bootstrap
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--resolution", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--workers", type=int, default=None, help="threads for the phantom (default: cores)")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--synth", default="ism")
    parser.add_argument("--diag", default="mdm")
    parser.add_argument("--coupling", default="joint")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--skip", choices=("phantom", "evaluate"), action="append", default=[])
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    workers = args.workers or cpu_workers()
    result: dict[str, Any] = {
        "settings": {
            "subjects": args.subjects,
            "resolution_mm": args.resolution,
            "phantom_seed": args.seed,
            "torch_threads": torch.get_num_threads(),
            "phantom_workers": workers,
            "processor": device_name(torch.device("cpu")),
            "load_average_before": load_average(),
        }
    }
    if "phantom" not in args.skip:
        result["phantom"] = time_phantom(args.subjects, args.resolution, args.seed, workers)
    if "evaluate" not in args.skip:
        method = {"synth": args.synth, "diag": args.diag, "coupling": args.coupling}
        result["evaluate"] = time_evaluation(
            args.subjects, args.resolution, args.seed, method, args.preset, args.device
        )
    result["settings"]["load_average_after"] = load_average()
    if args.json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"{args.subjects} phantom subjects at {args.resolution:g} mm")
    table.add_column("what")
    table.add_column("seconds", justify="right")
    table.add_column("subjects/s", justify="right")
    if "phantom" in result:
        table.add_row("phantom: shared anatomy (once)", f"{result['phantom']['anatomy_s']:.1f}", "")
        for count, seconds in result["phantom"]["simulate_s"].items():
            label = f"phantom: simulate, {count} thread{'s' if count > 1 else ''}"
            table.add_row(label, f"{seconds:.1f}", f"{args.subjects / seconds:.1f}")
    if "evaluate" in result:
        record = result["evaluate"]
        tested = record["tested"]
        for key, label in (
            ("predict_and_cheap_scores_s", "evaluate: predict, MAE/PSNR only"),
            ("final_test_s", "evaluate: a run's final test (SSIM, regions, bootstrap)"),
        ):
            table.add_row(f"{label}, {tested} subjects", f"{record[key]:.1f}", f"{tested / record[key]:.1f}")
    console.print(table)
    settings = result["settings"]
    console.print(
        f"torch threads {settings['torch_threads']}, {settings['processor']}; load average "
        f"{settings['load_average_before']} before, {settings['load_average_after']} after",
        highlight=False,
    )


if __name__ == "__main__":
    main()
