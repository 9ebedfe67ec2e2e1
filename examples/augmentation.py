"""Experiment 1: does training on augmented views help when labelled digits are few?

Real data: scikit-learn's 1797 handwritten digits, written as PNG files by `pipelines.runs.demo.write_digits` (8x8
scaled 4x to 32 px, 60/20/20 stratified split) and read back at the seed's 28x28. Head: StandardScaler +
LogisticRegression on raw pixels (cheap, so 5 seeds fit in minutes on 2 cores). For each seed, n labelled
training digits are drawn (stratified) from the train split, with and without K augmented views each
(`extract.augment.row_views`: Keras RandomRotation and RandomZoom, no translation; seeded per row), and the
head is scored on the untouched test split.

    python examples/augmentation.py            # the table of docs/experiments.md, section 1
    python examples/augmentation.py --quick    # 2 seeds, n in (100, 300), K=2: a smoke run
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from extract import read_batch, read_index  # noqa: E402
from extract.augment import Augmentation, row_views  # noqa: E402
from pipelines.runs.demo import write_digits  # noqa: E402

AUGMENTATION = Augmentation(rotation=0.03, zoom=0.08, fill_mode="constant")
SIZE = 28


def load_split(index, split):
    rows = np.flatnonzero(np.asarray(index.split) == split)
    images, ok, errors = read_batch([index.paths[r] for r in rows], SIZE)
    assert ok.all(), errors
    return rows, images, np.asarray(index.labels)[rows]


def pixels(images):
    return images[..., 0].reshape(len(images), -1).astype(np.float32) / 255.0


def accuracy(X, y, X_test, y_test):
    head = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.05))
    return float((head.fit(X, y).predict(X_test) == y_test).mean())


def run(sizes, seeds, k, workdir):
    index = read_index(write_digits(workdir))
    rows, images, labels = load_split(index, "train")
    _, test_images, test_labels = load_split(index, "test")
    X_test = pixels(test_images)
    results = {(n, aug): [] for n in sizes for aug in (False, True)}
    for seed in seeds:
        views = np.stack([row_views(img, AUGMENTATION, k, seed=seed, row=int(r)) for img, r in zip(images, rows)])
        for n in sizes:
            pick = np.arange(len(rows)) if n >= len(rows) else train_test_split(
                np.arange(len(rows)), train_size=n, stratify=labels, random_state=seed)[0]
            X, y = pixels(images[pick]), labels[pick]
            results[(n, False)].append(accuracy(X, y, X_test, test_labels))
            X_aug = np.concatenate([X, pixels(views[pick].reshape(-1, SIZE, SIZE, 3))])
            y_aug = np.concatenate([y, np.repeat(y, k)])
            results[(n, True)].append(accuracy(X_aug, y_aug, X_test, test_labels))
    return results, len(test_labels)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, n in (100, 300), K=2")
    parser.add_argument("--views", type=int, default=4, help="augmented views per training digit (default: 4)")
    parser.add_argument("--workdir", default=None, help="where the digit PNGs go (default: a temporary folder)")
    args = parser.parse_args(argv)
    sizes, seeds, k = ((100, 300), range(2), 2) if args.quick else ((100, 300, 1000), range(5), args.views)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results, n_test = run(sizes, seeds, k, args.workdir or tmp)
    print(f"digits 28x28, raw pixels -> StandardScaler + LogisticRegression(C=0.05); {len(seeds)} seeds; "
          f"test split of {n_test} digits; K={k} views per digit: {AUGMENTATION}")
    print("| labelled digits | originals only | + augmented views |")
    print("|---:|---:|---:|")
    for n in sizes:
        plain, aug = np.array(results[(n, False)]), np.array(results[(n, True)])
        print(f"| {n} | {plain.mean():.4f} ± {plain.std():.4f} | {aug.mean():.4f} ± {aug.std():.4f} |")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
