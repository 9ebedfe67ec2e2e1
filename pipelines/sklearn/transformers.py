"""`ImageFeatureExtractor`: a scikit-learn transformer from images (paths or arrays) to frozen-CNN features.

With a `cache_dir`, features are read from the path-keyed feature cache and only the misses are extracted, so
a grid search or a cross-validation over the head extracts each image once.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import _check_feature_names, _check_feature_names_in, check_is_fitted

from extract import ImageReadError, get_extractor, read_batch
from extract.batches import default_workers
from extract.images import resize_image
from features_store import StoreWriteError, cache, is_store

logger = logging.getLogger(__name__)

ON_ERRORS = ("raise", "nan")


class ImageFeatureExtractor(TransformerMixin, BaseEstimator):
    """Features of a frozen Keras CNN for each image, cached on disk by image.

    Parameters
    ----------
    model : str, default="vgg16"
        A registered extractor (``extract.known_extractors()``).
    weights : str, default="imagenet"
        "imagenet", "none" (seeded random init) or a path to a weights file.
    layer : str, list of str or None, default=None
        Cut the network at this layer; a list extracts every layer in one forward pass and concatenates
        their pooled outputs in the order given.
    pooling : {"flatten", "avg", "max"} or None, default=None
        None: the model's own default (flatten for VGG, avg for the other backbones; ``featurehead models``).
    input_size : int or None, default=None
        Images are resized to ``(input_size, input_size)``; None: the model's own default size (224 for most
        backbones, 299 for Inception and Xception, up to 600 for EfficientNet-B7).
    resize : {"squash", "crop"}, default="squash"
        "squash" resizes the whole image; "crop" resizes the shorter side and cuts the centre (as
        ``featurehead extract --resize``). Applies to image paths and to image arrays alike.
    batch_size : int, default=32
        Images per forward pass.
    precision : {"float32", "bfloat16", "float16"}, default="float32"
    seed : int, default=0
        Seed of the random init when ``weights="none"``.
    cache_dir : str or path-like, default=None
        Root of the feature cache (one file per extractor fingerprint), a folder made when missing (a file or a
        feature store is refused at `fit`); None extracts every time. A cache that
        cannot store new rows (a read-only folder, a full disk) costs nothing but a log line.
    on_error : {"raise", "nan"}, default="raise"
        An unreadable image raises `extract.ImageReadError`, or gives a row of NaN.

    Attributes
    ----------
    extractor_ : extract.Extractor
        The extractor (its Keras model is built on first use and never pickled).
    n_features_in_ : int
        Always 1: one image (a path or an array) per sample.
    feature_names_in_ : ndarray of shape (1,)
        The column name, when fitted on a one-column DataFrame.
    """

    def __init__(
        self,
        model: str = "vgg16",
        *,
        weights: str = "imagenet",
        layer: str | list[str] | None = None,
        pooling: str | None = None,
        input_size: int | None = None,
        resize: str = "squash",
        batch_size: int = 32,
        precision: str = "float32",
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        on_error: str = "raise",
    ) -> None:
        self.model = model
        self.weights = weights
        self.layer = layer
        self.pooling = pooling
        self.input_size = input_size
        self.resize = resize
        self.batch_size = batch_size
        self.precision = precision
        self.seed = seed
        self.cache_dir = cache_dir
        self.on_error = on_error

    def fit(self, X: Any, y: Any = None) -> ImageFeatureExtractor:
        """Validate the parameters and `X`; no image is read and no model is built.

        Parameters
        ----------
        X : sequence of str or path-like, one-column DataFrame, Series, or uint8 ndarray of shape (n, h, w, 3)
            Image paths or images.
        y : ignored

        Returns
        -------
        self : ImageFeatureExtractor
        """
        if self.on_error not in ON_ERRORS:
            raise ValueError(f"`on_error` must be one of 'raise', 'nan'. Received: on_error={self.on_error!r}")
        if self.cache_dir is not None and not isinstance(self.cache_dir, (str, os.PathLike)):
            raise ValueError(f"`cache_dir` must be None or a path. Received: cache_dir={self.cache_dir!r}")
        if self.cache_dir is not None and os.path.exists(self.cache_dir) and not os.path.isdir(self.cache_dir):
            raise ValueError(f"`cache_dir` must be a folder (made when missing), not a file. Received: "
                             f"cache_dir={os.fspath(self.cache_dir)!r}")
        if self.cache_dir is not None and is_store(self.cache_dir):  # its files would land among the store's
            raise ValueError(f"`cache_dir` must not be a feature store (`featurehead extract`'s --out): the cache keeps "
                             f"its own files. Received: cache_dir={os.fspath(self.cache_dir)!r}")
        layer = list(self.layer) if isinstance(self.layer, tuple) else self.layer
        extractor = get_extractor(self.model, weights=self.weights, layer=layer, pooling=self.pooling,
                                  input_size=self.input_size, resize=self.resize, batch_size=self.batch_size,
                                  precision=self.precision, seed=self.seed)
        extractor.validate()
        _, _, columns = _as_images(X)
        self.extractor_ = extractor
        self.n_features_in_ = 1
        if columns is not None:
            self.feature_names_in_ = np.asarray(columns, dtype=object)
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Features of each image, from the cache where present.

        Parameters
        ----------
        X : sequence of str or path-like, one-column DataFrame, Series, or uint8 ndarray of shape (n, h, w, 3)

        Returns
        -------
        features : ndarray of shape (n_samples, n_features_out), dtype float32
        """
        check_is_fitted(self, "extractor_")
        kind, items, columns = _as_images(X)
        expected = getattr(self, "feature_names_in_", None)
        if expected is not None and columns is not None and list(columns) != list(expected):
            raise ValueError(f"`X` must have the column seen in fit, {expected[0]!r}. Received: columns={list(columns)}")
        _check_feature_names(self, X, reset=False)  # scikit-learn's warnings when names were seen in fit only, or here only
        if self.cache_dir is None:
            return self._extract(kind, items, np.arange(len(items)))
        return self._cached(kind, items)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Names ``{model}_{layer}_{i}`` of the output columns (builds the model to learn their number).

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            Only validated, as scikit-learn does: the one input column (`feature_names_in_` when fitted on a
            DataFrame). The output names do not depend on it.

        Returns
        -------
        feature_names_out : ndarray of shape (n_features_out,), dtype object
        """
        check_is_fitted(self, "extractor_")
        _check_feature_names_in(self, input_features)  # the one input column: its name, or a list of length 1
        layer = self.extractor_.layer
        layers = layer if isinstance(layer, list) else [layer or "features"]
        dims = self.extractor_.layer_dims() if hasattr(self.extractor_, "layer_dims") else [self.extractor_.output_dim]
        names = [f"{self.model}_{name}_{i}" for name, dim in zip(layers, dims) for i in range(dim)]
        return np.asarray(names, dtype=object)

    def cache_info(self) -> cache.CacheInfo:
        """The feature cache's counters for this extractor (`n_rows`, `n_extracted`, `n_hits`)."""
        check_is_fitted(self, "extractor_")
        if self.cache_dir is None:
            raise ValueError("`cache_info()` needs a `cache_dir`. Received: cache_dir=None")
        return cache.cache_info(self.cache_dir, self.extractor_.fingerprint())

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # X is image paths (strings) or a 4-D uint8 array of images; never a 2-D array of numbers, so
        # scikit-learn's generic checks on numeric 2-D X do not apply (tests/test_pipelines_transformers.py
        # runs the ones that do, and their image equivalents).
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.transformer_tags.preserves_dtype = []  # always float32 features, whatever the input
        return tags

    # --- work ------------------------------------------------------------------------------------------
    def _cached(self, kind: str, items: Any) -> np.ndarray:
        fp = self.extractor_.fingerprint()
        keys = cache.path_keys(items) if kind == "paths" else cache.array_keys(items)
        hits, found = cache.lookup(self.cache_dir, fp, keys)
        if found.all():
            return hits
        missing = np.flatnonzero(~found)
        # one extraction per distinct image, even when it appears several times in X
        _, first, inverse = np.unique(keys[missing], return_index=True, return_inverse=True)
        fresh = self._extract(kind, items, missing[first])
        good = np.flatnonzero(np.isfinite(fresh).all(axis=1) & (keys[missing[first]] != b""))
        if len(good):
            names = [str(items[i]) if kind == "paths" else "" for i in missing[first][good]]
            self._store(fp, keys[missing[first][good]], fresh[good], names)
        logger.info("feature cache: %d hits, %d extracted", int(found.sum()), len(first))
        out = np.empty((len(items), fresh.shape[1]), dtype=np.float32)
        if found.any():
            out[found] = hits
        out[missing] = fresh[inverse.reshape(-1)]
        return out

    def _store(self, fp: str, keys: np.ndarray, x: np.ndarray, names: list[str]) -> None:
        """Append freshly extracted rows to the cache. A cache that cannot store them (a read-only folder, a full
        disk, a quota, a file-size limit) costs this transform nothing: its features are returned all the same, and
        a log line says why they are not cached (they are extracted again until it can store them): a warning for a
        failed write, an info line for a read-only folder or cache file, a shared cache's usual setup (a grid search's
        every fold would warn)."""
        if not cache.writable(self.cache_dir, fp):
            name = cache.cache_path(self.cache_dir, fp).name
            what = "the folder" if not cache.writable(self.cache_dir) else f"its file {name}"
            logger.info("feature cache: %d extracted rows are not cached, only returned (%s: %s is read-only)",
                        len(keys), self.cache_dir, what)
            return
        try:
            cache.append(self.cache_dir, fp, keys, x, extractor=self.extractor_.spec(), names=names)
        except StoreWriteError as err:  # the rows cached before are kept (`cache.append`)
            logger.warning("feature cache: %d extracted rows are not cached, only returned (%s)", len(keys), err)

    def _extract(self, kind: str, items: Any, rows: np.ndarray) -> np.ndarray:
        """Features of `items[rows]`, extracted one batch of `batch_size` at a time.

        Decoded by `extract.batches.default_workers()` threads, the extraction's default: its docstring and
        benchmarks/input_pipeline.py give the measured reason.
        """
        step = self.extractor_.batch_size
        parts = []
        with ThreadPoolExecutor(max_workers=default_workers()) as decoders:
            for lo in range(0, len(rows), step):
                parts.append(self._extract_batch(kind, items, rows[lo:lo + step], decoders))
        if not parts:
            return np.empty((0, self.extractor_.output_dim), dtype=np.float32)
        return np.concatenate(parts)

    def _extract_batch(self, kind, items, rows, decoders) -> np.ndarray:
        size = self.extractor_.input_shape[:2]
        if kind == "paths":
            images, ok, errors = read_batch([items[i] for i in rows], size, decoders, resize=self.extractor_.resize)
        else:
            images, resize = items[rows], self.extractor_.resize
            if images.shape[1:3] != tuple(size):
                images = np.stack(list(decoders.map(lambda im: resize_image(im, size, resize), images)))
            ok, errors = np.ones(len(rows), bool), [""] * len(rows)
        if not ok.all() and self.on_error == "raise":
            bad = int(np.flatnonzero(~ok)[0])
            raise ImageReadError(f"{items[rows[bad]]}: {errors[bad]} (on_error='nan' gives a NaN row instead)")
        out = np.full((len(rows), self.extractor_.output_dim), np.nan, dtype=np.float32)
        if ok.any():
            out[ok] = self.extractor_(images[ok])
        return out


