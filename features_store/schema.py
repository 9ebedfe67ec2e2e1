"""The store's schema: version, dataset and attribute names, and the encodings of its columns."""

from __future__ import annotations

from collections.abc import Sequence

import h5py
import numpy as np

SCHEMA_VERSION = 1

ERROR_BYTES = 256
SPLITS = ("train", "val", "test", "")
DTYPES = ("float32", "float16")
COMPRESSIONS = (None, "gzip", "lzf")

STR_DTYPE = h5py.string_dtype("utf-8")
ERROR_DTYPE = h5py.string_dtype("utf-8", ERROR_BYTES)

DATASETS = ("features", "ids", "labels", "classes", "split", "view", "source", "ok", "errors")
ATTRS = (
    "schema_version", "fingerprint", "extractor", "index_sha256", "versions",
    "created", "n_done", "n_failed", "complete",
)


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
