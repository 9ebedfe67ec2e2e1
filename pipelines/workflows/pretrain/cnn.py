"""Pre-training the small CNN on chosen classes of an index, from scratch or as a new head on a frozen base."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from classify import encode_labels, model_accuracy
from classify.keras_state import weights_nbytes
from extract import ImageIndex
from features_store.durable import check_room

from .common import PretrainResult, holding_out, image_batches, progress_callback, save_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CNNConfig:
    """How `run_pretrain_cnn` builds and trains the small CNN (defaults: the seed's 5 epochs of batch 128)."""

    input_size: int = 28
    channels: int = 1
    epochs: int = 5
    batch_size: int = 128
    optimizer: str = "adam"
    learning_rate: float | None = None
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CNNConfig:
        return cls(**d)


def class_rows(index: ImageIndex, classes=None) -> tuple[list, dict]:
    """The labelled rows of `index` whose label is in `classes`, grouped by split (pure: no files).

    Returns
    -------
    classes : list of str
        The chosen class names, in the order that gives their codes (default: the index's sorted classes).
    rows : dict of str to ndarray of int
        ``"train"`` (the "train" split, or every chosen row when the index has no split), ``"val"``, ``"test"``.
    """
    labels = np.asarray(index.labels, dtype=object)
    if classes is None and len(index.classes) < 2:
        raise ValueError(f"{index.source}: a classifier needs at least 2 labelled classes. Received: classes "
                         f"{list(index.classes)}")
    classes = list(index.classes if classes is None else classes)
    unknown = [c for c in classes if c not in set(index.classes)]
    if unknown or len(set(classes)) < 2 or len(set(classes)) != len(classes):  # a repeat was a dead output unit
        raise ValueError(
            f"`classes` must be at least 2 distinct labels of the index {index.classes}, none repeated. Received: "
            f"classes={classes}"
        )
    chosen = np.isin(labels, classes)
    split = np.asarray(index.split, dtype=object)
    has_split = np.isin(split, ("train", "val", "test")).any()
    rows = {"train": np.flatnonzero(chosen & (split == "train")) if has_split else np.flatnonzero(chosen)}
    for name in ("val", "test"):
        rows[name] = np.flatnonzero(chosen & (split == name))
    if not len(rows["train"]):
        raise ValueError(f"the index has no 'train' rows of the classes {classes}")
    trained = sorted(set(labels[rows["train"]]))
    if len(trained) < 2:  # it trained, and scored the other classes as misses
        raise ValueError(f"{index.source}: the 'train' rows of the classes {classes} are all of {trained}; the CNN "
                         "needs at least 2 classes to train on")
    return classes, rows


@holding_out
def run_pretrain_cnn(index: ImageIndex, out, config: CNNConfig = CNNConfig(), *, classes=None, base=None,
                     feature_layer: str = "features_flatten", progress=None, workers: int | None = None) -> PretrainResult:
    """Train the small CNN on the rows of `classes`, from scratch or as a new head on `base`'s frozen features.

    Trains on the "train" split (every chosen row when the index has none), with the loss and accuracy on the
    "val" rows after every epoch (never used to choose anything); reports the accuracy on the "val" and "test" rows
    afterwards. Writes `out` and ``<stem>_loss.png`` (the curves) next to it.

    Parameters
    ----------
    index : ImageIndex
    out : str or Path
        The `.keras` file to write.
    config : CNNConfig
    classes : sequence of str, optional
        Labels to train on (default: all); their order gives the output units.
    base : str or Path, optional
        A saved model (e.g. a CNN from an earlier run) whose block up to `feature_layer` is frozen and reused;
        only a new classification block is trained.
    feature_layer : str
        Where `base` is cut (by name).
    progress : callable, optional
        `progress(total=...)` (tqdm fits).
    workers : int
        Decoding threads.

    Returns
    -------
    PretrainResult
    """
    from classify.cnn import build_cnn, build_transfer, min_input_size, train_cnn
    from classify.plots import plot_history
    from extract.autoencoder import preprocessing_layers
    from extract.saved_model import load_saved_model, model_input_size

    if base is None and config.input_size < min_input_size():
        raise ValueError(f"`input_size` must be an integer >= {min_input_size()} (two 3x3 convolutions and a 2x2 "
                         f"pooling). Received: input_size={config.input_size}")
    classes, rows = class_rows(index, classes)
    codes = encode_labels(index.labels, classes, unknown="code")
    if base is None:
        size = config.input_size
        model = build_cnn((size, size, 3), len(classes), preprocessing=preprocessing_layers(config.channels),
                          seed=config.seed)
    else:
        base_model = load_saved_model(base)
        size = model_input_size(base_model) or config.input_size
        if size < 1:  # a base of any input size is built at `input_size`
            raise ValueError(f"`input_size` must be a positive integer for a base of any input size. Received: "
                             f"input_size={size}")
        model = build_transfer(base_model, len(classes), feature_layer=feature_layer, seed=config.seed, input_size=size)
    check_room(out, weights_nbytes(model), what="the trained CNN")  # a full disk was found after the training
    paths = index.paths

    def batches(name, shuffle=False):
        return image_batches([paths[r] for r in rows[name]], size, codes[rows[name]], batch_size=config.batch_size,
                             shuffle=shuffle, seed=config.seed, workers=workers)

    data = batches("train", shuffle=True)
    val = batches("val") if len(rows["val"]) else None  # its loss and accuracy after every epoch: the plot's curves
    callbacks = [progress_callback(progress, data)] if progress else []
    try:
        history = train_cnn(model, data, epochs=config.epochs, optimizer=config.optimizer,
                            learning_rate=config.learning_rate, validation_data=val, callbacks=callbacks)
    finally:
        data.close()
        if val is not None:
            val.close()
    accuracy = {name: _accuracy(model, batches(name)) for name in ("val", "test") if len(rows[name])}
    epoch_seconds = history.pop("epoch_seconds")
    save_model(model, out)
    loss_plot = plot_history(history, out.parent / f"{out.stem}_loss.png")
    logger.info("trained %s on %d images of %s; accuracy %s", model.name, len(rows["train"]), classes, accuracy)
    return PretrainResult(out, loss_plot, history, len(rows["train"]), epoch_seconds, classes=classes,
                          accuracy=accuracy)


def _accuracy(model, data) -> float:
    """`classify.model_accuracy` on `data`, whose decoding threads are then stopped."""
    try:
        return model_accuracy(model, data)
    finally:
        data.close()
