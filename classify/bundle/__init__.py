"""Head bundles: a directory with the fitted head and its `manifest.json`; loading one runs no code from it.

A scikit-learn head is saved with `skops.io` (`head-<sha>.skops`), its Keras network, if any, as `mlp-<sha>.keras`
(named by their content, so that the manifest's rename is a save's one commit point); loading
trusts only our own head types and loads Keras files with ``safe_mode=True``. The manifest records the extractor
spec and fingerprint the head needs, the classes, the feature dimension, metrics, parameters, versions and the
sha256 of each model file, verified before the file is read. A pickle (`head-<sha>.joblib`) is written and read only on
explicit request, because loading a pickle runs whatever code it names.

Modules: `manifest` (the files, the manifest, hashing), `trust` (what loading trusts), `save`, `load`.
"""

from classify.bundle.load import Bundle, load_bundle
from classify.bundle.manifest import (
    FORMAT_VERSION,
    FULL_MODEL_FILE,
    KINDS,
    MANIFEST,
    MODEL_FILE,
    MODEL_FORMATS,
    NETWORK_FILE,
    PICKLE_FILE,
)
from classify.bundle.save import save_bundle, save_model_bundle
from classify.bundle.trust import trusted_types

__all__ = [
    "FORMAT_VERSION",
    "FULL_MODEL_FILE",
    "KINDS",
    "MANIFEST",
    "MODEL_FILE",
    "MODEL_FORMATS",
    "NETWORK_FILE",
    "PICKLE_FILE",
    "Bundle",
    "load_bundle",
    "save_bundle",
    "save_model_bundle",
    "trusted_types",
]
