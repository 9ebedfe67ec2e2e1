"""Store v2 refreshes against a full extraction, side by side in one run, on scikit-learn's 1797 real digits.

Each step is one `featurehead extract` process (interpreter, imports, hashing, the model only when needed, the
view), timed as a whole, as a user runs it:

- full:      a fresh store from the whole index (the cost that every refresh below used to pay again);
- relabel:   the same images, a tenth of the labels changed and a new split column (no model is built);
- append:    the index grows by 10% (only the new images go through the model);
- moved:     the same images copied to another root with new mtimes (every file is hashed again, none extracted).

It also measures, in this process, the end-to-end extraction rate against the model-only forward pass over the
same decoded images (the ceiling of any extractor with this model on this machine).

    python benchmarks/store_refresh.py --workdir /tmp/fh/refresh --json /tmp/store_refresh.json
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

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL = ["--model", "vgg16", "--weights", "none", "--input-size", "64", "--pooling", "avg"]


def extract(index: Path, store: Path, *extra: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "-q", "extract", str(index), *MODEL, "--out",
                          str(store), *extra], capture_output=True, text=True, env={**os.environ,
                          "TF_CPP_MIN_LOG_LEVEL": "3"})
    seconds = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"extract failed: {out.stderr.strip().splitlines()[-1]}")
    return seconds, out.stdout.strip().splitlines()[0]


def model_ceiling(index: Path, n: int) -> dict:
    """End-to-end rows/s of `run_extract` against the model-only forward on the same, already decoded images."""
    from extract import get_extractor, read_batch, read_index
    from pipelines.runs.extraction import run_extract

    index = read_index(index)
    extractor = get_extractor("vgg16", weights="none", input_size=64, pooling="avg")
    extractor(np.zeros((1, 64, 64, 3), np.uint8))  # build and compile outside both timings
    images, _, _ = read_batch(index.paths[:n], (64, 64))
    t0 = time.perf_counter()
    extractor(images)
    model_only = n / (time.perf_counter() - t0)
    small = index.frame.iloc[:n]
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "index.csv"
        small.rename(columns={"id": "filename"}).to_csv(csv, index=False)
        sub = read_index(csv, index.root)
        t0 = time.perf_counter()
        run_extract(sub, extractor, Path(tmp) / "store")
        end_to_end = n / (time.perf_counter() - t0)
    return {"rows": n, "model_only_rows_per_s": model_only, "end_to_end_rows_per_s": end_to_end,
            "ratio": end_to_end / model_only}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=None, help="where the digits and stores go (default: a temp folder)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="store_refresh-"))
    if work.exists():
        shutil.rmtree(work)
    from pipelines.runs.demo import write_digits

    index = write_digits(work / "digits")
    frame = pd.read_csv(index, dtype=str, keep_default_na=False)
    n = len(frame)
    results = {"n": n}

    results["full"], _ = extract(index, work / "full")

    relabelled = frame.copy()
    flip = np.arange(n) % 10 == 0
    relabelled.loc[flip, "label"] = "relabelled"
    relabelled["split"] = np.where(np.arange(n) % 5 == 0, "test", "train")
    relabelled.to_csv(work / "digits" / "relabel.csv", index=False)
    results["relabel"], line = extract(work / "digits" / "relabel.csv", work / "full")
    assert line.startswith("up to date"), line

    first = frame.iloc[: int(n * 0.9)]
    first.to_csv(work / "digits" / "first90.csv", index=False)
    extract(work / "digits" / "first90.csv", work / "appended")
    results["append_10pct"], line = extract(index, work / "appended")
    assert line.startswith(f"extracted {n - len(first)} new rows"), line

    moved = work / "moved"
    shutil.copytree(work / "digits", moved, copy_function=shutil.copy)  # new mtimes: every file is re-hashed
    results["moved_root"], line = extract(moved / "index.csv", work / "full")
    assert line.startswith("up to date"), line

    results["ceiling"] = model_ceiling(index, 512)
    print(f"{n} digits at 64 px, VGG16 (weights none, avg pooling), one `featurehead extract` process per step")
    print(f"{'step':<14} {'seconds':>8} {'÷ full':>8}")
    for step in ("full", "relabel", "append_10pct", "moved_root"):
        print(f"{step:<14} {results[step]:8.2f} {results[step] / results['full']:8.3f}")
    c = results["ceiling"]
    print(f"end to end {c['end_to_end_rows_per_s']:.1f} rows/s vs model-only {c['model_only_rows_per_s']:.1f} "
          f"rows/s on {c['rows']} rows: {c['ratio']:.3f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
