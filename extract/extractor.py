"""The extractor base class: a config, a lazily built frozen Keras model, and one compiled forward pass.

`extractor(uint8 batch) -> float32 (n, d)`; uint8 is what travels to the model (a quarter of float32's bytes),
and the cast and the preprocessing are inside its graph, so callers pass raw RGB.
"""

from __future__ import annotations

import copy
import logging
import os

import numpy as np

from .errors import ExtractorConfigError, PrecisionOverflowError
from .fingerprint import file_sha256, fingerprint
from .layers import dtype_policy

logger = logging.getLogger(__name__)

_FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65504

POOLINGS = ("flatten", "avg", "max")
PRECISIONS = ("float32", "bfloat16", "float16")
MIN_INPUT_SIZE = 32
RESIZES = ("squash", "crop")


class Extractor:
    """Base class: subclasses implement `_build_base()` and declare their keyword arguments.

    `__init__` stores its arguments and nothing else; the model is built on first use. Bump `VERSION` whenever
    the features an extractor returns change for the same config: it is part of the fingerprint.
    """

    name = "base"
    VERSION = 2  # 2: libjpeg-turbo DCT-domain downscaling before the resize (extract.images.DECODER)
    # config keys that do not change a feature value, so they stay out of the fingerprint
    NON_IDENTITY_KEYS = ("batch_size",)

    def __init__(self, **config):
        # numpy scalars (a parameter grid built with numpy: GridSearchCV hands out np.int64) as Python values, so
        # that the checks below accept them and the spec stays JSON-able (its fingerprint, a cache's attributes)
        config = {k: v.item() if isinstance(v, np.generic) else v for k, v in config.items()}
        weights = config.get("weights")
        if isinstance(weights, (str, os.PathLike)) and os.fspath(weights) not in ("none", "imagenet"):
            # a weights file is recorded by its absolute path, so that the spec in a store or a head bundle loads
            # from any working directory (the fingerprint counts its content, not its path)
            config["weights"] = os.path.abspath(weights)
        self._config = dict(config)
        self._model = None
        self._weights_sha256 = None
        self._built_from = None  # the weights file's sha256 when the model was built
        self._forward = None

    # --- config -----------------------------------------------------------------------------------------
    def get_config(self) -> dict:
        return copy.deepcopy(self._config)

    @classmethod
    def from_config(cls, config: dict):
        return cls(**config)

    def __getattr__(self, key):
        # config values read as attributes: extractor.pooling, extractor.input_size, ...
        config = self.__dict__.get("_config", {})
        if key in config:
            return config[key]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")

    def __getstate__(self):
        # pickles without the Keras model; it is rebuilt lazily after loading
        return {"_config": self._config, "_model": None, "_weights_sha256": None, "_built_from": None, "_forward": None}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({args})"

    def validate(self) -> None:
        """Check the arguments without building anything; raise ExtractorConfigError."""
        pooling = self._config.get("pooling", "flatten")
        if pooling not in POOLINGS:
            raise ExtractorConfigError(f"`pooling` must be one of 'flatten', 'avg', 'max'. Received: pooling={pooling!r}")
        precision = self._config.get("precision", "float32")
        if precision not in PRECISIONS:
            raise ExtractorConfigError(
                f"`precision` must be one of 'float32', 'bfloat16', 'float16'. Received: precision={precision!r}"
            )
        resize = self._config.get("resize", "squash")
        if resize not in RESIZES:
            raise ExtractorConfigError(f"`resize` must be one of 'squash', 'crop'. Received: resize={resize!r}")
        batch_size = self._config.get("batch_size", 32)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:  # True is not 1 image
            raise ExtractorConfigError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
        seed = self._config.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ExtractorConfigError(f"`seed` must be a non-negative integer. Received: seed={seed!r}")

    # --- identity ---------------------------------------------------------------------------------------
    def spec(self) -> dict:
        """The JSON-able spec stored with features and heads: name, version and config."""
        config = {k: v for k, v in self.get_config().items() if k not in self.NON_IDENTITY_KEYS}
        from .images import DECODER

        spec = {"name": self.name, "version": self.VERSION, "config": config, "decoder": DECODER}
        sha = self.weights_sha256()
        if sha is not None:
            spec["weights_sha256"] = sha
        return spec

    def fingerprint(self) -> str:
        """sha256 of the spec; a weights file counts by its content, not its path."""
        spec = self.spec()
        if "weights_sha256" in spec:
            spec["config"]["weights"] = "file"
        return fingerprint(spec)

    def weights_file(self):
        """The local weights file this extractor loads, or None (imagenet, none)."""
        weights = self._config.get("weights")
        if weights in (None, "none", "imagenet"):
            return None
        return weights

    def weights_sha256(self) -> str | None:
        path = self.weights_file()
        if path is None:
            return None
        try:
            stat = os.stat(path)
            key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)  # rewritten: hash again
            if self._weights_sha256 is None or self._weights_sha256[0] != key:
                self._weights_sha256 = (key, file_sha256(path))
        except (FileNotFoundError, IsADirectoryError) as err:
            from .errors import WeightsUnavailableError, not_a_file

            raise WeightsUnavailableError(f"the weights file {path} {not_a_file(path)}") from err
        return self._weights_sha256[1]

    # --- the model --------------------------------------------------------------------------------------
    @property
    def model(self):
        """The frozen Keras model (built on first access): float RGB in 0..255 -> (n, d)."""
        self._follow_weights_file()
        if self._model is None:
            self.validate()
            built_from = self.weights_sha256()
            with dtype_policy(self._config.get("precision", "float32")):  # never the caller's own policy
                try:
                    self._model = self._build()
                except AttributeError as err:  # else Python reports it as this property missing ("no attribute
                    # 'model'"), and the error's own words and traceback are lost
                    raise RuntimeError(f"building the {self.name} extractor failed: {err}") from err
            self._built_from = built_from
            self._model.trainable = False
            logger.info("built %s: %d features", self.name, self.output_dim)
        return self._model

    @property
    def input_shape(self) -> tuple[int, int, int]:
        size = self._config.get("input_size", 224)
        return (size, size, self._config.get("channels", 3))

    @property
    def resize(self) -> str:
        """How images are fitted to the input: "squash" or "crop" (see `extract.load_image`)."""
        return self._config.get("resize", "squash")

    @property
    def output_dim(self) -> int:
        return int(np.prod(self.model.output_shape[1:]))

    def _build(self):
        raise NotImplementedError

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Features for a batch of raw images.

        Parameters
        ----------
        images : ndarray of shape (n, height, width, channels), uint8
            Other dtypes are rounded and clipped to 0..255 first (the model's input is uint8).

        Returns
        -------
        ndarray of shape (n, output_dim), float32
        """
        return next(iter(self._stream((images,))))

    def stream(self, chunks):
        """`self(images)` for each array of images that the iterable `chunks` yields, in order, as a generator that
        keeps the backend's batches in flight across the arrays (two under jax and torch), which one call per
        array cannot: what `run_extract` feeds its decoded batches through. A subclass with a `__call__` of its
        own is called once per array."""
        if type(self).__call__ is not Extractor.__call__:
            return map(self, chunks)
        return self._stream(chunks)

    def _stream(self, chunks):
        outputs = self.forward().stream(chunks)
        return self._watch_float16(outputs) if self._config.get("precision") == "float16" else outputs

    def _watch_float16(self, outputs):
        """Pass the features through, checked for an overflow inside the network under float16 precision (past
        float16's 65504). How it comes out depends on the backend and the CPU: inf or NaN (jax, torch), float16's
        largest value, +-65504 (tensorflow on some CPUs, even out of a ReLU), or exact zeros (tensorflow's
        compiled predict on others). The first three are an error: no feature reaches 65504 unless the network
        saturated. Zeros are said once per model (not per call) as a warning: an all-black image through a model
        without biases gives zeros too, and nothing after the model can tell them from features."""
        for out in outputs:
            saturated = ~(np.abs(out) < _FLOAT16_MAX)  # NaN too
            if saturated.any():
                n = int(saturated.any(axis=1).sum())
                what = (f"{self.name}: the network overflowed under --precision float16 (features of {n} of "
                        f"{len(out)} images reached float16's largest value, {_FLOAT16_MAX:g}, or inf or NaN)")
                err = PrecisionOverflowError(f"{what}; extract with --precision bfloat16 (float32's range) or float32")
                err.what = what
                raise err
            if out.size and not out.any() and not self.__dict__.get("_zeros_said"):
                self.__dict__["_zeros_said"] = True  # until the model is rebuilt (_follow_weights_file)
                logger.warning("%s: every feature of %d images is exactly 0 under --precision float16: an overflow "
                               "inside the network comes out of tensorflow as zeros on some CPUs, and features below "
                               "float16's smallest (6e-8; a random-init MobileNet's or EfficientNet's) underflow to "
                               "zeros; compare with --precision bfloat16 or float32 on a few images", self.name,
                               len(out))
            yield out

    def forward(self):
        """The backend's compiled forward pass over this extractor's model (built once, then reused)."""
        from .forward import make_forward

        self._follow_weights_file()
        if self._forward is None:
            self._forward = make_forward(self.model, self._config.get("batch_size", 32), self.input_shape)
        return self._forward

    def _follow_weights_file(self) -> None:
        """A weights file rewritten since the model was built: drop the model and its forward pass, so that the
        next use loads the new weights, which the fingerprint already counts (features of the old weights were
        stored under the new fingerprint)."""
        if self._model is not None and self.weights_file() is not None and self.weights_sha256() != self._built_from:
            logger.info("%s: %s was rewritten; the model is built again", self.name, self.weights_file())
            self._model = self._forward = None
            self.__dict__.pop("_zeros_said", None)  # the new weights may overflow too: said again
