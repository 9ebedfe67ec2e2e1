"""Out-of-core training of the Keras MLP head: a `keras.utils.PyDataset` over a factory of `(X, y)` batches.

Knows no file format: the caller passes a zero-argument callable that starts a fresh pass over the batches
(for a feature store, `features_store.iter_batches` wrapped in a lambda).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from classify.keras_state import global_rng_kept
from classify.labels import encode_labels
from classify.mlp_network import build_mlp

BatchFactory = Callable[[], Iterable[tuple[Any, Any]]]

_CLASSES: dict = {}


def feature_batches(batches: BatchFactory, *, n_batches: int, classes: Any):
    """A Keras `PyDataset` that yields ``(X float32, class codes int32)`` from `batches`, in order.

    Parameters
    ----------
    batches : callable
        ``batches()`` returns an iterable of ``(ndarray of shape (n_batch, n_features), ndarray of shape
        (n_batch,))`` pairs: one whole pass over the data, in the same order every time.
    n_batches : int
        How many pairs one pass yields (Keras needs the epoch length up front).
    classes : array-like of shape (n_classes,)
        Sorted class labels; a batch label is coded by its position in `classes`.

    Returns
    -------
    keras.utils.PyDataset
    """
    if not callable(batches):
        raise ValueError(f"`batches` must be a zero-argument callable. Received: batches of type {type(batches).__name__}")
    if isinstance(n_batches, bool) or not isinstance(n_batches, numbers.Integral) or n_batches < 1:
        raise ValueError(f"`n_batches` must be a positive integer. Received: n_batches={n_batches!r}")
    return _dataset_class()(batches, int(n_batches), np.asarray(classes))


def array_batches(X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None, *, batch_size: int,
                  seed: int | None = None):
    """A Keras `PyDataset` of ``(X, y[, sample_weight])`` batches in a new seeded order every epoch.

    Give it to ``model.fit(..., shuffle=False)``: the order comes from ``numpy.random.default_rng(seed)``, owned
    by the dataset, so no process-global RNG (Python's, numpy's, TensorFlow's) is seeded or drawn from, and the
    same seed gives the same batches.

    Parameters
    ----------
    X : ndarray of shape (n_samples, ...)
    y : ndarray of shape (n_samples,)
    sample_weight : ndarray of shape (n_samples,), optional
    batch_size : int
    seed : int, optional
        None: a fresh, unseeded order.

    Returns
    -------
    keras.utils.PyDataset
    """
    return _dataset_class("ArrayBatches")(X, y, sample_weight, batch_size, seed)


def _dataset_class(name: str = "FeatureBatches"):
    """Define the PyDataset subclass once, on first use (Keras is imported lazily)."""
    if _CLASSES:
        return _CLASSES[name]
    import keras

    class FeatureBatches(keras.utils.PyDataset):
        """Sequential access is one `next()` per batch; any other index restarts the pass and skips ahead."""

        def __init__(self, batches: BatchFactory, n_batches: int, classes: np.ndarray) -> None:
            super().__init__(workers=1, use_multiprocessing=False)
            self._batches, self._n, self._classes = batches, n_batches, classes
            self._iter, self._next = None, 0

        def __len__(self) -> int:
            return self._n

        def __getitem__(self, idx: int):
            if self._iter is None or idx != self._next:
                self._iter, self._next = iter(self._batches()), 0
                for _ in range(idx):
                    next(self._iter)
            try:
                X, y = next(self._iter)
            except StopIteration:
                raise IndexError(f"`batches` yielded fewer than n_batches={self._n} batches") from None
            self._next = idx + 1
            return np.asarray(X, dtype=np.float32), encode_labels(y, self._classes, name="batch labels")

        def on_epoch_end(self) -> None:
            self._iter = None

    class ArrayBatches(keras.utils.PyDataset):
        """In-memory rows, reshuffled at the end of every epoch by the dataset's own generator."""

        def __init__(self, X, y, sample_weight, batch_size: int, seed: int | None) -> None:
            super().__init__(workers=1, use_multiprocessing=False)
            self._arrays = (X, y) if sample_weight is None else (X, y, sample_weight)
            self._batch_size, self._rng = batch_size, np.random.default_rng(seed)
            self._order = self._rng.permutation(len(y))

        def __len__(self) -> int:
            return -(-len(self._order) // self._batch_size)

        def __getitem__(self, idx: int):
            rows = np.sort(self._order[idx * self._batch_size : (idx + 1) * self._batch_size])
            return tuple(a[rows] for a in self._arrays)

        def on_epoch_end(self) -> None:
            self._order = self._rng.permutation(len(self._order))

    _CLASSES.update(FeatureBatches=FeatureBatches, ArrayBatches=ArrayBatches)
    return _CLASSES[name]


def fit_mlp_batches(
    estimator: Any,
    batches: BatchFactory,
    classes: Any,
    n_features: int,
    *,
    n_batches: int,
    validation: BatchFactory | None = None,
    n_validation_batches: int | None = None,
) -> Any:
    """Train a `KerasMLPClassifier` from batches, never holding more than one batch of features.

    Its `epochs`, `learning_rate`, `hidden_layer_sizes`, `dropout`, `random_state` and a dict `class_weight`
    apply; `batch_size` is the batches' own size. Early stopping needs `validation` batches (`n_validation_batches`
    of them); as in `fit`, they are reported as ``val_`` in `history_` with or without early stopping.

    Returns
    -------
    estimator : KerasMLPClassifier
        Fitted in place (`classes_`, `n_features_in_`, `model_`, `history_`).
    """
    import keras

    hidden = estimator._check_params()
    classes = np.unique(np.asarray(classes))
    if len(classes) < 2:
        raise ValueError(f"`classes` must hold at least 2 classes. Received: classes={classes.tolist()}")
    if estimator.class_weight is not None and not isinstance(estimator.class_weight, dict):
        raise ValueError("out-of-core training needs `class_weight` as a dict (the class counts are not known "
                         f"up front). Received: class_weight={estimator.class_weight!r}")
    if validation is not None and (isinstance(n_validation_batches, bool)
                                   or not isinstance(n_validation_batches, numbers.Integral) or n_validation_batches < 1):
        raise ValueError("`n_validation_batches` must be a positive integer when `validation` is given. "
                         f"Received: n_validation_batches={n_validation_batches!r}")
    estimator.classes_, estimator.n_features_in_ = classes, int(n_features)
    if hasattr(estimator, "feature_names_in_"):  # a previous `fit` on a DataFrame: not these batches' names
        del estimator.feature_names_in_
    seed = estimator._seed()
    estimator.model_ = build_mlp(int(n_features), len(classes), hidden, estimator.dropout, seed=seed)
    estimator.model_.compile(optimizer=keras.optimizers.Adam(learning_rate=estimator.learning_rate),
                             loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    kwargs = {}
    if estimator.class_weight is not None:
        kwargs["class_weight"] = {int(encode_labels([c], classes)[0]): float(w) for c, w in estimator.class_weight.items()}
    if validation is not None:
        kwargs["validation_data"] = feature_batches(validation, n_batches=n_validation_batches, classes=classes)
    if validation is not None and estimator.early_stopping:
        kwargs["callbacks"] = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(estimator.patience),
                                                             restore_best_weights=True)]
    data = feature_batches(batches, n_batches=n_batches, classes=classes)
    # shuffle=False: the batches are a stream, and Keras's random batch order would re-read it per step
    with global_rng_kept():
        history = estimator.model_.fit(data, epochs=int(estimator.epochs), verbose=estimator.verbose, shuffle=False,
                                       **kwargs)
    estimator.history_ = {key: [float(v) for v in values] for key, values in history.history.items()}
    return estimator
