"""What the HTML report shows, as plain data: the evaluated rows, headline metrics, calibration bins, the most
confident mistakes and the facts of the run. Pure functions over arrays and manifests: no files, no plots.
"""

from __future__ import annotations

import json

import numpy as np

from ..runs.prediction import random_init, trained_rows

TOP_K = 5  # top-k accuracy is shown when there are more than TOP_K classes


def evaluated_rows(meta, manifest: dict, *, split: str | None, on_training_store: bool) -> np.ndarray:
    """The store rows that `run_evaluate` scores, in its order (its selection, over `read_meta`'s columns).

    Parameters
    ----------
    meta : features_store.StoreMeta
        The store's per-row columns.
    manifest : dict
        The bundle's manifest (its head and `params` give the held-out rows on the training store).
    split : str or None
        The split asked for.
    on_training_store : bool
        Whether the store is the one the head was trained on.

    Returns
    -------
    rows : ndarray of shape (n_samples,), dtype int64
        Ok, labelled, original rows: the held-out validation rows on the training store without `split`,
        else the rows of `split` (every row without it).
    """
    if split is None and on_training_store:
        _, rows = trained_rows(manifest, meta)
    else:
        keep = meta.ok & (meta.view == 0)
        if split is not None:
            keep &= meta.split == split
        rows = np.flatnonzero(keep)
    rows = np.asarray(rows, dtype=np.int64)
    return rows[meta.labels[rows] != ""]


def failed_rows(meta, manifest: dict, *, split: str | None, on_training_store: bool) -> tuple[np.ndarray, str]:
    """The failed rows of the selection that `evaluated_rows` draws from, and that selection in words.

    A failed row is in no metric; the page lists the originals of the selection the evaluation draws from, labelled
    or not (an image that cannot be read is worth knowing of either way; unlabelled ones were left out): those of
    `split`; on the training store without `split`, of the rows its held-out validation rows come from (the 'val'
    split, or the 'train' split or the whole store they were held out of: a failed row there was neither fitted on
    nor held out); else of the whole store. Never another split's: a report on the held-out rows listed the failed
    test rows too.

    Returns
    -------
    rows : ndarray of shape (n_failed,), dtype int64
    selection : str
        Words that follow "of": "split 'test'", "the store", ...
    """
    failed = ~meta.ok & (meta.view == 0)
    if split is not None:
        return np.flatnonzero(failed & (meta.split == split)), f"split {split!r}"
    if not on_training_store:
        return np.flatnonzero(failed), "the store"
    _, val = trained_rows(manifest, meta)
    drawn_from = str(meta.split[val[0]]) if len(val) else ""  # `split_rows`: all of one split, or of none
    if drawn_from == "val":
        return np.flatnonzero(failed & (meta.split == "val")), "split 'val' (the head's validation rows)"
    if drawn_from == "train":
        return (np.flatnonzero(failed & (meta.split == "train")),
                "split 'train' (the held-out validation rows were drawn from its readable rows)")
    return np.flatnonzero(failed), "the store (the held-out validation rows were drawn from its readable rows)"


def headline_metrics(metrics: dict, y_true, y_pred, proba, classes, *, k: int = TOP_K) -> dict:
    """Accuracy and macro-F1 as `evaluate` wrote them, balanced accuracy and top-k (more than `k` classes).

    Balanced accuracy is scikit-learn's definition, the macro average of recall over the true classes; top-k
    counts a row whose true class is not among `classes` as a miss. A value `metrics` already holds wins.

    Parameters
    ----------
    metrics : dict
        `classify.evaluate`'s output for these rows.
    y_true, y_pred : array-like of shape (n_samples,)
        True and predicted class names.
    proba : ndarray of shape (n_samples, n_classes)
        Probabilities, columns in the order of `classes`.
    classes : sequence of str
        The head's classes.

    Returns
    -------
    dict
        ``accuracy``, ``balanced_accuracy``, ``macro_f1`` and, with more than `k` classes, ``top_{k}_accuracy``.
    """
    from sklearn.metrics import recall_score, top_k_accuracy_score

    y_true, y_pred = np.asarray(y_true, dtype=str), np.asarray(y_pred, dtype=str)
    out = {"accuracy": metrics["accuracy"]}
    out["balanced_accuracy"] = metrics.get("balanced_accuracy", float(recall_score(
        y_true, y_pred, labels=np.unique(y_true), average="macro", zero_division=0)))
    out["macro_f1"] = metrics["macro_f1"]
    if len(classes) > k:
        key = f"top_{k}_accuracy"
        codes = class_codes(y_true, classes)
        known = codes >= 0
        hits = top_k_accuracy_score(codes[known], proba[known], k=k, labels=np.arange(len(classes)),
                                    normalize=False) if known.any() else 0
        out[key] = metrics.get(key, float(hits) / len(y_true))
    return out


