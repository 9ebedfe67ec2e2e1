"""Frozen `keras.applications` bases (VGG16, VGG19, include_top=False) as registered extractors.

ImageNet weights load through the real Keras code (cache, then download); offline that fails fast with one
error that names the cache file and the alternatives.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np

from .errors import ExtractorConfigError, WeightsUnavailableError
from .extractor import MIN_INPUT_SIZE, Extractor
from .layers import caffe_preprocess_layer, cut_at_layer, dtype_policy, pooling_layer, seeded_init
from .registry import register_extractor

DOWNLOAD_TIMEOUT_S = 10.0


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights: $KERAS_HOME/models, else ~/.keras/models."""
    base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(base) / "models"


class KerasApplicationExtractor(Extractor):
    """A `keras.applications` model without its top, cut at `layer`, with its own preprocessing inside."""

    application = ""  # the keras.applications constructor name
    weights_file_name = ""  # the file Keras downloads for weights="imagenet", include_top=False
    default_layer = ""

    def __init__(
        self,
        *,
        weights="imagenet",
        layer=None,
        pooling="flatten",
        input_size=224,
        precision="float32",
        seed=0,
        batch_size=32,
    ):
        super().__init__(
            weights="none" if weights is None else str(weights),
            layer=list(layer) if isinstance(layer, tuple) else layer,
            pooling=pooling,
            input_size=input_size,
            precision=precision,
            seed=seed,
            batch_size=batch_size,
        )

    def validate(self) -> None:
        super().validate()
        layer = self._config["layer"]
        names = layer if isinstance(layer, list) else [layer]
        if layer is not None and (not names or not all(isinstance(n, str) and n for n in names)
                                  or len(set(names)) != len(names)):
            raise ExtractorConfigError(
                f"`layer` must be None, a layer name or a non-empty list of distinct layer names. Received: layer={layer!r}"
            )
        size = self._config["input_size"]
        if not isinstance(size, int) or size < MIN_INPUT_SIZE:
            raise ExtractorConfigError(
                f"`input_size` must be an integer >= {MIN_INPUT_SIZE} for {self.name}. Received: input_size={size!r}"
            )
        path = self.weights_file()
        if path is not None and not Path(path).is_file():
            raise WeightsUnavailableError(
                f"`weights` must be 'imagenet', 'none' or a path to a weights file; {path} does not exist"
            )

    def weights_source(self) -> str:
        """A human-readable statement of which weights are in use (the demo and the CLI print it)."""
        weights = self._config["weights"]
        if weights == "imagenet":
            return f"ImageNet-pretrained weights ({self.weights_file_name})"
        if weights == "none":
            return f"random-init weights (seed {self._config['seed']}): NOT pretrained, for testing only"
        return f"weights from {weights} (sha256 {self.weights_sha256()[:12]})"

    def _build(self):
        import keras
        from keras import applications

        size = self._config["input_size"]
        weights = self._config["weights"]
        constructor = getattr(applications, self.application)
        with dtype_policy(self._config["precision"]):
            if weights == "imagenet":
                base = self._load_imagenet(constructor, size)
            else:
                base = constructor(include_top=False, weights=None, input_shape=(size, size, 3))
                if weights == "none":
                    seeded_init(base, self._config["seed"])
                else:
                    base.load_weights(weights)
            layer = self._config["layer"]
            base = cut_at_layer(base, layer)
            inputs = keras.Input((size, size, 3), name="image")
            x = base(caffe_preprocess_layer()(inputs))
            if isinstance(layer, list):  # one forward pass, each layer pooled, concatenated in the order given
                pooled = [pooling_layer(self._config["pooling"], len(out.shape), name=f"features_{name}")(t)
                          for name, out, t in zip(layer, base.outputs, x)]
                x = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(name="features")(pooled)
            else:
                x = pooling_layer(self._config["pooling"], len(base.output.shape))(x)
            x = keras.layers.Activation("linear", dtype="float32", name="features_float32")(x)
        return keras.Model(inputs, x, name=f"{self.name}_extractor")

    def layer_dims(self) -> list[int]:
        """Width of each layer's pooled block in the output, in the order of `layer` (builds the model)."""
        layer = self._config["layer"]
        if not isinstance(layer, list):
            return [self.output_dim]
        return [int(np.prod(self.model.get_layer(f"features_{name}").output.shape[1:])) for name in layer]

    def _load_imagenet(self, constructor, size):
        cached = keras_cache_dir() / self.weights_file_name
        previous = socket.getdefaulttimeout()
        if not cached.is_file():
            socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # an unreachable host fails fast, never hangs
        try:
            return constructor(include_top=False, weights="imagenet", input_shape=(size, size, 3))
        except Exception as err:  # Keras raises a bare Exception on a failed download
            raise WeightsUnavailableError(
                f"ImageNet weights for {self.name} are not in the Keras cache ({cached}) and could not be "
                f"downloaded ({_short_reason(err)}); copy {self.weights_file_name} into {cached.parent}, "
                f"or use --weights PATH (a local .h5/.weights.h5 file) or --weights none (random init, not pretrained)"
            ) from err
        finally:
            socket.setdefaulttimeout(previous)


def _short_reason(err: Exception) -> str:
    """The useful tail of Keras's download error ("URL fetch failure on URL: None -- [Errno -2] ...")."""
    text = str(err).splitlines()[-1] if str(err) else type(err).__name__
    return text.rsplit(" -- ", 1)[-1][:160]


@register_extractor("vgg16")
class VGG16Extractor(KerasApplicationExtractor):
    """VGG16 without its top: at 224x224 the `block5_pool` output flattens to 25088 features."""

    application = "VGG16"
    weights_file_name = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"


@register_extractor("vgg19")
class VGG19Extractor(KerasApplicationExtractor):
    """VGG19 without its top: at 224x224 the `block5_pool` output flattens to 25088 features."""

    application = "VGG19"
    weights_file_name = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
