"""The checks of `KerasMLPClassifier.fit`'s sample weights and validation rows (no Keras here)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.utils import compute_sample_weight
from sklearn.utils.validation import check_array

from classify.labels import encode_labels


def sample_weights(y: np.ndarray, sample_weight: Any, class_weight: dict | str | None) -> np.ndarray:
    """One float32 weight per sample: `sample_weight` times the `class_weight` weights (ones by default)."""
    if sample_weight is None:
        weights = np.ones(len(y), dtype=np.float32)
    else:
        weights = check_array(sample_weight, ensure_2d=False, dtype=np.float32, input_name="sample_weight")
        if weights.shape != (len(y),):
            raise ValueError(
                f"`sample_weight` must have shape ({len(y)},). Received: sample_weight.shape={weights.shape}"
            )
        if np.any(weights < 0):
            raise ValueError(f"`sample_weight` must be non-negative. Received: min={weights.min()}")
        if not np.any(weights > 0):
            raise ValueError("`sample_weight` must have a non-zero weight. Received: all weights are zero")
    if class_weight is not None:
        weights = weights * compute_sample_weight(class_weight, y).astype(np.float32)
    return weights


def checked_validation(validation_data: Any, n_features: int, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """`validation_data` checked: float32 rows of `n_features` columns and the codes of their labels."""
    if validation_data is None:
        return None
    if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
        length = f" of length {len(validation_data)}" if isinstance(validation_data, (tuple, list)) else ""
        raise ValueError("`validation_data` must be a tuple (X_val, y_val) (no validation sample weights). "
                         f"Received: {type(validation_data).__name__}{length}")
    X_val = check_array(validation_data[0], dtype=np.float32, input_name="X_val")
    if X_val.shape[1] != n_features:
        raise ValueError(f"`X_val` must have {n_features} features, as X. Received: X_val.shape={X_val.shape}")
    y_val = np.asarray(validation_data[1])
    if y_val.shape != (len(X_val),):
        raise ValueError(f"`y_val` must have shape ({len(X_val)},). Received: y_val.shape={y_val.shape}")
    return X_val, encode_labels(y_val, classes, name="`y_val` labels")
