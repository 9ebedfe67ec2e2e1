"""The Keras network of the MLP head: its builder, its forward pass, and its `.keras` archive as bytes.

Keras is imported lazily, inside the functions, so that importing this module stays TensorFlow-free.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

# Rows per forward pass in `network_proba`: big enough to amortise the call, small enough for 25088-d rows.
_PREDICT_CHUNK = 1024


def build_mlp(n_features: int, n_classes: int, hidden_layer_sizes: Sequence[int], dropout: float,
              seed: int | None = None):
    """Build the uncompiled Dense(relu) + Dropout network with a softmax output.

    Parameters
    ----------
    n_features : int
        Input dimension.
    n_classes : int
        Output units.
    hidden_layer_sizes : sequence of int
        Units of each hidden layer.
    dropout : float
        Dropout rate after each hidden layer.
    seed : int, optional
        Seeds each layer's initializer and dropout (``seed + i``); None: Keras's unseeded defaults.

    Returns
    -------
    model : keras.Model
        A functional model mapping ``(batch, n_features)`` to ``(batch, n_classes)`` probabilities.
    """
    import keras

    def seeded(i):
        return {} if seed is None else {"seed": seed + i}

    def kernel(i):
        return {} if seed is None else {"kernel_initializer": keras.initializers.GlorotUniform(seed=seed + i)}

    inputs = keras.Input(shape=(n_features,), name="features")
    x = inputs
    for i, units in enumerate(hidden_layer_sizes, start=1):
        x = keras.layers.Dense(units, activation="relu", name=f"hidden{i}", **kernel(2 * i))(x)
        x = keras.layers.Dropout(dropout, name=f"dropout{i}", **seeded(2 * i + 1))(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="proba", **kernel(0))(x)
    return keras.Model(inputs, outputs, name="mlp_head")


def network_proba(model: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
    """The float64 class probabilities of `model` on the float32 rows `X`, each row summing to 1.

    The rows run in chunks of `_PREDICT_CHUNK`, in one canonical order, so that the result does not depend on
    the order `X` gives them in.
    """
    from keras import ops

    # A float32 forward pass rounds a row's last bits differently with its position in the batch (about
    # 4e-8 relative, measured). Running the rows in one canonical order (by their bytes) makes the result
    # independent of the order they are given in; across batch compositions it holds to ~1e-6 relative.
    order = _canonical_order(X)
    chunks = [  # one chunk of rows copied at a time: never a second whole X
        ops.convert_to_numpy(model(X[order[start : start + _PREDICT_CHUNK]], training=False))
        for start in range(0, X.shape[0], _PREDICT_CHUNK)
    ]
    proba = np.empty((len(order), n_classes), dtype=np.float64)
    proba[order] = np.concatenate(chunks)
    # softmax in float32 sums to 1 only to ~1e-7; renormalise the small (n, k) array
    return proba / proba.sum(axis=1, keepdims=True)


def _canonical_order(X: np.ndarray) -> np.ndarray:
    """A permutation that sorts the rows of `X` by their bytes, so that any reordering of X sorts alike."""
    if X.shape[0] < 2:
        return np.arange(X.shape[0])
    rows = np.ascontiguousarray(X).view(np.dtype((np.void, X.dtype.itemsize * X.shape[1]))).ravel()
    return np.argsort(rows, kind="stable")


def model_to_bytes(model: Any) -> bytes:
    """The `.keras` archive of `model`, as bytes (Keras only saves to files)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        with open(path, "rb") as f:
            return f.read()


def model_from_bytes(data: bytes) -> Any:
    """Inverse of `_model_to_bytes`, in Keras's safe mode (a Lambda layer's code is refused, never run).

    Not compiled: a refit rebuilds and compiles a new network.
    """
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        with open(path, "wb") as f:
            f.write(data)
        return keras.saving.load_model(path, compile=False, safe_mode=True)
