#!/usr/bin/env bash
# The prepared GPU check, as one command on a bare GPU machine (from the repository root):
#   bash benchmarks/gpu/run.sh              # the GPU plan, outputs in $OUT
#   bash benchmarks/gpu/run.sh --dry-run    # the same steps on the CPU at tiny sizes
# Other options go to benchmarks/gpu/check.py (--budget, --only, --timeout STEP=SECONDS).
#
# Installs, without network and without touching the machine's torch, the wheels carried in
# benchmarks/gpu/wheels/ (benchmarks/gpu/fetch_wheels.sh) into a private folder, puts the
# working tree and its plugins on PYTHONPATH, registers cdsf-bench's entry points there from
# pyproject.toml (benchmarks/gpu/dist_info.py), and runs the check's driver.
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
: "${OUT:?set OUT to the folder for the outputs}"
mkdir -p "$OUT"
site=${CDSF_GPU_SITE:-/tmp/cdsf-gpu-site}
mkdir -p "$site"

wheels=("$root"/benchmarks/gpu/wheels/*.whl)
if [ -e "${wheels[0]}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "${wheels[@]}" || { echo "error: installing the carried wheels failed" >&2; exit 1; }
else
  echo "note: no wheels in benchmarks/gpu/wheels (run fetch_wheels.sh here first); using what is installed" >&2
fi
export PYTHONPATH="$root:$root/plugins:$site${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$site/bin:$PATH"
python3 "$root/benchmarks/gpu/dist_info.py" "$site" || exit 1

set -o pipefail
python3 "$root/benchmarks/gpu/check.py" --out "$OUT" "$@" 2>&1 | tee "$OUT/driver.log"