def _as_images(X: Any) -> tuple[str, Any, list | None]:
    """Classify `X` as ("paths", list of str, columns) or ("images", uint8 array, None); raise otherwise."""
    columns = None
    if hasattr(X, "tocsr"):
        raise TypeError(f"`X` must be image paths or images; sparse input is not supported. Received: {type(X).__name__}")
    if hasattr(X, "columns") and hasattr(X, "iloc"):  # a DataFrame
        if X.shape[1] != 1:
            raise ValueError(f"`X` must be a DataFrame with one column of image paths. Received: columns={list(X.columns)}")
        columns = [str(c) for c in X.columns] if all(isinstance(c, str) for c in X.columns) else None
        X = X.iloc[:, 0]
    if hasattr(X, "to_numpy"):  # a Series
        X = X.to_numpy()
    if isinstance(X, np.ndarray) and X.dtype == np.uint8:
        if X.ndim != 4 or X.shape[-1] != 3 or len(X) == 0:
            raise ValueError(f"`X` as an image array must have shape (n, height, width, 3). Received: shape {X.shape}")
        return "images", X, columns
    if isinstance(X, np.ndarray) and X.ndim == 2 and X.shape[1] == 1 and X.dtype.kind in "OUS":
        X = X[:, 0]
    items = list(X) if isinstance(X, (list, tuple, np.ndarray)) else None
    if items is None or not items or not all(isinstance(p, (str, os.PathLike)) for p in items):
        shape = getattr(X, "shape", None)
        raise ValueError(
            "`X` must be a non-empty sequence of image paths, a one-column DataFrame of paths, or a uint8 array "
            f"of shape (n, height, width, 3). Received: {type(X).__name__}"
            + (f" of shape {shape} and dtype {getattr(X, 'dtype', None)}" if shape is not None else "")
        )
    return "paths", [os.fspath(p) for p in items], columns
