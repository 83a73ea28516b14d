#!/usr/bin/env bash
# Byte identity of the house repair (issue 32): the same runs from the tree before (48e9fac) and
# after (5ccd4fb), one thread each, compared file by file. usage: compare.sh BEFORE_DIR AFTER_DIR
# (each holding ci/ from `cdsf-bench bench benchmarks/suites/ci.toml --out DIR/ci` and default3/ from
# `cdsf-bench run --synth ism --diag mdm --joint --epochs 3 --out DIR/default3`, OMP_NUM_THREADS=1).
set -u
before=$1 after=$2
for f in metrics.json predictions.csv config.toml splits.csv; do
  cmp -s "$before/default3/$f" "$after/default3/$f" && echo "default3/$f identical" || echo "default3/$f DIFFERS"
done
cmp -s <(cut -d, -f1-18 "$before/default3/history.csv") <(cut -d, -f1-18 "$after/default3/history.csv") \
  && echo "default3/history.csv identical but its seconds column" || echo "default3/history.csv DIFFERS"
n=0; for f in "$before"/default3/synth/*; do cmp -s "$f" "$after/default3/synth/$(basename "$f")" || echo "DIFFERS $f"; n=$((n + 1)); done
echo "default3/synth: $n synthetic PET volumes compared"
for run in "$before"/ci/ad_cn/seed-0/*/; do
  m=$(basename "$run")
  cmp -s "$run/metrics.json" "$after/ci/ad_cn/seed-0/$m/metrics.json" && cmp -s "$run/predictions.csv" \
    "$after/ci/ad_cn/seed-0/$m/predictions.csv" && echo "ci/$m metrics.json and predictions.csv identical" \
    || echo "ci/$m DIFFERS"
done
python3 - "$before/ci/results.csv" "$after/ci/results.csv" <<'PY'
import sys
import pandas as pd
before, after = (pd.read_csv(path) for path in sys.argv[1:])
differ = [c for c in before.columns if not before[c].equals(after[c])]
print("ci results.csv: same columns" if list(before.columns) == list(after.columns) else "COLUMNS DIFFER",
      "; columns that differ:", differ or "none")
PY
