"""The `featurehead` argument parser: the top-level options, the core subcommands' arguments, and those of the
command modules (each adds its own subcommands with `add_parsers(sub)`, setting their `func`)."""

from __future__ import annotations

import argparse

from . import augment, compose, report, workflows
from .augment import add_augment_args
from .options import add_extractor_args, add_output_flags, non_negative_int, positive_int

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
Exit codes: 0 success; 1 finished, but some rows failed (listed; models --check: the table differs); 2 bad usage
or input (one line on stderr); 3 internal error, a bug in featurehead (one line on stderr; --debug or
FEATUREHEAD_DEBUG=1 for the traceback: please report it); 130 interrupted; 141 the reader of its output stopped
early (`| head`), nothing printed.
"""

# Subcommands of the seed workflows, the scikit-learn composition and the report live in their own modules; each
# has `add_parsers(sub)` (setting `func` on its parsers with `set_defaults`) and imports nothing heavy at start-up.
COMMAND_MODULES = (workflows, augment, compose, report)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (argparse prints the whole usage block first), with the
    command's `--help` named for the rest; its subcommands' parsers are of this class too."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")

    def parse_args(self, args=None, namespace=None):
        # argparse reports a subcommand's unknown option from the top-level parser; say it from the subcommand's
        args, extras = self.parse_known_args(args, namespace)
        if extras:
            commands = getattr(self, "commands", {})  # the top-level parser's: its subcommands' parsers, by name
            commands.get(getattr(args, "command", None), self).error(f"unrecognized arguments: {' '.join(extras)}")
        return args


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="featurehead",
        description="Transfer learning on images: a frozen CNN writes features to an HDF5 store once; "
        "cheap classifier heads train on the store as often as you like.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_output_flags(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("extract", help="run a frozen CNN over an image index into a feature store (a directory)",
                       description="Bring the store up to date with the index: images are keyed by their content, "
                       "so only images the store has not seen go through the model; labels, splits and order are "
                       "rewritten from the index every run.")
    p.add_argument("index", help="a CSV (filename[,label][,split]), a folder of class subfolders (or of train, val (valid, validation) "
                   "and test folders of class subfolders, in any case), or a flat folder of images (unlabelled)")
    p.add_argument("--images-root", default=None, help="folder the CSV filenames are relative to (default: the CSV's folder)")
    p.add_argument("--out", default=None, help="store directory (default: next to the index, named by model and fingerprint)")
    p.add_argument("--shard-rows", type=positive_int, default=None,
                   help="rows per shard file (default: 4096, or fewer when 4096 rows pass 1 GiB of features)")
    p.add_argument("--dask", default=None, metavar="local:N|tcp://HOST:PORT",
                   help="extract the shards on Dask: local:N starts N one-thread worker processes here; an address "
                   "joins a running scheduler (workers must see the store and images at the same paths); default: "
                   "no Dask, this process")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of recording it")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="image decoding (and hashing) threads (default: every core); with --dask, each Dask worker "
                   "decodes on its one thread and --workers sets only the hashing threads here")
    p.add_argument("--dtype", default=None, choices=["float32", "float16"],
                   help="how features are stored: float16 halves the disk, and a feature beyond its range "
                   "(|x| >= 65520) stops the run (default: the store's own; float32 for a new store)")
    add_extractor_args(p)

    add_augment_args(p, views=True)

    p = sub.add_parser("inspect", help="print a store's schema, counts, extractor spec, status and failures",
                       description="Reads a store without changing it: whether it is complete, its rows (in the "
                       "view, stored, garbage), shards, extractor, the library versions that wrote it, and its "
                       "failed rows with their reasons.")
    p.add_argument("store", help="a feature store directory")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (rows, stored_rows, garbage_rows, shards, failed, complete, pending_rows, "
                   "resumable_rows, fingerprint, datasets, failures: the first 20 as {filename, error}, ...)")

    p = sub.add_parser("compact", help="drop a store's rows that its index no longer uses (removed or edited images)",
                       description="Rewrites the shards that hold rows the view no longer lists, keeps whole shards "
                       "as they are, and commits the new list before removing anything; interrupted, it resumes. "
                       "Features the view lists are unchanged.")
    p.add_argument("store", help="a feature store directory")
    p.add_argument("--shard-rows", type=positive_int, default=None, help="rows per rewritten shard (default: as extract)")
    p.add_argument("--failed", action="store_true",
                   help="also drop the rows of images that could not be read, so that the next extract tries them "
                   "again (a failure is stored with the image's content: a file unreadable for a while, an I/O "
                   "error, stays failed until then)")

    p = sub.add_parser("export", help="write a store as one self-contained HDF5 file (real datasets, for h5py users)",
                       description="Copies the view's columns and its features, as a real dataset, into one file "
                       "outside the store; featurehead's own commands keep reading the store directory.")
    p.add_argument("store", help="a complete feature store directory")
    p.add_argument("--out", required=True, help="the HDF5 file to write, outside the store")

    p = sub.add_parser("train", help="train a classifier head on a feature store and save it as a bundle",
                       description="Fits a head on the store's labelled training rows (never its 'test' rows) and "
                       "writes a bundle: the head (skops, loaded without running code), a manifest with the "
                       "extractor and validation metrics, and for the MLP its learning curves (history.png).")
    p.add_argument("store", help="a feature store written by `featurehead extract`")
    p.add_argument("--head", default="logreg", choices=["logreg", "mlp", "sgd"],
                   help="logreg: standardised logistic regression; mlp: a 1000-500-150 dropout MLP (Keras); sgd: an "
                   "out-of-core linear head, for stores larger than memory (default: logreg)")
    p.add_argument("--out", required=True, help="bundle directory to write (an existing bundle there is replaced)")
    p.add_argument("--C", type=float, default=None, help="logreg: inverse regularisation strength (default: 1.0)")
    p.add_argument("--hidden", default=None, help="mlp: hidden sizes, comma-separated (default: 1000,500,150)")
    p.add_argument("--dropout", type=float, default=None, help="mlp: dropout after each hidden layer (default: 0.5)")
    p.add_argument("--learning-rate", type=float, default=None, help="mlp: Adam learning rate (default: 1e-3)")
    p.add_argument("--epochs", type=int, default=None,
                   help="mlp: maximum epochs, stopping early on the validation loss when there are validation rows "
                   "(default: 50); sgd: passes over the store (default: 5)")
    p.add_argument("--validation-fraction", type=float, default=0.2,
                   help="share of the training images held out for validation when the store has no split column, "
                   "or for --head mlp when it has no 'val' rows (default: 0.2; 0: none)")
    p.add_argument("--random-state", type=non_negative_int, default=0,
                   help="seed of the hold-out, and of the mlp or sgd head (default: 0)")

    p = sub.add_parser("predict", help="predict an index with a head bundle (extracting with its exact extractor)",
                       description="Brings a store of the bundle's extractor up to date with the index (images it "
                       "already holds are not extracted again), then writes one row per image: the predicted class, "
                       "its probability, every class's probability, and why a row failed. A fine-tuned bundle "
                       "predicts from the images directly.")
    p.add_argument("head", help="head bundle directory (`featurehead train` or `finetune`)")
    p.add_argument("index", help="a CSV (filename column), a folder of images in class subfolders, or a flat folder of images")
    p.add_argument("--images-root", default=None, help="folder the CSV filenames are relative to (default: the CSV's "
                   "folder)")
    p.add_argument("--store", default=None, help="feature store to reuse or write (default: next to the index); its view becomes this index, so a "
                   "store that lists labelled images of another index, such as the training store, is refused (a fine-tuned bundle keeps no store)")
    p.add_argument("--out", default="predictions.csv", help="CSV to write (default: predictions.csv)")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="where the weights file of the head's extractor is now (the head records its path; moved, "
                   "or on another machine): it must hold the same content (its sha256); default: the recorded path")

    p = sub.add_parser("evaluate", help="metrics.json and confusion_matrix.png of a head on a store",
                       description="Scores a head bundle on a store of its extractor: accuracy, balanced accuracy, "
                       "macro-F1, per-class scores, the confusion matrix (and top-5 accuracy past 5 classes).")
    p.add_argument("head", help="head bundle directory (`featurehead train`)")
    p.add_argument("store", help="a feature store of the head's extractor")
    p.add_argument("--out", required=True, help="folder to write metrics.json and confusion_matrix.png into (a "
                   "`featurehead report` there loses its page, figures and thumbnails: they would show old numbers)")
    p.add_argument("--split", default=None,
                   help="evaluate only this split (train/val/test); default: on the store the head was trained on "
                   "(or a copy of it: the same index over the same images), its held-out validation rows, "
                   "else every row; --split '' is the rows without a split value: every row of a store without a split "
                   "column, the rows the head was fitted on included")

    p = sub.add_parser("models", help="list the backbones: default size, preprocessing, features per pooling",
                       description="Without NAME: every keras.applications backbone featurehead names, with its "
                       "default input size, its preprocessing (inside the graph) and its features per image for "
                       "each pooling. With NAME --layers: the layers it can be cut at (--layer), with their output "
                       "shapes, from the model built without weights.")
    p.add_argument("name", nargs="?", default=None, help="one backbone, e.g. resnet50 (default: every one)")
    p.add_argument("--layers", action="store_true", help="list NAME's layers and output shapes")
    p.add_argument("--input-size", type=int, default=None, help="with --layers: the input side (default: the model's)")
    p.add_argument("--check", action="store_true",
                   help="build every listed backbone (NAME alone, with NAME) without weights and compare it with the table; "
                   "each difference is printed, and the exit code is 1 when there is one (slow: minutes)")

    p = sub.add_parser("demo", help="offline end-to-end run on scikit-learn's handwritten digits",
                       description="Writes the digits as PNG files with an index, extracts VGG16 features into a "
                       "store named by the extractor's fingerprint (so a run with other options adds a store "
                       "beside the first), trains a logistic-regression and an MLP head and evaluates both.")
    p.add_argument("--out", "--workdir", dest="out", default="featurehead-demo",
                   help="where images, stores and heads go (default: ./featurehead-demo; --workdir is an alias)")
    p.add_argument("--input-size", type=int, default=64, help="VGG16 input side (default: 64, fast on a CPU)")
    p.add_argument("--weights", default="imagenet",
                   help="imagenet (default; falls back to random init offline), a weights file, or none")
    p.add_argument("--epochs", type=int, default=30, help="MLP epochs (default: 30, with early stopping)")

    for module in COMMAND_MODULES:
        module.add_parsers(sub)
    for subparser in sub.choices.values():
        add_output_flags(subparser, default=argparse.SUPPRESS)  # so a flag after COMMAND overrides none before
    parser.commands = dict(sub.choices)
    return parser
