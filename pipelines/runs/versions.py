"""The library versions a store records: those known without Keras (in the view, for a run that builds no
model) and those of the process that wrote a shard (with Keras, its backend and the decoders)."""

from __future__ import annotations

import platform

import numpy as np


def base_versions() -> dict:
    """Versions known without importing Keras (a relabel run must not import it)."""
    import h5py

    versions = {"python": platform.python_version(), "numpy": np.__version__, "h5py": h5py.__version__}
    try:
        from importlib.metadata import version

        versions["featurehead"] = version("featurehead")
    except Exception:  # not installed as a distribution (running from a checkout)
        versions["featurehead"] = "unknown"
    return versions


def library_versions() -> dict:
    """`base_versions` plus Keras, its backend and the backend's version, and the decoders: what wrote a shard."""
    import importlib

    import keras

    from extract.images import decoder_versions

    backend = keras.backend.backend()
    module = importlib.import_module(backend)
    return {**base_versions(), "keras": keras.__version__, "keras_backend": backend,
            "backend_version": getattr(module, "__version__", "unknown"), **decoder_versions()}
