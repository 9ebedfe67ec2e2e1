"""Loading `(X, y, ids)` from a store, whole (`load`) or streamed in bounded memory (`iter_batches`)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np

from features_store import schema
from features_store.plan import positive_int
from features_store.reader import StoreMeta, open_view


def selected_rows(meta: StoreMeta, split: str | Sequence[str] | None, ok_only: bool, views: bool) -> np.ndarray:
    """The positions in `meta` of the rows that `load(split=..., ok_only=..., views=...)` returns, in order."""
    keep = np.ones(len(meta.ids), dtype=bool)
    if split is not None:
        wanted = [split] if isinstance(split, str) else list(split)
        schema.check_split(wanted)
        keep &= np.isin(meta.split, wanted)
    if ok_only:
        keep &= meta.ok
    if not views:
        keep &= meta.view == 0
    return np.flatnonzero(keep)


def load(
    store: str | os.PathLike,
    *,
    split: str | Sequence[str] | None = None,
    ok_only: bool = True,
    views: bool = True,
    fingerprint: str | None = None,
    allow_incomplete: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Load the selected rows as `(X, y, ids)`.

    Parameters
    ----------
    store : str or path-like
        The store directory.
    split : str or sequence of str, default=None
        Keep rows of these split values ("train", "val", "test", ""); None keeps all.
    ok_only : bool, default=True
        Drop the rows whose extraction failed.
    views : bool, default=True
        Keep augmented views; False keeps only the originals (view 0).
    fingerprint : str, default=None
        When given, refuse a store written by another extractor.
    allow_incomplete : bool, default=False
        Read a partial store, whose visible rows are its done rows.

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), dtype float32
    y : ndarray of shape (n_samples,), dtype str
        Class names; "" for unlabelled rows.
    ids : ndarray of shape (n_samples,), dtype str
    """
    view = open_view(store)
    visible = view.visible(fingerprint=fingerprint, allow_incomplete=allow_incomplete)
    meta = view.meta(visible)
    rows = selected_rows(meta, split, ok_only, views)
    return view.features(visible[rows]), meta.labels[rows], meta.ids[rows]


def iter_batches(
    store: str | os.PathLike,
    batch_size: int,
    *,
    split: str | Sequence[str] | None = None,
    ok_only: bool = True,
    views: bool = True,
    fingerprint: str | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Stream the selected rows as `(X, y, ids)` batches, in row order, one batch read at a time.

    Parameters
    ----------
    store : str or path-like
        A complete store directory.
    batch_size : int
        Rows per batch; the last batch may be shorter.
    split, ok_only, views, fingerprint
        As in `load`.

    Yields
    ------
    X : ndarray of shape (batch_size, n_features), dtype float32
    y : ndarray of shape (batch_size,), dtype str
    ids : ndarray of shape (batch_size,), dtype str
    """
    batch_size = positive_int("batch_size", batch_size)  # numpy's integers too (a parameter grid built with numpy)
    view = open_view(store)  # fail here, not at the first `next()`
    visible = view.visible(fingerprint=fingerprint, allow_incomplete=False)
    if split is not None:
        schema.check_split([split] if isinstance(split, str) else list(split))
    meta = view.meta(visible)
    rows = selected_rows(meta, split, ok_only, views)
    return _batches(view, visible, meta, rows, batch_size)


def _batches(view, visible, meta, rows, batch_size):
    for lo in range(0, len(rows), batch_size):
        batch = rows[lo : lo + batch_size]
        yield view.features(visible[batch]), meta.labels[batch], meta.ids[batch]
