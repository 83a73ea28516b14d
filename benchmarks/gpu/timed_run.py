"""Run one ``cdsf-bench`` command in this process and record its wall time and peak memory.

A run records its own times (``timing.json``) but not the GPU's peak memory, which only the
process that allocated it can read; so the command runs here, in-process, and the peak of
torch's CUDA allocator (and the process's peak RSS) is written to ``--record`` at the end,
whether the command succeeded or not.

    python benchmarks/gpu/timed_run.py --record usage.json -- run --preset paper --epochs 1
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from cdsf_bench.perf.harness import MIB, process_peak_rss_mib


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", required=True, help="JSON file for the wall time and peak memory")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the cdsf-bench command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    from cdsf_bench.cli import main as cli

    started = time.perf_counter()
    status: int | str | None = 0
    try:
        cli.main(command, prog_name="cdsf-bench", standalone_mode=True)
    except SystemExit as stop:
        status = stop.code
    record = {
        "command": ["cdsf-bench", *command],
        "exit_status": status,
        "wall_s": time.perf_counter() - started,
        "peak_rss_mib": process_peak_rss_mib(),
        "cuda_peak_allocated_mib": None,
        "cuda_peak_reserved_mib": None,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        record["cuda_peak_allocated_mib"] = torch.cuda.max_memory_allocated() / MIB
        record["cuda_peak_reserved_mib"] = torch.cuda.max_memory_reserved() / MIB
    with open(args.record, "w") as handle:
        json.dump(record, handle, indent=2)
    return status if isinstance(status, int) else 1


if __name__ == "__main__":
    raise SystemExit(main())
