"""Derive the CI regression baseline from the CI suite run over several seeds.

    cdsf-bench bench benchmarks/suites/ci-spread.toml --out runs/ci-spread
    python3 benchmarks/ci_tolerances.py runs/ci-spread/results.csv \
        --out benchmarks/baselines/ci.toml

CI runs one seed of the suite (benchmarks/suites/ci.toml). A harmless change (another
summation order, a library update, a refactor that draws random numbers in another order)
moves its metrics about as much as another seed would, so each tolerance is what the
seeds spread: for every method and metric, the baseline value is the mean over the seeds and
the allowed loss is the larger of

- 3 standard deviations over the seeds (the sample sd, ddof 1),
- 1.5 times the distance from the mean to the worst seed (a heavy tail the sd misses),
- a floor per metric (``FLOORS``): the metric's resolution on this test set, so that a metric
  at its ceiling on every seed (sd 0) does not fail on one subject.

The baseline file carries, in comments, each entry's mean, sd and worst seed, the seeds and
the command that produced it (docs/regression.md, "The CI baseline"), and as ``threads`` the
torch thread count the runs trained with (their environment.json's), the count ``regress``
then requires of the runs it compares.
"""

from __future__ import annotations

import argparse
import math
import sys
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from cdsf_bench.bench.regress import THREADS, recorded_threads
from cdsf_bench.metrics import HIGHER_IS_BETTER
from cdsf_bench.results import write_text

#: the metrics guarded: diagnosis for every method, synthesis where a method synthesises
DIAGNOSIS = ("auc", "bacc")
SYNTHESIS = ("ssim", "psnr", "mae")
#: smallest allowed loss per metric: BACC moves by 1/36 per misclassified subject of a class
#: of 36; AUC, SSIM, PSNR (dB) and MAE (intensity on [-1, 1]) by what one subject can move them
FLOORS = {"auc": 0.02, "bacc": 0.06, "ssim": 0.02, "psnr": 0.5, "mae": 0.005}
SD_FACTOR = 3.0
WORST_FACTOR = 1.5


def _round_up(value: float, step: float) -> float:
    return math.ceil(value / step - 1e-9) * step


def tolerance(values: pd.Series, metric: str) -> tuple[float, float, float, float]:
    """(mean, sd, worst seed, allowed loss) of one method's metric over the seeds."""
    mean, sd = float(values.mean()), float(values.std(ddof=1))
    worst = float(values.min() if HIGHER_IS_BETTER[metric] else values.max())
    step = 0.1 if metric == "psnr" else 0.001 if metric == "mae" else 0.01
    allowed = max(SD_FACTOR * sd, WORST_FACTOR * abs(mean - worst), FLOORS[metric])
    return mean, sd, worst, round(_round_up(allowed, step), 4)


def baseline_text(results: pd.DataFrame, source: str, threads: int | None = None) -> str:
    """The baseline TOML, with the derivation of each entry in its comments; ``threads``: the
    runs' thread count (None: unrecorded, and the baseline says none)."""
    done = results[results["status"] == "done"]
    unfinished = results[results["status"] != "done"]
    if len(unfinished):
        raise SystemExit(f"{source}: {len(unfinished)} run(s) did not finish; rerun them (--resume) first")
    seeds = sorted(done["seed"].astype(int).unique())
    lines = [
        "# cdsf-bench regression baseline for benchmarks/suites/ci.toml (docs/regression.md).",
        f"# Derived by benchmarks/ci_tolerances.py from {source} on {datetime.now(UTC):%Y-%m-%d}:",
        f"# the suite over seeds {', '.join(map(str, seeds))} (benchmarks/suites/ci-spread.toml).",
        "# value: the mean over the seeds; abs_tol: the larger of 3 sd, 1.5 x (mean - worst seed)",
        "# and the metric's floor, rounded up. Comments: mean, sd and worst seed of each entry.",
    ]
    if threads is not None:
        lines += [
            "# threads: the torch threads every run trained with (their environment.json); regress",
            "# compares only runs at this count (cdsf-bench bench SUITE --threads N, as .ci/run does).",
            "",
            f"{THREADS} = {threads}",
        ]
    lines.append("")
    for method, part in done.groupby("method", sort=False):
        metrics = DIAGNOSIS + tuple(m for m in SYNTHESIS if part[m].notna().all() and len(part[m].dropna()))
        for metric in metrics:
            values = part[metric].astype(float)
            if len(values) < 2:
                raise SystemExit(f"{source}: {method} has fewer than 2 seeds; a spread needs more")
            mean, sd, worst, allowed = tolerance(values, metric)
            name = f'"{method}"' if not str(method).replace("-", "").replace("_", "").isalnum() else method
            lines += [
                f"[methods.{name}.{metric}]",
                f"# {len(values)} seeds: mean {mean:.4f}, sd {sd:.4f}, worst {worst:.4f}",
                f"value = {mean!r}",
                f"abs_tol = {allowed!r}",
                "",
            ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="results.csv of the CI suite over several seeds")
    parser.add_argument("--out", type=Path, help="write the baseline here (default: print it)")
    args = parser.parse_args(argv)
    results = pd.read_csv(args.results)
    done = results.loc[results["status"] == "done", "run_folder"]
    counts = set(recorded_threads(args.results.parent, [str(run) for run in done]).values())
    if len(counts) > 1:
        raise SystemExit(f"{args.results}: the runs trained with several thread counts {sorted(counts)}")
    text = baseline_text(results, str(args.results), next(iter(counts), None))
    if args.out is None:
        sys.stdout.write(text)
    else:
        write_text(args.out, text)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
