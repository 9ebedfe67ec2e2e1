"""Pure planning for the feature store: chunk sizes, batch plans and store names.

Nothing here touches a file, so all of it is tested on plain data.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np


def positive_int(name: str, value: Any, flag: str | None = None) -> int:
    """`value` as a Python int when it is a positive integer (numpy's integers too); else a ValueError naming `name`
    (and the CLI's `flag`, when given)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
        received = f"{value!r}" if flag else f"{name}={value!r}"
        raise ValueError(f"`{name}`{f' ({flag})' if flag else ''} must be a positive integer. Received: {received}")
    return int(value)


def chunk_rows(n_features: int, itemsize: int = 4, target_bytes: int = 1 << 20) -> int:
    """Number of whole rows per chunk so that a chunk holds about `target_bytes`.

    Parameters
    ----------
    n_features : int
        Row width D.
    itemsize : int, default=4
        Bytes per value (4 for float32, 2 for float16).
    target_bytes : int, default=1 MiB
        Wanted chunk size in bytes.

    Returns
    -------
    int
        Rows per chunk, at least 1.
    """
    positive_int("n_features", n_features)
    positive_int("itemsize", itemsize)
    positive_int("target_bytes", target_bytes)
    return max(1, target_bytes // (n_features * itemsize))


def batch_plan(n_rows: int, batch_size: int, start: int = 0) -> list[tuple[int, int]]:
    """Split rows `[start, n_rows)` into consecutive `(start, stop)` batches.

    Parameters
    ----------
    n_rows : int
        Total number of rows (may be 0).
    batch_size : int
        Rows per batch; the last batch may be shorter.
    start : int, default=0
        First row to plan (rows before it are done).

    Returns
    -------
    list of tuple of (int, int)
        Half-open row ranges; empty when `start == n_rows`.
    """
    positive_int("batch_size", batch_size)
    if isinstance(n_rows, bool) or not isinstance(n_rows, int) or n_rows < 0:
        raise ValueError(f"`n_rows` must be a non-negative integer. Received: n_rows={n_rows!r}")
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= n_rows:
        raise ValueError(f"`start` must be an integer in [0, n_rows={n_rows}]. Received: start={start!r}")
    return [(lo, min(lo + batch_size, n_rows)) for lo in range(start, n_rows, batch_size)]


def default_store_name(stem: str, model_name: str, fingerprint: str) -> str:
    """Directory name of the store for an index `stem` and an extractor.

    Parameters
    ----------
    stem : str
        Stem of the index (for example the CSV name without suffix).
    model_name : str
        Extractor name, such as ``"vgg16"``.
    fingerprint : str
        Extractor fingerprint; its first 10 characters go into the name.

    Returns
    -------
    str
        ``f"{stem}.{model_name}-{fingerprint[:10]}"`` (a store is a directory).
    """
    return f"{stem}.{model_name}-{fingerprint[:10]}"


DEFAULT_SHARD_ROWS = 4096
SHARD_BYTES = 1 << 30


def default_shard_rows(n_features: int, itemsize: int = 4) -> int:
    """Rows per shard: 4096, or fewer when 4096 rows would pass 1 GiB of features."""
    return max(1, min(DEFAULT_SHARD_ROWS, SHARD_BYTES // (n_features * itemsize)))


def plan_shards(keys: Sequence[str], shard_rows: int) -> list[list[str]]:
    """Split `keys` (in order) into shards of `shard_rows` keys; the same keys always give the same plan."""
    if isinstance(shard_rows, bool) or not isinstance(shard_rows, int) or shard_rows < 1:
        raise ValueError(f"`shard_rows` must be a positive integer. Received: shard_rows={shard_rows!r}")
    keys = list(keys)
    return [keys[lo : lo + shard_rows] for lo in range(0, len(keys), shard_rows)]


# without --shard-rows, a Dask run cuts an index into about this many shards (the tasks that spread over the
# workers; one 4096-row shard was one task, one worker busy and the bar still), of at least DASK_MIN_SHARD_ROWS rows
DASK_SHARDS = 32
DASK_MIN_SHARD_ROWS = 64


def shard_rows_candidates(shard_rows: int | None, n_keys: int, n_features: int | None, *, dask: bool) -> list[int]:
    """The shard sizes a run may plan (`plan_resuming` picks the one that resumes the most rows on disk):
    `shard_rows` when given; else this kind of run's own default first (a Dask run's, or a single process's),
    then the other's, so that either resumes what the other left unfinished."""
    if shard_rows:
        return [shard_rows]
    own = [default_shard_rows(n_features or 4096), dask_shard_rows(n_keys, n_features)]
    return own[::-1] if dask else own


def dask_shard_rows(n_keys: int, n_features: int | None) -> int:
    """The rows per shard of a Dask run over an index of `n_keys` keys: about `DASK_SHARDS` shards, at least
    `DASK_MIN_SHARD_ROWS` rows, at most `default_shard_rows`. It depends on the index alone (not on
    what is missing, nor on the workers), so that a re-run plans the same shards and resumes those written."""
    return min(default_shard_rows(n_features or 4096),
               max(DASK_MIN_SHARD_ROWS, -(-n_keys // DASK_SHARDS)))
