"""CLI subcommands for the layer sweep and scikit-learn composition."""

from __future__ import annotations

from .options import add_extractor_args, at_least_two, extractor_from_args, positive_int, progress


def add_parsers(sub) -> None:
    """Add this module's subcommands to the `featurehead` parser."""
    p = sub.add_parser("sweep", help="extract several layers in one forward pass and probe each with a CV logreg",
                       description="Which layer of a keras.applications backbone (`featurehead models`) gives the "
                       "best features for these images: each layer gets its own store (what is stored is reused), "
                       "all filled by one forward pass, then a cross-validated logistic regression probes each.")
    p.add_argument("index", help="a CSV (filename,label[,split]) or a folder of class subfolders")
    p.add_argument("--layers", required=True, help="comma-separated layer names, e.g. block3_pool,block4_pool,block5_pool")
    p.add_argument("--images-root", default=None, help="folder the CSV filenames are relative to (default: the CSV's folder)")
    p.add_argument("--out", default=None, help="directory for sweep.csv and sweep.png (default: <index>.sweep/)")
    p.add_argument("--store-dir", default=None, help="where the per-layer stores go (default: next to the index)")
    p.add_argument("--cv", type=at_least_two, default=5, help="folds of the logistic-regression probe (default: 5)")
    p.add_argument("--workers", type=positive_int, default=None, help="image decoding threads (default: every core)")
    add_extractor_args(p, layer=False, saved_models=False)
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    import features_store
    from extract import read_index

    from ..runs.prediction import NOT_PRETRAINED, random_init
    from ..workflows.sweep import run_sweep

    if args.layer is not None:
        raise ValueError(f"`sweep` takes `--layers`, not `--layer`. Received: --layer {args.layer}")
    layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    index = read_index(args.index, args.images_root)
    extractor = extractor_from_args(args)
    result = run_sweep(index, extractor, layers, args.out, store_dir=args.store_dir, cv=args.cv,
                       workers=args.workers, progress=progress(args, f"sweep {extractor.name}"))
    print(result.table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if random_init(extractor.spec()):
        print(f"NOTE: {NOT_PRETRAINED}")
    done = result.extracted_layers
    if done:
        n_failed = result.n_extracted_failed + result.n_unreadable  # as `extract` counts this run's failures
        failed = f", {n_failed} failed," if n_failed else ""
        which = f" ({', '.join(done)})" if len(done) < len(layers) else ""
        print(f"extracted {result.n_extracted - result.n_extracted_failed} rows{failed} in one forward pass over "
              f"{len(done)} of the {len(layers)} layers{which}; plot: {result.png}")
    else:
        print(f"every layer's store was up to date (nothing extracted); plot: {result.png}")
    if result.untested_classes:  # as `train`, which keeps a class of one image in training
        one = len(result.untested_classes) == 1
        names = ", ".join(map(repr, result.untested_classes))
        print(f"{'class' if one else 'classes'} {names} {'has' if one else 'have'} one image: the probe trains on "
              f"{'it' if one else 'them'} in every fold and never tests {'it' if one else 'them'} (the accuracy is "
              "of the other classes' images)")
    code = 0
    first = next(iter(result.stores.values()))  # every layer's store lists the same images
    failed = features_store.read_info(first).n_failed
    if failed:  # the probe left them out; say so, as `extract` does
        print(f"{failed} {'image' if failed == 1 else 'images'} could not be read and {'is' if failed == 1 else 'are'} "
              "left out of every layer's probe; "
              f"`featurehead inspect {first}` lists them")
        code = 1
    print(result.csv)
    return code
