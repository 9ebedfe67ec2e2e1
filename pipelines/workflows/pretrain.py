"""Pre-training runners: a CAE without labels, the small CNN on chosen classes (from scratch or on a frozen base).

Images stream from the index in decoded batches (a `keras.utils.PyDataset`), so memory stays bounded.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from classify import encode_labels, model_accuracy
from extract import ImageIndex, ImageReadError, read_batch

from ..runs.extraction import default_workers

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CAEConfig:
    """How `run_pretrain_cae` builds and trains the autoencoder (defaults: the seed's 28 px, (8, 4) CAE)."""

    input_size: int = 28
    channels: int = 1
    filters: tuple = (8, 4)
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adam"
    learning_rate: float | None = None
    seed: int = 0

    def to_dict(self) -> dict:
        return {**asdict(self), "filters": list(self.filters)}

    @classmethod
    def from_dict(cls, d: dict) -> CAEConfig:
        return cls(**{**d, "filters": tuple(d.get("filters", cls.filters))})


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


@dataclass(frozen=True)
class PretrainResult:
    """What a pre-training run wrote and measured (plain values)."""

    model: Path
    loss_plot: Path
    history: dict
    n_train: int
    epoch_seconds: list
    reconstructions: Path | None = None
    classes: list = field(default_factory=list)
    accuracy: dict = field(default_factory=dict)  # split name -> accuracy after training ("val", "test")


def image_batches(paths, size: int, targets=None, *, batch_size: int = 32, shuffle: bool = False, seed: int = 0,
                  channels: int = 1, workers: int | None = None):
    """A `keras.utils.PyDataset` decoding `paths` batch by batch with `extract.read_batch`.

    Parameters
    ----------
    paths : list of Path
    size : int
        Square side the images are decoded at.
    targets : ndarray of shape (n,), optional
        Class codes; None yields the CAE's reconstruction targets (the images as the model sees them).
    shuffle : bool
        Reshuffle the row order every epoch (seeded by `seed`).
    channels : {1, 3}
        Channels of the reconstruction targets.

    Returns
    -------
    keras.utils.PyDataset of (x float32 (b, size, size, 3) in 0..255, y) batches; unreadable images are dropped
    (logged); call ``.close()`` when done.
    """
    import keras

    from extract.autoencoder import reconstruction_target

    class ImageBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.order = np.arange(len(paths))
            self.rng = np.random.default_rng(seed)
            self.decoders = ThreadPoolExecutor(max_workers=workers or default_workers())
            if shuffle:
                self.rng.shuffle(self.order)

        def __len__(self):
            return -(-len(paths) // batch_size)

        def batch_length(self, i: int) -> int:
            return len(self.order[i * batch_size : (i + 1) * batch_size])

        def __getitem__(self, i):
            rows = self.order[i * batch_size : (i + 1) * batch_size]
            images, ok, errors = read_batch([paths[r] for r in rows], size, self.decoders)
            if not ok.all():
                logger.warning("skipping %d unreadable images: %s", int((~ok).sum()), "; ".join(e for e in errors if e))
                if not ok.any():
                    raise ImageReadError(f"every image of batch {i} failed to decode: {errors[0]}")
            x = images[ok].astype(np.float32)
            y = reconstruction_target(images[ok], channels) if targets is None else targets[rows][ok]
            return x, y

        def on_epoch_end(self):
            if shuffle:
                self.rng.shuffle(self.order)

        def close(self):
            self.decoders.shutdown()

    return ImageBatches()


def progress_callback(progress, data):
    """A Keras callback advancing `progress(total=...)` (tqdm fits) by the images of each batch."""
    import keras

    class Progress(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.bar = progress(total=self.params["epochs"] * sum(data.batch_length(i) for i in range(len(data))))

        def on_train_batch_end(self, batch, logs=None):
            self.bar.update(data.batch_length(batch))
            if logs and "loss" in logs and hasattr(self.bar, "set_postfix"):
                self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)

        def on_train_end(self, logs=None):
            self.bar.close()

    return Progress()


def _check_out(out) -> Path:
    out = Path(out)
    if out.suffix != ".keras":
        raise ValueError(f"`out` must be a .keras file. Received: out={str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def run_pretrain_cae(index: ImageIndex, out, config: CAEConfig = CAEConfig(), *, progress=None,
                     workers: int | None = None) -> PretrainResult:
    """Train a CAE on every image of `index` (labels ignored) and save it with its plots next to it.

    Writes `out` (the model), ``<stem>_loss.png`` and ``reconstructions.png`` (originals above
    reconstructions) in the folder of `out`.

    Parameters
    ----------
    index : ImageIndex
    out : str or Path
        The `.keras` file to write.
    config : CAEConfig
    progress : callable, optional
        `progress(total=...)` returning an object with `update(n)` and `close()` (tqdm fits).
    workers : int
        Decoding threads.

    Returns
    -------
    PretrainResult
    """
    from classify.cnn import epoch_timer, make_optimizer
    from extract.autoencoder import build_autoencoder

    from .pretrain_plots import plot_loss, plot_reconstructions

    out = _check_out(out)
    if not len(index):
        raise ValueError("the index has no rows; pre-training needs images")
    model = build_autoencoder(input_size=config.input_size, channels=config.channels, filters=config.filters,
                              seed=config.seed)
    model.compile(optimizer=make_optimizer(config.optimizer, config.learning_rate), loss="binary_crossentropy")
    data = image_batches(index.paths, config.input_size, batch_size=config.batch_size, shuffle=True, seed=config.seed,
                         channels=config.channels, workers=workers)
    timer = epoch_timer()
    callbacks = [timer] + ([progress_callback(progress, data)] if progress else [])
    try:
        # shuffle=False: `data` reshuffles itself (seeded); Keras would shuffle it with Python's global `random`
        history = model.fit(data, epochs=config.epochs, callbacks=callbacks, verbose=0, shuffle=False).history
        originals = data[0][0][:8]
    finally:
        data.close()
    model.save(out)
    history = {k: [float(v) for v in vals] for k, vals in history.items()}
    loss_plot = plot_loss(history, out.parent / f"{out.stem}_loss.png", title="CAE binary cross-entropy")
    recon = plot_reconstructions(originals, np.asarray(model.predict_on_batch(originals)),
                                 out.parent / "reconstructions.png", channels=config.channels)
    logger.info("trained a CAE on %d images; final loss %.4f", len(index), history["loss"][-1])
    return PretrainResult(out, loss_plot, history, len(index), timer.seconds, reconstructions=recon)


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
    classes = list(index.classes if classes is None else classes)
    unknown = [c for c in classes if c not in set(index.classes)]
    if unknown or len(set(classes)) < 2:
        raise ValueError(
            f"`classes` must be at least 2 distinct labels of the index {index.classes}. Received: classes={classes}"
        )
    chosen = np.isin(labels, classes)
    split = np.asarray(index.split, dtype=object)
    has_split = np.isin(split, ("train", "val", "test")).any()
    rows = {"train": np.flatnonzero(chosen & (split == "train")) if has_split else np.flatnonzero(chosen)}
    for name in ("val", "test"):
        rows[name] = np.flatnonzero(chosen & (split == name))
    if not len(rows["train"]):
        raise ValueError(f"the index has no 'train' rows of the classes {classes}")
    return classes, rows


def run_pretrain_cnn(index: ImageIndex, out, config: CNNConfig = CNNConfig(), *, classes=None, base=None,
                     feature_layer: str = "features_flatten", progress=None, workers: int | None = None) -> PretrainResult:
    """Train the small CNN on the rows of `classes`, from scratch or as a new head on `base`'s frozen features.

    Trains on the "train" split (every chosen row when the index has none); reports the accuracy on the "val"
    and "test" rows afterwards. Writes `out` and ``<stem>_loss.png`` next to it.

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
    from classify.cnn import build_cnn, build_transfer, train_cnn
    from classify.plots import plot_history
    from extract.autoencoder import preprocessing_layers
    from extract.saved_model import load_saved_model, model_input_size

    out = _check_out(out)
    classes, rows = class_rows(index, classes)
    codes = encode_labels(index.labels, classes, unknown="code")
    if base is None:
        size = config.input_size
        model = build_cnn((size, size, 3), len(classes), preprocessing=preprocessing_layers(config.channels),
                          seed=config.seed)
    else:
        base_model = load_saved_model(base)
        size = model_input_size(base_model) or config.input_size
        model = build_transfer(base_model, len(classes), feature_layer=feature_layer, seed=config.seed)
    paths = index.paths

    def batches(name, shuffle=False):
        return image_batches([paths[r] for r in rows[name]], size, codes[rows[name]], batch_size=config.batch_size,
                             shuffle=shuffle, seed=config.seed, workers=workers)

    data = batches("train", shuffle=True)
    callbacks = [progress_callback(progress, data)] if progress else []
    try:
        history = train_cnn(model, data, epochs=config.epochs, optimizer=config.optimizer,
                            learning_rate=config.learning_rate, callbacks=callbacks)
    finally:
        data.close()
    accuracy = {name: _accuracy(model, batches(name)) for name in ("val", "test") if len(rows[name])}
    epoch_seconds = history.pop("epoch_seconds")
    model.save(out)
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
