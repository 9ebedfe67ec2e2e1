"""Reading a store: its summary (`read_info`), its per-row columns (`read_meta`), features and failures.

Every function opens the file in a `with` block and returns plain values, never live h5py objects.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import h5py
import numpy as np

from features_store import schema
from features_store.errors import (
    StoreDamagedError,
    StoreIncompleteError,
    StoreLockedError,
    StoreMismatchError,
    StoreNotFoundError,
)


@dataclass(frozen=True)
class StoreInfo:
    """Summary of a store: its attributes and shapes, as plain values."""

    path: str
    schema_version: int
    fingerprint: str
    extractor: dict
    index_sha256: str
    n_rows: int
    n_features: int
    n_done: int
    n_failed: int
    complete: bool
    classes: tuple[str, ...]
    created: str
    versions: dict
    attrs: dict
    dtype: str
    chunks: tuple
    split_counts: dict[str, int]


@dataclass(frozen=True)
class StoreMeta:
    """The per-row columns of the visible rows, as numpy arrays."""

    ids: np.ndarray
    labels: np.ndarray
    codes: np.ndarray
    classes: tuple
    split: np.ndarray
    view: np.ndarray
    source: np.ndarray
    ok: np.ndarray
    errors: np.ndarray


@contextmanager
def open_store(path: str | os.PathLike, mode: str = "r") -> Iterator[h5py.File]:
    """Open `path` as a featurehead store, mapping failures to the store's errors."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise StoreNotFoundError(f"No feature store at {path}; run the extraction to create it.")
    try:
        f = h5py.File(path, mode)
    except OSError as err:
        if isinstance(err, BlockingIOError):
            raise locked_error(path) from err
        raise StoreDamagedError(
            f"{path} cannot be opened as an HDF5 file ({err}); delete {path} and re-run the extraction."
        ) from err
    with f:
        missing = [n for n in schema.DATASETS if n not in f] + [a for a in schema.ATTRS if a not in f.attrs]
        if missing:
            raise StoreDamagedError(
                f"{path} is not a featurehead store (missing {missing[0]!r}); delete {path} or use another path."
            )
        yield f


def locked_error(path: str) -> StoreLockedError:
    """The error for a store that another process holds open."""
    return StoreLockedError(
        f"{path} is open in another process (an extraction still writing it?); wait for it to finish, "
        "or stop it and re-run to resume."
    )


