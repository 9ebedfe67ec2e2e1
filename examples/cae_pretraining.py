"""Experiment 2: does unsupervised CAE pre-training help when labels are few? (scikit-learn's real digits)

A CAE is trained on the 1078 digits of the train split without labels (`featurehead pretrain-cae`'s runner: never
on val or test); its 7x7x4 code
(`--model cae`) is compared with raw pixels and with the same encoder at its random init, each under a
logistic regression trained on 50, 100 and 300 labelled digits (stratified, from the train split) and
scored on the fixed test split (360 digits). Mean ± std over seeds; each seed retrains the CAE.

    python examples/cae_pretraining.py            # the docs/experiments.md table (5 seeds, 20 epochs)
    python examples/cae_pretraining.py --quick    # smoke run: 1 seed, 1 epoch
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before Keras loads (imports below are lazy)

import features_store
from classify import make_head
from extract import get_extractor, read_batch, read_index
from extract.autoencoder import build_autoencoder, reconstruction_target
from pipelines.runs.demo import write_digits
from pipelines.runs.extraction import run_extract
from pipelines.workflows.pretrain import CAEConfig, run_pretrain_cae

SIZE = 28


def features(index, workdir: Path, seed: int, epochs: int) -> tuple[dict, dict]:
    """The three feature sets of one seed, in index order, and facts about the CAE run."""
    cae = run_pretrain_cae(index, workdir / f"cae-seed{seed}.keras", CAEConfig(epochs=epochs, seed=seed), workers=2)
    random_init = workdir / f"random-seed{seed}.keras"
    build_autoencoder(seed=seed).save(random_init)  # the same encoder, before training
    out = {}
    for name, path in (("CAE code", cae.model), ("random-init encoder", random_init)):
        store = run_extract(index, get_extractor("cae", weights=str(path), input_size=SIZE), workdir / path.stem,
                            workers=2).store
        out[name] = features_store.read_features(store)
    images, ok, _ = read_batch(index.paths, SIZE)
    assert ok.all()
    out["raw pixels"] = reconstruction_target(images, 1).reshape(len(images), -1)
    facts = {"loss": cae.history["loss"][-1], "seconds": sum(cae.epoch_seconds), "n_train": cae.n_train}
    return out, facts


def score(X, labels, train_pool, test, n_labels: int, seed: int) -> float:
    from sklearn.model_selection import train_test_split

    train, _ = train_test_split(train_pool, train_size=n_labels, stratify=labels[train_pool], random_state=seed)
    head = make_head("logreg").fit(X[train], labels[train])
    return float(head.score(X[test], labels[test]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="cae-experiment")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--labels", default="50,100,300")
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 epoch")
    args = parser.parse_args(argv)
    seeds, epochs = (1, 1) if args.quick else (args.seeds, args.epochs)
    workdir = Path(args.workdir)
    index = read_index(write_digits(workdir))
    labels, split = np.asarray(index.labels), np.asarray(index.split)
    train_pool, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    counts = [int(n) for n in args.labels.split(",")]
    scores, facts = {}, []
    start = time.perf_counter()
    for seed in range(seeds):
        sets, fact = features(index, workdir, seed, epochs)
        facts.append(fact)
        for name, X in sets.items():
            for n in counts:
                scores.setdefault((name, n), []).append(score(X, labels, train_pool, test, n, seed))
    names = ["raw pixels", "random-init encoder", "CAE code"]
    dims = {"raw pixels": SIZE * SIZE, "random-init encoder": 196, "CAE code": 196}
    lines = ["| labels | " + " | ".join(f"{n} ({dims[n]} features)" for n in names) + " |",
             "|---:|" + "---:|" * len(names)]
    for n in counts:
        cells = [f"{np.mean(scores[(name, n)]):.3f} ± {np.std(scores[(name, n)]):.3f}" for name in names]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    loss = np.mean([f["loss"] for f in facts])
    seconds = np.mean([f["seconds"] for f in facts])
    summary = (f"test accuracy of logistic regression, mean ± std over {seeds} seed(s); CAE: {epochs} epochs on the "
               f"{facts[0]['n_train']} train digits, final BCE {loss:.4f}, {seconds:.1f}s of training per seed; "
               f"whole run {time.perf_counter() - start:.0f}s")
    (workdir / "results.md").write_text(table + "\n\n" + summary + "\n")
    print(table)
    print(summary)
    print(workdir / "results.md")


if __name__ == "__main__":
    main()
