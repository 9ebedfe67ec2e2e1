"""What the CAE and the small-CNN pre-training runners share: the images streamed from the index in decoded
batches (a `keras.utils.PyDataset`, so memory stays bounded), the progress callback, the `.keras` output check
and the result."""

from __future__ import annotations

import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from extract import ImageReadError, read_batch
from extract.batches import default_workers

logger = logging.getLogger(__name__)


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
            self.bad = set()  # the unreadable paths warned of
            if shuffle:
                self.rng.shuffle(self.order)

        def __len__(self):
            return -(-len(paths) // batch_size)

        def batch_length(self, i: int) -> int:
            return len(self.order[i * batch_size : (i + 1) * batch_size])

        def __getitem__(self, i):
            rows = self.order[i * batch_size : (i + 1) * batch_size]
            images, ok, errors = read_batch([paths[r] for r in rows], size, self.decoders)
            if not ok.any():  # before the warning: the run stops with this one line
                raise ImageReadError(f"none of the images of batch {i} could be read (the first: "
                                     f"{paths[rows[0]]}: {errors[0]})")
            if not ok.all():
                new = [(paths[r], e) for r, e, good in zip(rows, errors, ok) if not good and paths[r] not in self.bad]
                self.bad.update(p for p, _ in new)
                if new:  # once per file, named (it was every epoch, by reason alone)
                    logger.warning("skipping %d unreadable %s: %s", len(new), "image" if len(new) == 1 else "images",
                                   "; ".join(f"{p}: {e}" for p, e in new))
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


def check_out(out) -> Path:
    out = Path(out)
    if out.suffix != ".keras":
        raise ValueError(f"`out` must be a .keras file. Received: out={str(out)!r}")
    if out.is_dir():  # found only when the trained model was saved
        raise ValueError(f"`out` must be a .keras file; {out} is a folder. Received: out={str(out)!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    from features_store.durable import check_writable

    check_writable(out)  # a read-only folder was found only when the trained model was saved
    return out


def holding_out(run):
    """Run `run(index, out, ...)` with `out` checked (`check_out`, a Path) and holding `.OUT.lock` beside it: a second
    pre-training into the same `out` meanwhile stops at once with one line (its model and plots would mix with
    ours)."""
    from features_store.lock import folder_lock

    @functools.wraps(run)
    def locked(index, out, *args, **kwargs):
        out = check_out(out)
        busy = ValueError(f"{out} is being written by another featurehead command (a pretrain-cae or pretrain-cnn "
                          "with the same --out?); give this one another --out, or re-run when it has finished")
        with folder_lock(out.parent, f".{out.name}.lock", timeout=0, busy=busy):
            return run(index, out, *args, **kwargs)

    return locked


def save_model(model, out: Path) -> None:
    """`model.save(out)`, atomic: saved beside `out` under a temporary name, then renamed into place, so a full
    disk or a kill keeps the previous model at `out`, if any, and never leaves a cut-off one that an extract would
    load."""
    from features_store.durable import atomic_write, remove_dead_writers_files

    remove_dead_writers_files(out, suffix=".keras")  # a killed run's whole model, beside it
    atomic_write(out, model.save, suffix=".keras")
