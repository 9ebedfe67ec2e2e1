"""The view file `STORE/features.h5`: the current index's rows, in index order, written atomically.

Per row it holds the columns (`ids`, `keys`, `labels` + `classes`, `split`, `view`, `source`, `ok`, `errors`),
where the row's features live (`shard`, an index into `shard_files`, and `shard_row`; -1 for none) and the
file's `size`, `mtime_ns`, `inode` and `ctime_ns` when its key was computed (the quick path that spares
re-hashing; views written before the last two were added lack them: read as -1, unknown, so hashed once more).

`features` is, for outside tools, an HDF5 virtual dataset over the shards with relative source paths and a NaN
fill value, as long as the index order maps onto at most `MAX_MAPPINGS` runs of consecutive shard rows. Past that
(a shuffled index), `features` is materialised in the view file instead, since a virtual dataset of one mapping
per row is slow to build and to read. featurehead's own readers always read the shards directly.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import h5py
import numpy as np

from features_store import durable, schema
from features_store.errors import StoreDamagedError
from features_store.manifest import Manifest
from features_store.shard import shard_path

MAX_MAPPINGS = 1024


def _runs(shard: np.ndarray, row: np.ndarray) -> list[tuple[int, int, int, int]]:
    """`(lo, hi, shard, first_row)` for each maximal run of view rows that map to consecutive rows of one shard."""
    n = len(shard)
    if n == 0:
        return []
    breaks = np.ones(n, dtype=bool)
    breaks[1:] = (shard[1:] != shard[:-1]) | (row[1:] != row[:-1] + 1)
    starts = np.flatnonzero(breaks)
    ends = np.append(starts[1:], n)
    return [(int(lo), int(hi), int(shard[lo]), int(row[lo])) for lo, hi in zip(starts, ends) if shard[lo] >= 0]


def write_view(
    store: str,
    manifest: Manifest,
    columns: Mapping[str, Any],
    *,
    complete: bool,
    attrs: Mapping[str, str],
    index_sha256: str,
    versions: dict,
) -> str:
    """Write `STORE/features.h5` atomically and return its features layout ("virtual" or "materialised").

    Parameters
    ----------
    store : str
        The store directory.
    manifest : Manifest
        The committed manifest whose shards the view references (by their order in `manifest.shards`).
    columns : mapping
        ``ids``, ``keys``, ``labels`` (codes), ``classes``, ``split``, ``view``, ``source``, ``ok``, ``errors``,
        ``shard``, ``shard_row``, ``size``, ``mtime_ns``, ``inode`` and ``ctime_ns``, one value per row
        (``classes`` per class).
    complete : bool
        Whether every row's key is stored (rows that failed count as done).
    attrs : mapping of str to str
        Extra root attributes (the images root, the index source, the augmentation).
    index_sha256 : str
        Hash of the rows' ids, labels and splits.
    versions : dict
        Library versions of this run.
    """
    n, d = len(columns["ids"]), manifest.n_features
    shard, row = np.asarray(columns["shard"], np.int32), np.asarray(columns["shard_row"], np.int64)
    runs = _runs(shard, row)
    layout = "virtual" if len(runs) <= MAX_MAPPINGS else "materialised"
    files = [s.file for s in manifest.shards]

    def fill(f: h5py.File) -> None:
        for name in ("ids", "split"):
            f.create_dataset(name, data=np.asarray(columns[name], dtype=object), dtype=schema.STR_DTYPE)
        f.create_dataset("errors", data=schema.encode_errors(columns["errors"]), dtype=schema.ERROR_DTYPE)
        f.create_dataset("classes", data=np.asarray(columns["classes"], dtype=object), dtype=schema.STR_DTYPE)
        f.create_dataset("keys", data=np.asarray(columns["keys"], dtype="S64"), dtype=schema.KEY_DTYPE)
        f.create_dataset("labels", data=np.asarray(columns["labels"], np.int32))
        f.create_dataset("view", data=np.asarray(columns["view"], np.int16))
        f.create_dataset("source", data=np.asarray(columns["source"], np.int64))
        f.create_dataset("ok", data=np.asarray(columns["ok"], bool))
        f.create_dataset("shard", data=shard)
        f.create_dataset("shard_row", data=row)
        for name in schema.STAT_COLUMNS:
            f.create_dataset(name, data=np.asarray(columns[name], np.int64))
        f.create_dataset("shard_files", data=np.array(files, dtype=object), dtype=schema.STR_DTYPE)
        if layout == "virtual":
            _virtual_features(f, manifest, runs, n, d)
        else:
            _materialised_features(f, store, manifest, shard, row, n, d)
        a = f.attrs
        a["schema_version"] = np.int64(schema.SCHEMA_VERSION)
        a["fingerprint"] = manifest.fingerprint
        a["extractor"] = json.dumps(manifest.extractor, sort_keys=True)
        a["index_sha256"] = index_sha256
        a["versions"] = json.dumps(versions, sort_keys=True)
        a["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        a["complete"] = np.bool_(complete)
        a["n_failed"] = np.int64(np.count_nonzero(~np.asarray(columns["ok"], bool)))
        a["features_layout"] = layout
        for key, value in attrs.items():
            a[key] = value

    path = os.path.join(store, schema.VIEW_FILE)
    what = f"the view {schema.VIEW_FILE} ({n} rows)"
    need = _view_bytes(columns, files, attrs, n, d, manifest.dtype) if layout != "virtual" else 0
    if layout != "virtual":
        durable.check_free(store, need, store=store, what=what)
    try:
        if layout == "virtual":
            # built in memory, then written as plain bytes: a full disk is one OSError, never HDF5 failing to
            # flush its objects (tracebacks as they are collected, then a crash at exit)
            buffer = io.BytesIO()
            with h5py.File(buffer, "w") as f:
                fill(f)
            durable.atomic_write_bytes(path, buffer.getvalue())
        else:  # the features copied in: too large for memory, so their space is reserved first
            def write(tmp: str) -> None:
                with durable.h5_writing(tmp):
                    pass  # an empty HDF5 file, whose blocks are then reserved for the whole view: HDF5 meeting a
                    # full disk or a file-size limit as it frees or flushes objects printed tracebacks, then crashed
                durable.reserve(tmp, need)
                with durable.h5_writing(tmp, "r+") as f:  # HDF5 cuts the file to its end when it closes it
                    fill(f)

            durable.atomic_write(path, write)
    except (OSError, RuntimeError) as err:  # RuntimeError: HDF5 failed to flush or close the file
        raise durable.write_error(err, store=store, what=what) from err
    return layout


def _view_bytes(columns: Mapping[str, Any], files: Sequence[str], attrs: Mapping[str, str], n: int, d: int,
                dtype: str) -> int:
    """An upper bound of a materialised view's size: the features (and their chunk index), the fixed-size columns
    (`errors` takes `ERROR_BYTES` a row), each variable-length string (a 16-byte reference, a 16-byte heap header,
    its bytes padded to 8 and its share of the heap), the attributes and HDF5's overhead."""
    strings = [*columns["ids"], *columns["split"], *columns["classes"], *files]
    text = sum(len(str(x).encode()) + 48 for x in strings) + sum(len(str(v).encode()) + 64 for v in attrs.values())
    fixed = (schema.KEY_BYTES + schema.ERROR_BYTES + 4 + 2 + 8 + 1 + 4 + 8  # keys, errors, labels ... shard_row
             + 8 * len(schema.STAT_COLUMNS))
    features = n * d * np.dtype(dtype).itemsize
    return features + (features >> 20) * 256 + n * fixed + text + (1 << 20)


