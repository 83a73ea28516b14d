"""The headline figures of each step of the GPU check, read from the files the step left.

Each function takes a step's folder and returns a small dict for ``summary.json``; the full
records stay in the step's files (``results.tar.gz``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def env(folder: Path) -> dict[str, Any]:
    env = json.loads((folder / "env.json").read_text())
    keys = ("python", "torch", "cuda", "cudnn", "gpu", "bf16_supported", "missing_imports")
    return {key: env.get(key) for key in keys}


def test(folder: Path) -> dict[str, Any]:
    import xml.etree.ElementTree as ET

    root = ET.parse(folder / "junit.xml").getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    totals = {
        key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")
    }
    failed = [
        f"{case.get('classname')}::{case.get('name')}"
        for s in suites
        for case in s.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return {**totals, "failed": failed}


def precision(folder: Path) -> dict[str, Any]:
    report = json.loads((folder / "precision.json").read_text())
    worst = {
        f"{r['kind']}:{r['name']}": {
            c: [round(v["output_rel_error"], 5), round(v["grad_rel_error"], 5)]
            for c, v in r["candidates"].items()
        }
        for r in report["networks"]
    }
    return {
        "output_and_grad_rel_error": worst,
        "suspect": report["suspect"],
        "not_checked": report["not_checked"],
    }


def perf(folder: Path) -> dict[str, Any]:
    result = json.loads((folder / "perf.json").read_text())
    coupling, bf16 = result["coupling"], result["reference_rates"]["bf16_matmul"]
    return {
        "step_s": coupling["median_s"],
        "subjects_per_s": coupling["subjects_per_s"],
        "gflop_per_s": coupling["gflop_per_s"],
        "share_of_bf16_matmul": coupling.get("share_of_bf16_matmul"),
        "bf16_matmul_gflop_per_s": None if bf16 is None else bf16["gflop_per_s"],
        "pipeline_share_of_step": result["pipeline"]["share_of_coupling_step"],
        "peak_memory_mib": result["memory"]["peak_mib"],
        "bf16_autocast": result["settings"]["bf16_autocast"],
    }


def paper(folder: Path) -> dict[str, Any]:
    usage = json.loads((folder / "usage.json").read_text())
    run = folder / "run"
    timing = json.loads((run / "timing.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    rows = (run / "history.csv").read_text().splitlines()
    header, first = rows[0].split(","), rows[1].split(",")
    epoch_s = float(first[header.index("seconds")])
    train = metrics["n"]["train"]
    return {
        "wall_s": usage["wall_s"],
        "data_s": timing.get("data_seconds"),
        "epoch_s": epoch_s,
        "train_subjects": train,
        "subjects_per_s": train / epoch_s,
        "cuda_peak_allocated_mib": usage["cuda_peak_allocated_mib"],
        "peak_rss_mib": usage["peak_rss_mib"],
        "test_auc": metrics["diagnosis"]["auc"],
    }


def suite(folder: Path) -> dict[str, Any]:
    runs = sorted(folder.glob("suite/**/metrics.json"))
    finished = {
        str(path.parent.relative_to(folder / "suite")): json.loads(path.read_text())["diagnosis"]["auc"]
        for path in runs
    }
    return {
        "finished_runs": len(finished),
        "test_auc": finished,
        "complete": (folder / "suite" / "results.csv").exists(),
    }
