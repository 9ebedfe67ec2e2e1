"""Composition over `extract`, `features_store` and `classify`, grouped by role into subpackages:

- `cli`: the `featurehead` command line (parser, command handlers, the process entry point);
- `runs`: the end-to-end runs (extract, train, evaluate, predict, inspect, the demo) and the augmented views;
- `sklearn`: the scikit-learn transformer that reaches the store (`ImageFeatureExtractor`);
- `workflows`: the seed workflows (advice, fine-tuning, pre-training, the layer sweep);
- `scale`: extraction on Dask;
- `report`: the offline HTML report.

Attributes load lazily, so `featurehead --help` answers without importing Keras, h5py or scikit-learn.
"""

from importlib import import_module

_EXPORTS = {
    "run_extract": "runs.extraction",
    "default_store_path": "runs.planning",
    "ExtractResult": "runs.extraction",
    "run_train": "runs.training",
    "run_evaluate": "runs.prediction",
    "run_predict": "runs.prediction",
    "split_rows": "runs.training",
    "describe_store": "runs.inspection",
    "run_demo": "runs.demo",
    "ImageFeatureExtractor": "sklearn.transformers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
