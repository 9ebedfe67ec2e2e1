"""Creation of a new store file: every known column, every attribute, and pre-allocated result datasets.

The file is built under a temporary name and moved into place, so PATH is never half-created.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import h5py
import numpy as np

from features_store import schema
from features_store.plan import chunk_rows

logger = logging.getLogger(__name__)


def _preallocated(f: h5py.File, name: str, shape: tuple, dtype: Any, **kwargs: Any) -> None:
    # Early allocation and no fill: after creation, writing rows never allocates file space or touches
    # metadata, which is what makes a SIGKILL at any moment harmless.
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    f.create_dataset(name, shape=shape, dtype=dtype, dcpl=dcpl, **kwargs)


def create_store(path: str, columns: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Create the store at `path` with its columns written and its results allocated.

    Parameters
    ----------
    path : str
        Destination; must not exist.
    columns : mapping
        Validated ``ids``, ``labels``, ``classes``, ``split``, ``view``, ``source`` arrays.
    meta : mapping
        ``fingerprint``, ``extractor`` (dict), ``index_sha256``, ``versions`` (dict), ``attrs`` (dict of str),
        ``n_features``, ``dtype`` and ``compression``.
    """
    n_rows, n_features = len(columns["ids"]), meta["n_features"]
    dtype = np.dtype(meta["dtype"])
    rows = min(chunk_rows(n_features, dtype.itemsize), n_rows)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as f:  # default libver: superblock v0, no write-status flags
            for name in ("ids", "classes", "split"):
                f.create_dataset(name, data=np.asarray(columns[name], dtype=object), dtype=schema.STR_DTYPE)
            f.create_dataset("labels", data=columns["labels"], dtype=np.int32)
            f.create_dataset("view", data=columns["view"], dtype=np.int16)
            f.create_dataset("source", data=columns["source"], dtype=np.int64)
            _preallocated(
                f, "features", (n_rows, n_features), dtype,
                chunks=(rows, n_features), compression=meta["compression"],
            )
            _preallocated(f, "ok", (n_rows,), np.bool_)
            _preallocated(f, "errors", (n_rows,), schema.ERROR_DTYPE)
            _write_attrs(f.attrs, meta)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    logger.info("Created store %s (%d rows x %d features, %s)", path, n_rows, n_features, dtype)


def _write_attrs(attrs: h5py.AttributeManager, meta: Mapping[str, Any]) -> None:
    # The mutable counters get their final dtype now so that later updates rewrite them in place.
    attrs["schema_version"] = np.int64(schema.SCHEMA_VERSION)
    attrs["fingerprint"] = str(meta["fingerprint"])
    attrs["extractor"] = json.dumps(meta["extractor"], sort_keys=True)
    attrs["index_sha256"] = str(meta["index_sha256"])
    attrs["versions"] = json.dumps(meta["versions"], sort_keys=True)
    attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    attrs["n_done"] = np.int64(0)
    attrs["n_failed"] = np.int64(0)
    attrs["complete"] = np.bool_(False)
    for key, value in meta["attrs"].items():
        attrs[key] = value
