"""The core `featurehead` subcommands (extract, inspect, compact, export, train, predict, evaluate, models,
demo): each calls one runner and prints what it did, the written path last. Runners are imported when a command
runs, so start-up stays free of Keras, h5py and scikit-learn."""

from __future__ import annotations

import contextlib
from pathlib import Path

from .augment import views_from_args
from .options import extractor_from_args, progress


def cmd_extract(args) -> int:
    from extract import read_index

    from ..runs.extraction import run_extract
    from ..runs.inspection import failures_csv_path, write_failures_csv

    index = read_index(args.index, args.images_root)  # validated before any model is built
    views = views_from_args(args)
    extractor = extractor_from_args(args)
    extractor.validate()
    client = None
    if args.dask:
        from ..scale.distributed import client_from_spec

        client = client_from_spec(args.dask, quiet=not args.verbose)
    with _dask_client_logs_quiet(client is not None and not args.verbose):  # its close too: it logs there
        try:
            if client is not None and not args.verbose and args.dask.startswith("local:"):
                from .app import quiet_keras_plugin

                # inside the `try`: a failure here left the local cluster's workers running
                client.register_plugin(quiet_keras_plugin())  # local workers write to our terminal
            result = run_extract(index, extractor, args.out, strict=args.strict, workers=args.workers,
                                 progress=progress(args, f"extract {extractor.name}"), views=views,
                                 shard_rows=args.shard_rows, dtype=args.dtype, client=client)
        finally:
            if client is not None:
                cluster = client.cluster if args.dask.startswith("local:") else None  # ours to stop
                client.close()
                if cluster is not None:
                    cluster.close()
    if result.n_rows and result.n_failed == result.n_rows:  # "up to date" said nothing of a wrong --images-root
        what = ("the one image could not be read" if result.n_rows == 1
                else f"none of the {result.n_rows} images could be read")
        check = "check --images-root and the index's paths" if Path(index.source).is_file() else "why: below"  # CSV
        print(f"{what}; {check}")
    elif result.up_to_date and result.n_failed:  # rows that cannot be read hold no features: nothing to extract
        print(f"up to date: {result.n_rows - result.n_failed} of {result.n_rows} rows hold features of fingerprint "
              f"{result.fingerprint[:12]}; the other {result.n_failed} could not be read")
    elif result.up_to_date:
        print(f"up to date: {result.n_rows} rows, all already extracted with fingerprint {result.fingerprint[:12]}")
    else:
        # this run's failures: the new images that could not be decoded and the files that could not be read at
        # all (no run stores those); failures kept from an earlier run are in the view's count below only
        n_failed_now = result.n_extracted_failed + result.n_unreadable
        failed = f", {n_failed_now} failed" if n_failed_now else ""
        n_new = result.n_extracted - result.n_extracted_failed
        print(f"extracted {n_new} new {'row' if n_new == 1 else 'rows'}{failed} "
              f"({extractor.weights_source()}); the view has {result.n_rows} rows")
    if result.n_repeated:
        one = result.n_repeated == 1
        print(f"{result.n_repeated} {'row lists' if one else 'rows list'} an image that another row also lists "
              "(the same content): each image is extracted and stored once")
    if result.garbage_rows:
        one = result.garbage_rows == 1
        print(f"{result.garbage_rows} stored {'row is' if one else 'rows are'} no longer in the index; "
              f"`featurehead compact {result.store}` drops {'it' if one else 'them'}")
    for note in _index_notes(index):
        print(note)
    code = 0
    if result.n_failed:
        try:
            where = f"the list is in {write_failures_csv(result.store)} and `featurehead inspect {result.store}`"
        except OSError as err:  # next to the store, e.g. a read-only parent folder: the store itself is fine
            where = f"`featurehead inspect {result.store}` lists them (no list next to it: {err.strerror or err})"
        print(f"{result.n_failed} of the view's {_rows(result.n_rows)} failed; {where} "
              f"({_failures_retried(result)})")
        code = 1
    else:
        with contextlib.suppress(OSError):  # a list left by an earlier run would name rows that no longer fail
            failures_csv_path(result.store).unlink(missing_ok=True)
    print(result.store)
    return code


@contextlib.contextmanager
def _dask_client_logs_quiet(quiet: bool):
    """Without -v, the Dask client's own log (a lost scheduler: a traceback, then our one line) stays off the
    terminal while we run; its level is given back after."""
    if not quiet:
        yield
        return
    import logging

    log = logging.getLogger("distributed.client")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _failures_retried(result) -> str:
    """When the view's failed rows are tried again: a file that could not be read has no content key, so nothing
    is stored for it and every run tries it; any other failure is stored with the image's content."""
    unreadable, kept = result.n_unreadable, result.n_failed - result.n_unreadable
    again = (f"the next run tries again the {_rows(unreadable)} whose file could not be read" if unreadable > 1
             else "the next run tries again the row whose file could not be read")
    kept_text = (f"{'any other' if unreadable else 'a'} failure is kept with the image's content; after "
                 f"`featurehead compact {result.store} --failed` a re-run tries {'those' if unreadable else 'them'} "
                 "again")
    return "; ".join(([again] if unreadable else []) + ([kept_text] if kept else []))


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


_MISSING_WORDS = {"nan", "<na>"}  # what pandas writes for a missing value as text (not "NA" or "none": real classes)


