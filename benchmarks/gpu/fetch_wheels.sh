#!/usr/bin/env bash
# Download, here (where the package index is reachable), the pure-Python wheels that the GPU
# machine's image lacks, into benchmarks/gpu/wheels/ (git-ignored; it travels with the working
# tree as a carried path). The image has torch, numpy, scipy, pandas, scikit-learn, lxml,
# joblib, requests, packaging and pluggy (/work/.library/device/KINDS.md); cdsf-bench also needs:
#   nibabel  (Requires-Dist: numpy, packaging; importlib-resources and typing-extensions only on
#            older Pythons than the image's 3.12)
#   nilearn  (Requires-Dist: joblib, lxml, nibabel, numpy, packaging, pandas, requests,
#            scikit-learn, scipy: all in the image but nibabel)
#   tomli-w  (no requirements)
#   monai    (Requires-Dist: torch, numpy; the diffusion synthesiser, with einops from the image),
#            so that its tests and the precision check cover every shipped network
# Usage: bash benchmarks/gpu/fetch_wheels.sh   (from the repository root)
set -euo pipefail

#: the GPU image's Python (KINDS.md: python3 is 3.12.3); the versions are those this project is
#: developed and tested with
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
WHEELS=(nibabel==5.4.2 nilearn==0.14.1 tomli-w==1.2.0 monai==1.6.1)

here=$(cd "$(dirname "$0")" && pwd)
dest="$here/wheels"
mkdir -p "$dest"
rm -f "$dest"/*.whl
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version "$PYTHON_VERSION" --implementation py --abi none --platform any \
  -d "$dest" "${WHEELS[@]}"

# pure-Python wheels only (py3-none-any): a compiled one would not match the machine for sure
for wheel in "$dest"/*.whl; do
  case "$wheel" in
    *-py3-none-any.whl | *-py2.py3-none-any.whl) ;;
    *) echo "error: $wheel is not a pure-Python wheel" >&2; exit 1 ;;
  esac
done
count=$(find "$dest" -name '*.whl' | wc -l)
if [ "$count" -ne "${#WHEELS[@]}" ]; then
  echo "error: expected ${#WHEELS[@]} wheels in $dest, found $count" >&2
  exit 1
fi
du -sh "$dest"
ls -1 "$dest"
