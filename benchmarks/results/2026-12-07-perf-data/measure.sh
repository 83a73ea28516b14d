#!/usr/bin/env bash
# issue 20 measurements on the idle machine: before = /work/before (05f4c24), after = /work/wt20
set -u
out=/work/runs/perf
export CDSF_BENCH_QUIET=1 CDSF_BENCH_CACHE=/work/runs/perf/cache
cd /tmp
uptime > $out/load-start.txt
PYTHONPATH=/work/wt20:/work/wt20/plugins python3 /work/wt20/benchmarks/perf_data.py --subjects 1000 --resolution 4 --json > $out/data-after.json 2> $out/data-after.err
PYTHONPATH=/work/before:/work/before/plugins python3 $out/before_eval.py > $out/data-before.json 2> $out/data-before.err
uptime > $out/load-end.txt
