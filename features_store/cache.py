"""The feature cache: one appendable HDF5 file of feature rows per extractor fingerprint, keyed by image.

A path's key is its resolved path, size and mtime (an edited file misses); an in-memory image's key is its bytes.
Processes share a file through a `filelock` lock file; the row counter moves only after the rows are flushed. A
lookup only reads, so a read-only cache (a shared, mounted one) serves hits. An append that cannot write (a
read-only folder, a full disk, a quota, a file-size limit) is one `StoreWriteError` that keeps the rows already
cached; the cache's user, `ImageFeatureExtractor`, then returns the features it extracted all the same and logs why
they are not cached (a warning; an info line for a read-only folder or file, a shared cache's usual setup): a cache saves work, so failing to grow it loses none, and says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import filelock
import h5py
import numpy as np

from features_store import durable, schema
from features_store.errors import FeatureStoreError, StoreMismatchError
from features_store.plan import chunk_rows
from features_store.view import take_rows

logger = logging.getLogger(__name__)

CACHE_SCHEMA_VERSION = 1
KEY_DTYPE = "S64"  # hex sha256; fixed length, so a lookup reads the keys as one numpy array
COUNTERS = ("n_rows", "n_extracted")  # in the file, written by `append` only

# Hits are counted in this process, never in the file: a lookup writes nothing.
_HITS: dict[str, int] = {}
_HITS_LOCK = threading.Lock()


@dataclass(frozen=True)
class CacheInfo:
    """What a cache file holds and how it was used (zeros when the file does not exist yet).

    `n_rows`, `n_features` and `n_extracted` are the file's; `n_hits` counts the rows that lookups in this
    process served from it (lookups write nothing, so they are not counted in the file).
    """

    path: str
    fingerprint: str
    n_rows: int
    n_features: int
    n_extracted: int
    n_hits: int


def cache_path(cache_dir: str | os.PathLike, fingerprint: str) -> Path:
    """The cache file of one extractor fingerprint under `cache_dir`."""
    if not isinstance(fingerprint, str) or len(fingerprint) < 16:
        raise ValueError(f"`fingerprint` must be a hex digest string. Received: fingerprint={fingerprint!r}")
    return Path(cache_dir) / f"features-{fingerprint[:16]}.h5"


def path_keys(paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """Cache keys of image files: sha256 of the resolved path, the size, the mtime, the inode and the ctime (a
    file swapped with another of the same size and mtime, or rewritten with its mtime set back, gets a new key).

    Parameters
    ----------
    paths : sequence of str or path-like

    Returns
    -------
    ndarray of shape (n,), dtype S64
        One key per path; ``b""`` for a path that cannot be stat-ed (it is never found nor cached).
    """
    keys = []
    for path in paths:
        try:
            resolved = Path(path).resolve()
            st = resolved.stat()
        except OSError:
            keys.append(b"")
            continue
        raw = (f"{resolved}\x00{st.st_size}\x00{st.st_mtime_ns}\x00{st.st_ino}\x00{st.st_ctime_ns}"
               .encode("utf-8", "surrogateescape"))
        keys.append(hashlib.sha256(raw).hexdigest().encode("ascii"))
    return np.array(keys, dtype=KEY_DTYPE).reshape(len(keys))


def array_keys(images: np.ndarray) -> np.ndarray:
    """Cache keys of in-memory images: sha256 of each image's shape, dtype and bytes.

    Parameters
    ----------
    images : ndarray of shape (n, ...)

    Returns
    -------
    ndarray of shape (n,), dtype S64
    """
    head = f"{images.shape[1:]}{images.dtype.str}".encode()
    keys = [hashlib.sha256(head + np.ascontiguousarray(im).tobytes()).hexdigest().encode() for im in images]
    return np.array(keys, dtype=KEY_DTYPE).reshape(len(keys))


@contextmanager
def _locked(path: Path, *, write: bool) -> Iterator[None]:
    """Hold the cache file's lock (`filelock`, an advisory lock file beside it) while the file is open.

    h5py's own (process-wide, non-blocking) file locking is switched off, so two processes queue here instead of
    failing. A reader of a folder it cannot write (a read-only, shared cache) takes no lock: it could not create
    the lock file, and no writer can change the file through that folder.
    """
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not os.access(path.parent, os.W_OK):
        yield
        return
    with filelock.FileLock(f"{path}.lock"):
        yield


def _open(path: Path, fingerprint: str, *, write: bool) -> h5py.File | None:
    """Open an existing cache file ("r+" to write, else "r"); None when it is missing or damaged.

    A damaged file is never read: a writer moves it aside (and starts afresh), a reader only logs it.
    """
    if not path.exists():
        return None
    try:
        f = h5py.File(path, "r+" if write else "r", locking=False)
    except OSError as err:
        if not write:
            logger.warning("feature cache %s could not be opened (%s); it is not used", path, err)
            return None
        aside = f"{path}.damaged-{time.time_ns()}"
        os.replace(path, aside)
        logger.warning("feature cache %s could not be opened (%s); moved it to %s and starting afresh", path, err, aside)
        return None
    stored = f.attrs.get("fingerprint", b"")
    stored = stored.decode() if isinstance(stored, bytes) else str(stored)
    if stored != fingerprint:
        f.close()
        raise StoreMismatchError(
            f"{path} caches features of fingerprint {stored[:12]}, not {fingerprint[:12]} as its name says (a file "
            "copied or renamed by hand); use another cache_dir, or move that file away."
        )
    return f


def _create(path: Path, fingerprint: str, n_features: int, extractor: dict, need: int) -> h5py.File:
    """A new cache file, made whole under a temporary name and renamed into place (`durable.atomic_write`), its
    blocks for the rows to append reserved; a killed creation's temporary file (those reserved blocks) is removed by
    the next `append`."""
    rows = chunk_rows(n_features)

    def write(tmp: str) -> None:
        with durable.h5_writing(tmp) as f:
            f.create_dataset("features", shape=(rows, n_features), maxshape=(None, n_features), dtype=np.float32,
                             chunks=(rows, n_features))
            f.create_dataset("keys", shape=(rows,), maxshape=(None,), dtype=KEY_DTYPE, chunks=(rows,))
            f.create_dataset("names", shape=(rows,), maxshape=(None,), dtype=schema.STR_DTYPE, chunks=(rows,))
            f.attrs["cache_schema_version"] = np.int64(CACHE_SCHEMA_VERSION)
            f.attrs["fingerprint"] = fingerprint
            f.attrs["extractor"] = json.dumps(extractor, sort_keys=True)
            for counter in COUNTERS:
                f.attrs[counter] = np.int64(0)
        durable.reserve(tmp, os.path.getsize(tmp) + need)  # the rows to append (HDF5 cuts the rest when it closes)

    durable.atomic_write(path, write)  # never a half-created file under the real name
    return h5py.File(path, "r+", locking=False)


def _row_of(f: h5py.File) -> dict[bytes, int]:
    n = int(f.attrs["n_rows"])  # rows past n_rows may hold anything: they were never committed
    return {key: row for row, key in enumerate(f["keys"][:n].tolist())}


def lookup(cache_dir: str | os.PathLike, fingerprint: str, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Find cached rows; only reads the cache (a read-only folder works), and counts the hits in this process.

    Parameters
    ----------
    cache_dir : str or path-like
    fingerprint : str
        The extractor's fingerprint.
    keys : ndarray of shape (n,), dtype S64
        From `path_keys` or `array_keys`.

    Returns
    -------
    features : ndarray of shape (n_found, n_features), dtype float32
        The cached rows of the found keys, in the order of `keys`.
    found : ndarray of shape (n,), dtype bool
    """
    keys = np.asarray(keys, dtype=KEY_DTYPE)
    path = cache_path(cache_dir, fingerprint)
    with _locked(path, write=False):
        f = _open(path, fingerprint, write=False)
        if f is None:
            return np.empty((0, 0), np.float32), np.zeros(len(keys), bool)
        with f:
            index = _row_of(f)
            rows = np.array([index.get(k, -1) if k else -1 for k in keys.tolist()], dtype=np.int64)
            found = rows >= 0
            unique, inverse = np.unique(rows[found], return_inverse=True)
            features = take_rows(f["features"], unique)[inverse]
    with _HITS_LOCK:
        name = str(path.resolve())
        _HITS[name] = _HITS.get(name, 0) + int(found.sum())
    return features, found


