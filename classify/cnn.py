"""The seed's small CNN (conv-conv-pool-dropout-flatten features + a dense classifier), its transfer twin, its trainer.

Layer names are stable, so the feature block is cut by name (``features_flatten``). Keras is imported lazily.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from classify.errors import ClassifyError
from classify.keras_state import global_rng_kept

FEATURE_LAYER = "features_flatten"
OPTIMIZERS = ("adam", "adadelta", "sgd", "rmsprop")


class CNNConfigError(ClassifyError, ValueError):
    """A CNN argument is out of range (classes, optimizer, feature layer...)."""


def min_input_size(kernel_size: int = 3) -> int:
    """The smallest input side that `build_cnn` takes: two unpadded convolutions, then a 2x2 pooling."""
    return 2 * (kernel_size - 1) + 2


def build_cnn(input_shape: Sequence[int], n_classes: int, *, filters: int = 32, kernel_size: int = 3,
              dense_units: int = 128, dropout: tuple[float, float] = (0.25, 0.5), preprocessing: Sequence = (),
              seed: int | None = None):
    """The Keras MNIST-transfer CNN: features ``features_conv1/2 -> features_pool -> features_dropout ->
    features_flatten``, then classification ``classifier_dense -> classifier_dropout -> predictions``.

    Parameters
    ----------
    input_shape : (height, width, channels)
        What the model receives (before `preprocessing`).
    n_classes : int
        Softmax outputs.
    filters, kernel_size, dense_units : int
    dropout : (float, float)
        After the pooling, and after the dense layer.
    preprocessing : sequence of keras layers
        Applied first, inside the model (e.g. rescaling 0..255 -> 0..1 and grayscale), so callers pass raw pixels.
    seed : int, optional
        Seeds each layer's initial weights and dropout (``seed + i``; no process-global RNG is touched).

    Returns
    -------
    keras.Model (uncompiled)
    """
    import keras

    _check_classes(n_classes)
    smallest = min_input_size(kernel_size)
    if min(tuple(input_shape)[:2]) < smallest:
        raise CNNConfigError(f"`input_shape` must be at least {smallest}x{smallest} pixels (two {kernel_size}x{kernel_size} "
                         f"convolutions and a 2x2 pooling). Received: input_shape={tuple(input_shape)}")
    inputs = keras.Input(tuple(input_shape), name="image")
    x = inputs
    for layer in preprocessing:
        x = layer(x)
    x = keras.layers.Conv2D(filters, kernel_size, activation="relu", name="features_conv1", **_kernel(seed, 0))(x)
    x = keras.layers.Conv2D(filters, kernel_size, activation="relu", name="features_conv2", **_kernel(seed, 1))(x)
    x = keras.layers.MaxPooling2D(2, name="features_pool")(x)
    x = keras.layers.Dropout(dropout[0], name="features_dropout", **_seed(seed, 2))(x)
    x = keras.layers.Flatten(name=FEATURE_LAYER)(x)
    outputs = classification_block(x, n_classes, dense_units=dense_units, dropout=dropout[1],
                                   seed=None if seed is None else seed + 3)
    return keras.Model(inputs, outputs, name="small_cnn")


def classification_block(x, n_classes: int, *, dense_units: int = 128, dropout: float = 0.5,
                         seed: int | None = None):
    """Dense(relu) -> Dropout -> Dense(softmax), applied to the tensor `x` (`seed`: of each layer, ``seed + i``)."""
    import keras

    x = keras.layers.Dense(dense_units, activation="relu", name="classifier_dense", **_kernel(seed, 0))(x)
    x = keras.layers.Dropout(dropout, name="classifier_dropout", **_seed(seed, 1))(x)
    return keras.layers.Dense(n_classes, activation="softmax", name="predictions", **_kernel(seed, 2))(x)


def _seed(seed: int | None, i: int) -> dict:
    """The `seed` keyword of a layer's i-th random part (none: Keras's unseeded default)."""
    return {} if seed is None else {"seed": seed + i}


def _kernel(seed: int | None, i: int) -> dict:
    import keras

    return {} if seed is None else {"kernel_initializer": keras.initializers.GlorotUniform(seed=seed + i)}


def build_transfer(base, n_classes: int, *, feature_layer: str = FEATURE_LAYER, dense_units: int = 128,
                   dropout: float = 0.5, seed: int | None = None, input_size: int | None = None):
    """`base` cut at `feature_layer` (by name) and frozen, topped with a new classification block (a feature map
    is flattened first).

    Returns
    -------
    keras.Model (uncompiled); only the new block is trainable.
    """
    import keras

    _check_classes(n_classes)
    names = [layer.name for layer in base.layers]
    if feature_layer not in names:
        import difflib

        close = difflib.get_close_matches(str(feature_layer), names, n=1, cutoff=0.8)  # extract/layers.py's cutoff
        meant = f" (did you mean {close[0]!r}?)" if close else ""
        raise CNNConfigError(f"`feature_layer` must be one of the base's layers {names}. "
                             f"Received: feature_layer={feature_layer!r}{meant}")
    features = keras.Model(base.inputs, base.get_layer(feature_layer).output, name="frozen_features")
    features.trainable = False
    shape = tuple(base.inputs[0].shape[1:])
    if input_size is not None:  # a base of any input size: a feature map flattened needs a fixed one
        shape = (input_size, input_size, *shape[2:])
    inputs = keras.Input(shape, name="image")
    # training=False keeps the frozen block's dropout off, as a frozen extractor sees it
    x = features(inputs, training=False)
    if len(x.shape) > 2:  # a feature map (a CAE's `bottleneck`): flattened, as `extract --model keras` does by default
        x = keras.layers.Flatten(name="transfer_flatten")(x)
    outputs = classification_block(x, n_classes, dense_units=dense_units, dropout=dropout, seed=seed)
    return keras.Model(inputs, outputs, name="transfer_cnn")


def train_cnn(model, x, y=None, *, epochs: int = 5, batch_size: int = 128, optimizer: str = "adam",
              learning_rate: float | None = None, validation_data=None, callbacks: Sequence = (),
              seed: int | None = None) -> dict:
    """Compile `model` (sparse categorical cross-entropy, accuracy) and fit it; return the history.

    Parameters
    ----------
    x : ndarray of shape (n, height, width, channels), or a keras.utils.PyDataset of (x, y) batches
    y : ndarray of shape (n,), int class codes; None when `x` is a PyDataset
    optimizer : {"adam", "adadelta", "sgd", "rmsprop"}
    learning_rate : float, optional
        None keeps the Keras default of the optimizer.
    seed : int, optional
        Seeds the batch order of arrays (each epoch reshuffled by a generator of our own, never a global one). A
        PyDataset is taken in its own order: it shuffles itself, as `pipelines.workflows.pretrain.image_batches` does.

    Returns
    -------
    dict of str to list of float
        The Keras history, plus ``epoch_seconds``: the wall time of each epoch.
    """
    model.compile(optimizer=make_optimizer(optimizer, learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    timer = epoch_timer()
    if y is not None:
        from classify.keras_dataset import array_batches

        x, y = array_batches(np.asarray(x), np.asarray(y), batch_size=batch_size, seed=seed), None
    # shuffle=False: Keras would shuffle a PyDataset's batches with Python's global `random`
    with global_rng_kept():
        history = model.fit(x, y, epochs=epochs, validation_data=validation_data, callbacks=[timer, *callbacks],
                            verbose=0, shuffle=False)
    return {**{k: [float(v) for v in vals] for k, vals in history.history.items()}, "epoch_seconds": timer.seconds}


def make_optimizer(name: str, learning_rate: float | None = None):
    """A fresh Keras optimizer by name (``learning_rate=None``: the Keras default)."""
    import keras

    if name not in OPTIMIZERS:
        raise CNNConfigError(f"`optimizer` must be one of {', '.join(map(repr, OPTIMIZERS))}. Received: optimizer={name!r}")
    classes = {"adam": keras.optimizers.Adam, "adadelta": keras.optimizers.Adadelta, "sgd": keras.optimizers.SGD,
               "rmsprop": keras.optimizers.RMSprop}
    return classes[name]() if learning_rate is None else classes[name](learning_rate=learning_rate)


def epoch_timer():
    """A Keras callback whose ``seconds`` lists the wall time of each epoch's training: a `fit` that scores
    validation data after every epoch (its `evaluate` calls `on_test_begin`) stops the clock there."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []
            self._start = self._trained = None

        def on_epoch_begin(self, epoch, logs=None):
            self._start, self._trained = time.perf_counter(), None

        def on_test_begin(self, logs=None):
            if self._start is not None and self._trained is None:  # within an epoch: its validation begins
                self._trained = time.perf_counter() - self._start

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(self._trained if self._trained is not None else time.perf_counter() - self._start)
            self._start = None

    return EpochTimer()


def _check_classes(n_classes) -> None:
    if not isinstance(n_classes, int) or n_classes < 2:
        raise CNNConfigError(f"`n_classes` must be an integer >= 2. Received: n_classes={n_classes!r}")
