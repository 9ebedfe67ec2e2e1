"""Fine-tuning: a bundle's trained MLP head on top of its extractor's base, the top layers unfrozen, trained on
images.

Images stream from the index in batches (`ImageRows`, a `keras.utils.PyDataset`), so memory stays bounded.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np

import classify
import features_store
from classify.keras_state import global_rng_kept, weights_nbytes
from extract import extractor_from_spec, read_batch, read_index
from extract.augment import Augmentation, augment, view_seed
from features_store.durable import check_room

from ..runs.prediction import load_head_bundle, trained_rows, training_view_changed
from ..runs.training import validation_source
from .pretrain import progress_callback

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneResult:
    bundle: Path
    accuracy_before: float
    accuracy_after: float
    n_train: int
    n_val: int
    unfrozen: tuple[str, ...]
    fit_seconds: float


class ImageRows(keras.utils.PyDataset):
    """Batches `(images, codes, weights)` of index rows, decoded on demand; failed images get weight 0.

    With an `augmentation`, batch i of epoch e is augmented from `view_seed(seed + e, i)`; with `shuffle`, the
    row order of epoch e is a permutation seeded by `seed + e`.
    """

    def __init__(self, paths, codes, size, *, batch_size=32, augmentation=None, shuffle=False, seed=0,
                 resize="squash", **kwargs):
        super().__init__(**kwargs)
        self.resize = resize  # decode as the base's extractor did
        self.paths, self.codes, self.size = list(paths), np.asarray(codes, np.int32), size
        self.batch_size, self.augmentation, self.shuffle, self.seed = batch_size, augmentation, shuffle, seed
        self.epoch = 0
        self.order = self._order()

    def _order(self):
        n = len(self.paths)
        return np.random.default_rng(self.seed + self.epoch).permutation(n) if self.shuffle else np.arange(n)

    def __len__(self):
        return math.ceil(len(self.paths) / self.batch_size)

    def batch_length(self, i: int) -> int:
        """Images in batch i (what a progress bar counts)."""
        return min(self.batch_size, len(self.paths) - i * self.batch_size)

    def __getitem__(self, i):
        rows = self.order[i * self.batch_size : (i + 1) * self.batch_size]
        images, ok, _ = read_batch([self.paths[r] for r in rows], self.size, resize=self.resize)
        if self.augmentation is not None:
            images = augment(images, self.augmentation, view_seed(self.seed + self.epoch, i))
        return images.astype(np.float32), self.codes[rows], ok.astype(np.float32)

    def on_epoch_end(self):
        self.epoch += 1
        self.order = self._order()


def mlp_parts(estimator) -> tuple:
    """(mean, scale, keras MLP) of a fitted head: a KerasMLPClassifier, alone or after a StandardScaler."""
    steps = list(estimator.named_steps.values()) if hasattr(estimator, "named_steps") else [estimator]
    *pre, head = steps
    if not isinstance(head, classify.KerasMLPClassifier) or len(pre) > 1:
        names = [type(s).__name__ for s in steps]
        raise ValueError(f"`finetune` needs an MLP head (`featurehead train --head mlp`), optionally after a "
                         f"StandardScaler. Received: a head made of {names}")
    mean = scale = None
    if pre and pre[0] != "passthrough":
        from sklearn.preprocessing import StandardScaler

        scaler = pre[0]
        if not isinstance(scaler, StandardScaler):  # subclasses (classify's SlabStandardScaler) keep its math
            raise ValueError(f"`finetune` can fold only a StandardScaler into the model. Received: {scaler!r}")
        mean, scale = getattr(scaler, "mean_", None), getattr(scaler, "scale_", None)
    return mean, scale, head.model_


def transplant(base, estimator, n_features: int, *, seed: int = 0):
    """A model image -> base -> (scaler as a Normalization layer) -> a copy of the head's trained MLP.

    The scaler's math is kept exactly: (x - mean_) / scale_, with StandardScaler's scale_ (1 for constant
    features). The MLP starts from the head's learned weights; its dropout layers are seeded from `seed`.
    """
    mean, scale, mlp = mlp_parts(estimator)
    head = keras.models.clone_model(mlp, clone_function=_seeded_clone(seed))
    head.set_weights(mlp.get_weights())
    inputs = keras.Input(base.input_shape[1:], name="image")
    x = base(inputs)
    if mean is not None or scale is not None:
        mean = np.zeros(n_features) if mean is None else mean
        scale = np.ones(n_features) if scale is None else scale
        x = keras.layers.Normalization(mean=mean.astype(np.float32), variance=(scale**2).astype(np.float32),
                                       name="head_scaler")(x)
    return keras.Model(inputs, head(x), name="finetuned")


def _seeded_clone(seed: int):
    """A `clone_model` function giving each random part of a layer its own seed (``seed + i``).

    An unseeded Keras layer or initializer draws its seed from Python's global `random`; the initializers' draws
    are replaced by the head's weights anyway, and the dropout masks then follow `seed`.
    """
    count = iter(range(seed, seed + 10**6))

    def clone(layer):
        config = layer.get_config()
        if "seed" in config:
            config["seed"] = next(count)
        for key, value in config.items():
            if key.endswith("_initializer") and isinstance(value, dict) and "seed" in value.get("config", {}):
                config[key] = {**value, "config": {**value["config"], "seed": next(count)}}
        return layer.__class__.from_config(config)

    return clone


def leaf_layers(model) -> list:
    """Every non-container layer of `model`, nested models expanded, in order."""
    leaves = []
    for layer in model.layers:
        leaves += leaf_layers(layer) if isinstance(layer, keras.Model) else [layer]
    return leaves


def plan_unfrozen(names, weighted, *, unfreeze=None, unfreeze_from=None) -> list[str]:
    """Names of the base layers to train (pure).

    Parameters
    ----------
    names : sequence of str
        The base's leaf layers, in order.
    weighted : sequence of bool
        Whether each has weights.
    unfreeze : int or "all", optional
        Train the top `unfreeze` layers that have weights (0: only the head trains).
    unfreeze_from : str, optional
        Train this layer and every weighted layer after it.
    """
    names, weighted = list(names), list(weighted)
    if (unfreeze is None) == (unfreeze_from is None):
        raise ValueError("give exactly one of `--unfreeze` and `--unfreeze-from`. "
                         f"Received: unfreeze={unfreeze!r}, unfreeze_from={unfreeze_from!r}")
    if unfreeze_from is not None:
        if unfreeze_from not in names:
            raise ValueError(f"`unfreeze_from` must be one of the base's layers {names}. "
                             f"Received: unfreeze_from={unfreeze_from!r}")
        start = names.index(unfreeze_from)
        return [n for i, (n, w) in enumerate(zip(names, weighted)) if w and i >= start]
    candidates = [n for n, w in zip(names, weighted) if w]
    if unfreeze == "all":
        return candidates
    if isinstance(unfreeze, bool) or not isinstance(unfreeze, int) or not 0 <= unfreeze <= len(candidates):
        raise ValueError(f"`unfreeze` must be 'all' or an integer in [0, {len(candidates)}] (the base's layers "
                         f"with weights). Received: unfreeze={unfreeze!r}")
    return candidates[len(candidates) - unfreeze :]


def set_trainable(base, unfrozen) -> None:
    """Freeze every leaf layer of `base` except those named in `unfrozen`."""
    base.trainable = True  # recursive: containers first, then each leaf decides
    for layer in leaf_layers(base):
        layer.trainable = layer.name in unfrozen


def finetune_rows(bundle, index, store):
    """(train rows, val rows, classes, validation source) of `index`: the head's own split, read from its store
    when that still lists the index the head was trained on, else from the index's own split column.

    The validation rows are the store's "val" whenever it has one, else a hold-out of "train" (never "test").
    """
    classes = list(bundle.manifest["classes"])
    if store is not None and Path(store).is_dir() and not training_view_changed(bundle.manifest,
                                                                                features_store.read_info(store)):
        meta = features_store.read_meta(store)
        originals = meta.view == 0
        if meta.ids[originals].tolist() == index.ids:
            train, val = trained_rows(bundle.manifest, meta, head="mlp")
            return np.unique(meta.source[train]), val, classes, validation_source(meta, val)
    n = len(index.ids)
    meta = SimpleNamespace(ok=np.ones(n, bool), codes=classify.encode_labels(index.labels, classes, unknown="code"),
                           split=np.asarray(index.split, dtype=str), view=np.zeros(n, np.int16), source=np.arange(n))
    train, val = trained_rows(bundle.manifest, meta, head="mlp")
    source = validation_source(meta, val)
    recorded = (bundle.manifest.get("validation") or {}).get("source")
    trained_index = bundle.manifest.get("trained_index_sha256")
    # a hold-out drawn again is the head's own only over the very index it was trained on; over another one (other
    # labels or rows, or a store whose 'val' extract --augment drew) it would validate on images the head was fitted on
    if (recorded == "val" and source != "val") or (
            source == "train-holdout" and trained_index and trained_index != index.sha256()):
        raise ValueError(f"{index.source} is not the index the head was trained on and names no 'val' rows, so the "
                         "head's validation rows are unknown (a hold-out drawn from it again would hold out images the "
                         "head was fitted on): give the index the head was trained on, or one with a split column "
                         "whose 'val' rows the head never trained on")
    return train, val, classes, source


def run_finetune(bundle_path, out, *, unfreeze=None, unfreeze_from=None, index=None, images_root=None,
                 augmentation: Augmentation | None = None, learning_rate: float = 1e-5, epochs: int = 5,
                 batch_size: int = 32, random_state: int = 0, progress=None) -> FinetuneResult:
    """Fine-tune a bundle's MLP head and the top of its base on the images, and save a full-model bundle.

    The images come from `index` (default: the `index_source`/`images_root` of the store the head was trained
    on, its manifest's `trained_on`). Train/validation rows are the head's own (`finetune_rows`: the store's
    "val" whenever it has one, never "test"). Accuracy is measured on the validation rows before and after
    training (NaN when the head held none out; null in the manifest), and the bundle's manifest records ``validation: {source, rows}``.
    `progress(total=...)` (tqdm fits), when given, counts the images of every epoch.
    """
    from classify.bundle.manifest import check_target

    if os.path.realpath(out) == os.path.realpath(bundle_path):
        raise ValueError(f"`out` must be another folder than the head bundle {bundle_path}: the fine-tuned whole "
                         f"model would replace the head it starts from. Received: out={str(out)!r}")
    check_target(Path(out))  # before the epochs, not after them: a folder of other files, or one it cannot write
    if not learning_rate > 0 or not (isinstance(epochs, int) and epochs > 0):
        raise ValueError(f"`learning_rate` must be > 0 and `epochs` a positive integer. "
                         f"Received: learning_rate={learning_rate!r}, epochs={epochs!r}")
    bundle = load_head_bundle(bundle_path, "finetune")
    store = bundle.manifest.get("trained_on")
    index, images_root = _image_source(bundle, store, index, images_root)
    frame = read_index(index, images_root)
    train, val, classes, source = finetune_rows(bundle, frame, store)
    extractor = extractor_from_spec(bundle.manifest["extractor"])
    base = extractor.model
    model = transplant(base, bundle.estimator, bundle.n_features, seed=random_state)
    leaves = leaf_layers(base)
    unfrozen = plan_unfrozen([lay.name for lay in leaves], [bool(lay.weights) for lay in leaves],
                             unfreeze=unfreeze, unfreeze_from=unfreeze_from)
    set_trainable(base, set(unfrozen))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  weighted_metrics=["accuracy"])
    check_room(out, weights_nbytes(model), what="the fine-tuned model")  # a full disk was found after every epoch
    codes = classify.encode_labels(frame.labels, classes, unknown="code")
    paths = frame.paths  # a property that builds the list: read it once

    def data(rows, **kw):
        return ImageRows([paths[r] for r in rows], codes[rows], extractor.input_shape[:2],
                         batch_size=batch_size, seed=random_state, resize=extractor.resize, **kw)

    val_data = data(val)
    before = classify.model_accuracy(model, val_data)
    t0 = time.perf_counter()
    # shuffle=False: ImageRows reshuffles itself, seeded; Keras would shuffle its batches with Python's `random`
    train_data = data(train, augmentation=augmentation, shuffle=True)
    callbacks = [progress_callback(progress, train_data)] if progress else []
    with global_rng_kept():
        history = model.fit(train_data, epochs=epochs, verbose=0, shuffle=False, callbacks=callbacks)
    fit_seconds = time.perf_counter() - t0
    after = classify.model_accuracy(model, val_data)
    # no validation rows (or a diverged loss): null, not NaN, which strict JSON parsers (jq, JSON.parse) refuse
    metrics = {"validation_accuracy_before": _json_number(before), "validation_accuracy_after": _json_number(after),
               "n_train": len(train),
               "n_val": len(val), "fit_seconds": round(fit_seconds, 3),
               "history": {k: [_json_number(v) for v in vals] for k, vals in history.history.items()}}
    params = {"unfreeze": unfreeze, "unfreeze_from": unfreeze_from, "unfrozen": unfrozen,
              "learning_rate": learning_rate, "epochs": epochs, "batch_size": batch_size,
              "random_state": random_state, "augmentation": augmentation.to_dict() if augmentation else None}
    path = classify.save_model_bundle(
        model, out, extractor=bundle.manifest["extractor"], fingerprint=bundle.fingerprint, classes=classes,
        metrics=metrics, params=params,
        extra={"finetuned_from": os.path.abspath(bundle.path), "index_source": os.path.abspath(index),
               "images_root": os.path.abspath(frame.root),
               "validation": {"source": source, "rows": int(len(val))}})
    return FinetuneResult(Path(path), before, after, len(train), len(val), tuple(unfrozen), fit_seconds)


def _json_number(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _image_source(bundle, store, index, images_root):
    if index is not None:
        return index, images_root
    if store is None or not Path(store).is_dir():
        raise FileNotFoundError(f"the head's training store {store} is not there to say where the images are; "
                                "give --index (and --images-root)")
    info = features_store.read_info(store)
    if training_view_changed(bundle.manifest, info):
        raise ValueError(f"the head's training store {store} now lists another index than the head was trained on; "
                         "give --index (and --images-root)")
    return info.attrs["index_source"], images_root or info.attrs.get("images_root")
