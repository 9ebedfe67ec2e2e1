"""The layer sweep: every listed layer extracted in one forward pass, each into its own store, each probed.

A layer's store carries the fingerprint of the single-layer extractor, so `featurehead extract --layer L` and
`featurehead train` treat it as their own. The probe is a cross-validated logistic regression.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

import features_store
from extract import ImageIndex
from features_store.durable import check_writable
from features_store.lock import folder_lock

from ..runs.extraction import failed_keys, stop_recorded
from ..runs.filling import Target, fill_stores
from ..runs.planning import default_store_path, plan_rows, view_args
from ..runs.prediction import NOT_PRETRAINED, OUTPUT_LOCK, random_init, write_output
from ..runs.versions import base_versions

logger = logging.getLogger(__name__)

COLUMNS = ("layer", "dimension", "accuracy", "accuracy_std", "fit_seconds")


@dataclass(frozen=True)
class SweepResult:
    """What a sweep wrote: the table (one row per layer), its CSV and plot, and each layer's store."""

    table: pd.DataFrame
    csv: Path
    png: Path
    stores: dict
    n_extracted: int  # forward-pass rows computed by this run (0 when every store was complete)
    extracted_layers: list = field(default_factory=list)  # the layers that pass computed
    n_extracted_failed: int = 0  # of `n_extracted`, the rows whose image could not be decoded (stored as failed)
    # rows whose file could not be read at all (no content key: never stored, so every run tries them), counted
    # when this run extracted rows, as `extract` counts them
    n_unreadable: int = 0
    untested_classes: list = field(default_factory=list)  # of one image: trained on in every fold, never tested


def layer_extractors(extractor, layers: list[str]) -> dict:
    """One single-layer extractor per layer, with the rest of `extractor`'s config (pure: nothing is built)."""
    if not layers or len(set(layers)) != len(layers):
        raise ValueError(f"`layers` must be a non-empty list of distinct layer names. Received: layers={layers!r}")
    config = extractor.get_config()
    return {layer: type(extractor).from_config({**config, "layer": layer}) for layer in layers}


def run_sweep(
    index: ImageIndex,
    extractor,
    layers: list[str],
    out_dir=None,
    *,
    store_dir=None,
    cv: int = 5,
    workers: int | None = None,
    random_state: int = 0,
    progress=None,
) -> SweepResult:
    """Extract `layers` in one pass, probe each with a cross-validated logistic regression, write the table.

    Parameters
    ----------
    index : ImageIndex
    extractor : extract.Extractor
        Gives the model and every setting but `layer`.
    layers : list of str
    out_dir : str or Path, optional
        Where sweep.csv and sweep.png go; defaults to ``<index stem>.sweep`` next to the index.
    store_dir : str or Path, optional
        Where the layer stores go; defaults to next to the index (the `featurehead extract` default).
    cv : int
        Folds of the probe (fewer when a class has fewer images).
    workers : int
        Image decoding threads.
    random_state : int
        Seed of the fold shuffling.
    progress : callable, optional
        A tqdm-like factory, as in `run_extract`.

    Returns
    -------
    SweepResult
    """
    _check_probe_labels(index)  # before the forward pass: an unlabelled index was refused only after it
    if not hasattr(extractor, "layer_dims"):  # a saved Keras model or a CAE: one layer per extraction
        raise ValueError(f"sweep extracts several layers in one forward pass of a keras.applications backbone "
                         f"(`featurehead models` lists them), not of --model {extractor.name}; run `featurehead "
                         f"extract --model {extractor.name} --layer NAME` once per layer instead")
    extractor.validate()  # its input size, before its graph is built
    known = {layer.name for layer in extractor.base_model().layers}  # the graph only: no weights are loaded
    unknown = [layer for layer in layers if layer not in known]
    if unknown:  # found before any store is made (it was found when the model was built for the pass)
        raise ValueError(f"`layers` must be layers of {extractor.name}; {', '.join(map(repr, unknown))} "
                         f"{'is' if len(unknown) == 1 else 'are'} not (`featurehead models {extractor.name} "
                         f"--layers` lists them). Received: layers={','.join(layers)!r}")
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ValueError(f"{out_dir} is a file; --out is the folder to write sweep.csv and sweep.png into")
    out_dir = Path(out_dir) if out_dir is not None else _default_out_dir(index)
    check_writable(out_dir)  # a read-only --out was found after extracting and probing
    if not isinstance(cv, int) or isinstance(cv, bool) or cv < 2:
        raise ValueError(f"`cv` must be an integer >= 2 (cross-validation folds). Received: cv={cv!r}")
    singles = layer_extractors(extractor, list(layers))
    stores = {}
    for layer, single in singles.items():
        default = default_store_path(index, single)
        stores[layer] = default if store_dir is None else Path(store_dir) / default.name
    out_dir.mkdir(parents=True, exist_ok=True)
    with _output_lock(out_dir):  # a second sweep into this folder meanwhile would mix its table and plot with ours
        n_extracted, extracted_layers, n_failed, n_unreadable = extract_layers(index, extractor, singles, stores,
                                                                               workers=workers, progress=progress)
        rows = [dict(layer=layer, **probe(stores[layer], cv=cv, random_state=random_state)) for layer in singles]
        untested = rows[0]["untested_classes"]  # every layer's store lists the same images
        table = pd.DataFrame(rows, columns=list(COLUMNS))  # the columns of COLUMNS only
        csv, png = _write_table(table, extractor, out_dir)
    return SweepResult(table, csv, png, stores, n_extracted, extracted_layers, n_failed, n_unreadable, untested)


