"""The Keras dropout MLP head with the scikit-learn classifier API.

Keras is imported lazily, inside the methods, so that importing this module stays TensorFlow-free.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_consistent_length, check_is_fitted, column_or_1d, validate_data

from classify.holdout import holdout
from classify.keras_dataset import array_batches, fit_mlp_batches
from classify.keras_state import global_rng_kept
from classify.labels import encode_labels
from classify.mlp_inputs import checked_validation, sample_weights
from classify.mlp_network import build_mlp, model_from_bytes, model_to_bytes, network_proba

logger = logging.getLogger(__name__)


class KerasMLPClassifier(ClassifierMixin, BaseEstimator):
    """A Dense-ReLU-Dropout multilayer perceptron trained with Keras.

    The network is built in `fit` from ``X.shape[1]`` and the classes: one ``Dense(relu)`` followed by
    ``Dropout(dropout)`` per hidden layer, then a softmax output, trained with Adam on the sparse categorical
    cross-entropy.

    Parameters
    ----------
    hidden_layer_sizes : int or sequence of int, default=(1000, 500, 150)
        Units of each hidden layer.
    dropout : float, default=0.5
        Dropout rate after each hidden layer, in [0, 1).
    learning_rate : float, default=1e-3
        Adam learning rate.
    epochs : int, default=50
        Maximum number of passes over the training data.
    batch_size : int, default=32
        Samples per gradient step.
    early_stopping : bool, default=True
        Stop when the validation loss stops improving for `patience` epochs, restoring the best weights. The
        validation rows are `fit`'s `validation_data` when given, else a stratified `validation_fraction` of the
        data held out; without `validation_data`, falls back to plain training, with a logged warning, when a
        class has too few samples to split.
    validation_fraction : float, default=0.1
        Share of the training data held out for early stopping when `fit` is given no `validation_data`, in
        (0, 1).
    patience : int, default=5
        Epochs without improvement of the validation loss before stopping.
    class_weight : dict, "balanced" or None, default=None
        Weights associated with classes, as in scikit-learn; multiplied into `sample_weight`.
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights, the dropout masks, the batch order and the validation split (each layer and
        the data pipeline gets its own seed; no process-global RNG is seeded or drawn from), so two fits with
        the same int give the same model.
    verbose : int, default=0
        Keras ``fit`` verbosity.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        Class labels.
    n_features_in_ : int
        Number of features seen during `fit`.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of the features seen during `fit`, when X was a DataFrame with string column names.
    model_ : keras.Model
        The trained network.
    history_ : dict of str to list of float
        Per-epoch training (and validation) loss and accuracy.
    """

    def __init__(
        self,
        hidden_layer_sizes: int | Sequence[int] = (1000, 500, 150),
        *,
        dropout: float = 0.5,
        learning_rate: float = 1e-3,
        epochs: int = 50,
        batch_size: int = 32,
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        patience: int = 5,
        class_weight: dict | str | None = None,
        random_state: int | np.random.RandomState | None = None,
        verbose: int = 0,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.class_weight = class_weight
        self.random_state = random_state
        self.verbose = verbose

    def fit(
        self, X: Any, y: Any, sample_weight: Any = None, groups: Any = None, validation_data: Any = None,
        callbacks: Any = None,
    ) -> KerasMLPClassifier:
        """Build the network for ``X.shape[1]`` features and the classes of `y`, and train it.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training features; float32 is used as is, anything else is converted to float32.
        y : array-like of shape (n_samples,)
            Class labels (strings or integers).
        sample_weight : array-like of shape (n_samples,), default=None
            Per-sample weights.
        groups : array-like of shape (n_samples,), default=None
            Rows of one group (an image and its augmented views) stay on the same side of the early-stopping
            split, so the validation loss never sees a view of a training image.
        validation_data : tuple (X_val, y_val), default=None
            Rows to early-stop on (and to report as ``val_`` in `history_`), preprocessed like `X`; then all of
            `X` is trained on and `validation_fraction` and `groups` are not used. Labels must be among `y`'s.
        callbacks : list of keras.callbacks.Callback, default=None
            More callbacks of Keras's `fit` (a progress bar), after the early stopping.

        Returns
        -------
        self : KerasMLPClassifier
            The fitted estimator.
        """
        hidden = self._check_params()
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        if groups is not None:  # a wrong length is the caller's error, not a reason to train without early stopping
            groups = column_or_1d(groups, warn=True)
            check_consistent_length(y, groups)
        classes = np.unique(y)
        if len(classes) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes. Received: 1 class ({classes[0]!r})"
            )
        # every input checked before any learned state is set: a fit that fails on them leaves none of it behind
        # (a `classes_` without `model_` passed check_is_fitted, and predict failed on the missing network)
        codes = encode_labels(y, classes)
        weights = sample_weights(y, sample_weight, self.class_weight)
        validation = checked_validation(validation_data, X.shape[1], classes)
        self.classes_ = classes

        import keras

        seed = self._seed()
        self.model_ = build_mlp(X.shape[1], len(self.classes_), hidden, self.dropout, seed=seed)
        self.model_.compile(
            optimizer=keras.optimizers.Adam(learning_rate=self.learning_rate),
            loss="sparse_categorical_crossentropy",
            weighted_metrics=["accuracy"],
        )
        fit = self._fit_data(keras, X, codes, weights, seed, groups, validation)
        fit["callbacks"] = [*fit.get("callbacks", []), *(callbacks or [])]
        with global_rng_kept():
            history = self.model_.fit(
                epochs=int(self.epochs),
                verbose=self.verbose,
                shuffle=False,  # the batches come shuffled by our own seeded generator, not Keras's global one
                **fit,
            )
        self.history_ = {key: [float(v) for v in values] for key, values in history.history.items()}
        return self

    def fit_batches(
        self, batches: Any, classes: Any, n_features: int, *, n_batches: int, validation: Any = None,
        n_validation_batches: int | None = None,
    ) -> KerasMLPClassifier:
        """Train from a zero-argument factory of ``(X, y)`` batches (out of core; see `classify.keras_dataset`).

        Parameters
        ----------
        batches : callable
            ``batches()`` starts a fresh pass: an iterable of ``(ndarray of shape (n_batch, n_features), ndarray of
            shape (n_batch,))`` pairs, in the same order every time; `batch_size` is the batches' own size.
        classes : array-like of shape (n_classes,)
            Every class of the labels (sorted into `classes_`).
        n_features : int
            Width of each batch's X.
        n_batches : int
            Pairs per pass (Keras needs the epoch length up front).
        validation : callable, default=None
            A factory like `batches` of the rows to early-stop on; reported as ``val_`` in `history_`.
        n_validation_batches : int, default=None
            Pairs per pass of `validation`; required with it.

        Returns
        -------
        self : KerasMLPClassifier
        """
        return fit_mlp_batches(self, batches, classes, n_features, n_batches=n_batches, validation=validation,
                               n_validation_batches=n_validation_batches)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Probabilities, columns in the order of `classes_`.
        """
        check_is_fitted(self, ("classes_", "model_"))  # not n_features_in_ alone: a fit that failed sets it
        X = validate_data(self, X, dtype=np.float32, reset=False)
        return network_proba(self.model_, X, self.classes_.shape[0])

    def predict(self, X: Any) -> np.ndarray:
        """Most probable class.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Predicted labels, from `classes_`.
        """
        check_is_fitted(self, ("classes_", "model_"))  # not n_features_in_ alone: a fit that failed sets it
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())  # a copy: object.__getstate__ returns the live __dict__
        if "model_" in state:
            state["model_"] = model_to_bytes(state["model_"])
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state.get("model_"), bytes):
            state = {**state, "model_": model_from_bytes(state["model_"])}
        super().__setstate__(state)

    def weights_nbytes(self, n_features: int, n_classes: int) -> int:
        """The bytes of the float32 network `fit` builds for `n_features` inputs and `n_classes` classes (kernels
        and biases): a lower bound of its saved size, which a training checks the free space against first."""
        units = (int(n_features), *self._check_params(), int(n_classes))
        return 4 * sum((a + 1) * b for a, b in zip(units, units[1:]))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags

    def _check_params(self) -> tuple[int, ...]:
        """Validate the parameters (without touching them) and return the hidden sizes as a tuple.

        Every wrong value, of any type, is one ValueError naming the parameter (never a TypeError from a
        comparison deep inside).
        """
        def integer(v):
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        def real(v):
            return isinstance(v, numbers.Real) and not isinstance(v, bool)

        sizes = self.hidden_layer_sizes
        try:
            hidden = (sizes,) if integer(sizes) else tuple(sizes)
        except TypeError:
            hidden = None
        if isinstance(sizes, (str, bytes)) or hidden is None or not all(integer(n) and n > 0 for n in hidden):
            raise ValueError(
                f"`hidden_layer_sizes` must be positive integers. Received: hidden_layer_sizes={sizes!r}"
            )
        checks = {
            "dropout": (real(self.dropout) and 0 <= self.dropout < 1, "a number in [0, 1)"),
            "learning_rate": (real(self.learning_rate) and self.learning_rate > 0, "a number > 0"),
            "epochs": (integer(self.epochs) and self.epochs > 0, "a positive integer"),
            "batch_size": (integer(self.batch_size) and self.batch_size > 0, "a positive integer"),
            "early_stopping": (isinstance(self.early_stopping, (bool, np.bool_)), "a bool"),
            "validation_fraction": (real(self.validation_fraction) and 0 < self.validation_fraction < 1,
                                    "a number in (0, 1)"),
            "patience": (integer(self.patience) and self.patience >= 0, "a non-negative integer"),
            "class_weight": (self.class_weight is None or isinstance(self.class_weight, dict)
                             or (isinstance(self.class_weight, str) and self.class_weight == "balanced"),
                             "a dict, 'balanced' or None"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise ValueError(f"`{name}` must be {expected}. Received: {name}={getattr(self, name)!r}")
        return tuple(int(n) for n in hidden)  # Keras layers refuse numpy integers (a numpy grid)

    def _seed(self) -> int | None:
        if self.random_state is None:
            return None
        if isinstance(self.random_state, numbers.Integral):
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    def _fit_data(self, keras: Any, X: np.ndarray, codes: np.ndarray, weights: np.ndarray, seed: int | None,
                  groups: Any = None, validation: tuple[np.ndarray, np.ndarray] | None = None):
        """The data keyword arguments of ``model.fit``: with validation rows and EarlyStopping when possible."""
        def data(rows):
            return {"x": array_batches(X[rows], codes[rows], weights[rows], batch_size=int(self.batch_size), seed=seed)}

        plain = data(slice(None))
        if validation is not None:
            fit = {**plain, "validation_data": validation}
        elif not self.early_stopping:
            return plain
        else:
            try:
                train, val = holdout(codes, self.validation_fraction, groups=groups, random_state=seed)
            except ValueError as err:
                logger.warning("early stopping disabled: cannot hold out a stratified validation split (%s)", err)
                return plain
            fit = {**data(train), "validation_data": (X[val], codes[val], weights[val])}
        if self.early_stopping:
            fit["callbacks"] = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(self.patience),
                                                              restore_best_weights=True)]
        return fit
