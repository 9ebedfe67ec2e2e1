"""Class labels to integer codes: the one mapping used by the heads, the out-of-core batches and fine-tuning."""

from __future__ import annotations

from typing import Any

import numpy as np


def encode_labels(y: Any, classes: Any, *, unknown: str = "raise", name: str = "labels") -> np.ndarray:
    """Codes of `y`: the position of each label in `classes`.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Labels.
    classes : array-like of shape (n_classes,)
        The class labels, in code order (any order; distinct).
    unknown : {"raise", "code"}, default="raise"
        A label not in `classes` raises ValueError, or gets code -1 (an unlabelled row).
    name : str, default="labels"
        What `y` is, for the error message.

    Returns
    -------
    codes : ndarray of shape (n_samples,), dtype int32
    """
    if unknown not in ("raise", "code"):
        raise ValueError(f"`unknown` must be one of 'raise', 'code'. Received: unknown={unknown!r}")
    y, classes = np.asarray(y), np.asarray(classes)
    if y.ndim != 1:
        y = y.reshape(-1)
    if len(classes) == 0:
        found, codes = np.zeros(len(y), bool), np.full(len(y), -1)
    else:
        order = np.argsort(classes, kind="stable")
        at = np.minimum(np.searchsorted(classes[order], y), len(classes) - 1)
        found = classes[order][at] == y
        codes = np.where(found, order[at], -1)
    if unknown == "raise" and not found.all():
        raise ValueError(f"{name} must be among `classes` {classes.tolist()}. Received: {y[~found][0].item()!r}")
    return codes.astype(np.int32)
