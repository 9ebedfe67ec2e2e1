"""Keras building blocks shared by the extractors: in-graph preprocessing, custom layers, pooling heads, seeded init.

Everything uses `keras.ops`, so it runs under the tensorflow, jax and torch backends alike.
"""

from __future__ import annotations

import contextlib

import numpy as np

from .errors import ExtractorConfigError

IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)
IMAGENET_RGB_MEAN = (0.485, 0.456, 0.406)
IMAGENET_RGB_STD = (0.229, 0.224, 0.225)
# ITU-R 601-2 luma, the weights of Pillow's convert("L")
GRAY_WEIGHTS = (0.299, 0.587, 0.114)
# The keras.applications.imagenet_utils.preprocess_input modes, plus "none": the model normalises inside itself
PREPROCESS_MODES = ("caffe", "torch", "tf", "none")


def _keras():
    import keras

    return keras


def caffe_preprocess_layer():
    """The VGG "caffe" preprocessing (RGB->BGR, ImageNet mean subtracted, not scaled) as a Keras layer."""
    return _layer_classes()["CaffePreprocess"]()


def preprocess_layer(mode: str):
    """uint8 RGB in 0..255 -> the input a keras.applications family expects, as one Keras layer.

    "caffe": RGB->BGR minus the ImageNet means (VGG, ResNet); "torch": 0..1 minus the ImageNet means over their
    standard deviations (DenseNet); "tf": -1..1 (Inception, Xception, MobileNetV2, ResNetV2); "none": a cast only
    (EfficientNet, EfficientNetV2, ConvNeXt and MobileNetV3 normalise inside their own graph).
    """
    if mode == "caffe":
        return caffe_preprocess_layer()
    return _layer_classes()["ImagePreprocess"](mode=mode)


def rescale_layer():
    """Scale 0..255 to 0..1 (the CAE and the small CNNs are trained on that range)."""
    return _keras().layers.Rescaling(1.0 / 255, name="rescale")


def grayscale_layer():
    """A weightless layer converting RGB to one luma channel (built with keras.ops, backend-agnostic)."""
    return _layer_classes()["Grayscale"]()


_CLASSES: dict = {}


def register_layers() -> None:
    """Define and register featurehead's custom Keras layers (once), so that saved models holding them load."""
    _layer_classes()


def _layer_classes() -> dict:
    """Define (once, lazily: keras is imported on first use) and register the custom layers, so saved models load."""
    if _CLASSES:
        return _CLASSES
    keras = _keras()

    @keras.saving.register_keras_serializable(package="featurehead")
    class CaffePreprocess(keras.layers.Layer):
        """RGB in 0..255 -> BGR minus the ImageNet channel means (keras.applications.vgg16.preprocess_input)."""

        def __init__(self, **kwargs):
            kwargs.setdefault("name", "caffe_preprocess")
            super().__init__(**kwargs)

        def call(self, x):
            x = keras.ops.flip(keras.ops.cast(x, self.compute_dtype), axis=-1)
            return x - keras.ops.convert_to_tensor(IMAGENET_BGR_MEAN, dtype=self.compute_dtype)

        def compute_output_shape(self, input_shape):
            return input_shape

    @keras.saving.register_keras_serializable(package="featurehead")
    class ImagePreprocess(keras.layers.Layer):
        """RGB in 0..255 -> keras.applications' `preprocess_input(x, mode=...)` for "torch", "tf" or "none"."""

        def __init__(self, mode="none", **kwargs):
            if mode not in ("torch", "tf", "none"):
                raise ValueError(f"`mode` must be one of 'torch', 'tf', 'none'. Received: mode={mode!r}")
            kwargs.setdefault("name", f"{mode}_preprocess")
            super().__init__(**kwargs)
            self.mode = mode

        def call(self, x):
            x = keras.ops.cast(x, self.compute_dtype)
            if self.mode == "tf":
                return x / 127.5 - 1.0
            if self.mode == "torch":
                mean = keras.ops.convert_to_tensor(IMAGENET_RGB_MEAN, dtype=self.compute_dtype)
                std = keras.ops.convert_to_tensor(IMAGENET_RGB_STD, dtype=self.compute_dtype)
                return (x / 255.0 - mean) / std
            return x

        def compute_output_shape(self, input_shape):
            return input_shape

        def get_config(self):
            return {**super().get_config(), "mode": self.mode}

    @keras.saving.register_keras_serializable(package="featurehead")
    class Grayscale(keras.layers.Layer):
        """RGB (..., 3) -> luma (..., 1), with `GRAY_WEIGHTS`; no weights to train."""

        def __init__(self, **kwargs):
            kwargs.setdefault("name", "grayscale")
            super().__init__(**kwargs)

        def call(self, x):
            weights = keras.ops.convert_to_tensor(GRAY_WEIGHTS, dtype=self.compute_dtype)
            return keras.ops.sum(keras.ops.cast(x, self.compute_dtype) * weights, axis=-1, keepdims=True)

        def compute_output_shape(self, input_shape):
            return (*input_shape[:-1], 1)

    _CLASSES["CaffePreprocess"] = CaffePreprocess
    _CLASSES["ImagePreprocess"] = ImagePreprocess
    _CLASSES["Grayscale"] = Grayscale
    return _CLASSES


