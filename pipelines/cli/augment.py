"""CLI subcommands for augmentation, fine-tuning and the four-scenario guidance."""

from __future__ import annotations

import argparse

from .options import non_negative_int, positive_float, positive_int, progress


def add_augment_args(p: argparse.ArgumentParser, *, views: bool = False) -> None:
    """The augmentation options (Keras preprocessing-layer factors); with `views`, also extract's --augment K.

    Their argparse defaults are None (`_AUGMENT_DEFAULTS` fills them in), so that an option given at its default
    value without augmentation on is seen as given, and refused as the others are (it passed without a word)."""
    g = p.add_argument_group("augmentation")
    if views:
        g.add_argument("--augment", type=non_negative_int, default=0, metavar="K",
                       help="also store K augmented views of each 'train' row, at most 32767 (default: 0, none)")
        g.add_argument("--augment-seed", type=non_negative_int, default=None,
                       help="seed of the views, with each image's content (so they follow the image; default: 0)")
        g.add_argument("--validation-fraction", type=float, default=None,
                       help="with --augment and an index without a split column: about this share of each class "
                       "is 'val', drawn per image from its content, so a reorder moves no image (default: 0.2)")
    g.add_argument("--rotation", type=float, default=None, help="RandomRotation factor, fraction of a turn (default: 0.1)")
    g.add_argument("--zoom", type=float, default=None, help="RandomZoom factor (default: 0.1)")
    g.add_argument("--contrast", type=float, default=None, help="RandomContrast factor (default: 0, off)")
    g.add_argument("--flip", action="store_true", help="random horizontal flips")
    g.add_argument("--translate", type=float, default=None, help="RandomTranslation factor (default: 0, off)")
    g.add_argument("--fill-mode", default=None, choices=["reflect", "wrap", "constant", "nearest"],
                   help="fill outside the image (default: reflect)")


_AUGMENT_DEFAULTS = {"rotation": 0.1, "zoom": 0.1, "contrast": 0.0, "flip": False, "translate": 0.0,
                     "fill_mode": "reflect"}
_VIEW_DEFAULTS = {"augment_seed": 0, "validation_fraction": 0.2}


def _given(args) -> list[str]:
    """The augmentation options given on the command line (whatever their value)."""
    names = [*_AUGMENT_DEFAULTS, *(_VIEW_DEFAULTS if hasattr(args, "augment_seed") else ())]
    return [name for name in names if getattr(args, name) is not None and getattr(args, name) is not False]


def _value(args, name: str):
    value = getattr(args, name)
    return {**_AUGMENT_DEFAULTS, **_VIEW_DEFAULTS}[name] if value is None else value


def check_augment_given(args, flag: str = "--augment K") -> None:
    """Augmentation options set without the flag that turns augmentation on would be ignored: say so instead."""
    changed = [f"--{name.replace('_', '-')}" for name in _given(args)]
    if changed:
        one = len(changed) == 1
        raise ValueError(f"{', '.join(changed)} {'takes' if one else 'take'} effect only with {flag}; add it, or leave "
                         f"{'it' if one else 'them'} out")


def augmentation_from_args(args):
    from extract.augment import Augmentation

    return Augmentation(**{name: _value(args, name) for name in _AUGMENT_DEFAULTS})


def views_from_args(args):
    """The extract command's AugmentedViews, validated (before a `--dask local:N` cluster starts), or None without
    --augment."""
    if not args.augment:
        check_augment_given(args)
        return None
    from ..runs.views import AugmentedViews

    views = AugmentedViews(args.augment, augmentation_from_args(args), seed=_value(args, "augment_seed"),
                           validation_fraction=_value(args, "validation_fraction"))
    views.validate()
    return views


def _unfreeze(value: str):
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"must be an integer or 'all'. Received: {value!r}") from err


