"""Stage two: train a head on a store (`run_train`), on the train and validation rows that `split_rows` picks."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import classify
import features_store
from features_store.durable import check_room
from features_store.reader import digest_keys, open_view

logger = logging.getLogger(__name__)


# Heads whose training itself uses validation rows (the MLP early-stops on them); the others get none carved out
# of `train` when the store has a split column without "val".
NEEDS_VALIDATION = ("mlp",)

# Rows of features per `partial_fit` slab of the SGD head (64 MiB of float32).
SGD_SLAB_BYTES = 64 << 20


@dataclass(frozen=True)
class TrainResult:
    bundle: Path
    metrics: dict
    n_train: int
    n_val: int
    fit_seconds: float
    validation_source: str = "none"


def split_rows(meta, *, head: str = "logreg", validation_fraction: float = 0.2, random_state: int = 0,
               singles_to_train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Pick train and validation rows among the ok, labelled rows (pure: no files). Never a "test" row.

    With a store `split` column: train on "train"; validate on "val" when there is one; otherwise a head that
    needs validation rows (`NEEDS_VALIDATION`) holds a seeded, stratified `validation_fraction` of the "train"
    images out, and any other head gets none. Without a split column every head holds `validation_fraction` of
    the images out (0: none). Augmented views follow their source image, and only originals are validated on,
    so no view of a training image is ever validated on. `validation_source` names which case it was.
    The hold-out keeps the images of a class that has only one in train (`singles_to_train`; False: the hold-out
    of bundles saved before it, unstratified whenever a class had one image, which could hold that image out).
    """
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"`validation_fraction` must be in [0, 1). Received: validation_fraction={validation_fraction!r}")
    usable = meta.ok & (meta.codes >= 0)
    if usable.sum() < 2:
        why = ("" if (meta.codes >= 0).any() else
               " (its index had no labels: a CSV needs a `label` column, a folder class folders)")
        raise ValueError(f"the store has {int(usable.sum())} usable labelled rows{why}; training needs at least 2")
    pool = usable
    if np.isin(meta.split[usable], ("train", "val", "test")).any():
        pool = usable & (meta.split == "train")
        if not pool.any():
            raise ValueError("the store's `split` column has no 'train' rows")
        val = usable & (meta.split == "val") & (meta.view == 0)
        if val.any() or head not in NEEDS_VALIDATION:
            return np.flatnonzero(pool), np.flatnonzero(val)
    rows = np.flatnonzero(pool)
    if validation_fraction == 0:
        return rows, rows[:0]
    train, held = classify.holdout(meta.codes[rows], validation_fraction, groups=meta.source[rows],
                                   random_state=random_state, fallback=True, singles_to_train=singles_to_train)
    held = rows[held]
    return rows[train], held[meta.view[held] == 0]


def validation_source(meta, val_rows: np.ndarray) -> str:
    """Where the validation rows of `split_rows` come from: "val", "train-holdout" or "none"."""
    if not len(val_rows):
        return "none"
    return "val" if (meta.split[val_rows] == "val").all() else "train-holdout"