def pooling_layer(pooling: str, rank: int, name: str = "features", layer: str | None = None,
                  default_of: str | None = None):
    """The layer that turns a feature map into a vector: flatten, global avg or global max (`layer`, the cut
    layer's name, and `default_of`, the model whose default pooling `pooling` is, for the error)."""
    keras = _keras()
    if pooling == "flatten" or rank == 2:
        if pooling != "flatten":
            notes = ([f"{layer!r} is one"] if layer else []) + ([f"{pooling!r} is {default_of}'s default"]
                                                                 if default_of else [])
            which = f" ({'; '.join(notes)})" if notes else ""
            raise ExtractorConfigError(
                f"`pooling` must be 'flatten' for a layer whose output is already a vector{which}. "
                f"Received: pooling={pooling!r}"
            )
        return keras.layers.Flatten(name=name)
    if rank != 4:
        raise ExtractorConfigError(f"global pooling needs a 4-d feature map. Received: rank {rank}")
    return {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D}[pooling](
        name=name
    )


def seeded_init(model, seed: int) -> None:
    """Overwrite every kernel with a numpy-seeded Glorot-uniform init.

    The same seed gives the same weights under every backend, so a random-init store, its resume and a
    `predict` all see identical features. Only kernels are random in Keras; every other weight (biases, batch
    and layer normalisation's gamma, beta and moving statistics, EfficientNet's input normalisation, ConvNeXt's
    layer scale) starts at a constant, which is kept.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for variable in layer.weights:
            if not (variable.name.endswith("kernel") or variable.name == "embeddings"):
                continue
            shape = tuple(variable.shape)
            receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
            fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            variable.assign(rng.uniform(-limit, limit, size=shape).astype(variable.dtype))


@contextlib.contextmanager
def keep_python_random():
    """Give Python's global `random` state back after building layers.

    Keras's unseeded initializers draw default seeds from it (keras.src.random.seed_generator.make_default_seed);
    where the weights are then loaded or seeded by us, those draws serve nothing and must not move the caller's
    random stream.
    """
    import random

    state = random.getstate()
    try:
        yield
    finally:
        random.setstate(state)


@contextlib.contextmanager
def dtype_policy(precision: str):
    """Build layers under the policy of `precision` ("float32", or mixed bfloat16/float16); leave the caller's Keras
    policy and Python RNG as they were.

    keras.applications constructors take no `dtype`, so their layers can only get a policy from Keras's default
    one (`keras.config.set_dtype_policy`; Keras keeps it per thread). It is set here, float32 too (a caller's own
    mixed policy must not make a float32 extractor compute in float16 under its float32 fingerprint), and restored
    in `finally`. Their weights are loaded or seeded by us, so Python's `random` is kept too (`keep_python_random`).
    """
    keras = _keras()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32" if precision == "float32" else f"mixed_{precision}")
    try:
        with keep_python_random():
            yield
    finally:
        keras.config.set_dtype_policy(previous)


def _misspelt(names: list[str], wrong: str) -> list[str]:
    """The layer names within a typo or two of `wrong`, in any case, closest first. A ratio of 0.8: a typo in a layer
    name scores 0.86 to 0.97 ("cnv5_block3_out", "block5_pol"), while a name the model has nothing like scores up
    to 0.67 with some layer ("nolayer" and 'input_layer'; VGG's "block5_pol" and ResNet's 'conv4_block5_out'), which
    must not be offered as what was meant. Only the closest are offered, up to 3 equally close ("block6_pool": blocks
    3 to 5), not whatever else passes the cutoff ("block5_pol" is not a typo of 'block4_pool')."""
    import difflib

    lower = {n.lower(): n for n in reversed(names)}  # the first of two names equal but for case
    score = difflib.SequenceMatcher(None, b=str(wrong).lower())  # difflib.get_close_matches' measure, once a name
    ratios = {}
    for name in lower:
        score.set_seq1(name)
        ratios[name] = score.ratio()
    best = max(ratios.values(), default=0.0)
    if best < 0.8:
        return []
    # of more than 3 equally close, get_close_matches' choice (the names last in sorted order), in the model's order
    closest = sorted((n for n, r in ratios.items() if r >= best - 1e-9), reverse=True)[:3]
    order = {n: i for i, n in enumerate(names)}
    return sorted((lower[n] for n in closest), key=order.get)


def _close_names(names: list[str], wrong: str) -> list[str]:
    """The layer names `wrong` may have meant: those it begins (a prefix, "conv4", names a group), else its
    misspellings."""
    starting = [n for n in names if n.startswith(str(wrong))]
    return starting[:3] if starting else _misspelt(names, wrong)


def _some(names: list[str], wrong: str, listed_by: str | None, most: int = 25) -> str:
    """The layer names for an error: all of a small model's; of a large one (a ResNet has 175), the closest to
    `wrong`, and the command that lists them all (`listed_by`), if any."""
    if len(names) <= most:
        return str(names)
    close = _close_names(names, wrong)
    if not close:  # no guess, which would mislead: where to look instead
        where = (f"`{listed_by}` lists them, with their output shapes" if listed_by
                 else "the model's `summary()` lists them")
        return f"({len(names)} layers, none named like {str(wrong)!r}: {where})"
    return (f"(all {len(names)}" + (f", with their output shapes: `{listed_by}`" if listed_by else "")
            + f"; the closest: {', '.join(map(repr, close))})")


def _did_you_mean(names: list[str], wrong: str, most: int = 25) -> str:
    """" (did you mean 'block5_pool'?)" after a misspelt layer name of a small model, whose every name the error
    lists; "" otherwise (a large model's error names the closest itself)."""
    close = _misspelt(names, wrong) if len(names) <= most else []
    return f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""


def cut_at_layer(model, layer: str | list[str] | None, *, listed_by: str | None = None):
    """A sub-model of `model` ending at the layer named `layer` (never cut by index).

    A list of names gives one model with one output per name, in the order given (one forward pass for all).
    `listed_by`: the command that lists the model's layers, named when an unknown name is refused.
    """
    keras = _keras()
    if layer is None:
        return model
    names = [lay.name for lay in model.layers]  # the input layer too: stores and heads were made with it
    wanted = layer if isinstance(layer, list) else [layer]
    for name in wanted:
        if name not in names:
            raise ExtractorConfigError(f"`layer` must be one of the model's layers {_some(names, name, listed_by)}. "
                                       f"Received: layer={name!r}{_did_you_mean(names, name)}")
    if not isinstance(layer, list):
        return keras.Model(model.inputs, model.get_layer(layer).output, name=f"{model.name}_{layer}")
    outputs = [model.get_layer(name).output for name in wanted]
    return keras.Model(model.inputs, outputs, name=f"{model.name}_{len(wanted)}_layers")
