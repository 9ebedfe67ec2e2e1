"""Experiment 4: the seed's VGG16 -> 25088 features -> MLP(1000-500-150) versus logistic regression.

Real data: scikit-learn's digits as PNG files (`pipelines.runs.demo.write_digits`). Features come from the real
pipeline (`run_extract` into an HDF5 store) at `--input-size` 224, where VGG16's block5_pool flattens to 25088.
VGG16 at 224 px costs ~0.25 s per image on 2 CPU cores, so a stratified subset is used: `--n-train` digits of
the train split and `--n-test` of the test split. Each seed draws its own training subset (from a pool of
`--n-train` + 50% digits); both heads see the same rows. The MLP is the seed's 1000-500-150 with dropout 0.5
and early stopping (`classify.KerasMLPClassifier`), on the raw features as in the seed and after a
StandardScaler; logistic regression is `make_head("logreg")`.

ImageNet weights are used when they are in the Keras cache or can be downloaded; otherwise the table says
RANDOM-INIT (not pretrained) - those numbers say nothing about transfer from ImageNet.

    python examples/vgg16_mlp_vs_logreg.py             # 224 px, 5 seeds (the docs table)
    python examples/vgg16_mlp_vs_logreg.py --quick     # 64 px, 2 seeds, fewer digits
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import classify  # noqa: E402
import features_store  # noqa: E402
from extract import read_index  # noqa: E402
from pipelines.runs.demo import choose_extractor, write_digits  # noqa: E402
from pipelines.runs.extraction import run_extract  # noqa: E402


def subset_index(workdir: Path, n_pool: int, n_test: int) -> Path:
    """An index of `n_pool` train and `n_test` test digits (stratified, seed 0)."""
    frame = pd.read_csv(write_digits(workdir), dtype=str)
    parts = []
    for split, n in (("train", n_pool), ("test", n_test)):
        rows = frame[frame["split"] == split]
        parts.append(rows.loc[train_test_split(rows.index, train_size=n, stratify=rows["label"], random_state=0)[0]])
    path = workdir / "subset.csv"
    pd.concat(parts).to_csv(path, index=False)
    return path


def fit_score(head, X, y, X_test, y_test):
    t0 = time.perf_counter()
    head.fit(X, y)
    seconds = time.perf_counter() - t0
    return float((head.predict(X_test) == y_test).mean()), seconds


def run(args, workdir: Path):
    n_pool = int(args.n_train * 1.5)
    index = read_index(subset_index(workdir, n_pool, args.n_test))
    extractor, note = choose_extractor(input_size=args.input_size, batch_size=16, weights=args.weights)
    t0 = time.perf_counter()
    store = run_extract(index, extractor, workdir / "feats").store
    extract_s = time.perf_counter() - t0
    X_pool, y_pool, _ = features_store.load(store, split="train")
    X_test, y_test, _ = features_store.load(store, split="test")
    scores = {"logreg": [], "mlp": [], "scaled_mlp": []}
    for seed in range(args.seeds):
        pick = train_test_split(np.arange(len(y_pool)), train_size=args.n_train, stratify=y_pool,
                                random_state=seed)[0]
        X, y = X_pool[pick], y_pool[pick]
        scores["logreg"].append(fit_score(classify.make_head("logreg"), X, y, X_test, y_test))
        mlp = classify.KerasMLPClassifier(epochs=args.epochs, random_state=seed)  # raw features, as in the seed
        scores["mlp"].append(fit_score(mlp, X, y, X_test, y_test))
        scaled = make_pipeline(StandardScaler(), classify.KerasMLPClassifier(epochs=args.epochs, random_state=seed))
        scores["scaled_mlp"].append(fit_score(scaled, X, y, X_test, y_test))
    return extractor, note, X_pool.shape[1], extract_s, len(index), scores


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 px, 2 seeds, 100 train / 60 test digits")
    parser.add_argument("--input-size", type=int, default=224, help="VGG16 input side (224 gives 25088 features)")
    parser.add_argument("--n-train", type=int, default=150, help="training digits per seed (default: 150)")
    parser.add_argument("--n-test", type=int, default=100, help="test digits (default: 100)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20, help="MLP epochs, with early stopping (default: 20)")
    parser.add_argument("--weights", default="imagenet", help="imagenet (random init when unavailable) or none")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.input_size, args.n_train, args.n_test, args.seeds = 64, 100, 60, 2
    with tempfile.TemporaryDirectory() as tmp:
        extractor, note, d, extract_s, n_images, scores = run(args, Path(args.workdir or tmp))
    if note:  # the demo's words ("so this demo uses ..."): this script's own
        print("NOTE: ImageNet weights unavailable, so this run uses RANDOM-INIT VGG16")
    pretrained = extractor.weights == "imagenet"
    kind = "ImageNet-pretrained" if pretrained else "RANDOM-INIT (NOT pretrained)"
    print(f"VGG16 {args.input_size} px -> {d} features, {kind} weights; {n_images} digits extracted in {extract_s:.0f} s; {args.seeds} seeds x {args.n_train} training "
          f"digits; test on {args.n_test}")
    print("| head | weights | test accuracy | head training time (s) |")
    print("|---|---|---:|---:|")
    rows = (("logreg", "StandardScaler + LogisticRegression"), ("mlp", "MLP 1000-500-150, dropout 0.5 (the seed's)"),
            ("scaled_mlp", "StandardScaler + the same MLP"))
    for head, label in rows:
        acc = np.array([a for a, _ in scores[head]])
        secs = np.array([s for _, s in scores[head]])
        weights = "ImageNet" if pretrained else "random init (NOT pretrained)"
        print(f"| {label} | {weights} | {acc.mean():.4f} ± {acc.std():.4f} | {secs.mean():.1f} ± {secs.std():.1f} |")


if __name__ == "__main__":
    main()
