"""Composition: end-to-end runners over `extract`, `features_store` and `classify`, the CLI and the demo.

Attributes load lazily, so `featurehead --help` answers without importing Keras, h5py or scikit-learn.
"""

from importlib import import_module

_EXPORTS = {
    "run_extract": "extraction",
    "default_store_path": "extraction",
    "ExtractResult": "extraction",
    "run_train": "heads",
    "run_evaluate": "heads",
    "run_predict": "heads",
    "split_rows": "heads",
    "describe_store": "inspection",
    "run_demo": "demo",
    "ImageFeatureExtractor": "transformers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
