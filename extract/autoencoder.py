"""The convolutional autoencoder (CAE): its builder with stable layer names, and its encoder as extractor "cae".

The model takes raw RGB in 0..255; scaling to 0..1 and the grayscale conversion happen inside it.
"""

from __future__ import annotations

import numpy as np

from .errors import ExtractorConfigError
from .layers import GRAY_WEIGHTS, cut_at_layer, grayscale_layer, keep_python_random, rescale_layer, seeded_init
from .registry import register_extractor
from .saved_model import SavedModelExtractor


def preprocessing_layers(channels: int = 1) -> list:
    """The in-model preprocessing of the CAE and the small CNN: 0..255 -> 0..1, then grayscale if `channels`=1."""
    if channels not in (1, 3):
        raise ExtractorConfigError(f"`channels` must be 1 (grayscale) or 3 (RGB). Received: channels={channels!r}")
    return [rescale_layer(), grayscale_layer()] if channels == 1 else [rescale_layer()]


def reconstruction_target(images: np.ndarray, channels: int = 1) -> np.ndarray:
    """What the CAE learns to reproduce: `images` as the model sees them after its preprocessing.

    Parameters
    ----------
    images : ndarray of shape (n, height, width, 3), uint8 RGB
    channels : {1, 3}

    Returns
    -------
    ndarray of shape (n, height, width, channels), float32 in 0..1
    """
    x = images.astype(np.float32) / 255.0
    if channels == 1:
        x = (x @ np.asarray(GRAY_WEIGHTS, np.float32))[..., None]
    return x


def build_autoencoder(*, input_size: int = 28, channels: int = 1, filters=(8, 4), kernel_size: int = 3,
                      seed: int | None = 0):
    """The seed's CAE: per level Conv(relu) -> MaxPool; a mirrored decoder; a sigmoid reconstruction.

    Layers are named ``encoder_conv{i}``, ``encoder_pool{i}`` (the last pool is ``bottleneck``),
    ``decoder_conv{i}``, ``decoder_upsample{i}`` and ``reconstruction``. At 28 px with filters (8, 4) the
    bottleneck is 7x7x4 = 196 values.

    Parameters
    ----------
    input_size : int
        Square side; must be divisible by 2 ** len(filters).
    channels : {1, 3}
        1 converts the RGB input to grayscale inside the model; the reconstruction has `channels` channels.
    filters : sequence of int
        Filters per encoder level (the decoder mirrors them).
    kernel_size : int
    seed : int or None
        Seeds the initial weights (numpy, backend independent); None keeps Keras's own init.

    Returns
    -------
    keras.Model
        Raw RGB (n, input_size, input_size, 3) in 0..255 -> (n, input_size, input_size, channels) in 0..1.
    """
    filters = _check_levels(input_size, filters)
    if seed is None:  # Keras's own init: its unseeded initializers draw from Python's `random`, as the user asked
        return _build_autoencoder(input_size, channels, filters, kernel_size)
    with keep_python_random():  # the weights are seeded below: Keras's default-seed draws must not move `random`
        model = _build_autoencoder(input_size, channels, filters, kernel_size)
    seeded_init(model, seed)
    return model


def _build_autoencoder(input_size, channels, filters, kernel_size):
    import keras

    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = inputs
    for layer in preprocessing_layers(channels):
        x = layer(x)
    for i, f in enumerate(filters, 1):
        x = keras.layers.Conv2D(f, kernel_size, padding="same", activation="relu", name=f"encoder_conv{i}")(x)
        x = keras.layers.MaxPooling2D(2, padding="same", name="bottleneck" if i == len(filters) else f"encoder_pool{i}")(x)
    for i, f in enumerate(reversed(filters), 1):
        x = keras.layers.Conv2D(f, kernel_size, padding="same", activation="relu", name=f"decoder_conv{i}")(x)
        x = keras.layers.UpSampling2D(2, name=f"decoder_upsample{i}")(x)
    x = keras.layers.Conv2D(channels, kernel_size, padding="same", activation="sigmoid", name="reconstruction")(x)
    return keras.Model(inputs, x, name="cae")


def _check_levels(input_size, filters) -> tuple:
    filters = tuple(filters)
    if not filters or not all(isinstance(f, int) and f > 0 for f in filters):
        raise ExtractorConfigError(f"`filters` must be a non-empty sequence of positive integers. Received: filters={filters!r}")
    if not isinstance(input_size, int) or input_size < 1 or input_size % (2 ** len(filters)):
        raise ExtractorConfigError(
            f"`input_size` must be a positive integer divisible by 2 ** len(filters) = {2 ** len(filters)}. "
            f"Received: input_size={input_size!r}"
        )
    return filters


def encoder(autoencoder, layer: str = "bottleneck"):
    """The encoder of a CAE: the sub-model from its input to the layer named `layer` (cut by name)."""
    return cut_at_layer(autoencoder, layer)


@register_extractor("cae")
class CAEExtractor(SavedModelExtractor):
    """The encoder of a CAE saved by `featurehead pretrain-cae` (`weights` = its `.keras` file).

    `layer` defaults to ``bottleneck``; with ``pooling="flatten"`` a 28 px, (8, 4)-filter CAE gives 196 features.
    """

    VERSION = 2  # 2: libjpeg-turbo DCT-domain downscaling before the resize (extract.images.DECODER)
    default_layer = "bottleneck"