def class_codes(names, classes) -> np.ndarray:
    """Positions of `names` in `classes`; -1 for a name that is not a class."""
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup.get(str(n), -1) for n in names], dtype=np.int64)


def reliability(confidence, correct, *, n_bins: int = 10) -> dict:
    """Calibration of the predicted class's probability, in `n_bins` equal-width bins over [0, 1].

    Returns
    -------
    dict
        ``edges`` (n_bins + 1), ``count``, ``accuracy`` and ``confidence`` per bin (NaN for an empty bin), and
        ``ece``: the expected calibration error, the count-weighted mean of |accuracy - confidence|.
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(bins, weights=confidence, minlength=n_bins) / count
    filled = count > 0
    ece = float(np.sum(count[filled] * np.abs(accuracy[filled] - mean_conf[filled])) / max(len(confidence), 1))
    return {"edges": edges, "count": count, "accuracy": accuracy, "confidence": mean_conf, "ece": ece}


def most_confident_mistakes(y_true, y_pred, confidence, n: int) -> np.ndarray:
    """Positions of the `n` wrong predictions made with the highest probability (ties: first row first)."""
    wrong = np.flatnonzero(np.asarray(y_true, dtype=str) != np.asarray(y_pred, dtype=str))
    order = np.argsort(-np.asarray(confidence)[wrong], kind="stable")
    return wrong[order[: max(int(n), 0)]]


def weights_statement(extractor: dict) -> tuple[str, bool]:
    """How the extractor's weights read to a person, and whether they are a random init (not pretrained)."""
    config = extractor.get("config") or {}
    weights = config.get("weights")
    if random_init(extractor):
        return f"random init (seed {config.get('seed', 0)}): NOT pretrained", True
    if weights == "imagenet":
        return "ImageNet-pretrained", False
    return f"from the file {weights}", False


def validation_statement(manifest: dict) -> str:
    """Where the head's validation rows came from, as the bundle records it ("not recorded" for older bundles)."""
    validation = manifest.get("validation")
    if not isinstance(validation, dict) or not validation.get("source"):
        return "not recorded"
    rows = validation.get("rows")
    return f"{validation['source']} ({rows} rows)" if rows is not None else str(validation["source"])


def run_facts(manifest: dict, info, *, bundle: str, store: str, evaluated_on: str, n_samples: int,
              images_root: str | None, seconds: float) -> list[tuple[str, str]]:
    """The run as (label, text) pairs, in the order the page lists them."""
    extractor = manifest.get("extractor") or {}
    config = extractor.get("config") or {}
    params = dict(manifest.get("params") or {})
    metrics = manifest.get("metrics") or {}
    head = params.pop("head", None) or manifest.get("kind", "?")
    fit = metrics.get("fit_seconds")
    settings = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(config.items()) if k != "weights")
    return [
        ("extractor", f"{extractor.get('name', '?')} (version {extractor.get('version', '?')}); {settings}"),
        ("weights", weights_statement(extractor)[0]),
        ("fingerprint", str(manifest.get("fingerprint", ""))),
        ("store", f"{store}: {info.n_rows} rows, {info.n_features} features ({info.dtype}), "
                  f"splits {', '.join(f'{k or chr(39) * 2}={v}' for k, v in sorted(info.split_counts.items()))}"),
        ("images root", images_root or "not recorded"),
        ("head", f"{head} in {bundle}: {len(manifest.get('classes', []))} classes, "
                 f"{manifest.get('n_features', '?')} features, created {manifest.get('created', '?')}"),
        ("training parameters", ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(params.items())) or "none"),
        ("trained on", f"{metrics.get('n_train', '?')} rows of {manifest.get('trained_on', 'a store not recorded')}"),
        ("validation source", validation_statement(manifest)),
        ("time taken", (f"training {fit:.2f} s; " if isinstance(fit, (int, float)) else "training: not recorded; ")
                       + f"this evaluation and report {seconds:.1f} s"),
        ("evaluated on", f"{evaluated_on}: {n_samples} images"),
    ]
