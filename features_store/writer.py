"""`StoreWriter`: creates or resumes a store and appends feature rows in order, durably.

Each batch is flushed before the progress counter `n_done` moves, so a crash leaves a resumable store.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import h5py
import numpy as np

from features_store import schema
from features_store.columns import validate_columns, validate_options
from features_store.errors import StoreDamagedError, StoreMismatchError
from features_store.layout import create_store
from features_store.plan import mismatches
from features_store.reader import locked_error, read_info

logger = logging.getLogger(__name__)


class StoreWriter:
    """Append feature rows to a store, in row order; use `StoreWriter.open` to get one.

    With compression, rows become durable a whole chunk at a time (each compressed chunk is written once,
    see the README), so `n_done` may lag behind the rows passed to `write`.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._file = h5py.File(path, "r+")
        except OSError as err:
            if isinstance(err, BlockingIOError):
                raise locked_error(path) from err
            raise StoreDamagedError(f"{path} cannot be opened for writing ({err}); delete {path}.") from err
        features = self._file["features"]
        self.n_rows, self.n_features = (int(s) for s in features.shape)
        self._dtype = features.dtype
        self._commit_rows = features.chunks[0] if features.compression else 1
        self._n_done = int(self._file.attrs["n_done"])
        self._n_failed = int(np.count_nonzero(~self._file["ok"][: self._n_done].astype(bool)))
        if self._n_failed != int(self._file.attrs["n_failed"]):
            self._file.attrs.modify("n_failed", np.int64(self._n_failed))
        self._pending = (np.empty((0, self.n_features), self._dtype), np.empty(0, bool), schema.encode_errors([]))

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        fingerprint: str,
        extractor: dict,
        index_sha256: str,
        n_features: int,
        ids: Sequence[str],
        labels: np.ndarray,
        classes: Sequence[str],
        split: Sequence[str],
        view: np.ndarray | None = None,
        source: np.ndarray | None = None,
        versions: dict | None = None,
        attrs: dict | None = None,
        dtype: str = "float32",
        compression: str | None = None,
    ) -> StoreWriter:
        """Create the store at `path`, or resume the partial (or complete) store already there.

        Parameters
        ----------
        path : str or path-like
            The store file.
        fingerprint, extractor, index_sha256 : str, dict, str
            Identity of the extractor (its fingerprint and JSON-able spec) and of the image index.
        n_features : int
            Row width D of `features`.
        ids, labels, classes, split, view, source
            Per-row columns; see `features_store.columns.validate_columns`.
        versions : dict, default=None
            Library versions, stored as JSON.
        attrs : dict of str to str, default=None
            Extra root attributes.
        dtype : {"float32", "float16"}, default="float32"
            Storage type of `features`.
        compression : {None, "gzip", "lzf"}, default=None
            Compression of `features`.

        Returns
        -------
        StoreWriter
            Its `n_done` is the row to resume from (0 for a new store, `n_rows` for a complete one).

        Raises
        ------
        StoreMismatchError
            When the existing store was made for another extractor, index, shape or dtype.
        StoreDamagedError
            When the existing file is not a readable store.
        """
        path = os.fspath(path)
        attrs = dict(attrs or {})
        validate_options(n_features, dtype, compression, attrs)
        columns = validate_columns(ids, labels, classes, split, view, source)
        asked = {"schema_version": schema.SCHEMA_VERSION, "fingerprint": fingerprint, "index_sha256": index_sha256,
                 "n_rows": len(columns["ids"]), "n_features": int(n_features), "dtype": dtype}
        if os.path.exists(path):
            info = read_info(path)
            differences = mismatches(vars(info), asked)
            if differences:
                raise StoreMismatchError(
                    f"{path} was made for another run ({'; '.join(differences)}); "
                    f"use another --out or delete {path}."
                )
            logger.info("Resuming %s at row %d of %d", path, info.n_done, info.n_rows)
        else:
            meta = {"fingerprint": fingerprint, "extractor": extractor, "index_sha256": index_sha256,
                    "versions": dict(versions or {}), "attrs": attrs, "n_features": int(n_features),
                    "dtype": dtype, "compression": compression}
            create_store(path, columns, meta)
        return cls(path)

    @property
    def n_done(self) -> int:
        """Number of durable rows: rows `[0, n_done)` are final."""
        return self._n_done

    @property
    def n_failed(self) -> int:
        """Number of durable rows whose extraction failed."""
        return self._n_failed

    def write(
        self, start: int, features: np.ndarray, ok: np.ndarray, errors: Sequence[str] | None = None
    ) -> None:
        """Write the rows `[start, start + n)`.

        Parameters
        ----------
        start : int
            First row; must be the next row to write (`n_done` unless compressed rows are pending).
        features : ndarray of shape (n, n_features)
            Floating-point features; rows with ``ok=False`` are stored as NaN.
        ok : ndarray of shape (n,), dtype bool
            Whether each row was extracted.
        errors : sequence of str of length n, default=None
            Reason of each failed row; ignored for ok rows.
        """
        expected = self._n_done + len(self._pending[1])
        if start != expected:
            raise ValueError(f"`start` must be the next row to write, {expected}. Received: start={start!r}")
        x, ok, reasons = self._validate(start, features, ok, errors)
        x = x.astype(self._dtype, copy=True)
        x[~ok] = np.nan
        encoded = schema.encode_errors(["" if good else r for good, r in zip(ok, reasons)])
        pending = self._pending
        self._pending = (np.concatenate([pending[0], x]), np.concatenate([pending[1], ok]),
                         np.concatenate([pending[2], encoded]))
        stop = start + len(ok)
        self._commit(stop if stop == self.n_rows else stop - stop % self._commit_rows)

    def _validate(self, start, features, ok, errors):
        x, ok = np.asarray(features), np.asarray(ok)
        if x.ndim != 2 or x.shape[1] != self.n_features or not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"`features` must be a float array of shape (n, {self.n_features}). "
                             f"Received: features with shape {x.shape} and dtype {x.dtype}")
        n = x.shape[0]
        if ok.shape != (n,) or ok.dtype != bool:
            raise ValueError(f"`ok` must be a bool array of shape ({n},). Received: shape {ok.shape}, dtype {ok.dtype}")
        reasons = [""] * n if errors is None else [str(e) for e in errors]
        if len(reasons) != n:
            raise ValueError(f"`errors` must hold {n} reasons, one per row. Received: {len(reasons)} reasons")
        if start + n > self.n_rows:
            raise ValueError(f"Rows [{start}, {start + n}) exceed the store's {self.n_rows} rows. "
                             f"Received: start={start} with {n} rows")
        return x, ok, reasons

    def _commit(self, stop: int) -> None:
        # Rows first, flushed; only then the counter. A crash in between leaves the old n_done, and the
        # rows past it are simply written again on resume.
        lo, m = self._n_done, stop - self._n_done
        if m <= 0:
            return
        x, ok, encoded = self._pending
        self._file["features"][lo:stop] = x[:m]
        self._file["ok"][lo:stop] = ok[:m]
        self._file["errors"][lo:stop] = encoded[:m]
        self._file.flush()
        self._n_failed += int(np.count_nonzero(~ok[:m]))
        self._file.attrs.modify("n_failed", np.int64(self._n_failed))
        self._file.attrs.modify("n_done", np.int64(stop))
        self._file.flush()
        self._n_done = stop
        self._pending = (x[m:], ok[m:], encoded[m:])

    def finish(self) -> None:
        """Mark the store complete; every row must have been written."""
        if self._n_done != self.n_rows:
            raise ValueError(f"`finish()` needs all {self.n_rows} rows written. Received: n_done={self._n_done}")
        self._file.attrs.modify("complete", np.bool_(True))
        self._file.flush()

    def close(self) -> None:
        """Close the file; rows not yet durable (compressed, partial chunk) are redone on resume."""
        if self._file.id.valid:
            if len(self._pending[1]):
                logger.info("%s: rows from %d on were not durable and will be redone", self.path, self._n_done)
            self._file.close()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
