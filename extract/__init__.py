"""Stage one: image indexes, image decoding and frozen Keras feature extractors (no HDF5 here).

Importing this package does not import Keras; models are built on first use.
"""

# importing these registers their extractors: vgg16, vgg19; cae; keras
from . import applications, autoencoder, saved_model  # noqa: F401
from .applications import keras_cache_dir
from .batches import read_batch
from .errors import (
    ExtractError,
    ExtractorConfigError,
    ImageChangedError,
    ImageReadError,
    IndexValidationError,
    PrecisionOverflowError,
    UnknownExtractorError,
    WeightsUnavailableError,
)
from .extractor import POOLINGS, Extractor
from .fingerprint import canonical_json, file_sha256, fingerprint
from .images import load_image
from .index import ImageIndex, read_index
from .registry import extractor_from_spec, get_extractor, known_extractors, register_extractor

__all__ = [
    "POOLINGS",
    "ExtractError",
    "Extractor",
    "ExtractorConfigError",
    "ImageChangedError",
    "ImageIndex",
    "ImageReadError",
    "IndexValidationError",
    "PrecisionOverflowError",
    "UnknownExtractorError",
    "WeightsUnavailableError",
    "canonical_json",
    "extractor_from_spec",
    "file_sha256",
    "fingerprint",
    "get_extractor",
    "keras_cache_dir",
    "known_extractors",
    "load_image",
    "read_batch",
    "read_index",
    "register_extractor",
]