def _output_lock(out_dir: Path):
    """Hold `out_dir/.featurehead.lock` while a sweep runs; a second sweep into the same folder (the default one
    beside the index, for a sweep of another model) stops at once with one line."""
    return folder_lock(out_dir, OUTPUT_LOCK, timeout=0, busy=ValueError(
        f"{out_dir} is being written by another featurehead sweep (one with the same --out, or over the same index "
        "without --out?); give this one another --out, or re-run when it has finished"))


def _write_table(table: pd.DataFrame, extractor, out_dir: Path) -> tuple[Path, Path]:
    """`out_dir/sweep.csv` and `out_dir/sweep.png`, each replaced whole."""
    csv = out_dir / "sweep.csv"
    write_output(csv, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6g"))
    spec = extractor.spec()
    weights = (spec.get("config") or {}).get("weights")
    shown = weights if weights in (None, "none", "imagenet") else Path(str(weights)).name  # a file: its name
    png = plot_sweep(table, out_dir / "sweep.png", title=f"layer sweep: {extractor.name}, weights {shown}",
                     note=NOT_PRETRAINED if random_init(spec) else "")
    return csv, png


def _check_probe_labels(index: ImageIndex) -> None:
    """The index's rows the probe will use (`probe_splits`: train + val with a split column, else every row) must pass
    `probe_counts`, checked before the forward pass; `probe` checks again on what was read."""
    labels, split = np.asarray(index.labels, dtype=str), np.asarray(index.split, dtype=str)
    probed = probe_splits(split)
    probe_counts(labels if probed is None else labels[np.isin(split, probed)], where=index.source, splits=probed)


def probe_splits(split: np.ndarray) -> tuple[str, str] | None:
    """The splits the probe reads: train + val when any row names a split (a 'test' alone too, as `split_rows`
    reads it), so that a layer is never chosen on the test images; None (every row) without a split column."""
    return ("train", "val") if np.isin(np.asarray(split, dtype=str), ("train", "val", "test")).any() else None


def probe_counts(labels: np.ndarray, *, where, splits=None) -> np.ndarray:
    """The images per class among the labelled `labels` (of `splits`, when the index has a split column): 2 classes
    of at least 2 images each (to cross-validate on; a class of one image is trained on in every fold, as `train`
    trains on it, `probe_folds`), or one line."""
    _, counts = np.unique(labels[labels != ""], return_counts=True)
    if (counts >= 2).sum() < 2:
        among = "" if splits is None else f" among its {' and '.join(splits)} rows (the test rows never choose a layer)"
        raise ValueError(f"{where}: the probe needs 2 classes with at least 2 images each{among}. "
                         f"Received: counts {counts.tolist()}")
    return counts


def probe_folds(y: np.ndarray, cv: int, random_state: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The probe's (train, test) rows of `y` (pure): stratified, shuffled folds over the classes of 2 images or
    more, `cv` of them or as many as their smallest class has images; the images of a class of one are in every
    training fold and never tested, as `train` keeps such an image in training (its validation never holds it)."""
    from sklearn.model_selection import StratifiedKFold

    classes, counts = np.unique(y, return_counts=True)
    single = np.isin(y, classes[counts < 2])
    rows = np.flatnonzero(~single)
    folds = StratifiedKFold(min(cv, int(counts[counts >= 2].min())), shuffle=True, random_state=random_state)
    return [(np.sort(np.concatenate([rows[train], np.flatnonzero(single)])), rows[test])
            for train, test in folds.split(np.zeros(len(rows)), y[rows])]


def _default_out_dir(index: ImageIndex) -> Path:
    src = Path(index.source)
    return src.parent / f"{src.name if src.is_dir() else src.stem}.sweep"


def extract_layers(index: ImageIndex, extractor, singles: dict, stores: dict, *, workers: int | None = None,
                   progress=None) -> tuple[int, list[str], int, int]:
    """Bring every layer store up to date from ONE multi-output forward pass; return the rows computed, the
    layers they were computed for (those whose store lacked any), how many of those rows failed (images that
    could not be decoded) and, when it computed any, how many rows' files could not be read at all.

    Each store extracts only the images it lacks; an image that any store lacks goes through the model once.
    """
    plan = plan_rows(index, Path(next(iter(stores.values()))), None, workers)
    args = view_args(index, plan, None)
    with contextlib.ExitStack() as stack:
        sessions = {
            layer: stack.enter_context(features_store.StoreSession.open(
                stores[layer], fingerprint=single.fingerprint(), extractor=single.spec()))
            for layer, single in singles.items()
        }
        targets = {layer: Target(session, session.missing(plan.keys), None, plan.n_keys)
                   for layer, session in sessions.items()}
        todo = [layer for layer in singles if targets[layer].missing or sessions[layer].manifest is None]
        for layer in todo:  # a store stopped where a re-run stops again says why, as extract's
            stack.enter_context(stop_recorded(sessions[layer]))
        done = 0
        if todo:
            multi = type(extractor).from_config({**extractor.get_config(), "layer": todo})
            multi.validate()
            dims = multi.layer_dims()  # builds the one model
            bounds = np.cumsum(dims)[:-1]

            def stream(chunks):  # each layer's features of each chunk, from the one forward pass
                return (np.split(out, bounds, axis=1) for out in multi.stream(chunks))

            for layer, dim in zip(todo, dims):
                sessions[layer].ensure_manifest(dim)
                sessions[layer].write_view(**_with_sweep_attr(args, stores[layer], layer, todo),
                                           versions=base_versions())
            done = fill_stores(plan, [targets[layer] for layer in todo], lambda: (dims, stream),
                               input_size=multi.input_shape[:2], views=None, strict=False, workers=workers,
                               progress=progress, batch_size=multi.batch_size, resize=multi.resize)
        for layer, session in sessions.items():
            session.write_view(**_with_sweep_attr(args, stores[layer], layer, todo), versions=base_versions())
            session.remove_orphans()
    failed = set().union(*(failed_keys(stores[layer], targets[layer].missing) for layer in todo)) if done else set()
    return done, todo, len(failed), plan.n_unreadable if done else 0


def _with_sweep_attr(args: dict, store: Path, layer: str, todo: list[str]) -> dict:
    """The view arguments with `sweep_layers`: the layers extracted together in the pass that filled the store."""
    if layer in todo:
        together = ",".join(todo)
    else:
        try:
            together = features_store.read_info(store).attrs.get("sweep_layers", layer)
        except features_store.FeatureStoreError:
            together = layer
    return {**args, "attrs": {**args["attrs"], "sweep_layers": together}}


def probe(store, *, cv: int = 5, random_state: int = 0) -> dict:
    """Cross-validated accuracy of the logistic-regression head on a store's ok, labelled original rows (a class of
    one image is trained on in every fold, never tested: `probe_folds`; `untested_classes` names them)."""
    from sklearn.model_selection import cross_validate

    import classify

    meta = features_store.read_meta(store)
    # never choose a layer on the test images: with a split column, probe on train + val only
    splits = probe_splits(meta.split)
    X, y, _ = features_store.load(store, views=False, split=splits)
    classes, counts = np.unique(y[y != ""], return_counts=True)
    probe_counts(y, where=store, splits=splits)
    X, y = X[y != ""], y[y != ""]
    t0 = time.perf_counter()
    scores = cross_validate(classify.make_head("logreg"), X, y, cv=probe_folds(y, cv, random_state))
    logger.info("probed %s in %.1fs", store, time.perf_counter() - t0)
    return {"dimension": int(X.shape[1]), "accuracy": float(np.mean(scores["test_score"])),
            "accuracy_std": float(np.std(scores["test_score"])), "fit_seconds": float(np.mean(scores["fit_time"])),
            "untested_classes": classes[counts < 2].tolist()}


def plot_sweep(table: pd.DataFrame, path, *, title: str = "layer sweep", note: str = "") -> Path:
    """Accuracy ± std per layer, annotated with the accuracy and the dimension (a `Figure` on the Agg canvas: no
    pyplot state); `note` in red under the title."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from classify.plots import save_png

    longest = max((len(str(layer)) for layer in table["layer"]), default=1)
    fig = Figure(figsize=(max(4, 1.4 * len(table)), 3.5 + 0.06 * longest), layout="tight")
    ax = fig.add_subplot()
    ax.bar(table["layer"], table["accuracy"], yerr=table["accuracy_std"], capsize=4, color="tab:blue")
    for x, (acc, std, dim) in enumerate(zip(table["accuracy"], table["accuracy_std"], table["dimension"])):
        ax.annotate(f"{acc:.3f}\nd={dim}", (x, acc + std), textcoords="offset points", xytext=(0, 3), ha="center",
                    va="bottom", fontsize=8)
    ax.set_ylim(0, 1.2)
    ax.tick_params(axis="x", labelrotation=30)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    ax.set_ylabel("CV accuracy (logistic regression)")
    ax.set_title(title + (f"\n{note}" if note else ""), color="#c92a2a" if note else "black", fontsize=10)
    return save_png(FigureCanvasAgg(fig), path)
