"""Shards `STORE/shards/*.h5`: feature rows keyed by content, written once, durably, in key order.

A shard is created whole (its keys written, its rows allocated and reserved on disk) under a temporary name and
renamed into place. Rows are then written in order; each batch is flushed and fsynced before the progress
counter `n_done` moves, so a crash at any moment leaves a shard that resumes from its durable rows. A complete
shard is never opened for writing again. Its name is a hash of the fingerprint and its keys, so planning the same
keys twice names the same file: a shard is an idempotent unit of work (the Dask issue builds on this). Its writer
holds the shard's lock file (`.NAME.lock`) from open to close: a second writer of that shard waits (while the first one
writes rows), then resumes it from where the first one left it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import h5py
import numpy as np

from features_store import durable, schema
from features_store.errors import (
    StoreDamagedError,
    StoreLockedError,
    StoreMismatchError,
    StoreWriteError,
    feature_range_error,
)
from features_store.lock import hold_shard_lock
from features_store.plan import plan_shards

logger = logging.getLogger(__name__)

# bytes per row besides the features: the key, the ok flag and the error reason
_ROW_OVERHEAD = schema.KEY_BYTES + 1 + schema.ERROR_BYTES
_FILE_OVERHEAD = 64 << 10


def runtime_tag(versions: dict | None) -> str:
    """What computed a shard's rows beyond the fingerprint: the Keras backend, its version and Keras's ("" when
    unknown)."""
    versions = versions or {}
    if "keras_backend" not in versions and "keras" not in versions:
        return ""
    tag = f"{versions.get('keras_backend', '')}/{versions.get('keras', '')}"
    return f"{tag}/{versions['backend_version']}" if "backend_version" in versions else tag


def shard_name(fingerprint: str, keys: Sequence[str], runtime: str = "") -> str:
    """The file name of the shard holding `keys` under `fingerprint`, computed by `runtime` (`runtime_tag`).

    The same keys in the same runtime always name the same file, so a killed run resumes it; a resume under
    another backend or Keras version names another file and starts it afresh, never mixing rows of two runtimes
    in one shard (float32 networks differ in their last bits between backends).
    """
    h = hashlib.sha256(fingerprint.encode("ascii"))
    if runtime:
        h.update(b"runtime:" + runtime.encode("utf-8") + b"\n")
    for key in keys:
        h.update(key.encode("ascii") + b"\n")
    return f"shard-{h.hexdigest()[:24]}.h5"


def shard_bytes(n_rows: int, n_features: int, dtype: str) -> int:
    """Disk space of a shard of `n_rows` rows (reserved up front)."""
    return n_rows * (n_features * np.dtype(dtype).itemsize + _ROW_OVERHEAD) + _FILE_OVERHEAD


def shards_dir(store: str | os.PathLike) -> str:
    return os.path.join(os.fspath(store), schema.SHARDS_DIR)


def shard_path(store: str | os.PathLike, name: str) -> str:
    return os.path.join(shards_dir(store), name)


_LOCK_SUFFIX = ".lock"


def shard_lock_name(name: str) -> str:
    """The name of shard `name`'s lock file, `.NAME.lock` in the shards folder: held by the one process that writes
    the shard."""
    return f".{name}{_LOCK_SUFFIX}"


def shard_lock_path(store: str | os.PathLike, name: str) -> str:
    return os.path.join(shards_dir(store), shard_lock_name(name))


def shard_of(name: str) -> str:
    """The shard file that a file of the shards folder belongs to: itself, or the shard of its lock file or of
    its temporary file (``.NAME.lock``, ``.NAME.tmp-PID``)."""
    if name.startswith(".") and name.endswith(_LOCK_SUFFIX):
        return name[1:-len(_LOCK_SUFFIX)]
    return durable.temporary_of(name) or name


def unlisted_shards(store: str | os.PathLike, listed) -> list[str]:
    """The shard files (`.h5`) in `store`'s shards folder whose names are not in `listed` (a manifest's files),
    sorted: an unfinished run's, or old shards an interrupted compaction had not deleted yet; [] without a
    readable folder."""
    listed = set(listed)
    try:
        names = os.listdir(shards_dir(store))
    except OSError:
        return []
    return sorted(n for n in names if n.endswith(".h5") and n not in listed)


def durable_rows(store: str | os.PathLike, name: str) -> int:
    """Rows `[0, n_done)` of shard `name` that are final on disk: 0 when it does not exist or cannot be read."""
    path = shard_path(store, name)
    if not os.path.exists(path):
        return 0
    try:
        with durable.h5_reading(path) as f:
            return int(f.attrs["n_done"]) if _is_shard(f) else 0
    except _READ_ERRORS:
        return 0


# what opening or reading an HDF5 file raises: OSError (with an errno when the file may be fine), or KeyError,
# RuntimeError and ValueError from structures overwritten inside it
_READ_ERRORS = (OSError, KeyError, RuntimeError, ValueError)


def _bad_file(err: BaseException) -> bool:
    """Whether an error of `_READ_ERRORS` says the file itself is bad (not HDF5, cut short, its structures
    overwritten) rather than unreadable for now: a lock, permissions, I/O (an errno), or the file open in this very
    process with other locking flags."""
    if isinstance(err, OSError):
        return err.errno is None and "locking" not in str(err)
    return True


def _is_shard(f: h5py.File) -> bool:
    return all(name in f for name in ("keys", "features", "ok", "errors")) and "n_done" in f.attrs


def _opens(path: str) -> bool:
    """Whether `path` may be a shard file: False only when it is certainly not one (see `_bad_file`, or without the
    shard's datasets); one that another process holds (a Dask worker may) counts as one, and opening it for writing
    then says why."""
    try:
        with durable.h5_reading(path) as f:
            return _is_shard(f)
    except _READ_ERRORS as err:
        return not _bad_file(err)


def _preallocated(f: h5py.File, name: str, shape: tuple, dtype: Any) -> None:
    # Early allocation and no fill: writing rows later never allocates file space or touches HDF5 metadata,
    # which is what makes a SIGKILL at any moment harmless.
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    f.create_dataset(name, shape=shape, dtype=dtype, dcpl=dcpl)


def _create(store: str, name: str, keys: Sequence[str], fingerprint: str, n_features: int, dtype: str,
            versions: dict) -> None:
    folder = shards_dir(store)
    need = shard_bytes(len(keys), n_features, dtype)
    durable.check_free(folder, need, store=store, what=f"shard {name} ({len(keys)} rows)")
    path = shard_path(store, name)

    def write(tmp: str) -> None:
        with durable.h5_writing(tmp) as f:
            f.create_dataset("keys", data=np.array(keys, dtype="S64"), dtype=schema.KEY_DTYPE)
            _preallocated(f, "features", (len(keys), n_features), np.dtype(dtype))
            _preallocated(f, "ok", (len(keys),), np.bool_)
            _preallocated(f, "errors", (len(keys),), schema.ERROR_DTYPE)
            f.attrs["schema_version"] = np.int64(schema.SCHEMA_VERSION)
            f.attrs["fingerprint"] = fingerprint
            f.attrs["versions"] = json.dumps(versions, sort_keys=True)
            f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            f.attrs["n_done"] = np.int64(0)  # final dtypes now, so that updates rewrite them in place
            f.attrs["complete"] = np.bool_(False)
        durable.reserve(tmp, os.path.getsize(tmp))  # the rows' blocks are on disk before any row is written

    try:
        durable.atomic_write(path, write)
    except StoreWriteError:
        raise
    except (OSError, RuntimeError) as err:  # RuntimeError: HDF5 failed to flush or close it
        raise durable.write_error(err, store=store, what=f"shard {name}", need=need) from err


class ShardWriter:
    """Write the rows of one shard, in key order; use `ShardWriter.open` to create or resume one."""

    def __init__(self, store: str, name: str) -> None:
        self.store, self.name, self.path = store, name, shard_path(store, name)
        self._lock = None  # the shard's lock (`open` holds it until `close`)
        try:
            self._file = h5py.File(self.path, "r+")
        except OSError as err:
            raise durable.write_error(err, store=store, what=f"shard {name}") from err
        self.keys = self._file["keys"].asstr()[:].tolist()
        self.n_rows, self.n_features = (int(s) for s in self._file["features"].shape)
        self._dtype = self._file["features"].dtype
        self._n_done = int(self._file.attrs["n_done"])
        self._fd = self._file.id.get_vfd_handle()
        # held open while writing: a dataset object made per write and freed after it wrote HDF5's cached bytes as it
        # was freed, where a failed write (EIO) is only printed by h5py, and the flush after it crashed the process
        self._columns = {name: self._file[name] for name in ("features", "ok", "errors")}

    @classmethod
    def open(cls, store: str | os.PathLike, keys: Sequence[str], *, fingerprint: str, n_features: int,
             dtype: str = "float32", versions: dict | None = None, stop: threading.Event | None = None) -> ShardWriter:
        """Create the shard of `keys`, or resume the one already on disk.

        Parameters
        ----------
        store : str or path-like
            The store directory.
        keys : sequence of str
            The rows' keys (64 hex characters each), in the order their rows will be written.
        fingerprint : str
            The store's extractor fingerprint.
        n_features : int
            Row width.
        dtype : {"float32", "float16"}, default="float32"
        versions : dict, default=None
            The backend and library versions of the writer, kept in the shard.
        stop : threading.Event, default=None
            Ends a wait for the shard's lock, which another process holds, with StoreLockedError once set.

        Raises
        ------
        StoreLockedError
            When `stop` is set during a wait for the shard's lock, or when the process that holds it writes nothing
            to the shard for `features_store.lock.shard_lock_wait()` seconds (600 unless
            ``FEATUREHEAD_SHARD_LOCK_WAIT`` says otherwise).

        Returns
        -------
        ShardWriter
            Its `n_done` is the row to resume from (`n_rows` for a complete shard).
        """
        store, keys = os.fspath(store), [str(k) for k in keys]
        if not keys:
            raise ValueError("`keys` must not be empty. Received: keys=[]")
        name = shard_name(fingerprint, keys, runtime_tag(versions))
        try:
            os.makedirs(shards_dir(store), exist_ok=True)
        except OSError as err:
            raise durable.write_error(err, store=store, what="the shards folder") from err
        try:
            lock = hold_shard_lock(shard_lock_path(store, name), f"{store}: shard {name}", stop=stop,
                                   watch=shard_path(store, name))
        except StoreLockedError:
            raise
        except OSError as err:
            raise durable.write_error(err, store=store, what=f"the lock of shard {name}") from err
        try:  # from here on, no other process writes this shard: what is on disk is where it stands
            writer = cls._open_locked(store, name, keys, fingerprint, int(n_features), dtype, dict(versions or {}))
        except BaseException:
            _let_go(lock, store, name, done=False)
            raise
        writer._lock = lock
        return writer

    @classmethod
    def _open_locked(cls, store: str, name: str, keys: list[str], fingerprint: str, n_features: int, dtype: str,
                     versions: dict) -> ShardWriter:
        path = shard_path(store, name)
        if os.path.exists(path) and not _opens(path):
            # cut short (a truncated copy, a disk that filled while it was created): nothing in it is readable, so
            # nothing is lost by starting it again (an unlisted shard is not the store's yet)
            try:
                os.remove(path)
            except OSError as err:
                raise durable.write_error(err, store=store, what=f"shard {name}") from err
        if not os.path.exists(path):
            _create(store, name, keys, fingerprint, n_features, dtype, versions)
        writer = cls(store, name)
        if writer.keys != keys or writer.n_features != n_features or str(writer._dtype) != dtype:
            writer.close()
            if writer.keys == keys and writer.n_features == n_features:  # a re-run with another --dtype
                raise StoreMismatchError(f"{path} holds {writer._dtype} features, not {dtype}: re-run with --dtype "
                                         f"{writer._dtype} (or delete it to extract its rows again)")
            raise StoreMismatchError(f"{path} holds other keys or another shape; delete it and re-run.")
        return writer

    @property
    def n_done(self) -> int:
        """Durable rows: rows `[0, n_done)` are final."""
        return self._n_done

    @property
    def complete(self) -> bool:
        return bool(self._file.attrs["complete"])

    def write(self, features: np.ndarray, ok: np.ndarray, errors: Sequence[str] | None = None, *,
              finite: bool = True) -> None:
        """Write the next rows, `[n_done, n_done + n)`, durably.

        The features of ok rows must be finite (a model's inf or NaN is refused), unless `finite=False`: rows
        copied as they are stored (compaction of a store that an older featurehead let hold them).

        Parameters
        ----------
        features : ndarray of shape (n, n_features)
            Rows with ``ok=False`` are stored as NaN.
        ok : ndarray of shape (n,), dtype bool
        errors : sequence of str of length n, default=None
            The reason of each failed row.
        """
        x, ok = np.asarray(features), np.asarray(ok, dtype=bool)
        n = len(ok)
        if x.shape != (n, self.n_features) or self._n_done + n > self.n_rows:
            raise ValueError(f"`features` must have shape (n, {self.n_features}) with n <= "
                             f"{self.n_rows - self._n_done} rows left. Received: shape {x.shape}")
        with np.errstate(over="ignore"):  # the overflow is checked just below
            stored = x.astype(self._dtype, copy=True)
        is_finite = np.isfinite(x) if finite or x.dtype != self._dtype else None  # once, for both checks
        # float16 turns |x| >= 65520 into inf: refused, never stored as a feature of an ok row
        overflow = None if x.dtype == self._dtype else ok[:, None] & np.isinf(stored) & is_finite
        if overflow is not None and overflow.any():
            rows = np.flatnonzero(overflow.any(axis=1))
            advice = "; extract with --dtype float32 into another --out" if self._dtype == np.float16 else ""
            raise feature_range_error(
                self.store, f"{int(overflow.sum())} features of {len(rows)} rows (the first: row "
                f"{self._n_done + rows[0]} of shard {self.name}) are beyond {self._dtype.name}'s range (largest |x| "
                f"{float(np.abs(x[overflow]).max()):.4g} > {float(np.finfo(self._dtype).max):.6g}), the dtype of this "
                f"store{advice}"
            )
        nonfinite = ok[:, None] & ~is_finite if finite else None  # stored, they failed training later
        if nonfinite is not None and nonfinite.any():
            rows = np.flatnonzero(nonfinite.any(axis=1))
            raise feature_range_error(
                self.store, f"the model gave {int(nonfinite.sum())} features of {len(rows)} rows that are inf or NaN "
                f"(the first: row {self._n_done + rows[0]} of shard {self.name}), so nothing of that batch is stored: "
                "an overflow (--precision float16 overflows past 65504; bfloat16 and float32 do not) or a model "
                "that outputs them"
            )
        x = stored
        x[~ok] = np.nan
        reasons = [""] * n if errors is None else ["" if good else str(r) for good, r in zip(ok, errors)]
        lo, hi = self._n_done, self._n_done + n
        try:
            self._columns["features"][lo:hi] = x
            self._columns["ok"][lo:hi] = ok
            self._columns["errors"][lo:hi] = schema.encode_errors(reasons)
            self._sync()  # the rows are on disk before the counter says so
            self._file.attrs.modify("n_done", np.int64(hi))
            self._sync()
        except (OSError, RuntimeError) as err:  # RuntimeError: HDF5 failed to flush
            durable.abandon_h5(self._file)  # the shard keeps its durable rows; HDF5 must not write again
            raise durable.write_error(err, store=self.store, what=f"rows {lo}-{hi} of shard {self.name}") from err
        self._n_done = hi

    def finish(self) -> None:
        """Mark the shard complete (every row written); it is never written again."""
        if self._n_done != self.n_rows:
            raise ValueError(f"`finish()` needs all {self.n_rows} rows written. Received: n_done={self._n_done}")
        try:
            self._file.attrs.modify("complete", np.bool_(True))
            self._sync()
        except (OSError, RuntimeError) as err:
            durable.abandon_h5(self._file)
            raise durable.write_error(err, store=self.store, what=f"shard {self.name}") from err

    def failed(self) -> int:
        return int(np.count_nonzero(~self._file["ok"][: self._n_done]))

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._fd)

    def close(self) -> None:
        complete = False
        try:
            if self._file.id.valid:
                try:
                    complete = self.complete
                except (OSError, RuntimeError):  # unreadable after a failed write: not complete, and closed below
                    logger.debug("reading %s's state failed", self.path, exc_info=True)
                try:
                    self._file.close()
                except (OSError, RuntimeError):  # a failed write already raised its one line; closing must not add a second
                    logger.debug("closing %s failed", self.path, exc_info=True)
        finally:  # the shard's lock goes whatever happened above
            if self._lock is not None:
                _let_go(self._lock, self.store, self.name, done=complete)
                self._lock = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _let_go(lock, store: str, name: str, *, done: bool) -> None:
    """Release a shard's lock; `done` (the shard complete): its lock file goes too, removed while still held. A
    process waiting on that file then holds a lock file that is gone, harmless only because what it finds is a
    complete shard, which nobody writes again (so an unfinished shard's lock file stays)."""
    if done:
        try:
            os.remove(shard_lock_path(store, name))
        except OSError:
            pass
    lock.release()


def read_shard(path: str, expected_rows: int | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The keys, ok flags and error reasons of a complete shard; refuse a missing, unreadable or incomplete one."""
    try:
        with durable.h5_reading(path) as f:
            complete = bool(f.attrs.get("complete", False))
            keys = f["keys"].asstr()[:].tolist()
            ok, errors = f["ok"][:].astype(bool), f["errors"].asstr()[:].astype(str)
    except FileNotFoundError as err:
        raise StoreDamagedError(f"the shard {path} is missing; re-run the extraction to rebuild it.") from err
    except _READ_ERRORS as err:
        damaged = StoreDamagedError(f"the shard {path} cannot be read ({err}); re-run the extraction to rebuild it.")
        damaged.certain = _bad_file(err)
        raise damaged from err
    if not complete:
        raise StoreDamagedError(f"{path} is an incomplete shard; re-run the extraction to finish it.")
    if expected_rows is not None and len(keys) != expected_rows:
        raise StoreDamagedError(f"the shard {path} holds {len(keys)} rows, the manifest says {expected_rows}.")
    return keys, ok, errors


def shard_versions(path: str) -> dict:
    with durable.h5_reading(path) as f:
        return json.loads(f.attrs["versions"])


def plan_resuming(store, fingerprint: str, keys: Sequence[str], candidates: Sequence[int],
                  runtime: str = "") -> list[list[str]]:
    """`plan_shards(keys, rows)` for the first of `candidates` whose shards already on disk hold the most durable
    rows: an interrupted run of another mode (a Dask run cuts smaller shards than a single process) or of an
    older featurehead is resumed, not extracted again."""
    plans = [plan_shards(keys, rows) for rows in dict.fromkeys(candidates)]
    if len(plans) == 1 or not os.path.isdir(shards_dir(store)):
        return plans[0]
    on_disk = set(os.listdir(shards_dir(store)))

    def resumed(plan) -> int:
        names = (shard_name(fingerprint, shard, runtime) for shard in plan)
        return sum(durable_rows(store, name) for name in names if name in on_disk)

    return max(plans, key=resumed)  # the first of the best: the caller's own default on a tie
