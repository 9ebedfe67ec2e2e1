"""Pre-training a convolutional autoencoder (CAE) on the images of an index, without labels."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from classify.keras_state import global_rng_kept, weights_nbytes
from extract import ImageIndex
from features_store.durable import check_room

from .common import PretrainResult, holding_out, image_batches, progress_callback, save_model

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


@holding_out
def run_pretrain_cae(index: ImageIndex, out, config: CAEConfig = CAEConfig(), *, progress=None,
                     workers: int | None = None) -> PretrainResult:
    """Train a CAE on the images of `index` (labels ignored) and save it with its plots next to it: its "train"
    split when it has a split column (never "val" or "test": a head evaluated there would score the images its
    encoder was fitted to), else every image.

    Writes `out` (the model), ``<stem>_loss.png`` and ``<stem>_reconstructions.png`` (originals above
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

    from .plots import plot_loss, plot_reconstructions

    if not len(index):
        raise ValueError("the index has no rows; pre-training needs images")
    split = np.asarray(index.split, dtype=str)
    has_split = np.isin(split, ("train", "val", "test")).any()
    paths = [p for p, s in zip(index.paths, split) if s == "train"] if has_split else index.paths
    if not paths:
        raise ValueError(f"{index.source}: the index has a split column but no 'train' rows; the CAE trains on "
                         "those (never on 'val' or 'test')")
    model = build_autoencoder(input_size=config.input_size, channels=config.channels, filters=config.filters,
                              seed=config.seed)
    model.compile(optimizer=make_optimizer(config.optimizer, config.learning_rate), loss="binary_crossentropy")
    check_room(out, weights_nbytes(model), what="the trained CAE")  # a full disk was found after the training
    data = image_batches(paths, config.input_size, batch_size=config.batch_size, shuffle=True, seed=config.seed,
                         channels=config.channels, workers=workers)
    timer = epoch_timer()
    callbacks = [timer] + ([progress_callback(progress, data)] if progress else [])
    try:
        # shuffle=False: `data` reshuffles itself (seeded); Keras would shuffle it with Python's global `random`
        with global_rng_kept():
            history = model.fit(data, epochs=config.epochs, callbacks=callbacks, verbose=0, shuffle=False).history
        originals = data[0][0][:8]
    finally:
        data.close()
    save_model(model, out)
    (out.parent / f"{out.stem}_reconstructions.png").unlink(missing_ok=True)  # the previous model's, if this one's fails
    history = {k: [float(v) for v in vals] for k, vals in history.items()}
    loss_plot = plot_loss(history, out.parent / f"{out.stem}_loss.png", title="CAE binary cross-entropy")
    recon = plot_reconstructions(originals, np.asarray(model.predict_on_batch(originals)),
                                 out.parent / f"{out.stem}_reconstructions.png", channels=config.channels,
                                 source="images the CAE was fitted on (" + (
                                     "its 'train' split)" if has_split else "the whole index)"))
    logger.info("trained a CAE on %d images; final loss %.4f", len(paths), history["loss"][-1])
    return PretrainResult(out, loss_plot, history, len(paths), timer.seconds, reconstructions=recon)
