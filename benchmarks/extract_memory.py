"""Peak memory and throughput of extraction: seed-style code against `featurehead extract`, side by side.

The seed style (as in the seed article): load every image into one array, `preprocess_input`, one
`model.predict`, reshape to 25088. Each variant runs in its own process over the same N generated JPEGs at
224 px, for two N; peak RSS comes from the child's `ru_maxrss`.

    python benchmarks/extract_memory.py --n 64 256
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SEED_STYLE = r"""
import sys, glob
import numpy as np
from PIL import Image
import keras
from keras.applications.vgg16 import VGG16, preprocess_input
files = sorted(glob.glob(sys.argv[1] + "/*.jpg"))
model = VGG16(weights=None, include_top=False, input_shape=(224, 224, 3))
images = np.array([np.asarray(Image.open(f).convert("RGB").resize((224, 224))) for f in files], dtype="float32")
features = model.predict(preprocess_input(images), batch_size=32, verbose=0).reshape(len(files), 25088)
"""

OURS = r"""
import sys
from pipelines.cli import main
code = main(["-q", "extract", sys.argv[1] + "/index.csv", "--weights", "none", "--out", sys.argv[2],
             "--batch-size", "32"])
assert code == 0, code
"""

# Both variants are timed as whole processes: interpreter, Keras import, model construction, decoding and the
# forward passes, so fixed costs count the same on both sides.


def make_images(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = ["filename,label"]
    for i in range(n):
        arr = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"{i:05d}.jpg", quality=90)
        lines.append(f"{i:05d}.jpg,{i % 2}")
    (folder / "index.csv").write_text("\n".join(lines) + "\n")


def run_child(code: str, *args: str, env: dict) -> tuple[float, float]:
    """Run `code` in a fresh interpreter; return (its wall seconds, its peak RSS in MiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kib <= before:
        raise RuntimeError("ru_maxrss did not rise above an earlier child's peak")
    return seconds, peak_kib / 1024.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[64, 256], help="image counts (default: 64 256)")
    parser.add_argument("--workdir", default=None, help="where the JPEGs go (default: a temp folder)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="fh-bench-"))
    rows = []
    for n in args.n:
        folder = work / f"n{n}"
        make_images(folder, n)
        # ru_maxrss of RUSAGE_CHILDREN is the max over all children so far: measure each in its own runner
        for name, extra in (("seed", []), ("featurehead", [str(folder / "store")])):
            shutil.rmtree(folder / "store", ignore_errors=True)
            runner = subprocess.run(
                [sys.executable, __file__, "--_child", name, str(folder), *extra], env=env, capture_output=True, text=True
            )
            if runner.returncode != 0:
                raise SystemExit(runner.stderr[-3000:])
            seconds, peak = json.loads(runner.stdout.strip().splitlines()[-1])
            rows.append({"variant": name, "n": n, "seconds": seconds, "images_per_s": n / seconds, "peak_rss_mib": peak})
            print(f"{name:>12}  N={n:<5}  {n / seconds:7.1f} img/s  peak RSS {peak:8.0f} MiB", flush=True)
    by = {(r["variant"], r["n"]): r for r in rows}
    lo, hi = min(args.n), max(args.n)
    for name in ("seed", "featurehead"):
        growth = by[(name, hi)]["peak_rss_mib"] / by[(name, lo)]["peak_rss_mib"] - 1
        print(f"{name:>12}  peak RSS growth N={lo} -> N={hi}: {growth * 100:+.1f}%")
    for n in args.n:
        ratio = by[("featurehead", n)]["images_per_s"] / by[("seed", n)]["images_per_s"]
        print(f"throughput featurehead / seed at N={n}: {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def _child(argv) -> None:
    name, folder, *extra = argv
    code = SEED_STYLE if name == "seed" else OURS
    seconds, peak = run_child(code, folder, *extra, env=dict(os.environ))
    print(json.dumps([seconds, peak]))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--_child":
        _child(sys.argv[2:])
    else:
        sys.exit(main())
