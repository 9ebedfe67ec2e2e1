"""Classifier heads on extracted features: estimators, their evaluation, plots and bundles.

Knows scikit-learn and Keras only; Keras is imported lazily, so importing this package stays TensorFlow-free.
"""

from classify.bundle import Bundle, load_bundle, save_bundle, save_model_bundle, trusted_types
from classify.errors import (
    BundleBusyError,
    BundleExistsError,
    BundleFormatError,
    BundleIntegrityError,
    BundleMismatchError,
    BundleNotFoundError,
    BundleUnsafeError,
    ClassifyError,
    PickleBundleWarning,
)
from classify.heads import fit_out_of_core, make_head
from classify.holdout import holdout
from classify.labels import encode_labels
from classify.metrics import evaluate, format_metrics, model_accuracy
from classify.mlp import KerasMLPClassifier
from classify.plots import plot_confusion_matrix, plot_history

__all__ = [
    "Bundle",
    "BundleBusyError",
    "BundleExistsError",
    "BundleFormatError",
    "BundleIntegrityError",
    "BundleMismatchError",
    "BundleNotFoundError",
    "BundleUnsafeError",
    "ClassifyError",
    "KerasMLPClassifier",
    "PickleBundleWarning",
    "encode_labels",
    "evaluate",
    "fit_out_of_core",
    "format_metrics",
    "holdout",
    "load_bundle",
    "make_head",
    "model_accuracy",
    "plot_confusion_matrix",
    "plot_history",
    "save_bundle",
    "save_model_bundle",
    "trusted_types",
]
