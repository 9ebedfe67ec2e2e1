"""Evaluation of a fitted head: accuracy, macro-F1, per-class scores and the confusion matrix; the accuracy of a
compiled Keras model on a dataset."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    recall_score,
    top_k_accuracy_score,
)

from classify.keras_state import global_rng_kept

TOP_K = 5  # top-k accuracy is reported when there are more than TOP_K classes


def evaluate(estimator: Any, X: Any, y: Any) -> dict:
    """Score a fitted classifier on (X, y), as JSON-able plain values.

    Parameters
    ----------
    estimator : fitted classifier
        Anything with ``predict`` (and ideally ``classes_``).
    X : array-like of shape (n_samples, n_features)
        Features.
    y : array-like of shape (n_samples,)
        True labels.

    Returns
    -------
    metrics : dict
        ``accuracy``, ``balanced_accuracy`` (the mean recall over the true classes present, scikit-learn's
        definition), ``macro_f1`` (over the classes that are true or predicted, scikit-learn's default),
        ``top_5_accuracy`` (only with more than 5 classes and ``predict_proba``; a true label that is not a class
        counts as a miss), ``per_class`` ({class: {precision, recall, f1,
        support}}), ``confusion_matrix`` (list of lists, rows are true classes), ``classes`` (list of str) and
        ``n_samples``; and ``unknown_labels`` ({label: rows}) when some true labels are not classes of the head
        (a class it never saw in training): they are appended to the classes of ``per_class``, the confusion
        matrix and macro-F1, each row a miss.
    """
    y = np.asarray(y)
    y_pred = estimator.predict(X)
    labels = getattr(estimator, "classes_", None)
    if labels is None:
        labels = np.unique(np.concatenate([y, y_pred]))
    classes = labels  # the head's own: the columns of predict_proba
    known = set(np.asarray(labels).tolist())
    # true labels the head has no class for: every such row is a miss, and it is scored as one
    unknown = Counter(value for value in y.tolist() if value not in known)
    if unknown:
        labels = np.asarray([*np.asarray(labels).tolist(), *sorted(unknown, key=str)])
    precision, recall, f1, support = precision_recall_fscore_support(
        y, y_pred, labels=labels, zero_division=0
    )
    names = [str(c) for c in labels]
    occurring = set(y.tolist()) | set(np.asarray(y_pred).tolist())
    per_class = {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(names, precision, recall, f1, support)
    }
    out = {
        "accuracy": float(accuracy_score(y, y_pred)),
        "balanced_accuracy": float(recall_score(y, y_pred, labels=np.unique(y), average="macro", zero_division=0)),
        # over the classes that occur (true or predicted), scikit-learn's default: a class absent from this split
        # and never predicted would count as an F1 of 0
        "macro_f1": float(f1_score(y, y_pred, labels=[c for c in labels if c in occurring] or labels,
                                   average="macro", zero_division=0)),
    }
    if len(classes) > TOP_K and hasattr(estimator, "predict_proba") and len(y):
        lookup = {str(c): i for i, c in enumerate(classes)}
        codes = np.array([lookup.get(str(v), -1) for v in y])
        known = codes >= 0
        hits = top_k_accuracy_score(codes[known], estimator.predict_proba(X)[known], k=TOP_K,
                                    labels=np.arange(len(classes)), normalize=False) if known.any() else 0
        out[f"top_{TOP_K}_accuracy"] = float(hits) / len(y)
    return {
        **out,
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y, y_pred, labels=labels).tolist(),
        "classes": names,
        "n_samples": int(len(y)),
        **({"unknown_labels": {str(k): int(v) for k, v in unknown.items()}} if unknown else {}),
    }


def model_accuracy(model: Any, data: Any) -> float:
    """Accuracy of a compiled Keras model (``weighted_metrics=["accuracy"]`` or ``metrics``) on `data`.

    Parameters
    ----------
    model : keras.Model
        Compiled with an "accuracy" metric.
    data : keras.utils.PyDataset or similar
        Batches of ``(x, y)`` or ``(x, y, sample_weight)``.

    Returns
    -------
    accuracy : float
        NaN when `data` has no batches.
    """
    if len(data) == 0:
        return float("nan")
    with global_rng_kept():
        return float(model.evaluate(data, verbose=0, return_dict=True)["accuracy"])


def format_metrics(metrics: dict) -> str:
    """A short plain-text table of `evaluate`'s output.

    Parameters
    ----------
    metrics : dict
        As returned by `evaluate`.

    Returns
    -------
    text : str
        Accuracy and macro-F1 on the first line, then per-class precision, recall and support.
    """
    width = max([len("class"), *(len(c) for c in metrics["per_class"])])
    lines = [
        f"accuracy {metrics['accuracy']:.3f}  macro-F1 {metrics['macro_f1']:.3f}  n={metrics['n_samples']}",
        f"{'class':<{width}}  precision  recall  support",
    ]
    for name, row in metrics["per_class"].items():
        lines.append(f"{name:<{width}}  {row['precision']:>9.3f}  {row['recall']:>6.3f}  {row['support']:>7d}")
    unknown = metrics.get("unknown_labels")
    if unknown:
        n = sum(unknown.values())
        lines.append(f"not a class of this head, so always wrong: {n} {'row' if n == 1 else 'rows'} labelled "
                     + ", ".join(f"{k} ({v})" for k, v in unknown.items())
                     + f" (it was trained without {'it' if n == 1 else 'them'})")
    return "\n".join(lines)