def add_parsers(sub) -> None:
    """Add this module's subcommands to the `featurehead` parser."""
    p = sub.add_parser("augment-preview", help="write a grid image of a few images and their augmented views",
                       description="One row per image (the first of the index): the image, a wider gap, then its "
                       "views drawn with the augmentation options, to look at before `extract --augment`. An image "
                       "that cannot be read gets no row: it is listed, and the exit code is 1.")
    p.add_argument("index", help="a CSV (filename[,label][,split]), a folder of class subfolders, or a flat folder of "
                   "images")
    p.add_argument("--images-root", default=None, help="folder the CSV filenames are relative to (default: the CSV's "
                   "folder)")
    p.add_argument("--out", required=True, help="image file to write: .png (or .jpg, .webp, .tif, .bmp, .gif)")
    p.add_argument("--n-images", type=positive_int, default=4, help="images (grid rows; default: 4)")
    p.add_argument("--views", type=positive_int, default=4, help="views per image (default: 4)")
    p.add_argument("--size", type=positive_int, default=96, help="tile side in pixels (default: 96)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the views drawn (default: 0)")
    add_augment_args(p)
    p.set_defaults(func=cmd_augment_preview)

    p = sub.add_parser("finetune", help="transplant an MLP head onto its base, unfreeze the top, train on images",
                       description="Fine-tuning: the MLP head of a bundle is put back on top of the backbone its "
                       "features came from, the top base layers (--unfreeze N, or --unfreeze-from LAYER) are "
                       "unfrozen, and the whole model trains on the images with a low learning rate. The rows are "
                       "the head's own (the store's 'train', validated on its 'val' rows, never on 'test'); the "
                       "validation accuracy is printed before and after. The result is a full-model bundle that "
                       "`predict` takes.")
    p.add_argument("head", help="head bundle directory (an MLP head)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--unfreeze", type=_unfreeze, help="train the top N base layers with weights, or 'all'")
    g.add_argument("--unfreeze-from", default=None, help="train this base layer and all after it (e.g. block5_conv1)")
    p.add_argument("--out", required=True, help="full-model bundle directory to write")
    p.add_argument("--index", default=None, help="images index (default: the one of the head's training store)")
    p.add_argument("--images-root", default=None, help="folder the --index filenames are relative to (default: the "
                   "--index CSV's folder; without --index, the images root that the training store records)")
    p.add_argument("--augment", action="store_true", help="augment the training images on the fly")
    p.add_argument("--learning-rate", type=positive_float, default=1e-5, help="Adam learning rate (default: 1e-5)")
    p.add_argument("--epochs", type=positive_int, default=5, help="passes over the training images (default: 5)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per training step (default: 32)")
    p.add_argument("--random-state", type=non_negative_int, default=0,
                   help="seed of the new layers, the shuffling and the augmentation (default: 0)")
    add_augment_args(p)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("advise", help="which of the four transfer-learning strategies fits, and its commands",
                       description="Small or large data (images in the smallest class against --small-threshold) "
                       "and high or low similarity to ImageNet photos pick one of four strategies; it prints why, "
                       "and the featurehead commands that carry it out.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--n-images", type=int, help="labelled training images per class (the smallest class)")
    g.add_argument("--index", help="count the images per class of this index instead")
    p.add_argument("--images-root", default=None, help="folder the --index filenames are relative to (default: the "
                   "CSV's folder)")
    p.add_argument("--similarity", required=True, choices=["high", "low"], help="similarity to ImageNet photos")
    p.add_argument("--model", default="vgg16", help="ImageNet backbone of the suggested commands, as `featurehead models` lists them (default: vgg16)")
    p.add_argument("--small-threshold", type=positive_int, default=None,
                   help="images per class below which data is small (default: 1000)")
    p.set_defaults(func=cmd_advise)


def cmd_augment_preview(args) -> int:
    from ..runs.views import run_augment_preview

    preview = run_augment_preview(args.index, args.out, augmentation_from_args(args), images_root=args.images_root,
                                  n_images=args.n_images, k=args.views, size=args.size, seed=args.seed)
    for path, reason in preview.failed:  # exit 1, as extract: the grid has no row for them
        print(f"left out of the grid, could not be read: {path}: {reason}")
    print(preview.path)
    return 1 if preview.failed else 0


def cmd_finetune(args) -> int:
    from ..runs.prediction import not_pretrained_note
    from ..workflows.finetune import run_finetune

    if not args.augment:
        check_augment_given(args, "--augment")
    result = run_finetune(args.head, args.out, unfreeze=args.unfreeze, unfreeze_from=args.unfreeze_from,
                          index=args.index, images_root=args.images_root,
                          augmentation=augmentation_from_args(args) if args.augment else None,
                          learning_rate=args.learning_rate, epochs=args.epochs, batch_size=args.batch_size,
                          random_state=args.random_state, progress=progress(args, "finetune"))
    print(f"trained {len(result.unfrozen)} base layers + the head on {result.n_train} images "
          f"in {result.fit_seconds:.1f}s")
    if result.n_val:
        print(f"validation accuracy on {result.n_val} images: before {result.accuracy_before:.4f}, "
              f"after {result.accuracy_after:.4f}")
    else:  # it printed "before nan, after nan"
        print("no validation accuracy: the head held out no validation rows (a store without 'val' rows, and "
              "--validation-fraction 0 or no class with two images to hold one out)")
    note = not_pretrained_note(result.bundle)
    if note:
        print(f"NOTE: {note}")
    print(result.bundle)
    return 0


def cmd_advise(args) -> int:
    from ..workflows.advice import SMALL_PER_CLASS, format_advice, run_advise

    threshold = args.small_threshold if args.small_threshold is not None else SMALL_PER_CLASS
    advice = run_advise(n_images=args.n_images, similarity=args.similarity, index=args.index,
                        images_root=args.images_root, model=args.model, small_threshold=threshold)
    print(format_advice(advice, threshold))
    return 0
