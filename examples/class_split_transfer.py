"""Experiment 3: class-split transfer on scikit-learn's real digits (the seed's MNIST 0-4 -> 5-9 workflow).

The small CNN is trained on digits 0-4 (`featurehead pretrain-cnn --classes 0,1,2,3,4`); its feature block is
frozen and a new dense head is trained on 5-9 (`pretrain-cnn --base`). That is compared with the same network
trained from scratch on 5-9: test accuracy on 5-9 and seconds per epoch. Fixed 60/20/20 stratified split of
`write_digits`; mean ± std over seeds (each seed retrains the base).

    python examples/class_split_transfer.py                         # docs/experiments.md table 3a (5 seeds)
    python examples/class_split_transfer.py --optimizers adadelta   # table 3b: the seed's optimizer
    python examples/class_split_transfer.py --optimizers adadelta --learning-rate 1.0   # table 3c
    python examples/class_split_transfer.py --quick   # smoke run: 1 seed, 1 epoch, adam only
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before Keras loads (imports below are lazy)

from extract import read_index
from pipelines.runs.demo import write_digits
from pipelines.workflows.pretrain import CNNConfig, run_pretrain_cnn

LOW, HIGH = [str(d) for d in range(5)], [str(d) for d in range(5, 10)]


def per_epoch(seconds: list) -> float:
    """Mean seconds of the epochs after the first (the first also traces and compiles)."""
    return float(np.mean(seconds[1:] if len(seconds) > 1 else seconds))


def one_seed(index, workdir: Path, config: CNNConfig) -> dict:
    tag = f"{config.optimizer}-seed{config.seed}"
    base = run_pretrain_cnn(index, workdir / f"base-{tag}.keras", config, classes=LOW, workers=2)
    transfer = run_pretrain_cnn(index, workdir / f"transfer-{tag}.keras", config, classes=HIGH, base=base.model,
                                workers=2)
    scratch = run_pretrain_cnn(index, workdir / f"scratch-{tag}.keras", config, classes=HIGH, workers=2)
    return {
        "base 0-4": (base.accuracy["test"], per_epoch(base.epoch_seconds)),
        "transfer 5-9 (frozen base + new head)": (transfer.accuracy["test"], per_epoch(transfer.epoch_seconds)),
        "scratch 5-9 (same network)": (scratch.accuracy["test"], per_epoch(scratch.epoch_seconds)),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="transfer-experiment")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", default="5", help="epoch budgets, comma-separated (default: the seed's 5)")
    parser.add_argument("--optimizers", default="adam", help="comma-separated; adadelta reproduces the seed's setup")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=None, help="default: each optimizer's Keras default")
    parser.add_argument("--quick", action="store_true", help="1 seed, 1 epoch, adam only")
    args = parser.parse_args(argv)
    seeds, budgets, optimizers = (
        (1, [1], ["adam"]) if args.quick
        else (args.seeds, [int(e) for e in args.epochs.split(",")], args.optimizers.split(","))
    )
    workdir = Path(args.workdir)
    index = read_index(write_digits(workdir))
    start = time.perf_counter()
    lines = ["| optimizer | epochs | model | test accuracy | s / epoch |", "|---|---:|---|---:|---:|"]
    for optimizer in optimizers:
        for epochs in budgets:
            runs = [one_seed(index, workdir, CNNConfig(epochs=epochs, batch_size=args.batch_size, optimizer=optimizer,
                                                       learning_rate=args.learning_rate, seed=seed)) for seed in range(seeds)]
            for name in runs[0]:
                acc = [r[name][0] for r in runs]
                sec = [r[name][1] for r in runs]
                lines.append(f"| {optimizer} | {epochs} | {name} | {np.mean(acc):.3f} ± {np.std(acc):.3f} | "
                             f"{np.mean(sec):.3f} ± {np.std(sec):.3f} |")
    table = "\n".join(lines)
    rate = "Keras-default learning rates" if args.learning_rate is None else f"learning rate {args.learning_rate}"
    summary = (f"mean ± std over {seeds} seed(s), batch size {args.batch_size}, {rate}; s / epoch excludes the "
               f"first epoch (of a 1-epoch budget, it is that epoch); whole run {time.perf_counter() - start:.0f}s")
    (workdir / "results.md").write_text(table + "\n\n" + summary + "\n")
    print(table)
    print(summary)
    print(workdir / "results.md")


if __name__ == "__main__":
    main()
