"""Benchmark: retraining the logistic-regression head from a feature store vs the seed workflow
(re-extract every image, then retrain), and the peak memory of the head's fit relative to the float32 X.

    python benchmarks/head_retrain.py --n 500 --input-size 224
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

# Runs in a fresh process: imports first, then the baseline RSS, then X, then the fit with the peak reset.
_RSS_PROBE = """
import json, sys, numpy as np
import classify, features_store
def status(key):
    return int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1]) * 1024
baseline = status('VmRSS:')
X, y, _ = features_store.load(sys.argv[1])
loaded = status('VmRSS:')  # includes X and whatever the reader left resident
open('/proc/self/clear_refs', 'w').write('5')  # reset VmHWM: the peak below is the fit's own
head = classify.make_head('logreg')
if sys.argv[2] == 'train':  # what `featurehead train` does: X was read for this fit, scaled in place
    from pipelines.runs.training import _fit_in_memory
    _fit_in_memory(head, X, y)
else:  # a user's X: the scaler keeps it and scales a copy
    head.fit(X, y)
peak = status('VmHWM:')
print(json.dumps({'x_bytes': X.nbytes, 'x_dtype': str(X.dtype), 'peak_over_baseline': peak - baseline,
                  'fit_growth': peak - loaded}))
"""


def write_images(root: Path, n: int) -> Path:
    """n JPEGs of scikit-learn's real digits (upscaled), with an index.csv; returns the CSV."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = ["filename,label"]
    for i in range(n):
        name = f"{digits.target[i]}/{i:05d}.jpg"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[i] * 15.9).astype(np.uint8)).resize((64, 64)).convert("RGB").save(root / name)
        rows.append(f"{name},{digits.target[i]}")
    (root / "index.csv").write_text("\n".join(rows) + "\n")
    return root / "index.csv"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="images (default: 500)")
    parser.add_argument("--input-size", type=int, default=224, help="VGG16 input side (default: 224)")
    parser.add_argument("--pooling", default="flatten", help="default: flatten (25088 features at 224)")
    parser.add_argument("--workdir", default=None, help="default: a temporary directory")
    args = parser.parse_args(argv)
    import classify
    import features_store
    from extract import get_extractor, read_index
    from pipelines import run_extract

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="head_retrain-"))
    index = read_index(write_images(workdir / "images", args.n))
    # weights="none": offline; the timing of a forward pass does not depend on the weights' values
    extractor = get_extractor("vgg16", weights="none", input_size=args.input_size, pooling=args.pooling, batch_size=16)
    extractor.model  # noqa: B018  (build outside the timings the seed notebooks also build once per session)
    t0 = time.perf_counter()
    store = run_extract(index, extractor, workdir / "feats").store
    extract_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    X, y, _ = features_store.load(store)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    classify.make_head("logreg").fit(X, y)
    fit_s = time.perf_counter() - t0
    seed, ours = extract_s + fit_s, load_s + fit_s
    rss, rss_train = (_probe(store, mode) for mode in ("fit", "train"))
    result = {
        "n": args.n, "input_size": args.input_size, "n_features": int(X.shape[1]), "cpus": os.cpu_count(),
        "extract_s": round(extract_s, 2), "s_per_image": round(extract_s / args.n, 4), "load_s": round(load_s, 3),
        "fit_s": round(fit_s, 2), "seed_workflow_s": round(seed, 2), "store_workflow_s": round(ours, 2),
        "speedup": round(seed / ours, 1), "x_mib": round(rss["x_bytes"] / 2**20, 1), "x_dtype": rss["x_dtype"],
        # (peak RSS during the fit - RSS before X was loaded) / X: X itself counts as 1
        "fit_peak_rss_over_x": round(rss["peak_over_baseline"] / rss["x_bytes"], 2),
        # (X + what the fit adds on top of the process after loading) / X: the reader's leftovers excluded
        "fit_peak_over_x_excluding_reader": round((rss["x_bytes"] + rss["fit_growth"]) / rss["x_bytes"], 2),
        # the same for `featurehead train`, which scales the X it read in place
        "train_peak_rss_over_x": round(rss_train["peak_over_baseline"] / rss_train["x_bytes"], 2),
        "train_peak_over_x_excluding_reader": round((rss_train["x_bytes"] + rss_train["fit_growth"])
                                                    / rss_train["x_bytes"], 2),
    }
    for key, value in result.items():
        print(f"{key:>20}: {value}")
    print(json.dumps(result))
    return 0


def _probe(store, mode: str) -> dict:
    probe = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(store), mode], capture_output=True, text=True,
                           check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    return json.loads(probe.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(main())
