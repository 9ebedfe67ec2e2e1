"""`featurehead report`: a head's evaluation on a store as one offline HTML page, with its images beside it.

The numbers are `run_evaluate`'s (it writes the same `metrics.json` and `confusion_matrix.png` into the report
folder); the page adds per-row views of the same rows: calibration, the most confident mistakes, failed rows.
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import classify
import features_store

from ..runs.prediction import (
    NOT_PRETRAINED,
    evaluation,
    fitted_on_note,
    is_report_page,
    load_head_bundle,
    on_training_store,
    output_lock,
    random_init,
    write_evaluation,
    write_output,
)
from . import data
from .html import Figure, Mistake, Page, render_page
from .plots import ANNOTATE_MAX_CLASSES, plot_confusion_normalized, plot_reliability

PAGE = "index.html"
FIGURES_DIR = "figures"
THUMBS_DIR = "thumbs"
MAX_FAILED_SHOWN = 200
_THUMB_NAME = re.compile(r"[0-9a-f]{16}\.png")
CONFUSION_FIGURE, CURVES_FIGURE, RELIABILITY_FIGURE = "confusion_normalized.png", "learning_curves.png", "reliability.png"


def remove_report(out_dir) -> None:
    """Remove a report's page, figures and thumbnails from `out_dir`, and their folders when that empties them:
    `evaluate` writing new numbers there makes them stale (the page would show the old head's). Only the report's
    own files go (its page, by its title): anything else in figures/ or thumbs/ stays. The caller holds the lock."""
    out_dir = Path(out_dir)
    if is_report_page(out_dir / PAGE):
        (out_dir / PAGE).unlink()
    for folder, ours in ((out_dir / FIGURES_DIR, {CONFUSION_FIGURE, CURVES_FIGURE, RELIABILITY_FIGURE}.__contains__),
                         (out_dir / THUMBS_DIR, _THUMB_NAME.fullmatch)):
        if not folder.is_dir():
            continue
        for old in folder.iterdir():
            if ours(old.name) and old.is_file():
                old.unlink()
        if not any(folder.iterdir()):
            folder.rmdir()


@dataclass(frozen=True)
class ReportResult:
    page: Path  # the report folder's index.html
    metrics: dict  # `run_evaluate`'s, as in metrics.json
    headline: dict  # accuracy, balanced_accuracy, macro_f1 and top-k as the page shows them
    n_samples: int
    n_wrong: int
    n_failed: int
    random_init: bool
    notes: tuple[str, ...]
    failed_of: str = "the store"  # the selection `n_failed` counts in, in words: "split 'test'", ...


def run_report(bundle_path, store, out_dir, *, split: str | None = None, images_root=None, mistakes: int = 24,
               thumb_size: int = 160) -> ReportResult:
    """Evaluate a head bundle on a store and write `out_dir/index.html` with its figures and thumbnails.

    Parameters
    ----------
    bundle_path, store, out_dir : path-like
        The head bundle, the feature store and the report folder (created; files of an earlier report replaced).
    split : str, default=None
        As in `run_evaluate`.
    images_root : path-like, default=None
        Folder the store's ids are relative to, for the thumbnails; default: the one the store records.
    mistakes : int, default=24
        How many of the most confident mistakes the gallery shows (only those are decoded).
    thumb_size : int, default=160
        Longest side of a thumbnail in pixels.
    """
    t0 = time.perf_counter()
    if isinstance(mistakes, bool) or not isinstance(mistakes, int) or mistakes < 0:
        raise ValueError(f"`mistakes` must be a non-negative integer. Received: mistakes={mistakes!r}")
    if images_root is not None and not Path(images_root).is_dir():
        raise ValueError(f"`images_root` must be a folder of the store's images. Received: {images_root} "
                         "(not a folder)")
    bundle = load_head_bundle(bundle_path, "a report")
    metrics = evaluation(bundle_path, store, out_dir, split=split)
    info, meta = features_store.read_info(store), features_store.read_meta(store)
    training_store = on_training_store(bundle.manifest, store, info)
    rows = data.evaluated_rows(meta, bundle.manifest, split=split, on_training_store=training_store)
    scored = _score(bundle, store, meta, rows)
    _check_same_rows(metrics, scored.y_true, scored.y_pred)
    headline = data.headline_metrics(metrics, scored.y_true, scored.y_pred, scored.proba, bundle.classes)

    out_dir = Path(out_dir)
    root = Path(images_root) if images_root is not None else _recorded_root(info)
    with output_lock(out_dir):  # another report or evaluate into this folder meanwhile would mix its files in
        # the old page goes first: a failure below (a full disk) would leave it beside the new figures and numbers
        (out_dir / PAGE).unlink(missing_ok=True)
        not_pretrained = random_init(bundle.manifest.get("extractor") or {})
        # metrics.json + confusion_matrix.png, as `evaluate` writes them
        write_evaluation(out_dir, metrics, note=NOT_PRETRAINED if not_pretrained else "")
        gallery = _gallery(scored, mistakes, root, out_dir / THUMBS_DIR, thumb_size)
        figures = _figures(bundle, metrics, data.reliability(scored.confidence, scored.correct), out_dir)
        failed, failed_of = data.failed_rows(meta, bundle.manifest, split=split, on_training_store=training_store)
        facts = data.run_facts(bundle.manifest, info, bundle=str(bundle_path), store=str(store),
                               evaluated_on=metrics["evaluated_on"], n_samples=len(rows),
                               images_root=str(root) if root is not None else None, seconds=time.perf_counter() - t0)
        fitted = fitted_on_note(metrics)
        notes = [fitted] * bool(fitted) + _root_notes(root, images_root is not None) + _unknown_label_notes(metrics)
        page = Page(
            title=f"featurehead report: {Path(bundle_path).name} on {Path(store).name} ({metrics['evaluated_on']})",
            random_init=not_pretrained, facts=facts, headline=headline, per_class=metrics["per_class"], figures=figures,
            mistakes=gallery, n_wrong=int(np.count_nonzero(~scored.correct)),
            failed=[(str(meta.ids[i]), str(meta.errors[i])) for i in failed[:MAX_FAILED_SHOWN]], n_failed=len(failed),
            failed_of=failed_of,
            notes=notes, links=[("metrics.json, as `featurehead evaluate` writes it", "metrics.json"),
                                ("confusion matrix in counts", "confusion_matrix.png")],
        )
        path = _write_text(out_dir / PAGE, render_page(page))
    return ReportResult(page=path, metrics=metrics, headline=headline, n_samples=len(rows),
                        n_wrong=page.n_wrong, n_failed=len(failed), random_init=not_pretrained, notes=tuple(notes),
                        failed_of=failed_of)


@dataclass(frozen=True)
class _Scored:
    """The evaluated rows: ids, true and predicted class names, probabilities."""

    ids: np.ndarray
    y_true: np.ndarray
    y_pred: np.ndarray
    proba: np.ndarray  # (n, n_classes), columns in the order of the head's classes
    confidence: np.ndarray  # probability of the predicted class
    p_true: np.ndarray  # probability of the true class; NaN when it is not a class of the head

    @property
    def correct(self) -> np.ndarray:
        return self.y_true == self.y_pred


def _score(bundle, store, meta, rows: np.ndarray) -> _Scored:
    y_pred, proba = _predict(bundle, store, rows)
    y_true = meta.labels[rows].astype(str)
    pred_codes, true_codes = data.class_codes(y_pred, bundle.classes), data.class_codes(y_true, bundle.classes)
    at = np.arange(len(rows))
    p_true = np.where(true_codes >= 0, proba[at, np.maximum(true_codes, 0)], np.nan)
    return _Scored(ids=meta.ids[rows].astype(str), y_true=y_true, y_pred=y_pred, proba=proba,
                   confidence=proba[at, pred_codes], p_true=p_true)


def _gallery(scored: _Scored, n: int, root: Path | None, folder: Path, thumb_size: int) -> list[Mistake]:
    """The `n` most confident mistakes, each with its thumbnail (made here, once)."""
    picked = data.most_confident_mistakes(scored.y_true, scored.y_pred, scored.confidence, n)
    thumbs = write_thumbnails(scored.ids[picked], root, folder, size=thumb_size)
    return [Mistake(id=i, true=str(scored.y_true[k]), predicted=str(scored.y_pred[k]),
                    probability=float(scored.confidence[k]), p_true=float(scored.p_true[k]), thumb=thumbs[i][0],
                    reason=thumbs[i][1])
            for i, k in zip(scored.ids[picked], picked)]


def _predict(bundle, store, rows: np.ndarray, slab_bytes: int = 64 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class names and probabilities of `rows`, reading the features a slab at a time."""
    step = features_store.chunk_rows(bundle.n_features, 4, slab_bytes)
    preds = [np.empty(0, dtype=str)]
    probas = [np.empty((0, len(bundle.classes)))]
    for lo in range(0, len(rows), step):
        pred, proba = bundle.predict_with_proba(features_store.read_features(store, rows[lo : lo + step]))
        preds.append(pred)  # the manifest's names, as `evaluate` scores them
        probas.append(np.asarray(proba, dtype=np.float64))
    return np.concatenate(preds), np.concatenate(probas)


def _check_same_rows(metrics: dict, y_true: np.ndarray, y_pred: np.ndarray) -> None:
    """The page's per-row views must be of exactly the rows `evaluate` scored."""
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(y_true, y_pred, labels=metrics["classes"]).tolist() if len(y_true) else []
    if len(y_true) != metrics["n_samples"] or matrix != metrics["confusion_matrix"]:
        raise RuntimeError(f"the report selected {len(y_true)} rows where `evaluate` scored {metrics['n_samples']} "
                           "(or predicted them differently); this is a featurehead bug")


def _recorded_root(info) -> Path | None:
    root = info.attrs.get("images_root", "")
    return Path(root) if root else None


def _root_notes(root: Path | None, given: bool) -> list[str]:
    if root is None:
        return ["The store records no images root, so the gallery has no thumbnails; pass --images-root."]
    if not given and not root.is_dir():
        return [f"The images root recorded in the store, {root}, is not a folder from here (a relative root is "
                "relative to where `extract` ran), so the gallery has no thumbnails; pass --images-root."]
    return []


def write_thumbnails(ids, root: Path | None, folder: Path, *, size: int = 160) -> dict[str, tuple[str | None, str]]:
    """Decode each image once and save a PNG thumbnail (longest side `size`) named by a hash of its id.

    Returns ``{id: (src relative to the report folder, "")}``, or ``(None, reason)`` for an image that cannot be
    read. Thumbnails of an earlier report in `folder` are removed first.
    """
    from PIL import Image

    from extract import ImageReadError, load_image
    from features_store.durable import atomic_write, remove_dead_temporaries

    folder.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(folder, _THUMB_NAME.fullmatch)  # a killed report's temporary thumbnails
    for old in folder.iterdir():
        if _THUMB_NAME.fullmatch(old.name):
            old.unlink()
    out = {}
    for image_id in dict.fromkeys(ids):
        if root is None or not root.is_dir():
            out[image_id] = (None, "images root not found")
            continue
        try:
            thumb = Image.fromarray(load_image(root / image_id))
        except ImageReadError as err:
            out[image_id] = (None, getattr(err, "reason", str(err)))
            continue
        thumb.thumbnail((size, size))
        name = hashlib.sha256(image_id.encode("utf-8")).hexdigest()[:16] + ".png"
        atomic_write(folder / name, functools.partial(thumb.save, format="PNG"))
        out[image_id] = (f"{folder.name}/{name}", "")
    return out


def _figures(bundle, metrics: dict, bins: dict, out_dir: Path) -> list[Figure]:
    folder = out_dir / FIGURES_DIR
    k = len(metrics["classes"])
    annotated = k <= ANNOTATE_MAX_CLASSES
    note = "click it to open it at full size" if annotated else (
        f"{k} classes: too many to print numbers (the counts are in metrics.json"
        + (" and confusion_matrix.png" if k <= classify.plots.COUNTS_MAX_CLASSES else "") + "); "
        "click it to open it at full size")
    plot_confusion_normalized(metrics["confusion_matrix"], metrics["classes"], folder / CONFUSION_FIGURE)
    figures = [Figure("confusion matrix, each row divided by its true class's count"
                      + (" (counts in brackets)" if annotated else ""), f"{FIGURES_DIR}/{CONFUSION_FIGURE}", note)]
    estimator = bundle.estimator
    history = getattr(estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator, "history_", None)
    head = (bundle.manifest.get("params") or {}).get("head", "this")
    if history:
        classify.plot_history(history, folder / CURVES_FIGURE)
        figures.append(Figure("learning curves (loss and accuracy per epoch)", f"{FIGURES_DIR}/{CURVES_FIGURE}"))
    else:  # an earlier report's curves, of another head, would stay in the folder beside this report
        (folder / CURVES_FIGURE).unlink(missing_ok=True)
        figures.append(Figure("learning curves", None, f"the {head} head records no per-epoch history "
                              "(the mlp head does)"))
    plot_reliability(bins, folder / RELIABILITY_FIGURE)
    figures.append(Figure("calibration: reliability diagram of the predicted class's probability",
                          f"{FIGURES_DIR}/{RELIABILITY_FIGURE}", f"expected calibration error {bins['ece']:.3f}"))
    return figures


def _unknown_label_notes(metrics: dict) -> list[str]:
    """A note naming the true labels that are not classes of the head (their rows count as misses)."""
    unknown = metrics.get("unknown_labels") or {}
    if not unknown:
        return []
    shown = ", ".join(f"{label!r} ({n} rows)" for label, n in list(unknown.items())[:10])
    more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
    return [f"Labels that the head was never trained on: {shown}{more}; their rows count as misses in every "
            "number here (they are in metrics.json under unknown_labels)"]


def _write_text(path: Path, text: str) -> Path:
    """Replace `path` whole (a temporary file, then a rename): a reader never sees half a page."""
    write_output(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path