def _str(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def info_of(f: h5py.File) -> StoreInfo:
    """Build the `StoreInfo` of an open store."""
    a, features = f.attrs, f["features"]
    split = f["split"].asstr()[:]
    names, counts = np.unique(split, return_counts=True) if len(split) else ([], [])
    return StoreInfo(
        path=f.filename,
        schema_version=int(a["schema_version"]),
        fingerprint=_str(a["fingerprint"]),
        extractor=json.loads(_str(a["extractor"])),
        index_sha256=_str(a["index_sha256"]),
        n_rows=int(features.shape[0]),
        n_features=int(features.shape[1]),
        n_done=int(a["n_done"]),
        # The `ok` column is the truth; the attribute mirrors it for h5dump readers.
        n_failed=int(np.count_nonzero(~f["ok"][: int(a["n_done"])].astype(bool))),
        complete=bool(a["complete"]),
        classes=tuple(f["classes"].asstr()[:].tolist()),
        created=_str(a["created"]),
        versions=json.loads(_str(a["versions"])),
        attrs={k: _str(v) for k, v in a.items() if k not in schema.ATTRS},
        dtype=str(features.dtype),
        chunks=tuple(features.chunks or ()),
        split_counts={str(n): int(c) for n, c in zip(names, counts)},
    )


def read_info(path: str | os.PathLike) -> StoreInfo:
    """Read the summary of a store, complete or partial.

    Parameters
    ----------
    path : str or path-like
        The store file.

    Returns
    -------
    StoreInfo

    Raises
    ------
    StoreNotFoundError
        When `path` does not exist.
    StoreDamagedError
        When `path` is not HDF5 or not a featurehead store.
    """
    with open_store(path) as f:
        return info_of(f)


def visible_rows(info: StoreInfo, *, fingerprint: str | None, allow_incomplete: bool) -> int:
    """Check the store against the caller's wishes and return how many rows may be read."""
    if fingerprint is not None and fingerprint != info.fingerprint:
        raise StoreMismatchError(
            f"{info.path} holds features of fingerprint {info.fingerprint[:12]}, not {fingerprint[:12]}: "
            "the features come from another extractor. Re-extract with this extractor or pick the right store."
        )
    if info.complete:
        return info.n_rows
    if not allow_incomplete:
        raise StoreIncompleteError(
            f"{info.path} is incomplete ({info.n_done} of {info.n_rows} rows); "
            "re-run the extraction to resume it."
        )
    return info.n_done


def meta_of(f: h5py.File, n: int) -> StoreMeta:
    """Read the first `n` rows of the per-row columns of an open store."""
    classes = tuple(f["classes"].asstr()[:].tolist())
    codes = f["labels"][:n].astype(np.int32)
    names = np.array(list(classes) + [""], dtype=str)  # code -1 picks the trailing ""
    return StoreMeta(
        ids=f["ids"].asstr()[:n].astype(str),
        labels=names[codes] if n else np.array([], dtype=str),
        codes=codes,
        classes=classes,
        split=f["split"].asstr()[:n].astype(str),
        view=f["view"][:n],
        source=f["source"][:n],
        ok=f["ok"][:n].astype(bool),
        errors=f["errors"].asstr()[:n].astype(str),
    )


def read_meta(path: str | os.PathLike, *, allow_incomplete: bool = False) -> StoreMeta:
    """Read the per-row columns of a store.

    Parameters
    ----------
    path : str or path-like
        The store file.
    allow_incomplete : bool, default=False
        Read a partial store; only its durable rows `[0, n_done)` are returned.

    Returns
    -------
    StoreMeta
        Columns of shape (n_rows,), or (n_done,) for an allowed partial store.
    """
    with open_store(path) as f:
        n = visible_rows(info_of(f), fingerprint=None, allow_incomplete=allow_incomplete)
        return meta_of(f, n)


def take_rows(dset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Read sorted unique `rows` of a 2-D dataset one chunk at a time, as float32."""
    out = np.empty((len(rows), dset.shape[1]), dtype=np.float32)
    if not len(rows):
        return out
    chunk = dset.chunks[0] if dset.chunks else len(rows)
    groups = np.split(np.arange(len(rows)), np.flatnonzero(np.diff(rows // chunk)) + 1)
    for group in groups:
        lo, hi = int(rows[group[0]]), int(rows[group[-1]]) + 1
        out[group] = dset[lo:hi][rows[group] - lo]
    return out


def _as_rows(rows: Sequence[int] | np.ndarray | None, n: int) -> np.ndarray:
    if rows is None:
        return np.arange(n)
    rows = np.asarray(rows)
    if rows.ndim != 1 or (rows.size and not np.issubdtype(rows.dtype, np.integer)):
        raise ValueError(f"`rows` must be a 1-D array of integers. Received: rows with shape {rows.shape} "
                         f"and dtype {rows.dtype}")
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise IndexError(f"`rows` must lie in [0, {n}). Received: rows from {rows.min()} to {rows.max()}")
    return rows.astype(np.int64)


def read_features(
    path: str | os.PathLike,
    rows: Sequence[int] | np.ndarray | None = None,
    *,
    fingerprint: str | None = None,
    allow_incomplete: bool = False,
) -> np.ndarray:
    """Read feature rows, in the order asked.

    Parameters
    ----------
    path : str or path-like
        The store file.
    rows : array-like of int of shape (n,), default=None
        Row indices in any order (repeats allowed); None reads every visible row.
    fingerprint : str, default=None
        When given, refuse a store written by another extractor.
    allow_incomplete : bool, default=False
        Read a partial store, whose visible rows are `[0, n_done)`.

    Returns
    -------
    ndarray of shape (n, n_features), dtype float32
    """
    with open_store(path) as f:
        n = visible_rows(info_of(f), fingerprint=fingerprint, allow_incomplete=allow_incomplete)
        wanted = _as_rows(rows, n)
        if len(wanted) < 2 or np.all(wanted[1:] > wanted[:-1]):  # sorted and unique: no second copy of X
            return take_rows(f["features"], wanted)
        unique, inverse = np.unique(wanted, return_inverse=True)
        return take_rows(f["features"], unique)[inverse]


def read_errors(path: str | os.PathLike) -> list[tuple[str, str]]:
    """List the failed rows among the durable ones, complete store or not.

    Parameters
    ----------
    path : str or path-like
        The store file.

    Returns
    -------
    list of tuple of (str, str)
        ``(id, reason)`` per failed row, in row order.
    """
    with open_store(path) as f:
        meta = meta_of(f, int(f.attrs["n_done"]))
    failed = np.flatnonzero(~meta.ok)
    return [(str(meta.ids[i]), str(meta.errors[i])) for i in failed]
