"""CLI subcommands for CAE pre-training, saved-model bases, class-split transfer.

`pretrain-cae` and `pretrain-cnn` each call one runner of `pipelines.workflows.pretrain`; their models then serve as
frozen extractors through `featurehead extract --model cae|keras --weights MODEL.keras [--layer NAME]`.
"""

from __future__ import annotations

import argparse

from .options import non_negative_int, positive_float, positive_int, progress


def _add_training_args(p: argparse.ArgumentParser, *, epochs: int, batch_size: int, index: str, base: bool) -> None:
    p.add_argument("index", help=index)
    p.add_argument("--images-root", default=None, help="folder the CSV filenames are relative to (default: the CSV's "
                   "folder)")
    p.add_argument("--out", required=True, help="the .keras model file to write (plots go next to it)")
    # None: not given (pretrain-cnn --base takes both from its base and refuses them given)
    of_base = "; with --base, the base's own" if base else ""
    p.add_argument("--input-size", type=int, default=None, help=f"square input side in pixels (default: 28{of_base}"
                   f"{', given only for a base of any input size' if base else ''})")
    p.add_argument("--channels", type=int, default=None, choices=[1, 3],
                   help=f"1: grayscale inside the model (default{of_base}), 3: RGB")
    p.add_argument("--epochs", type=positive_int, default=epochs, help=f"passes over the training images (default: "
                   f"{epochs})")
    p.add_argument("--batch-size", type=positive_int, default=batch_size,
                   help=f"images per training step (default: {batch_size})")
    p.add_argument("--optimizer", default="adam", choices=["adam", "adadelta", "sgd", "rmsprop"],
                   help="the Keras optimizer (default: adam)")
    p.add_argument("--learning-rate", type=positive_float, default=None,
                   help="the optimizer's learning rate (default: the optimizer's Keras default)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="initial weights and shuffling (default: 0)")
    p.add_argument("--workers", type=positive_int, default=None, help="image decoding threads (default: every core)")


def add_parsers(sub) -> None:
    """Add this module's subcommands to the `featurehead` parser."""
    p = sub.add_parser("pretrain-cae", help="train a convolutional autoencoder on images without labels",
                       description="Train the seed's convolutional autoencoder on the index's images (labels are "
                       "not used): its 'train' split when it has a split column (never 'val' or 'test', where its "
                       "features would be evaluated), else every image.")
    _add_training_args(p, epochs=10, batch_size=32, index="a CSV (filename[,label][,split]), a folder of class "
                       "subfolders, or a flat folder of images", base=False)
    p.add_argument("--filters", default="8,4", help="filters per encoder level, comma-separated (default: 8,4)")
    p.set_defaults(func=cmd_pretrain_cae)

    p = sub.add_parser("pretrain-cnn", help="train the small CNN on some classes (a base for --model keras)",
                       description="Class-split transfer: train the seed's small CNN on the images of --classes "
                       "(from scratch, or with --base as a new classification block on a saved model's frozen "
                       "features). It trains on the 'train' split (every chosen row when the index has no split "
                       "column), scores 'val' after every epoch and 'val' and 'test' at the end, and writes the "
                       ".keras model with <stem>_loss.png (loss and accuracy curves) beside it. Its features are "
                       "then one `extract --model keras --weights MODEL --layer features_flatten` away.")
    _add_training_args(p, epochs=5, batch_size=128,
                       index="a CSV (filename,label[,split]) or a folder of class subfolders", base=True)
    p.add_argument("--classes", default=None, help="labels to train on, comma-separated (default: all)")
    p.add_argument("--base", default=None,
                   help="a saved model whose feature block is frozen; only a new head trains (default: none, the "
                   "small CNN trains from scratch)")
    p.add_argument("--feature-layer", default="features_flatten", help="where --base is cut, by name; a feature map (a CAE's "
                   "bottleneck) is flattened (default: features_flatten)")
    p.set_defaults(func=cmd_pretrain_cnn)


def _or(given, default):
    """`given` unless it was not given (None); 0 is given (and refused by the runner), not the default."""
    return default if given is None else given


def _ints(text: str) -> tuple:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError as err:
        raise ValueError(f"`filters` must be comma-separated integers. Received: filters={text!r}") from err


def cmd_pretrain_cae(args) -> int:
    from extract import read_index

    from ..workflows.pretrain import CAEConfig, run_pretrain_cae

    index = read_index(args.index, args.images_root)
    config = CAEConfig(input_size=_or(args.input_size, 28), channels=_or(args.channels, 1), filters=_ints(args.filters),
                       epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                       learning_rate=args.learning_rate, seed=args.seed)
    result = run_pretrain_cae(index, args.out, config, progress=progress(args, "pretrain-cae"), workers=args.workers)
    epochs = "1 epoch" if config.epochs == 1 else f"{config.epochs} epochs"
    print(f"trained a CAE on {result.n_train} images for {epochs}; final loss {result.history['loss'][-1]:.4f}")
    print(f"loss curve: {result.loss_plot}")
    print(f"reconstructions: {result.reconstructions}")
    print(f"use it: featurehead extract INDEX --model cae --weights {result.model}")
    print(result.model)
    return 0


def cmd_pretrain_cnn(args) -> int:
    from extract import read_index

    from ..workflows.pretrain import CNNConfig, run_pretrain_cnn

    if args.base and (args.input_size is not None or args.channels is not None):  # they were silently ignored
        from extract.saved_model import load_saved_model, model_input_size

        have = model_input_size(load_saved_model(args.base))
        if args.channels is not None or (have is not None and args.input_size != have):  # any size: --input-size
            raise ValueError(f"--input-size and --channels come from --base {args.base} (its input: {have} px); "
                             "leave them out")
    index = read_index(args.index, args.images_root)
    config = CNNConfig(input_size=_or(args.input_size, 28), channels=_or(args.channels, 1), epochs=args.epochs,
                       batch_size=args.batch_size, optimizer=args.optimizer, learning_rate=args.learning_rate,
                       seed=args.seed)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    result = run_pretrain_cnn(index, args.out, config, classes=classes, base=args.base,
                              feature_layer=args.feature_layer, progress=progress(args, "pretrain-cnn"),
                              workers=args.workers)
    kind = f"a new head on the frozen base {args.base}" if args.base else "the small CNN"
    print(f"trained {kind} on {result.n_train} images of classes {','.join(result.classes)}")
    for split, acc in result.accuracy.items():
        print(f"{split} accuracy: {acc:.4f}")
    print(f"loss and accuracy curves: {result.loss_plot}")
    if not args.base:
        print(f"use it: featurehead extract INDEX --model keras --weights {result.model} --layer features_flatten")
    print(result.model)
    return 0
