"""The store's schema (version 2): file names, dataset and attribute names, and column encodings.

A store is a directory::

    STORE/
      features.h5      the view: the current index's rows, in index order (plain h5py / h5dump open it)
      manifest.json    the complete shards; replaced atomically, the single commit point
      shards/*.h5      feature rows keyed by content; a complete shard is never written again
      .lock            held by the one writer
"""

from __future__ import annotations

from collections.abc import Sequence

import h5py
import numpy as np

SCHEMA_VERSION = 2

VIEW_FILE = "features.h5"
MANIFEST_FILE = "manifest.json"
SHARDS_DIR = "shards"
LOCK_FILE = ".lock"

ERROR_BYTES = 256
KEY_BYTES = 64  # a sha256 in hex
SPLITS = ("train", "val", "test", "")
DTYPES = ("float32", "float16")

STR_DTYPE = h5py.string_dtype("utf-8")
ERROR_DTYPE = h5py.string_dtype("utf-8", ERROR_BYTES)
KEY_DTYPE = h5py.string_dtype("ascii", KEY_BYTES)

# each file's stat when its key was computed (the quick path that spares re-hashing; -1 unknown): int64 columns
# of the view; `inode` and `ctime_ns` came after schema 2 did, so a view may lack them (read as -1)
STAT_COLUMNS = ("size", "mtime_ns", "inode", "ctime_ns")
# datasets of the view file, one value per view row (plus `classes` and `shard_files`)
VIEW_COLUMNS = ("ids", "keys", "labels", "split", "view", "source", "ok", "errors", "shard", "shard_row",
                *STAT_COLUMNS)
VIEW_ATTRS = ("schema_version", "fingerprint", "extractor", "index_sha256", "versions", "created", "complete",
              "n_failed", "features_layout")
# datasets of a shard file
SHARD_DATASETS = ("keys", "features", "ok", "errors")


def encode_errors(errors: Sequence[str]) -> np.ndarray:
    """Encode reasons as fixed-length UTF-8, cut on a character boundary to fit `ERROR_BYTES`.

    Parameters
    ----------
    errors : sequence of str
        One reason per row ("" for none).

    Returns
    -------
    ndarray of shape (n,)
        Bytes array of the store's `errors` dtype.
    """
    encoded = []
    for reason in errors:
        raw = str(reason).replace("\x00", "").encode("utf-8")[:ERROR_BYTES]
        encoded.append(raw.decode("utf-8", "ignore").encode("utf-8"))
    return np.array(encoded, dtype=ERROR_DTYPE).reshape(len(encoded))


def check_split(values: Sequence[str], name: str = "split") -> None:
    """Raise ValueError unless each value is one of `SPLITS`."""
    bad = sorted(set(values) - set(SPLITS))
    if bad:
        raise ValueError(
            f"`{name}` values must be one of 'train', 'val', 'test', ''. Received: {name}={bad[0]!r}"
        )
