#!/usr/bin/env bash
# VGG16 at 224 from 2,000 JPEGs on the lent GPU machine (Python 3.12, torch, jax, h5py; no tensorflow, no
# registry): featurehead end to end and model-only, fp32 and bf16, under jax and under torch, against seed-style
# code on the same GPU; GPU utilisation from `nvidia-smi dmon`. Meant to finish in under 5 minutes.
#
# Here, with the registry (once):   bash benchmarks/gpu.sh --fetch
#   downloads, as cp312 wheels into benchmarks/.gpu_wheels (git-ignored), only what that machine's image lacks:
#   keras, its optree and namex, and simplejpeg. Everything else featurehead imports on this path (numpy, h5py,
#   pandas, Pillow, OpenCV, scikit-learn, joblib, tqdm, filelock, rich, absl-py, ml-dtypes) is in the image
#   (/work/.library/device/KINDS.md, "Python packages already there"), and a carried copy would shadow the
#   image's own version of it (ml-dtypes under jax, say). It also copies scikit-learn's two sample photos there.
# There, through the device tool:   run(command="bash benchmarks/gpu.sh", carry=["benchmarks/.gpu_wheels"])
#   results: $OUT/gpu-jax.json, $OUT/gpu-torch.json, $OUT/dmon-*.txt, and the printed summary.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=benchmarks/.gpu_wheels
N=${N:-2000}          # N, SIZE and BATCH may be lowered for a dry run on a CPU
SIZE=${SIZE:-224}
BATCH=${BATCH:-256}
PY=${PYTHON:-$(command -v python3 || command -v python)}   # the device's image documents python3, not python

if [[ "${1:-}" == "--fetch" ]]; then
  mkdir -p "$WHEELS"
  "$PY" -m pip download --quiet --only-binary=:all: --no-deps --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --implementation cp -d "$WHEELS" \
    keras==3.15.1 optree==0.20.0 namex==0.1.0 simplejpeg==1.9.0   # the versions tested here
  "$PY" - "$WHEELS" <<'PY'
import shutil, sys
from pathlib import Path
import sklearn.datasets
src = Path(sklearn.datasets.__file__).parent / "images"
for f in src.glob("*.jpg"):
    shutil.copy(f, Path(sys.argv[1]) / f.name)
PY
  du -sh "$WHEELS"
  exit 0
fi

OUT=${OUT:-/tmp/fh-gpu-out}
mkdir -p "$OUT"
DEPS=/tmp/fh-gpu-deps
rm -rf "$DEPS"
"$PY" -m pip install --quiet --no-index --no-deps --target "$DEPS" "$WHEELS"/*.whl
export PYTHONPATH="$DEPS:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# the image's package list was read on 2026-11-17: say at once, in one line, if it lacks something now
"$PY" -c 'import importlib.util as u, sys
m = [n for n in sys.argv[1:] if u.find_spec(n) is None]
sys.exit("gpu.sh: missing here: " + " ".join(m) + " (add their cp312 wheels to the --fetch list)" if m else 0)' \
  numpy h5py pandas PIL cv2 sklearn joblib tqdm filelock rich absl ml_dtypes keras optree namex simplejpeg
# on a machine with nvidia-smi a backend that sees no GPU stops at once (no CPU figures passed off as GPU ones);
# without it (a dry run on a CPU) the figures are labelled with the device they ran on
REQUIRE_GPU=
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader && REQUIRE_GPU=--require-gpu
for backend in jax torch; do
  DMON=
  if command -v nvidia-smi >/dev/null; then nvidia-smi dmon -s u -d 1 > "$OUT/dmon-$backend.txt" 2>&1 & DMON=$!; fi
  limit=200; [[ $backend == jax ]] && limit=280   # jax compiles 3 times per precision (ours; the seed's 32 and tail)
  KERAS_BACKEND=$backend timeout "$limit" "$PY" benchmarks/gpu_bench.py --n "$N" --size "$SIZE" --batch-size "$BATCH" \
    --photos "$WHEELS" --json "$OUT/gpu-$backend.json" $REQUIRE_GPU ${TORCH_COMPILE:+--torch-compile} \
    || echo "$backend: failed or timed out (exit $?)"
  [[ -n $DMON ]] && kill "$DMON" 2>/dev/null || true
done