def _index_notes(index) -> list[str]:
    """What `train` will make of the index, said when extracting it: folders of images beside split folders (not
    in the index); no labels at all (a CSV whose label column has another name), or labelled rows that no split
    names while others do (train, val and test leave them out)."""
    notes = []
    if index.left_out:
        one = len(index.left_out) == 1
        notes.append(f"note: {index.source} has split folders (train, val, test), so the folder{'' if one else 's'} "
                     f"of images beside them {'is' if one else 'are'} not in the index: {', '.join(index.left_out)}")
    labels, split = list(index.labels), list(index.split)
    if not any(labels):
        others = [str(c) for c in index.frame.columns if c not in ("id", "label", "split")]
        seen = f" (its other columns: {', '.join(others)})" if others else ""
        return [*notes, f"note: the index has no labels{seen}: `featurehead train` needs a `label` column, or class "
                "folders"]
    missing = sorted({label for label in labels if label.lower() in _MISSING_WORDS})
    if missing:  # a label column written by pandas after astype(str): its empty cells became the word "nan"
        n = sum(1 for label in labels if label in missing)
        notes.append(f"note: {_rows(n)} {'is' if n == 1 else 'are'} labelled {' or '.join(map(repr, missing))}, a "
                     "class of its own for `train`; if that marks a missing label, write the label, or leave the row "
                     "out (a blank label is refused; an index without a `label` column is unlabelled)")
    loose = sum(1 for label, s in zip(labels, split) if label and not s)
    if loose and any(split):
        one = loose == 1
        notes.append(f"note: {_rows(loose)} with a label but no split value {'is' if one else 'are'} in no split: "
                     f"`train` and `evaluate --split` leave {'it' if one else 'them'} out")
    return notes


def cmd_inspect(args) -> int:
    from ..runs.inspection import describe_store, store_summary

    if args.json:
        import json

        print(json.dumps(store_summary(args.store), sort_keys=True))
    else:
        print(describe_store(args.store))
    return 0


def cmd_compact(args) -> int:
    from ..runs.inspection import compact_store, failures_csv_path

    counts = compact_store(args.store, shard_rows=args.shard_rows, failed=args.failed)
    if args.failed:  # extract's list of the failed rows, which are gone now (the next extract tries them again)
        failures_csv_path(args.store).unlink(missing_ok=True)
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
    from ..runs.training import run_train

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
        if not params["hidden_layer_sizes"]:  # an empty string: no hidden layer at all, likely not what was meant
            raise ValueError(f"`--hidden` must list at least one layer size, e.g. 1000,500,150 (a linear head is "
                             f"--head logreg). Received: --hidden {args.hidden!r}")
        if min(params["hidden_layer_sizes"]) < 1:  # the head's own check names its parameter, with a tuple
            raise ValueError(f"`--hidden` must be positive integers. Received: --hidden {args.hidden}")
    from ..runs.prediction import not_pretrained_note

    result = run_train(args.store, args.out, head=args.head, params=params,
                       validation_fraction=args.validation_fraction, random_state=args.random_state,
                       progress=progress(args, f"train {args.head}"))
    val = result.metrics.get("validation")
    summary = f"trained {args.head} on {result.n_train} rows in {result.fit_seconds:.1f}s"
    if val:
        summary += f"; validation accuracy {val['accuracy']:.4f} on {result.n_val} rows"
    print(summary)
    note = not_pretrained_note(result.bundle)
    if note:
        print(f"NOTE: {note}")
    print(result.bundle)
    return 0


def cmd_predict(args) -> int:
    from ..runs.prediction import run_predict

    result = run_predict(args.head, args.index, args.out, images_root=args.images_root, store=args.store,
                         progress=progress(args, "extract"), weights=args.weights)
    print(f"predicted {result.n_rows - result.n_failed} of {result.n_rows} rows")
    if result.n_failed:
        print(f"{_rows(result.n_failed)} failed; {'it is' if result.n_failed == 1 else 'they are'} marked ok=False in "
              f"{result.csv}")
    print(result.csv)
    return 1 if result.n_failed else 0


def cmd_evaluate(args) -> int:
    from classify import format_metrics

    from ..runs.prediction import fitted_on_note, not_pretrained_note, run_evaluate

    metrics = run_evaluate(args.head, args.store, args.out, split=args.split)
    print(f"evaluated on {metrics['evaluated_on']} ({metrics['n_samples']} images)")
    print(format_metrics(metrics))
    fitted = fitted_on_note(metrics)
    if fitted:
        print(f"NOTE: {fitted}")
    note = not_pretrained_note(args.head)
    if note:
        print(f"NOTE: {note}")
    print(Path(args.out))
    return 0


def cmd_models(args) -> int:
    from extract.backbones import BACKBONES, backbone_layers, backbone_table, check_backbone

    if args.name is not None and args.name.lower() in BACKBONES:
        args.name = args.name.lower()  # Keras's own spelling, ResNet50, is resnet50
    if args.name is not None and args.name not in BACKBONES:
        from extract.registry import did_you_mean

        raise ValueError(f"`NAME` must be one of the backbones `featurehead models` lists. Received: {args.name!r}"
                         + did_you_mean(args.name, BACKBONES))
    if args.layers:
        if args.name is None:
            raise ValueError("`--layers` needs a NAME, e.g. `featurehead models resnet50 --layers`")
        if args.check:  # it was ignored: --layers printed the layers and never checked
            raise ValueError("`--check` and `--layers` are two runs: `featurehead models NAME --check`, then "
                             "`featurehead models NAME --layers`")
        for name, shape in backbone_layers(args.name, args.input_size):
            print(f"{name:40s} {shape}")
        return 0
    if args.input_size is not None:  # the table is at each model's default size; only --layers builds at another
        raise ValueError("`--input-size` goes with NAME --layers, e.g. `featurehead models resnet50 --layers "
                         "--input-size 160`; the table lists each model at its default size")
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
                      progress=progress(args, "extract digits"), train_progress=progress(args, "train mlp"))
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