def _check_validation_classes(meta, train_rows, val_rows, source: str) -> None:
    """The MLP early-stops on its validation loss, which has no term for a class it does not learn: a validation
    label absent from the train rows is refused in one line that names it."""
    missing = sorted(set(meta.labels[val_rows].tolist()) - set(meta.labels[train_rows].tolist()), key=str)
    if missing:
        where = "the store's 'val' split" if source == "val" else "the held-out validation rows"
        shown = ", ".join(map(repr, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise ValueError(f"{where} has labels that no 'train' row has ({shown}); the mlp head cannot early-stop on "
                         "a class it does not learn: add 'train' images of them, or move those rows to 'train'")


class _StoreRows:
    """A store whose view (the per-row metadata) is read once; then only features are read, by row."""

    def __init__(self, store) -> None:
        self._view = open_view(store)
        self._visible = self._view.visible(fingerprint=None, allow_incomplete=False)
        self.meta = self._view.meta(self._visible)

    def info(self) -> features_store.StoreInfo:
        """The store's summary, from the view already read."""
        return self._view.info()

    def keys_sha256(self) -> str:
        """`features_store.keys_sha256` of the store, from the view already read."""
        return digest_keys(self._view.cols["keys"])

    def features(self, rows: np.ndarray) -> np.ndarray:
        """Features of `rows` (positions among the visible rows, as in `meta`), float32."""
        return self._view.features(self._visible[np.asarray(rows, dtype=np.int64)])


def run_train(
    store,
    out,
    *,
    head: str = "logreg",
    params: dict | None = None,
    validation_fraction: float = 0.2,
    random_state: int = 0,
    progress=None,
) -> TrainResult:
    """Train a head on a complete store and save it as a bundle with its validation metrics.

    The rows are `split_rows`'s; the manifest records ``validation: {source, rows}``. The MLP early-stops on the
    validation rows (the store's "val" whenever it has one); with none it trains for all its epochs. `progress`,
    a tqdm-like factory, gets the MLP's epochs (`total`, then one `update` per epoch, its losses as postfix).
    """
    from classify.bundle.manifest import check_target

    check_target(Path(out))  # before the fit, not after it: a folder of other files, or one it cannot write
    store = Path(store)
    data = _StoreRows(store)
    info, meta = data.info(), data.meta
    train_rows, val_rows = split_rows(meta, head=head, validation_fraction=validation_fraction,
                                      random_state=random_state)
    source = validation_source(meta, val_rows)
    trained_labels = np.unique(meta.labels[train_rows])
    if len(trained_labels) < 2:
        raise ValueError(f"the train rows have one class ({str(trained_labels[0])!r}); a head needs images of at "
                         "least 2 classes to train on")
    if head == "mlp":
        _check_validation_classes(meta, train_rows, val_rows, source)
    params = dict(params or {})
    if head != "logreg":
        params.setdefault("random_state", random_state)
    if head == "mlp" and source == "none":
        params["early_stopping"] = False  # nothing to stop on: no rows of its training set are held out
    estimator = classify.make_head(head, **params)
    if head == "mlp":  # a full disk was found at the save, after every epoch
        check_room(out, estimator[-1].weights_nbytes(info.n_features, len(trained_labels)), what="the MLP head")
    t0 = time.perf_counter()
    if head == "sgd":  # out of core: one slab of the store in memory at a time
        estimator = _fit_sgd_out_of_core(estimator, data, meta, train_rows, info.n_features, params)
    elif head == "mlp":
        _fit_mlp(estimator, data.features(train_rows), meta.labels[train_rows],
                 (data.features(val_rows), meta.labels[val_rows]) if len(val_rows) else None, progress)
    else:
        _fit_in_memory(estimator, data.features(train_rows), meta.labels[train_rows])
    fit_seconds = time.perf_counter() - t0
    metrics = {"fit_seconds": round(fit_seconds, 3), "n_train": int(len(train_rows))}
    if len(val_rows):
        metrics["validation"] = classify.evaluate(estimator, data.features(val_rows), meta.labels[val_rows])
    history = getattr(_final_step(estimator), "history_", None)
    bundle = classify.save_bundle(
        estimator,
        out,
        extractor=info.extractor,
        fingerprint=info.fingerprint,
        classes=[str(c) for c in estimator.classes_],
        n_features=info.n_features,
        metrics=metrics,
        params={"head": head, **params, "validation_fraction": validation_fraction, "random_state": random_state},
        # a store's view can change after training (a relabel, another index): record which one this was
        extra={"trained_on": str(store.resolve()), "trained_index_sha256": info.index_sha256,
               "trained_keys_sha256": data.keys_sha256(),
               "validation": {"source": source, "rows": int(len(val_rows)), "single_image_classes": "train"}},
        # saved with the head (a bundle replaced by a head without epochs loses the old head's curves)
        aux={"history.png": classify.plots.history_png(history)} if history else None,
    )
    return TrainResult(Path(bundle), metrics, len(train_rows), len(val_rows), fit_seconds, source)


def _fit_in_memory(estimator, X, y) -> None:
    """Fit on an X read for this fit alone: its scaler may scale it in place (no second copy of X)."""
    first = estimator.steps[0][1] if hasattr(estimator, "steps") else None
    in_place = hasattr(first, "copy")
    if in_place:
        first.set_params(copy=False)
    estimator.fit(X, y)
    if in_place:
        first.set_params(copy=True)  # the saved head must not scale its callers' arrays in place


def _fit_mlp(estimator, X, y, validation, progress=None) -> None:
    """Fit the scaler + MLP pipeline step by step, so that the MLP early-stops on the scaled validation rows."""
    *scalers, (_, mlp) = estimator.steps
    for _, scaler in scalers:
        scaler.set_params(copy=False)  # X was read for this fit alone: scale it in place
        X = scaler.fit_transform(X)
        scaler.set_params(copy=True)
        if validation is not None:
            validation = (scaler.transform(validation[0]), validation[1])
    mlp.fit(X, y, validation_data=validation, callbacks=[epoch_bar(progress, mlp.epochs)] if progress else None)


def epoch_bar(progress, epochs: int):
    """A Keras callback that shows the epochs on a `progress` bar (tqdm-like), with the losses as postfix; an
    early stop closes it short of `epochs`."""
    import keras

    class EpochBar(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.bar = progress(total=epochs, unit="epoch")

        def on_epoch_end(self, epoch, logs=None):
            shown = {k: f"{v:.4g}" for k, v in (logs or {}).items() if k in ("loss", "val_loss", "val_accuracy")}
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(1)

        def on_train_end(self, logs=None):
            self.bar.close()

    return EpochBar()


def _fit_sgd_out_of_core(estimator, store, meta, rows, n_features, params, slab_bytes=None):
    """`partial_fit` over slabs of about `slab_bytes` of train rows; `max_iter` counts the passes.

    `store` is a path or a `_StoreRows` whose metadata was read already: the metadata is read once, then each
    slab reads only its own rows' features, so a pass costs time linear in the rows. Each pass visits the rows
    in a new seeded order (each slab read sorted), so a class-sorted store (class folders) never feeds SGD one
    class at a time.
    """
    data = store if isinstance(store, _StoreRows) else _StoreRows(store)
    slab = features_store.chunk_rows(n_features, 4, slab_bytes or SGD_SLAB_BYTES)
    rng = np.random.default_rng(params.get("random_state", 0))
    labels = meta.labels

    def batches():
        order = rng.permutation(rows)
        for lo in range(0, len(order), slab):
            part = np.sort(order[lo : lo + slab])
            yield data.features(part), labels[part]

    epochs = int(params.get("max_iter", 5))
    return classify.fit_out_of_core(estimator, batches, np.unique(labels[rows]), epochs=epochs)


def _final_step(estimator):
    return estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
