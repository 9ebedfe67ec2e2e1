"""Validation of what a store is created with: the per-row columns and the storage options."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from features_store import schema


def _column(name: str, values: Any, n_rows: int, kind: str) -> np.ndarray:
    array = np.asarray(values)
    if array.shape != (n_rows,):
        raise ValueError(f"`{name}` must have shape ({n_rows},), one value per id. Received: shape {array.shape}")
    if n_rows and kind == "int" and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"`{name}` must hold integers. Received: dtype {array.dtype}")
    return array


def validate_columns(
    ids: Sequence[str],
    labels: Any,
    classes: Sequence[str],
    split: Sequence[str],
    view: Any = None,
    source: Any = None,
) -> dict[str, np.ndarray]:
    """Check the per-row columns of a new store and fill in the defaults of `view` and `source`.

    Parameters
    ----------
    ids : sequence of str of length n_rows
    labels : array-like of int of shape (n_rows,)
        Codes into `classes`; -1 for unlabelled rows.
    classes : sequence of str of length n_classes
    split : sequence of str of length n_rows
        "train", "val", "test" or "".
    view : array-like of int of shape (n_rows,), default=None
        0 for originals (the default), 1.. for augmented views.
    source : array-like of int of shape (n_rows,), default=None
        Row of the original of each row; defaults to the row itself.

    Returns
    -------
    dict of str to ndarray
        ``ids``, ``labels``, ``classes``, ``split``, ``view`` and ``source``.
    """
    ids = [str(i) for i in ids]
    n = len(ids)
    if n == 0:
        raise ValueError("`ids` must not be empty. Received: ids=[]")
    classes = [str(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise ValueError(f"`classes` must be unique. Received: classes={classes!r}")
    labels = _column("labels", labels, n, "int")
    if labels.size and (labels.min() < -1 or labels.max() >= len(classes)):
        raise ValueError(
            f"`labels` must be codes in [-1, {len(classes)}). Received: labels from {labels.min()} to {labels.max()}"
        )
    split = _column("split", [str(s) for s in split], n, "str")
    schema.check_split(split.tolist())
    view = _column("view", np.zeros(n, np.int16) if view is None else view, n, "int")
    source = _column("source", np.arange(n) if source is None else source, n, "int")
    if view.min() < 0 or source.min() < 0 or source.max() >= n:
        raise ValueError(f"`view` must be >= 0 and `source` must be rows in [0, {n}). Received: out-of-range values")
    return {"ids": np.array(ids, dtype=object), "labels": labels, "classes": np.array(classes, dtype=object),
            "split": np.array(split, dtype=object), "view": view, "source": source}


def validate_options(n_features: Any, dtype: Any, compression: Any, attrs: Mapping[str, Any]) -> None:
    """Check the storage options of a new store; raise ValueError naming the first bad one."""
    if isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)) or n_features < 1:
        raise ValueError(f"`n_features` must be a positive integer. Received: n_features={n_features!r}")
    if dtype not in schema.DTYPES:
        raise ValueError(f"`dtype` must be one of 'float32', 'float16'. Received: dtype={dtype!r}")
    if compression not in schema.COMPRESSIONS:
        raise ValueError(f"`compression` must be one of None, 'gzip', 'lzf'. Received: compression={compression!r}")
    for key, value in attrs.items():
        if not isinstance(key, str) or not isinstance(value, str) or key in schema.ATTRS:
            raise ValueError(
                "`attrs` must map new names to str values, not the store's own attributes. "
                f"Received: attrs[{key!r}]={value!r}"
            )
