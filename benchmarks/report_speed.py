"""Time `featurehead report` on a 10,000-row test split (the target: under 30 s on 2 cores).

Builds, once per workdir, N_TRAIN + N_TEST tiny generated PNG images of 10 classes (noisy, so the head makes
mistakes to show), extracts them with a cheap random-init model (`vgg16 --weights none --input-size 32
--pooling avg`: these numbers test speed, not accuracy), trains a logistic-regression head on the train rows,
then times `featurehead report HEAD STORE --split test` as a whole process (interpreter, imports, evaluation,
figures, thumbnails, the page), `--repeat` times.

    python benchmarks/report_speed.py --workdir /tmp/fh/report_speed --json /tmp/report_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MODEL = ["--model", "vgg16", "--weights", "none", "--input-size", "32", "--pooling", "avg"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def write_images(root: Path, n_train: int, n_test: int, classes: int = 10, size: int = 32) -> Path:
    """Noisy images whose mean colour depends on the class; returns index.csv."""
    from PIL import Image

    rng = np.random.default_rng(0)
    lines = ["filename,label,split"]
    for i in range(n_train + n_test):
        label = i % classes
        base = np.zeros((size, size, 3))
        base[..., label % 3] = 12 * label
        arr = np.clip(rng.normal(base + 80, 60), 0, 255).astype(np.uint8)
        name = f"{label}/{i:05d}.png"
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / name)
        lines.append(f"{name},class {label},{'train' if i < n_train else 'test'}")
    (root / "index.csv").write_text("\n".join(lines) + "\n")
    return root / "index.csv"


def cli(*argv: str) -> tuple[float, list[str]]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "-q", *argv], capture_output=True, text=True,
                         env=ENV, cwd=Path(__file__).resolve().parents[1])
    seconds = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"featurehead {argv[0]} failed: {out.stderr.strip()[-500:]}")
    return seconds, out.stdout.strip().splitlines()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=None, help="images, store and head (kept; reused when present)")
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="report_speed-")).resolve()
    store, head = work / "store", work / "head"
    setup = {}
    if not (head / "manifest.json").is_file():
        t0 = time.perf_counter()
        index = write_images(work / "images", args.n_train, args.n_test)
        setup["write_images_s"] = time.perf_counter() - t0
        setup["extract_s"], _ = cli("extract", str(index), *MODEL, "--out", str(store))
        setup["train_s"], _ = cli("train", str(store), "--head", "logreg", "--out", str(head))
    runs = []
    for i in range(args.repeat):
        seconds, lines = cli("report", str(head), str(store), "--split", "test", "--out", str(work / "report"))
        runs.append(seconds)
        print(f"report {i + 1}: {seconds:.2f} s  ({lines[0]})")
    result = {"n_train": args.n_train, "n_test": args.n_test, "setup": setup, "report_s": runs,
              "report_best_s": min(runs), "report_median_s": float(np.median(runs)), "page": lines[-1],
              "page_bytes": Path(lines[-1]).stat().st_size}
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
