"""Classifier heads by name (`make_head`), and out-of-core training of the SGD head (`fit_out_of_core`)."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from classify.mlp import KerasMLPClassifier
from classify.scaling import SlabStandardScaler

HEADS = ("logreg", "mlp", "sgd")

Batches = Callable[[], Iterable[tuple[Any, Any]]] | Iterable[tuple[Any, Any]]


def make_head(name: str, **params: Any) -> BaseEstimator:
    """Build an unfitted classifier head by name.

    Parameters
    ----------
    name : {"logreg", "mlp", "sgd"}
        "logreg": ``make_pipeline(SlabStandardScaler(), LogisticRegression(max_iter=1000, **params))``;
        "mlp": ``make_pipeline(SlabStandardScaler(), KerasMLPClassifier(**params))``; "sgd": ``SGDClassifier(loss="log_loss", **params)``, meant for
        `fit_out_of_core`.
    **params
        Parameters of the classifier (LogisticRegression, KerasMLPClassifier or SGDClassifier); they override
        the defaults above.

    Returns
    -------
    estimator : BaseEstimator
        The unfitted head.
    """
    if name == "logreg":
        # Both steps keep float32: the scaler fits in slabs and copies X in its own dtype, and lbfgs LogisticRegression
        # accepts float32 as is (check_array with dtype=[float64, float32]), so no float64 copy of X is made.
        return make_pipeline(SlabStandardScaler(), LogisticRegression(**{"max_iter": 1000, **params}))
    if name == "mlp":
        # scaled like logreg: unscaled CNN features (tiny or huge activations) stall Adam at the default rate
        return make_pipeline(SlabStandardScaler(), KerasMLPClassifier(**params))
    if name == "sgd":
        return SGDClassifier(**{"loss": "log_loss", **params})
    known = ", ".join(repr(h) for h in HEADS)
    raise ValueError(f"`head` must be one of {known}. Received: head={name!r}")


def head_types() -> set[type]:
    """The estimator classes the heads are made of: every step that `make_head` builds, and `fit_out_of_core`'s.

    Returns
    -------
    types : set of type
        Used as the trusted types when a bundle's head is loaded (`classify.bundle.trusted_types`).
    """
    types = {Pipeline, StandardScaler}  # fit_out_of_core's pipeline and scaler
    for name in HEADS:
        head = make_head(name)
        types |= {type(step) for step in _steps(head)}
    return types


def _steps(estimator: BaseEstimator) -> list:
    return [estimator, *(step for _, step in getattr(estimator, "steps", []))]


def fit_out_of_core(
    estimator: SGDClassifier, batches: Batches, classes: Any, *, epochs: int = 5, scaler: bool = True
) -> Pipeline:
    """Fit a scaler and an SGD head with ``partial_fit``, one batch in memory at a time.

    A first pass fits a StandardScaler (when `scaler`), then `epochs` passes fit a clone of `estimator` on the
    scaled batches.

    Parameters
    ----------
    estimator : SGDClassifier
        Any classifier with ``partial_fit``; it is cloned, never modified.
    batches : callable returning an iterable of (X, y), or a re-iterable such as a list
        Each call (or iteration) yields the whole training set again, as ``(ndarray of shape (n_batch,
        n_features), ndarray of shape (n_batch,))`` pairs. A one-shot iterator is refused.
    classes : array-like of shape (n_classes,)
        All the classes, as ``partial_fit`` needs them up front.
    epochs : int, default=5
        Passes over the batches for the classifier.
    scaler : bool, default=True
        Standardise the features with a StandardScaler fitted on a first pass.

    Returns
    -------
    pipeline : Pipeline
        ``Pipeline([("scale", scaler or "passthrough"), ("clf", classifier)])``, fitted.
    """
    passes = _passes(batches)
    if isinstance(epochs, bool) or not (isinstance(epochs, numbers.Integral) and epochs > 0):
        raise ValueError(f"`epochs` must be a positive integer. Received: epochs={epochs!r}")
    scale = StandardScaler() if scaler else None
    if scale is not None:
        for X, _ in passes():
            scale.partial_fit(X)
    clf = clone(estimator)
    classes = np.asarray(classes)
    for _ in range(epochs):
        for X, y in passes():
            clf.partial_fit(X if scale is None else scale.transform(X), y, classes=classes)
    return Pipeline([("scale", scale if scale is not None else "passthrough"), ("clf", clf)])


def _passes(batches: Batches) -> Callable[[], Iterable[tuple[Any, Any]]]:
    """A zero-argument callable giving a fresh pass over `batches` each time."""
    if callable(batches):
        return batches
    if iter(batches) is batches:
        raise ValueError(
            "`batches` must be a zero-argument callable or a re-iterable (several passes are made). "
            f"Received: a one-shot iterator {type(batches).__name__}"
        )
    return lambda: batches