def writable(cache_dir: str | os.PathLike, fingerprint: str | None = None) -> bool:
    """Whether `append` may write under `cache_dir`: it (or the nearest folder above it that exists) is writable,
    and so is the fingerprint's cache file when one is given and that file exists (a read-only file in a writable
    folder, a published cache copied with its permissions, cannot grow either)."""
    if fingerprint is not None and cache_path(cache_dir, fingerprint).exists():
        return os.access(cache_path(cache_dir, fingerprint), os.W_OK) and writable(cache_dir)
    path = Path(cache_dir).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return os.access(path, os.W_OK)


def append(
    cache_dir: str | os.PathLike,
    fingerprint: str,
    keys: np.ndarray,
    features: np.ndarray,
    *,
    extractor: dict,
    names: Sequence[str] | None = None,
) -> int:
    """Add freshly extracted rows; keys already cached (by another process, say) are skipped.

    Parameters
    ----------
    cache_dir : str or path-like
    fingerprint : str
    keys : ndarray of shape (n,), dtype S64
    features : ndarray of shape (n, n_features)
        Only rows that were extracted successfully.
    extractor : dict
        The extractor's JSON-able spec, stored when the file is created.
    names : sequence of str of length n, default=None
        Human-readable ids (the paths), stored for inspection only.

    Returns
    -------
    int
        Rows added. `n_extracted` grows by ``n``, `n_rows` by the rows added.
    """
    keys = np.asarray(keys, dtype=KEY_DTYPE)
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or len(x) != len(keys):
        raise ValueError(f"`features` must have shape ({len(keys)}, n_features). Received: shape {x.shape}")
    names = [""] * len(keys) if names is None else [str(n) for n in names]
    path = cache_path(cache_dir, fingerprint)
    need = _append_bytes(x.shape[1], names)
    try:
        with _locked(path, write=True):
            durable.remove_dead_writers_files(path)  # a killed creation's, whoever created the file since
            if path.exists() and _opens(path):  # a damaged file is moved aside by `_open`, never extended
                durable.reserve(path, os.path.getsize(path) + need)
            f = _open(path, fingerprint, write=True) or _create(path, fingerprint, x.shape[1], extractor, need)
            with f:
                return _append_rows(f, keys, x, names)
    except OSError as err:
        if isinstance(err, FeatureStoreError):
            raise
        raise durable.write_error(err, store=os.fspath(cache_dir), what=f"the feature cache {path.name}",
                                  need=need) from err