def _virtual_features(f: h5py.File, manifest: Manifest, runs, n: int, d: int) -> None:
    dtype = np.dtype(manifest.dtype)
    layout = h5py.VirtualLayout(shape=(n, d), dtype=dtype)
    sources = [
        # relative to the view file's folder, so that a moved or copied STORE still reads
        h5py.VirtualSource(f"{schema.SHARDS_DIR}/{s.file}", "features", shape=(s.rows, d), dtype=dtype)
        for s in manifest.shards
    ]
    for lo, hi, s, first in runs:
        layout[lo:hi] = sources[s][first : first + hi - lo]
    f.create_virtual_dataset("features", layout, fillvalue=np.nan)


def _materialised_features(f, store, manifest, shard, row, n, d) -> None:
    dtype = np.dtype(manifest.dtype)
    rows_per_chunk = max(1, min(n, (1 << 20) // (d * dtype.itemsize)))
    out = f.create_dataset("features", shape=(n, d), dtype=dtype, chunks=(rows_per_chunk, d), fillvalue=np.nan)
    for s, record in enumerate(manifest.shards):
        mine = np.flatnonzero(shard == s)
        if not len(mine):
            continue
        with durable.h5_reading(shard_path(store, record.file)) as src:
            values = take_rows(src["features"], row[mine])
        for lo in range(0, len(mine), rows_per_chunk):  # a slab at a time keeps the memory bounded
            part = mine[lo : lo + rows_per_chunk]
            out[part] = values[lo : lo + rows_per_chunk].astype(dtype, copy=False)


def take_rows(dset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Read `rows` (any order, repeats allowed) of a 2-D dataset as float32, in runs of sorted rows."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows), dset.shape[1]), dtype=np.float32)
    if not len(rows):
        return out
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    chunk = dset.chunks[0] if dset.chunks else 4096
    groups = np.split(np.arange(len(rows)), np.flatnonzero(np.diff(sorted_rows // chunk)) + 1)
    for group in groups:
        lo, hi = int(sorted_rows[group[0]]), int(sorted_rows[group[-1]]) + 1
        out[order[group]] = dset[lo:hi][sorted_rows[group] - lo]
    return out


def view_columns(path: str) -> dict[str, Any]:
    """Every per-row column of a view file, plus its `classes`, `shard_files` and root attributes.

    Raises StoreDamagedError (an OSError) when the file cannot be read as a view: not HDF5, cut short, a column
    missing, a string column that is not UTF-8, a label or shard index out of range. `extract` rewrites it."""
    try:
        cols = _read_columns(path)
        _check_columns(cols)
    except (OSError, KeyError, RuntimeError, ValueError) as err:  # h5py's, and UnicodeDecodeError (a ValueError)
        damaged = StoreDamagedError(f"{path} is not a readable store view ({err}); re-run the extraction to rewrite it.")
        damaged.certain = not (isinstance(err, OSError) and err.errno)  # a lock, permissions, I/O: it may be fine
        raise damaged from err
    return cols


def _read_columns(path: str) -> dict[str, Any]:
    with durable.h5_reading(path) as f:
        cols: dict[str, Any] = {
            "ids": _strings(f, "ids"),
            "keys": _strings(f, "keys"),
            "labels": f["labels"][:].astype(np.int32),
            "classes": tuple(_strings(f, "classes").tolist()),
            "split": _strings(f, "split"),
            "view": f["view"][:],
            "source": f["source"][:],
            "ok": f["ok"][:].astype(bool),
            "errors": _strings(f, "errors"),
            "shard": f["shard"][:].astype(np.int32),
            "shard_row": f["shard_row"][:].astype(np.int64),
            # a view without `inode` and `ctime_ns` (written before they were added): "unknown", hashed again
            **{name: f[name][:] if name in f else np.full(len(f["ids"]), -1, np.int64)
               for name in schema.STAT_COLUMNS},
            "shard_files": _strings(f, "shard_files").tolist(),
            "features_shape": tuple(int(s) for s in f["features"].shape),
            "features_dtype": str(f["features"].dtype),
        }
        cols["attrs"] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    return cols


def _strings(f: h5py.File, name: str) -> np.ndarray:
    try:
        return f[name].asstr()[:].astype(str)
    except UnicodeDecodeError as err:
        raise ValueError(f"its `{name}` column is not UTF-8 text: {err.reason} at byte {err.start} of a value") from err


def _check_columns(cols: dict[str, Any]) -> None:
    """Refuse per-row columns of different lengths, and label codes or shard indexes that point nowhere."""
    n = len(cols["ids"])
    names = ["keys", "labels", "split", "view", "source", "ok", "errors", "shard", "shard_row", *schema.STAT_COLUMNS]
    for name in names:
        if len(cols[name]) != n:
            raise ValueError(f"its `{name}` column has {len(cols[name])} rows, `ids` has {n}")
    for name, top in (("labels", len(cols["classes"])), ("shard", len(cols["shard_files"]))):
        out = (cols[name] < -1) | (cols[name] >= top)
        if out.any():
            raise ValueError(f"its `{name}` column holds {int(cols[name][out][0])}, outside [-1, {top})")
    located = cols["shard"] >= 0
    if (cols["shard_row"][located] < 0).any():
        raise ValueError("its `shard_row` column holds a negative row for a row with a shard")


def stored_labels(codes: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    names = np.array(list(classes) + [""], dtype=str)  # code -1 picks the trailing ""
    return names[codes] if len(codes) else np.array([], dtype=str)
