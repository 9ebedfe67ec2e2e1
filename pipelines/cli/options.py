"""Options and argument helpers shared by the `featurehead` subcommands: the extractor and output flags, the
extractor an invocation names, and its progress bar. Imports nothing heavy."""

from __future__ import annotations

import argparse
import os
import sys


def _bounded(convert, accept, what: str):
    """An argparse type: `convert(text)`, refused in one usage line ("must be WHAT") unless `accept(value)`."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}. Received: {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {what}. Received: {text}")
        return value

    return parse


# --workers 0, a batch size of 0 or a negative learning rate are usage errors, not silent defaults or crashes
positive_int = _bounded(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _bounded(int, lambda v: v >= 0, "a non-negative integer")  # a seed
positive_float = _bounded(float, lambda v: 0 < v < float("inf"), "a positive number")  # a learning rate
at_least_two = _bounded(int, lambda v: v >= 2, "an integer >= 2")  # cross-validation folds


def layer_name(text: str) -> str:
    """An argparse type: a non-empty layer name (an empty `--layer ""` is refused in CLI words, not the API's)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"must name a layer; leave --layer out for the model's default. "
                                         f"Received: {text!r}")
    return text


def add_extractor_args(p: argparse.ArgumentParser, *, layer: bool = True, saved_models: bool = True) -> None:
    """The extractor's options; `layer=False` (sweep, which takes --layers) keeps --layer out of the help (it is
    still parsed, so that it is refused with one line rather than taken as an abbreviation of --layers), and
    `saved_models=False` (sweep too, which refuses cae and keras) keeps the saved models out of the help."""
    g = p.add_argument_group("extractor")
    saved = ("cae (with --weights cae.keras), or keras (any saved model: --weights model.keras --layer NAME) "
             if saved_models else "")
    g.add_argument("--model", default="vgg16",
                   help="a keras.applications backbone (vgg16, resnet50, efficientnetb0, convnexttiny, ...: "
                   f"`featurehead models` lists them){', ' if saved_models else ' '}{saved}(default: vgg16)")
    g.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (default; Keras cache, else download), a local weights file saved from the same "
        "include_top=False model (.weights.h5, .keras, or Keras's own .h5 download), "
        + ("the .keras model of --model cae or keras, " if saved_models else "")
        + "or 'none' (random init: NOT pretrained, for tests)",
    )
    g.add_argument("--layer", default=None, type=layer_name if layer else str,  # sweep refuses any --layer itself
                   help="cut the model at this named layer (`featurehead models NAME --layers` lists them; "
                   "default: the last; bottleneck for cae)" if layer else argparse.SUPPRESS)
    g.add_argument("--pooling", default=None, choices=["flatten", "avg", "max"],
                   help="feature map -> vector (default: flatten for vgg16/vgg19"
                   + (" and saved models" if saved_models else "") + ", avg for the other backbones)")
    g.add_argument("--input-size", type=int, default=None,
                   help="square input side in pixels (default: the model's own: 224 for most backbones, 299 for "
                   "inceptionv3/xception, up to 600 for efficientnetb7" + ("; a saved model's fixed size" if
                                                                           saved_models else "") + ")")
    g.add_argument("--resize", default="squash", choices=["squash", "crop"],
                   help="squash: the whole image resized to the input (default; keeps every pixel, changes the aspect "
                   "ratio); crop: the shorter side resized, the centre cut (what ImageNet backbones were trained on)")
    g.add_argument("--batch-size", type=positive_int, default=32, help="images per forward pass (default: 32)")
    g.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="compute dtype (Keras mixed precision; part of the fingerprint; default: float32)")
    g.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed of the random init when --weights none (default: 0); it is part of the extractor's "
                   "identity whatever the weights, so leave it at its default with other weights")


def add_output_flags(p: argparse.ArgumentParser, default) -> None:
    """-q, -v and --debug; `default` SUPPRESS on the subcommands, so they keep what the top level parsed."""
    g = p.add_argument_group("output")
    g.add_argument("-q", "--quiet", action="store_true", default=default, help="no progress bars")
    g.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="also show TensorFlow's start-up notes and Keras's download messages")
    g.add_argument("--debug", action="store_true", default=default,
                   help="print the traceback of an error before its line, with the same exit code "
                        "(as FEATUREHEAD_DEBUG=1 does)")


def progress(args, desc):
    if args.quiet:
        return None
    from functools import partial

    from tqdm import tqdm

    return partial(tqdm, desc=desc, unit="img", dynamic_ncols=True, file=sys.stderr)


def extractor_from_args(args):
    from extract import get_extractor

    weights = args.weights
    if weights.lower() in ("none", "imagenet") and not os.path.exists(weights):  # ImageNet, NONE: the keywords
        weights = weights.lower()
    # pooling / input_size None: the extractor's own default (the backbone's, a saved model's)
    return get_extractor(args.model, weights=weights, layer=args.layer, pooling=args.pooling,
                         input_size=args.input_size, batch_size=args.batch_size, precision=args.precision,
                         seed=args.seed, resize=args.resize)
