"""CLI subcommand `report`: an offline HTML page of a head's evaluation on a store (`pipelines.report`)."""

from __future__ import annotations


def add_parsers(sub) -> None:
    """Add this module's subcommand to the `featurehead` parser."""
    p = sub.add_parser(
        "report", help="an offline HTML report of a head on a store: metrics, plots, the most confident mistakes",
        description="Evaluate a head bundle on a store as `evaluate` does (the same metrics.json and "
        "confusion_matrix.png) and write OUT/index.html beside its images: the run, the metrics, a sortable "
        "per-class table, the row-normalised confusion matrix, learning curves (mlp heads), the reliability "
        "diagram, thumbnails of the most confident mistakes and the failed rows. The page loads nothing from "
        "the network.")
    p.add_argument("head", help="head bundle directory (`featurehead train`)")
    p.add_argument("store", help="a feature store of the head's extractor")
    p.add_argument("--out", required=True, help="report directory (index.html, metrics.json, figures/, thumbs/)")
    p.add_argument("--split", default=None,
                   help="evaluate only this split (train/val/test); default: as `evaluate` (the held-out "
                   "validation rows on the training store, else every row)")
    p.add_argument("--images-root", default=None,
                   help="folder the store's image ids are relative to, for the thumbnails (default: the images "
                   "root recorded in the store)")
    p.add_argument("--mistakes", type=int, default=24, help="how many confident mistakes to show (default: 24)")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from ..report.run import run_report
    from ..runs.prediction import NOT_PRETRAINED

    if args.mistakes < 0:
        raise ValueError(f"`--mistakes` must be a non-negative integer. Received: --mistakes {args.mistakes}")
    result = run_report(args.head, args.store, args.out, split=args.split, images_root=args.images_root,
                        mistakes=args.mistakes)
    scores = "  ".join(f"{key.replace('_', '-')} {value:.4f}" for key, value in result.headline.items())
    print(f"evaluated on {result.metrics['evaluated_on']} ({result.n_samples} images): {scores}")
    shown = min(args.mistakes, result.n_wrong)
    print(f"{result.n_wrong} wrong; " + (f"the gallery shows the {shown} most confident" if shown else "no gallery"))
    if result.n_failed:
        rows = "1 row" if result.n_failed == 1 else f"{result.n_failed} rows"
        print(f"{rows} of {result.failed_of} failed at extraction; the page lists each with its reason")
    if result.random_init:
        print(f"NOTE: {NOT_PRETRAINED}")
    for note in result.notes:
        print(f"NOTE: {note}")
    print(result.page)
    return 0
