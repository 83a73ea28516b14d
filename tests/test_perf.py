"""``cdsf-bench perf``: every reported field is present and sane, and each switch is real.

No test here asserts a speed: timings depend on the machine and on whatever else runs on
it, so the targets are shown by the benchmark command (benchmarks/perf_step.py), never by
a timed test. These tests check structure, types and the settings that were used; the
targets' verdicts (benchmarks/targets.py) are checked for their structure on a perf result.
"""

from __future__ import annotations

import io
import json
import math
import os

import pytest
import torch
from click.testing import CliRunner
from rich.console import Console
from support import load_benchmark

from cdsf_bench.cli import main
from cdsf_bench.host import bf16_supported
from cdsf_bench.perf import Timing, render
from cdsf_bench.perf.harness import time_calls

SMALL = ["perf", "--json", "--size", "16", "16", "16", "--batch", "2", "--repeats", "2"]
TIMED_PARTS = ("synthesiser", "diagnoser", "coupling", "pipeline", "synthesiser_fp32_reference")


def _perf(*extra: str) -> dict:
    result = CliRunner().invoke(main, [*SMALL, *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def default_run() -> dict:
    return _perf()


@pytest.fixture(scope="module")
def plain_run() -> dict:
    return _perf("--no-bf16", "--no-channels-last")


def _positive(value: object) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


def test_every_timed_part_reports_positive_times(default_run: dict):
    for part in TIMED_PARTS:
        record = default_run[part]
        assert record is not None, part
        assert _positive(record["median_s"]), part
        assert record["iqr_s"] >= 0
        assert record["q1_s"] <= record["median_s"] <= record["q3_s"]
        assert len(record["times_s"]) == 2
        assert all(_positive(t) for t in record["times_s"])
        assert _positive(record["subjects_per_s"])
        assert _positive(record["peak_memory_mib"])


def test_flops_are_counted_for_every_training_step(default_run: dict):
    for part in ("synthesiser", "diagnoser", "coupling", "synthesiser_fp32_reference"):
        assert _positive(default_run[part]["gflop"]), part
        assert _positive(default_run[part]["gflop_per_s"]), part
    # the same network does the same arithmetic whatever its precision
    assert default_run["synthesiser"]["gflop"] == pytest.approx(
        default_run["synthesiser_fp32_reference"]["gflop"]
    )
    # the joint step runs the synthesiser and the diagnoser, so it counts more than either
    assert default_run["coupling"]["gflop"] > default_run["synthesiser"]["gflop"]
    assert default_run["pipeline"]["gflop"] is None


def test_coupling_reports_its_stages_and_batch(default_run: dict):
    coupling = default_run["coupling"]
    assert coupling["name"] == "joint"
    assert [stage["stage"] for stage in coupling["stages"]] == ["joint"]
    assert coupling["batch_subjects"] == 2
    assert 0 <= coupling["batch_with_pet"] <= 2
    assert isinstance(coupling["batches_refused"], list)
    assert coupling["param_dtypes"] == ["float32"]


def test_shares_and_reference_rates_are_sane(default_run: dict):
    # The shares are ratios of two timings; their size depends on what else the machine runs
    # (a reference matmul timed while another process held the cores made one 47), so this
    # checks what they are, not how large they come out: speed figures are benchmarks' business.
    from cdsf_bench.host import bf16_supported

    rates = default_run["reference_rates"]
    coupling, pipeline = default_run["coupling"], default_run["pipeline"]
    assert pipeline["share_of_coupling_step"] == pytest.approx(pipeline["median_s"] / coupling["median_s"])
    assert _positive(pipeline["share_of_coupling_step"])
    # bf16 is timed only where it has a hardware path (emulated, it is no reference and takes minutes)
    timed = {"fp32_matmul": "float32"}
    if bf16_supported(torch.device("cpu")):
        timed["bf16_matmul"] = "bfloat16"
    else:
        assert rates["bf16_matmul"] is None and coupling["share_of_bf16_matmul"] is None
    for key, dtype in timed.items():
        share = coupling["gflop_per_s"] / rates[key]["gflop_per_s"]
        assert coupling[f"share_of_{key}"] == pytest.approx(share)
        assert _positive(coupling[f"share_of_{key}"])
        assert rates[key]["dtype"] == dtype
        assert _positive(rates[key]["gflop_per_s"])
        assert rates[key]["best_gflop_per_s"] >= rates[key]["gflop_per_s"]
    assert _positive(default_run["synthesiser_fp32_reference"]["speedup_of_synthesiser"])
    assert _positive(default_run["memory"]["peak_mib"])
    assert isinstance(default_run["memory"]["kind"], str)


def test_targets_are_reported_with_thresholds(default_run: dict):
    goals = load_benchmark("targets").targets(default_run)
    assert goals["applies"] is False  # 16^3 is not the 64^3
    measured = ["synthesiser_speedup_vs_fp32_contiguous", "pipeline_share_of_coupling_step"]
    if default_run["reference_rates"]["bf16_matmul"] is None:  # no bf16 hardware: not measurable
        assert goals["coupling_share_of_bf16_matmul"]["met"] is None
    else:
        measured.append("coupling_share_of_bf16_matmul")
    for key in measured:
        assert _positive(goals[key]["value"])
        assert goals[key]["met"] in (True, False)


def test_warnings_are_a_list_of_sentences(default_run: dict):
    """A busy machine is warned about in a sentence; an idle one is not."""
    from cdsf_bench.perf.measure import _warnings

    assert isinstance(default_run["warnings"], list)
    cores = os.cpu_count() or 1
    cpu = torch.device("cpu")
    busy = _warnings([4.0 * cores, 1.0, 1.0], cpu)
    assert busy and all(isinstance(w, str) and w[0].islower() and w.endswith(".") for w in busy)
    assert "busy" in busy[0] and f"on {cores} cores" in busy[0]
    assert not any("busy" in w for w in _warnings([0.0, 0.0, 0.0], cpu))


def test_settings_record_how_it_was_measured(default_run: dict):
    settings = default_run["settings"]
    assert settings["size"] == [16, 16, 16]
    assert settings["batch"] == 2
    assert settings["repeats"] == 2
    assert settings["method"] == {"synth": "ism", "diag": "mdm", "coupling": "joint"}
    assert settings["channels_last_3d"] is True
    assert settings["bf16_requested"] is True
    assert isinstance(settings["bf16_autocast"], bool)
    assert settings["master_weights"] == "float32"
    assert settings["loss_dtype"] == "float32"
    assert settings["threads"] >= 1
    assert isinstance(settings["torch"], str)
    assert set(settings["cpu_flags"]) >= {"avx512_bf16", "amx_bf16"}
    assert default_run["synthesiser"]["param_dtypes"] == ["float32"]
    for part in ("synthesiser", "diagnoser"):
        assert default_run[part]["layer_output_layouts"]["channels_last"] > 0, part
    expected = "bfloat16" if settings["bf16_autocast"] else "float32"
    assert default_run["synthesiser"]["output_dtype"] == expected


def test_precision_switches_change_what_runs(plain_run: dict):
    settings = plain_run["settings"]
    assert settings["bf16_requested"] is False
    assert settings["bf16_autocast"] is False
    assert settings["channels_last_3d"] is False
    assert plain_run["synthesiser"]["output_dtype"] == "float32"
    for part in ("synthesiser", "diagnoser"):
        assert plain_run[part]["layer_output_layouts"]["channels_last"] == 0, part
    # plain fp32 contiguous is the reference itself: measured once, speed-up exactly 1
    reference = plain_run["synthesiser_fp32_reference"]
    assert reference["reused_from_synthesiser"] is True
    assert reference["speedup_of_synthesiser"] == pytest.approx(1.0)


def test_table_output_names_every_part_and_the_targets(default_run: dict):
    out = Console(file=io.StringIO(), width=200)
    render(default_run, out)
    load_benchmark("targets").render_targets(default_run, out)
    text = out.file.getvalue()
    for words in (
        "synthesiser ism",
        "diagnoser mdm",
        "coupling joint",
        "pipeline batch",
        "ism fp32 plain",
        # on by default where the CPU has bf16 instructions (cdsf_bench.host), off elsewhere
        f"bf16 autocast {'on' if bf16_supported(torch.device('cpu')) else 'off'}",
        "issue targets",
    ):
        assert words in text, words


def test_bad_size_is_a_usage_error():
    result = CliRunner().invoke(main, ["perf", "--size", "0", "16", "16"])
    assert result.exit_code == 2
    assert "--size" in result.output


def test_timing_summary_is_median_and_quartiles():
    timing = Timing([4.0, 1.0, 3.0, 2.0, 5.0])
    summary = timing.summary(subjects=2, flops=6e9)
    assert summary["median_s"] == 3.0
    assert summary["q1_s"] == 2.0 and summary["q3_s"] == 4.0
    assert summary["iqr_s"] == 2.0
    assert summary["subjects_per_s"] == pytest.approx(2 / 3)
    assert summary["gflop_per_s"] == pytest.approx(2.0)


def test_time_calls_warms_up_then_times_each_call():
    calls: list[int] = []
    timing = time_calls(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5
    assert len(timing.seconds) == 3
    assert timing.best == min(timing.seconds) >= 0
