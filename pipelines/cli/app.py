"""The `featurehead` command line: one subcommand per pipelines function, no logic of its own.

Exit codes: 0 success; 1 the run finished but some rows failed; 2 bad usage or input (one line on stderr);
3 an internal error, i.e. a bug in featurehead (one line on stderr; the traceback with --debug or
FEATUREHEAD_DEBUG=1); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

EPILOG = """\
typical session:
  featurehead extract index.csv --images-root imgs/ --model vgg16 --out feats/
  featurehead train feats/ --head logreg --out head/
  featurehead evaluate head/ feats/ --out report/
  featurehead predict head/ new.csv --images-root new_imgs/ --out predictions.csv
A store is a directory. Re-running extract after a relabel, a new split, an appended image or a moved
--images-root extracts only the images it has not seen (by content); `featurehead compact` drops the rows
that the index no longer uses.
Every command that writes something prints that path as the last line of standard output.
-q/--quiet, -v/--verbose and --debug go before or after COMMAND. Without -v, TensorFlow's start-up notes
and Keras's download messages are not shown.
Exit codes: 0 success; 1 finished, but some rows failed (listed); 2 bad usage or input (one line on stderr);
3 internal error, a bug in featurehead (one line on stderr; --debug or FEATUREHEAD_DEBUG=1 for the traceback:
please report it); 130 interrupted.
"""

EXIT_INTERNAL_ERROR = 3

# Commands that never load TensorFlow (HDF5 only, or plain data).
_LIGHT_COMMANDS = frozenset({"inspect", "compact", "export", "advise"})

# TensorFlow's C++ start-up notes: TF_CPP_MIN_LOG_LEVEL does not silence them since TensorFlow logs through absl
# before absl::InitializeLog() is called, so the CLI captures file descriptor 2 while TensorFlow loads.
_STARTUP_NOISE = re.compile(
    r"^(?:[IWE]\d{4} [\d:. ]+\d+ \S+\.(?:cc|h):\d+\]|WARNING: All log messages before absl::InitializeLog"
    r"|To enable the following instructions:|WARNING:absl:|Downloading data from)"
)


def _add_extractor_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("extractor")
    g.add_argument("--model", default="vgg16",
                   help="a keras.applications backbone (vgg16, resnet50, efficientnetb0, convnexttiny, ...: "
                   "`featurehead models` lists them), cae (with --weights cae.keras), or keras (any saved model: "
                   "--weights model.keras --layer NAME) (default: vgg16)")
    g.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (default; Keras cache, else download), a local .weights.h5 file saved from the same "
        "include_top=False model, or 'none' (random init: NOT pretrained, for tests)",
    )
    g.add_argument("--layer", default=None,
                   help="cut the model at this named layer (`featurehead models NAME --layers` lists them; "
                   "default: the last)")
    g.add_argument("--pooling", default=None, choices=["flatten", "avg", "max"],
                   help="feature map -> vector (default: flatten for vgg16/vgg19 and saved models, avg for the "
                   "other backbones)")
    g.add_argument("--input-size", type=int, default=None,
                   help="square input side in pixels (default: the model's own: 224 for most backbones, 299 for "
                   "inceptionv3/xception, up to 600 for efficientnetb7; a saved model's fixed size)")
    g.add_argument("--resize", default="squash", choices=["squash", "crop"],
                   help="squash: the whole image resized to the input (default; keeps every pixel, changes the aspect "
                   "ratio); crop: the shorter side resized, the centre cut (what ImageNet backbones were trained on)")
    g.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    g.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="compute dtype (Keras mixed precision; part of the fingerprint; default: float32)")
    g.add_argument("--seed", type=int, default=0, help="seed of the random init when --weights none (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featurehead",
        description="Transfer learning on images: a frozen CNN writes features to an HDF5 store once; "
        "cheap classifier heads train on the store as often as you like.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_output_flags(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("extract", help="run a frozen CNN over an image index into a feature store (a directory)",
                       description="Bring the store up to date with the index: images are keyed by their content, "
                       "so only images the store has not seen go through the model; labels, splits and order are "
                       "rewritten from the index every run.")
    p.add_argument("index", help="a CSV (filename[,label][,split]) or a folder of class subfolders")
    p.add_argument("--images-root", default=None, help="folder the CSV filenames are relative to (default: the CSV's folder)")
    p.add_argument("--out", default=None, help="store directory (default: next to the index, named by model and fingerprint)")
    p.add_argument("--shard-rows", type=int, default=None,
                   help="rows per shard file (default: 4096, or fewer when 4096 rows pass 1 GiB of features)")
    p.add_argument("--dask", default=None, metavar="local:N|tcp://HOST:PORT",
                   help="extract the shards on Dask: local:N starts N one-thread worker processes here; an address "
                   "joins a running scheduler (workers must see the store and images at the same paths)")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of recording it")
    p.add_argument("--workers", type=int, default=None, help="image decoding threads (default: every core)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16"],
                   help="how features are stored: float16 halves the disk (default: the store's own; float32 for a "
                   "new store)")
    _add_extractor_args(p)
    from .augment import add_augment_args

    add_augment_args(p, views=True)

    p = sub.add_parser("inspect", help="print a store's schema, counts, extractor spec, status and failures")
    p.add_argument("store")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (rows, stored_rows, garbage_rows, shards, failed, complete, fingerprint, ...)")

    p = sub.add_parser("compact", help="drop a store's rows that its index no longer uses (removed or edited images)")
    p.add_argument("store")
    p.add_argument("--shard-rows", type=int, default=None, help="rows per rewritten shard (default: as extract)")

    p = sub.add_parser("export", help="write a store as one self-contained HDF5 file (real datasets, for h5py users)")
    p.add_argument("store")
    p.add_argument("--out", required=True, help="the HDF5 file to write")

    p = sub.add_parser("train", help="train a classifier head on a feature store and save it as a bundle")
    p.add_argument("store")
    p.add_argument("--head", default="logreg", choices=["logreg", "mlp", "sgd"], help="default: logreg")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--C", type=float, default=None, help="logreg: inverse regularisation strength")
    p.add_argument("--hidden", default=None, help="mlp: hidden sizes, comma-separated (default: 1000,500,150)")
    p.add_argument("--dropout", type=float, default=None, help="mlp: dropout after each hidden layer (default: 0.5)")
    p.add_argument("--learning-rate", type=float, default=None, help="mlp: Adam learning rate (default: 1e-3)")
    p.add_argument("--epochs", type=int, default=None, help="mlp/sgd: maximum epochs")
    p.add_argument("--validation-fraction", type=float, default=0.2, help="held out when the store has no split column")
    p.add_argument("--random-state", type=int, default=0)

    p = sub.add_parser("predict", help="predict an index with a head bundle (extracting with its exact extractor)")
    p.add_argument("head", help="head bundle directory")
    p.add_argument("index", help="a CSV (filename column) or a folder of images in class subfolders")
    p.add_argument("--images-root", default=None)
    p.add_argument("--store", default=None, help="feature store to reuse or write (default: next to the index)")
    p.add_argument("--out", default="predictions.csv", help="CSV to write (default: predictions.csv)")

    p = sub.add_parser("evaluate", help="metrics.json and confusion_matrix.png of a head on a store")
    p.add_argument("head")
    p.add_argument("store")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--split", default=None,
                   help="evaluate only this split (train/val/test); default: on the store the head was trained on, "
                   "its held-out validation rows, else every row")

    p = sub.add_parser("models", help="list the backbones: default size, preprocessing, features per pooling",
                       description="Without NAME: every keras.applications backbone featurehead names, with its "
                       "default input size, its preprocessing (inside the graph) and its features per image for "
                       "each pooling. With NAME --layers: the layers it can be cut at (--layer), with their output "
                       "shapes, from the model built without weights.")
    p.add_argument("name", nargs="?", default=None, help="one backbone, e.g. resnet50")
    p.add_argument("--layers", action="store_true", help="list NAME's layers and output shapes")
    p.add_argument("--input-size", type=int, default=None, help="with --layers: the input side (default: the model's)")
    p.add_argument("--check", action="store_true",
                   help="build every listed backbone without weights and compare it with the table (slow: minutes)")

    p = sub.add_parser("demo", help="offline end-to-end run on scikit-learn's handwritten digits",
                       description="Writes the digits as PNG files with an index, extracts VGG16 features into a "
                       "store named by the extractor's fingerprint (so a run with other options adds a store "
                       "beside the first), trains a logistic-regression and an MLP head and evaluates both.")
    p.add_argument("--out", "--workdir", dest="out", default="featurehead-demo",
                   help="where images, stores and heads go (default: ./featurehead-demo; --workdir is an alias)")
    p.add_argument("--input-size", type=int, default=64, help="VGG16 input side (default: 64, fast on a CPU)")
    p.add_argument("--weights", default="imagenet", help="imagenet (falls back to random init offline), a file, or none")
    p.add_argument("--epochs", type=int, default=30, help="MLP epochs (default: 30, with early stopping)")

    for module in _command_modules():
        module.add_parsers(sub)
    for subparser in sub.choices.values():
        _add_output_flags(subparser, default=argparse.SUPPRESS)  # so a flag after COMMAND overrides none before
    return parser


def _add_output_flags(p: argparse.ArgumentParser, default) -> None:
    """-q, -v and --debug; `default` SUPPRESS on the subcommands, so they keep what the top level parsed."""
    g = p.add_argument_group("output")
    g.add_argument("-q", "--quiet", action="store_true", default=default, help="no progress bars")
    g.add_argument("-v", "--verbose", action="store_true", default=default,
                   help="also show TensorFlow's start-up notes and Keras's download messages")
    g.add_argument("--debug", action="store_true", default=default,
                   help="print the traceback of an error (as FEATUREHEAD_DEBUG=1 does)")


# Subcommands of the seed workflows and the scikit-learn composition live in their own modules; each has
# `add_parsers(sub)` (setting `func` on its parsers with `set_defaults`) and imports nothing heavy at start-up.
COMMAND_MODULES = ("pipelines.cli.workflows", "pipelines.cli.augment", "pipelines.cli.compose", "pipelines.cli.report")


def _command_modules():
    from importlib import import_module

    return [import_module(name) for name in COMMAND_MODULES]


def _progress(args, desc):
    if args.quiet:
        return None
    from functools import partial

    from tqdm import tqdm

    return partial(tqdm, desc=desc, unit="img", dynamic_ncols=True, file=sys.stderr)


def _extractor_from_args(args):
    from extract import get_extractor

    weights = "none" if args.weights.lower() == "none" else args.weights
    config = dict(weights=weights, layer=args.layer, batch_size=args.batch_size, precision=args.precision,
                  seed=args.seed, resize=args.resize)
    for key in ("pooling", "input_size"):  # else the extractor's own default (the backbone's, a saved model's)
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    return get_extractor(args.model, **config)


def cmd_extract(args) -> int:
    from extract import read_index

    from ..runs.extraction import run_extract
    from ..runs.inspection import write_failures_csv

    index = read_index(args.index, args.images_root)  # validated before any model is built
    extractor = _extractor_from_args(args)
    extractor.validate()
    from .augment import views_from_args

    client = None
    if args.dask:
        from ..scale.distributed import client_from_spec

        client = client_from_spec(args.dask)
    try:
        result = run_extract(index, extractor, args.out, strict=args.strict, workers=args.workers,
                             progress=_progress(args, f"extract {extractor.name}"), views=views_from_args(args),
                             shard_rows=args.shard_rows, dtype=args.dtype, client=client)
    finally:
        if client is not None and args.dask.startswith("local:"):
            cluster = client.cluster
            client.close()
            cluster.close()
        elif client is not None:
            client.close()
    if result.up_to_date:
        print(f"up to date: {result.n_rows} rows, all already extracted with fingerprint {result.fingerprint[:12]}")
    else:
        print(f"extracted {result.n_extracted} new rows ({extractor.weights_source()}); the view has {result.n_rows} rows")
    if result.garbage_rows:
        print(f"{result.garbage_rows} stored rows are no longer in the index; `featurehead compact {result.store}` drops them")
    code = 0
    if result.n_failed:
        failed = write_failures_csv(result.store)
        print(f"{result.n_failed} of {result.n_rows} rows failed; the list is in {failed} and `featurehead inspect {result.store}`")
        code = 1
    print(result.store)
    return code


def cmd_inspect(args) -> int:
    from ..runs.inspection import describe_store, store_summary

    if args.json:
        import json

        print(json.dumps(store_summary(args.store), sort_keys=True))
    else:
        print(describe_store(args.store))
    return 0


def cmd_compact(args) -> int:
    from ..runs.inspection import compact_store

    counts = compact_store(args.store, shard_rows=args.shard_rows)
    print(f"compacted: {counts['rows_before']} -> {counts['rows_after']} stored rows, "
          f"{counts['shards_before']} -> {counts['shards_after']} shards")
    print(args.store)
    return 0


def cmd_export(args) -> int:
    import features_store

    n = features_store.export(args.store, args.out)
    print(f"exported {n} rows")
    print(args.out)
    return 0


def cmd_train(args) -> int:
    from ..runs.heads import run_train

    given = {k: getattr(args, k) for k in ("C", "hidden", "dropout", "learning_rate", "epochs")
             if getattr(args, k) is not None}
    allowed = {"logreg": {"C"}, "mlp": {"hidden", "dropout", "learning_rate", "epochs"}, "sgd": {"epochs"}}[args.head]
    for key in sorted(set(given) - allowed):
        raise ValueError(f"`--{key.replace('_', '-')}` does not apply to --head {args.head}. Received: --head {args.head}")
    names = {"hidden": "hidden_layer_sizes", "epochs": "max_iter" if args.head == "sgd" else "epochs"}
    params = {names.get(k, k): v for k, v in given.items()}
    if "hidden_layer_sizes" in params:
        try:
            params["hidden_layer_sizes"] = tuple(int(h) for h in args.hidden.split(",") if h.strip())
        except ValueError:
            raise ValueError(f"`--hidden` must be comma-separated integers. Received: --hidden {args.hidden}") from None
    result = run_train(args.store, args.out, head=args.head, params=params,
                       validation_fraction=args.validation_fraction, random_state=args.random_state)
    val = result.metrics.get("validation")
    summary = f"trained {args.head} on {result.n_train} rows in {result.fit_seconds:.1f}s"
    if val:
        summary += f"; validation accuracy {val['accuracy']:.4f} on {result.n_val} rows"
    print(summary)
    print(result.bundle)
    return 0


def cmd_predict(args) -> int:
    from ..runs.heads import run_predict

    result = run_predict(args.head, args.index, args.out, images_root=args.images_root, store=args.store,
                         progress=_progress(args, "extract"))
    print(f"predicted {result.n_rows - result.n_failed} of {result.n_rows} rows")
    if result.n_failed:
        print(f"{result.n_failed} rows failed; they are marked ok=False in {result.csv}")
    print(result.csv)
    return 1 if result.n_failed else 0


def cmd_evaluate(args) -> int:
    from classify import format_metrics

    from ..runs.heads import run_evaluate

    metrics = run_evaluate(args.head, args.store, args.out, split=args.split)
    print(f"evaluated on {metrics['evaluated_on']} ({metrics['n_samples']} images)")
    print(format_metrics(metrics))
    print(Path(args.out))
    return 0


def cmd_models(args) -> int:
    from extract.applications import BACKBONES, backbone_layers, backbone_table, check_backbone

    if args.name is not None and args.name not in BACKBONES:
        raise ValueError(f"`NAME` must be one of the backbones `featurehead models` lists. Received: {args.name!r}")
    if args.layers:
        if args.name is None:
            raise ValueError("`--layers` needs a NAME, e.g. `featurehead models resnet50 --layers`")
        for name, shape in backbone_layers(args.name, args.input_size):
            print(f"{name:40s} {shape}")
        return 0
    if args.check:
        problems = [p for name in ([args.name] if args.name else list(BACKBONES)) for p in check_backbone(name)]
        for problem in problems:
            print(problem)
        print("the table matches the built models" if not problems else f"{len(problems)} differences")
        return 0 if not problems else 1
    rows = [r for r in backbone_table() if args.name in (None, r["name"])]
    print(f"{'model':18s} {'size':>4s}  {'preprocess':10s} {'pooling':7s} {'flatten':>8s} {'avg/max':>7s}")
    for r in rows:
        print(f"{r['name']:18s} {r['input_size']:4d}  {r['preprocess']:10s} {r['pooling']:7s} "
              f"{r['dim_flatten']:8d} {r['dim_avg']:7d}")
    print("preprocess: caffe = BGR minus ImageNet means; torch = ImageNet mean/std; tf = -1..1; none = inside the "
          "model. Also: cae and keras (saved models). Features at the default size; flatten scales with it.")
    return 0


def cmd_demo(args) -> int:
    from ..runs.demo import run_demo

    weights = "none" if args.weights.lower() == "none" else args.weights
    result = run_demo(args.out, input_size=args.input_size, weights=weights, epochs=args.epochs,
                      progress=_progress(args, "extract digits"))
    for note in result.notes:
        print(f"NOTE: {note}")
    print(f"weights: {result.weights}")
    print(f"features: {result.store}")
    for head, acc in result.accuracy.items():
        print(f"{head:>7} head: test accuracy {acc:.4f}  (bundle {result.bundles[head]}, report {result.reports[head]})")
    print(result.workdir)
    return 0


COMMANDS = {
    "extract": cmd_extract,
    "inspect": cmd_inspect,
    "compact": cmd_compact,
    "export": cmd_export,
    "train": cmd_train,
    "predict": cmd_predict,
    "evaluate": cmd_evaluate,
    "models": cmd_models,
    "demo": cmd_demo,
}


def _expected_errors() -> tuple:
    import classify
    import extract
    import features_store

    # OSError: unwritable --out, an existing file where a folder is wanted, a full disk...
    return (extract.ExtractError, features_store.FeatureStoreError, classify.ClassifyError, OSError, ValueError)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("FEATUREHEAD_DEBUG", "") not in ("", "0")
    try:
        if not args.verbose and args.command not in _LIGHT_COMMANDS:
            _start_keras_quietly()  # only when Keras is imported: a relabel or a logreg report never loads it
        func = getattr(args, "func", None) or COMMANDS[args.command]
        return func(args)
    except _expected_errors() as err:
        if debug:  # the traceback, for bug reports
            raise
        message = " ".join(str(err).split())
        print(f"featurehead {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"featurehead {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001  (anything else is a bug: say so in one line)
        if debug:
            raise
        message = " ".join(f"{type(err).__name__}: {err}".split())
        print(f"featurehead {args.command}: internal error (a bug in featurehead, please report it): {message}; "
              "re-run with --debug for the traceback", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    finally:  # an in-process caller of main() gets its import system back as it was
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietKerasImport)]


def _start_keras_quietly() -> None:
    """Have the first `import keras` (which loads TensorFlow) keep its start-up notes from the user.

    Only the CLI does this (its own process), and lazily: a one-shot import hook, so a command that needs no model
    (a relabel, an up-to-date extract, a logreg report) still never imports Keras. When Keras loads:
    TF_CPP_MIN_LOG_LEVEL for TensorFlow's later C++ logs (unless the user set it), fd 2 captured while it loads,
    lines that are not start-up notes written back, Keras's "interactive logging" (its download line on stdout)
    turned off and absl set to ERROR.
    """
    if "keras" in sys.modules or any(isinstance(f, _QuietKerasImport) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietKerasImport())


class _QuietKerasImport:
    """A one-shot meta-path finder: the real spec of `keras`, its module executed with fd 2 captured."""

    def find_spec(self, name, path=None, target=None):
        if name != "keras":
            return None
        sys.meta_path.remove(self)
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        real = spec.loader.exec_module

        def exec_module(module):
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
            sys.stderr.flush()
            saved = os.dup(2)
            with tempfile.TemporaryFile() as captured:
                os.dup2(captured.fileno(), 2)
                try:
                    real(module)
                finally:
                    os.dup2(saved, 2)
                    os.close(saved)
                    captured.seek(0)
                    lines = captured.read().decode(errors="replace").splitlines(keepends=True)
                    sys.stderr.write("".join(line for line in lines if not _STARTUP_NOISE.match(line)))
            module.config.disable_interactive_logging()
            from absl import logging as absl_logging

            absl_logging.set_verbosity(absl_logging.ERROR)

        spec.loader.exec_module = exec_module
        return spec

