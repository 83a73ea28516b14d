"""Provenance from the runs' own records: environment.json, the report's table and warnings,
and the machine section ``export`` writes into a results README."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from cdsf_bench import host
from cdsf_bench.bench.provenance import (
    FIELD_NAMES,
    NO_RUN,
    SECTION_END,
    SECTION_START,
    UNKNOWN,
    comparison_warnings,
    machine_blocks,
    machine_section,
    provenance_of,
    write_machine_section,
)
from cdsf_bench.bench.render import Paragraph
from cdsf_bench.bench.table import COLUMNS, RESULTS_FILE
from cdsf_bench.cli import main
from cdsf_bench.errors import InputError
from cdsf_bench.results import environment

METHODS = {"A": 120, "B": 200}  # method -> the n_train its metrics.json recorded
SEEDS = (0, 1)
TEST_SUBJECTS = 40


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def record(**changes: Any) -> dict[str, Any]:
    """A full environment.json of a CPU run, with ``changes`` (None: the field removed)."""
    base: dict[str, Any] = {
        "time_utc": "2026-12-07T10:00:00+00:00",
        "processor": "x86_64",
        "cpu_count": 2,
        "cpu_model": "Test CPU 9000",
        "cpu_features": {"avx512f": True, "avx512_bf16": True, "amx_bf16": False, "amx_tile": False},
        "torch_threads": 1,
        "torch_interop_threads": 2,
        "packages": {"torch": "2.13.0+cpu"},
        "device": "cpu",
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "git_uncommitted_changes": False,
        "mixed_precision_bf16": True,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def run_name(method: str, seed: int) -> str:
    return f"ad_cn/seed-{seed}/{method.lower()}"


def suite(folder: Path, records: dict[str, dict[str, Any] | None] | None = None) -> Path:
    """A finished two-method, two-seed suite folder without training: results.csv and per run
    predictions.csv, metrics.json and (``records``, default :func:`record`) environment.json."""
    records = records or {}
    rows = []
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        labels = np.repeat([0, 1], TEST_SUBJECTS // 2)
        for method, n_train in METHODS.items():
            run = run_name(method, seed)
            path = folder / run
            path.mkdir(parents=True)
            probability = np.clip(0.3 * labels + rng.uniform(0, 0.7, len(labels)), 0, 1)
            pd.DataFrame(
                {
                    "participant_id": [f"sub-{i:03d}" for i in range(len(labels))],
                    "label": labels,
                    "probability": probability,
                    "prediction": (probability >= 0.5).astype(int),
                    "has_pet": 1,
                }
            ).to_csv(path / "predictions.csv", index=False)
            (path / "metrics.json").write_text(json.dumps({"n": {"train": n_train}}))
            env = records.get(run, record())
            if env is not None:
                (path / "environment.json").write_text(json.dumps(env))
            row: dict[str, Any] = dict.fromkeys(COLUMNS, math.nan)
            row.update(
                suite="provenance",
                scenario="",
                task="ad_cn",
                seed=seed,
                fold="",
                method=method,
                synth="none",
                diag="mdm",
                coupling="single",
                status="done",
                auc=0.7 + 0.01 * seed,
                bacc=0.6,
                n_test=len(labels),
                n_train=n_train,
                n_val=20,
                run_folder=run,
                error="",
            )
            rows.append(row)
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(folder / RESULTS_FILE, index=False)
    return folder


def section_of(readme: Path) -> str:
    text = readme.read_text()
    assert text.count(SECTION_START) == 1 and text.count(SECTION_END) == 1
    return text[text.index(SECTION_START) : text.index(SECTION_END)]


# -- the record ------------------------------------------------------------------------------


def test_environment_records_the_cpu_its_bf16_features_and_both_thread_counts() -> None:
    env = environment(torch.device("cpu"), [])
    assert env["cpu_model"] == host.cpu_model() and env["cpu_model"]
    assert set(env["cpu_features"]) == set(host.BF16_FEATURES)
    assert env["torch_threads"] == torch.get_num_threads()
    assert env["torch_interop_threads"] == torch.get_num_interop_threads()
    features = env["cpu_features"]
    assert host.bf16_supported(torch.device("cpu")) == (features["avx512_bf16"] or features["amx_bf16"])
    read = provenance_of({**env, "mixed_precision_bf16": False})
    assert read.precision == "fp32" and read.cpu == env["cpu_model"]
    assert read.intra_op_threads == str(torch.get_num_threads())


def test_a_record_without_the_fields_reads_unknown() -> None:
    read = provenance_of({"time_utc": "2026-12-02T15:29:50+00:00"})
    assert set(vars(read).values()) == {UNKNOWN}
    assert set(FIELD_NAMES) == set(vars(read))  # every field has its name in a README
    assert provenance_of(record()).bf16_features == "AVX-512 BF16"
    plain = {"avx512f": True, "avx512_bf16": False, "amx_bf16": False, "amx_tile": False}
    assert provenance_of(record(cpu_features=plain)).bf16_features == "none"


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"mixed_precision_bf16": False}, "precision"),
        ({"torch_threads": 2}, "intra-op thread count"),
        ({"torch_interop_threads": 1}, "inter-op thread count"),
        ({"packages": {"torch": "2.14.0+cpu"}}, "torch version"),
        ({"device": "cuda:0", "gpu": "NVIDIA H100"}, "device"),
    ],
)
def test_each_difference_that_moves_a_metric_is_warned(change: dict[str, Any], named: str) -> None:
    done = pd.DataFrame({"run_folder": ["a", "b", "c"], "method": ["A", "B", "B"]})
    same = {run: provenance_of(record()) for run in done["run_folder"]}
    assert comparison_warnings(same, done) == []
    mixed = {**same, "c": provenance_of(record(**change))}
    (warning,) = comparison_warnings(mixed, done)
    assert f"different {named}:" in warning and "(2 runs: A, B)" in warning and "(1 run: B)" in warning
    unknown = {**same, "c": provenance_of(record(**dict.fromkeys(change)))}  # the fields missing
    assert comparison_warnings(unknown, done) == []  # unknown is no difference


# -- the report ------------------------------------------------------------------------------


def test_report_warns_when_it_compares_runs_of_different_precision(tmp_path: Path) -> None:
    folder = suite(tmp_path / "mixed", {run_name("B", 1): record(mixed_precision_bf16=False)})
    result = invoke("report", folder, "--format", "md")
    assert result.exit_code == 0, result.output
    assert "Warning: This report compares runs of different precision" in result.output
    report = (folder / "report.md").read_text()
    assert (
        "Warning: This report compares runs of different precision: "
        "bf16 autocast (3 runs: A, B); fp32 (1 run: B)" in report
    )
    assert f"| {run_name('B', 1)} | B | 200 | fp32 | 1 / 2 | 2.13.0+cpu | cpu |" in report
    assert f"| {run_name('A', 1)} | A | 120 | bf16 autocast | 1 / 2 | 2.13.0+cpu | cpu |" in report
    assert "figures/ad_cn_reliability.png" in report and (folder / "figures/ad_cn_reliability.png").is_file()

    same = suite(tmp_path / "same")
    result = invoke("report", same, "--format", "md")
    assert result.exit_code == 0, result.output
    assert "Warning" not in result.output and "Warning" not in (same / "report.md").read_text()


def test_report_and_export_of_runs_without_the_fields_say_unknown(tmp_path: Path) -> None:
    old = record(cpu_model=None, cpu_features=None, torch_interop_threads=None, mixed_precision_bf16=None)
    folder = suite(tmp_path / "old", {run_name("A", 0): old, run_name("B", 0): None})  # B: no record
    result = invoke("report", folder, "--format", "md")
    assert result.exit_code == 0, result.output
    report = (folder / "report.md").read_text()
    assert f"| {run_name('A', 0)} | A | 120 | unknown | 1 / unknown | 2.13.0+cpu | cpu |" in report
    assert f"| {run_name('B', 0)} | B | 200 | unknown | unknown / unknown | unknown | unknown |" in report
    assert "Warning" not in report
    result = invoke("export", folder, tmp_path / "export")
    assert result.exit_code == 0, result.output
    section = section_of(tmp_path / "export" / "README.md")
    assert (
        f"| 1: {run_name('B', 0)} | unknown | unknown | unknown | unknown / unknown | unknown | unknown "
        "| unknown |" in section
    )


# -- the README's machine section ------------------------------------------------------------


def test_export_writes_the_machine_section_the_records_say(tmp_path: Path) -> None:
    folder = suite(tmp_path / "suite")
    (folder / "README.md").write_text("# A suite\n\nWhat it asks.\n")
    assert invoke("export", folder, tmp_path / "first").exit_code == 0
    readme = tmp_path / "first" / "README.md"
    assert readme.read_text().startswith("# A suite\n\nWhat it asks.\n\n" + SECTION_START)
    section = section_of(readme)
    commit = record()["git_commit"]
    row = f"| all 4 | Test CPU 9000 | AVX-512 BF16 | bf16 autocast | 1 / 2 | 2.13.0+cpu | cpu | {commit} |"
    assert row in section and "Differ between runs: nothing." in section

    # a record changed, then the export exported again: its README's section is replaced
    exported = tmp_path / "first"
    changed = exported / run_name("B", 1) / "environment.json"
    changed.write_text(json.dumps(record(cpu_model="Other CPU", mixed_precision_bf16=False)))
    assert invoke("export", exported, tmp_path / "second").exit_code == 0
    again = section_of(tmp_path / "second" / "README.md")
    assert again != section
    others = ", ".join(run_name(m, s) for s in SEEDS for m in METHODS if (m, s) != ("B", 1))
    assert f"| 3: {others} | Test CPU 9000 | AVX-512 BF16 | bf16 autocast |" in again
    assert f"| 1: {run_name('B', 1)} | Other CPU | AVX-512 BF16 | fp32 |" in again
    assert "Differ between runs: CPU, precision." in again
    assert (tmp_path / "second" / "README.md").read_text().startswith("# A suite\n\nWhat it asks.\n")


def test_the_section_is_replaced_in_place_and_an_unclosed_one_refused(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\n{SECTION_START}\nby hand\n{SECTION_END}\n\n## After\n")
    write_machine_section(readme, f"{SECTION_START}\nnew\n{SECTION_END}\n")
    assert readme.read_text() == f"# Title\n\n{SECTION_START}\nnew\n{SECTION_END}\n\n## After\n"
    readme.write_text(f"# Title\n\n{SECTION_START}\nno end\n")
    with pytest.raises(InputError, match="never closes it"):
        write_machine_section(readme, f"{SECTION_START}\nnew\n{SECTION_END}\n")
    missing = tmp_path / "new" / "README.md"
    write_machine_section(missing, f"{SECTION_START}\nnew\n{SECTION_END}\n")
    assert missing.read_text() == f"{SECTION_START}\nnew\n{SECTION_END}\n"


def test_a_suite_without_a_finished_run_says_so(tmp_path: Path) -> None:
    done = pd.DataFrame({"run_folder": [], "method": []})
    assert machine_blocks(tmp_path, done)[-1] == Paragraph(NO_RUN)
    assert NO_RUN in machine_section(tmp_path, done)