def _opens(path: Path) -> bool:
    """Whether HDF5 opens `path`. It refuses a file shorter than the end its superblock records (cut short);
    reserving space past that end first would hide the cut, and the lost part would be read as zeros."""
    try:
        with h5py.File(path, "r", locking=False):
            return True
    except OSError:
        return False


def _append_bytes(n_features: int, names: Sequence[str]) -> int:
    """An upper bound of what appending rows of `names` adds to a cache file: its datasets grow by fewer than
    len(names) rows and one chunk (the features, the key, a string reference a row), each name goes to HDF5's heap,
    and its indexes grow. Reserved before HDF5 opens the file, so that it never meets a full disk or a file-size
    limit mid-write: it then printed tracebacks and crashed the process, and left the file cut short."""
    rows = len(names) + chunk_rows(n_features)
    return rows * (n_features * 4 + np.dtype(KEY_DTYPE).itemsize + 16) + sum(len(n.encode()) + 48 for n in names) + (1 << 20)


def _append_rows(f: h5py.File, keys: np.ndarray, x: np.ndarray, names: list[str]) -> int:
    if f["features"].shape[1] != x.shape[1]:
        raise StoreMismatchError(f"{f.filename} holds {f['features'].shape[1]} features per row, "
                                 f"not {x.shape[1]} (a file copied or renamed by hand); use another cache_dir, or move that file away.")
    index, new, seen = _row_of(f), [], set()
    for i, key in enumerate(keys.tolist()):
        if key and key not in index and key not in seen:
            new.append(i)
            seen.add(key)
    n, m = int(f.attrs["n_rows"]), len(new)
    if m:
        chunk = f["features"].chunks[0]
        capacity = -(-(n + m) // chunk) * chunk  # grow in whole chunks, never a row at a time
        if capacity > f["features"].shape[0]:
            for name in ("features", "keys", "names"):
                f[name].resize(capacity, axis=0)
        f["features"][n:n + m] = x[new]
        f["keys"][n:n + m] = keys[new]
        f["names"][n:n + m] = np.array([names[i] for i in new], dtype=object)
        f.flush()  # rows first; only then the counter that makes them visible
    f.attrs.modify("n_rows", np.int64(n + m))
    f.attrs.modify("n_extracted", np.int64(int(f.attrs["n_extracted"]) + len(keys)))
    f.flush()
    return m


def cache_info(cache_dir: str | os.PathLike, fingerprint: str) -> CacheInfo:
    """The counters of one fingerprint's cache file: rows held, rows extracted into it, rows served from it here.

    Only reads the cache, like `lookup`.
    """
    path = cache_path(cache_dir, fingerprint)
    with _HITS_LOCK:
        hits = _HITS.get(str(path.resolve()), 0)
    with _locked(path, write=False):
        f = _open(path, fingerprint, write=False)
        if f is None:
            return CacheInfo(str(path), fingerprint, 0, 0, 0, hits)
        with f:
            counters = {c: int(f.attrs[c]) for c in COUNTERS}
            return CacheInfo(str(path), fingerprint, n_features=int(f["features"].shape[1]), n_hits=hits, **counters)
