"""The keras.applications backbones featurehead offers: their table (default size, preprocessing, feature
dimensions per pooling) and what `featurehead models` asks of it (the listing, the layers to cut at, a check of
the table against the built models). The extractors themselves are in `extract.applications`."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ExtractorConfigError
from .extractor import MIN_INPUT_SIZE
from .registry import get_extractor_class


@dataclass(frozen=True)
class Backbone:
    """One keras.applications model without its top, as featurehead names and feeds it."""

    constructor: str  # the keras.applications function
    input_size: int  # its default input side (the size its ImageNet weights were trained at)
    preprocess: str  # extract.layers.PREPROCESS_MODES: how raw RGB becomes its input
    channels: int  # features per image with pooling avg or max
    grid: int  # side of its last feature map at `input_size` (flatten gives grid * grid * channels)
    # the name of its output layer; None where Keras numbers it (MobileNetV3's `activation_17`, ConvNeXt's
    # `layer_normalization`): naming that layer stays another fingerprint than the default, as it was for the stores
    # and head bundles made with it
    last_layer: str | None
    pooling: str = "avg"  # the default pooling
    min_size: int = MIN_INPUT_SIZE

    @property
    def name(self) -> str:
        return self.constructor.lower()

    def feature_dims(self) -> dict:
        """Features per image for each pooling at the default input size."""
        return {"flatten": self.grid * self.grid * self.channels, "avg": self.channels, "max": self.channels}


# Measured by building each model (weights=None, include_top=False) at its default size with Keras 3.15:
# `tests/test_extract_backbones.py` checks one model of each family, `featurehead models --check` all of them.
BACKBONES = {b.name: b for b in (
    Backbone("VGG16", 224, "caffe", 512, 7, "block5_pool", pooling="flatten"),
    Backbone("VGG19", 224, "caffe", 512, 7, "block5_pool", pooling="flatten"),
    Backbone("ResNet50", 224, "caffe", 2048, 7, "conv5_block3_out"),
    Backbone("ResNet101", 224, "caffe", 2048, 7, "conv5_block3_out"),
    Backbone("ResNet152", 224, "caffe", 2048, 7, "conv5_block3_out"),
    Backbone("ResNet50V2", 224, "tf", 2048, 7, "post_relu"),
    Backbone("ResNet101V2", 224, "tf", 2048, 7, "post_relu"),
    Backbone("ResNet152V2", 224, "tf", 2048, 7, "post_relu"),
    Backbone("InceptionV3", 299, "tf", 2048, 8, "mixed10", min_size=75),
    Backbone("Xception", 299, "tf", 2048, 10, "block14_sepconv2_act", min_size=71),
    Backbone("MobileNetV2", 224, "tf", 1280, 7, "out_relu"),
    Backbone("MobileNetV3Small", 224, "none", 576, 7, None),
    Backbone("MobileNetV3Large", 224, "none", 960, 7, None),
    Backbone("DenseNet121", 224, "torch", 1024, 7, "relu"),
    Backbone("DenseNet169", 224, "torch", 1664, 7, "relu"),
    Backbone("DenseNet201", 224, "torch", 1920, 7, "relu"),
    Backbone("EfficientNetB0", 224, "none", 1280, 7, "top_activation"),
    Backbone("EfficientNetB1", 240, "none", 1280, 8, "top_activation"),
    Backbone("EfficientNetB2", 260, "none", 1408, 9, "top_activation"),
    Backbone("EfficientNetB3", 300, "none", 1536, 10, "top_activation"),
    Backbone("EfficientNetB4", 380, "none", 1792, 12, "top_activation"),
    Backbone("EfficientNetB5", 456, "none", 2048, 15, "top_activation"),
    Backbone("EfficientNetB6", 528, "none", 2304, 17, "top_activation"),
    Backbone("EfficientNetB7", 600, "none", 2560, 19, "top_activation"),
    Backbone("EfficientNetV2B0", 224, "none", 1280, 7, "top_activation"),
    Backbone("EfficientNetV2B1", 240, "none", 1280, 8, "top_activation"),
    Backbone("EfficientNetV2B2", 260, "none", 1408, 9, "top_activation"),
    Backbone("EfficientNetV2B3", 300, "none", 1536, 10, "top_activation"),
    Backbone("EfficientNetV2S", 384, "none", 1280, 12, "top_activation"),
    Backbone("EfficientNetV2M", 480, "none", 1280, 15, "top_activation"),
    Backbone("EfficientNetV2L", 480, "none", 1280, 15, "top_activation"),
    Backbone("ConvNeXtTiny", 224, "none", 768, 7, None),
    Backbone("ConvNeXtSmall", 224, "none", 768, 7, None),
    Backbone("ConvNeXtBase", 224, "none", 1024, 7, None),
    Backbone("ConvNeXtLarge", 224, "none", 1536, 7, None),
    Backbone("ConvNeXtXLarge", 224, "none", 2048, 7, None),
)}


def backbone_table() -> list[dict]:
    """One row per backbone: name, default input size, preprocessing, default pooling, features per pooling."""
    return [{"name": b.name, "input_size": b.input_size, "preprocess": b.preprocess, "pooling": b.pooling,
             **{f"dim_{k}": v for k, v in b.feature_dims().items()}} for b in BACKBONES.values()]


def backbone_layers(name: str, input_size: int | None = None) -> list[tuple[str, tuple]]:
    """The layers a backbone can be cut at, with their output shapes (built with weights=None: nothing loaded)."""
    extractor = get_extractor_class(name)(weights="none", input_size=input_size)
    if getattr(extractor, "backbone", None) is None:
        raise ExtractorConfigError(f"`models NAME --layers` takes a keras.applications backbone. Received: {name!r}")
    extractor.validate()
    base = extractor.base_model()
    layers = []
    for layer in base.layers:  # the input layer too: cut there, the features are the pixels the backbone gets, pooled
        out = layer.output
        shapes = [tuple(t.shape[1:]) for t in out] if isinstance(out, (list, tuple)) else tuple(out.shape[1:])
        layers.append((layer.name, shapes))
    return layers


def check_backbone(name: str) -> list[str]:
    """Build one backbone (weights=None) at its default size; the differences from `BACKBONES` (empty: none)."""
    b = BACKBONES[name]
    base = get_extractor_class(name)(weights="none").base_model()
    problems = []
    grid, _, channels = tuple(base.output.shape[1:])
    if (grid, channels) != (b.grid, b.channels):
        problems.append(f"{name}: output {grid}x{grid}x{channels}, the table says {b.grid}x{b.grid}x{b.channels}")
    if b.last_layer is not None and base.layers[-1].name != b.last_layer:
        problems.append(f"{name}: last layer {base.layers[-1].name!r}, the table says {b.last_layer!r}")
    return problems
