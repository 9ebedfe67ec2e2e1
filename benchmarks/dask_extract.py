"""Single-process extraction against `--dask local:2`, side by side in one run, on scikit-learn's 1797 digits.

Both are whole `featurehead extract` processes into fresh stores (VGG16 weights none at 64 px, flatten, shards
of 256 rows), so the Dask side pays its cluster start-up and one model build per worker, as a user would.

    python benchmarks/dask_extract.py --workdir /tmp/fh/dask --json /tmp/dask_extract.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARGS = ["--model", "vgg16", "--weights", "none", "--input-size", "64", "--shard-rows", "256"]


def extract(index: Path, store: Path, *extra: str) -> float:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "-q", "extract", str(index), *ARGS, "--out",
                          str(store), *extra], capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if out.returncode:
        raise SystemExit(f"extract failed: {out.stderr.strip().splitlines()[-1]}")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dask_extract-"))
    if work.exists():
        shutil.rmtree(work)
    from pipelines.runs.demo import write_digits

    index = write_digits(work / "digits")
    single = extract(index, work / "single")
    dask = extract(index, work / "dask", "--dask", f"local:{args.workers}")
    import numpy as np

    import features_store

    a, b = features_store.load(work / "single", ok_only=False), features_store.load(work / "dask", ok_only=False)
    same = bool((a[2] == b[2]).all() and np.allclose(a[0], b[0], rtol=1e-5, atol=1e-6))
    results = {"n": len(a[2]), "single_s": single, "dask_s": dask, "workers": args.workers,
               "single_over_dask": single / dask, "same_features": same}
    print(f"{results['n']} digits, VGG16 at 64 px: single process {single:.1f} s, --dask local:{args.workers} "
          f"{dask:.1f} s; speedup {single / dask:.2f}x; same features: {same}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
