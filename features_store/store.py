"""`StoreSession`: the one writer of a store directory. It finds which keys are missing, writes shards for them,
commits each shard to the manifest, rewrites the view, and compacts away rows that no view references.

The store is given keys and arrays; it knows nothing of images or models.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np

from features_store import durable, schema
from features_store.compaction import compact
from features_store.errors import StoreDamagedError, StoreLockedError, StoreWriteError
from features_store.lock import unless_locked, writer_lock
from features_store.manifest import (
    Manifest,
    ShardRecord,
    check_identity,
    check_store_path,
    commit_manifest,
    manifest_path,
    new_manifest,
    read_manifest,
    some,
    store_foreign_files,
)
from features_store.shard import (
    ShardWriter,
    read_shard,
    runtime_tag,
    shard_lock_name,
    shard_lock_path,
    shard_name,
    shard_of,
    shard_path,
    shards_dir,
)
from features_store.view import write_view

logger = logging.getLogger(__name__)

PENDING = "not extracted yet (re-run the extraction to finish the store)"


def _index(locations: dict, s: int, keys, ok, errors) -> None:
    """Add shard `s`'s rows to `key -> (shard, row, ok, error)`; the first copy of a key wins."""
    for r, key in enumerate(keys):
        locations.setdefault(key, (s, r, bool(ok[r]), str(errors[r])))


class StoreSession:
    """The writer of one store; get one with `StoreSession.open`, which holds the store's lock."""

    def __init__(self, store: str, manifest: Manifest | None, fingerprint: str, extractor: dict, dtype: str):
        self.store, self.manifest = store, manifest
        self.fingerprint, self.extractor, self.dtype = fingerprint, extractor, dtype
        self._locations: dict[str, tuple[int, int, bool, str]] | None = None
        # The manifest and the view are written only while the store's lock is held, from any thread (a run's writer
        # thread commits shards, and may still be in a write when a second Ctrl-C has ended the run): `_writing`
        # counts those writes, and the lock is let go by the last of them when the session closes during one.
        self._gate = threading.Lock()  # held for an instant, never across a write
        self._holding, self._writes, self._let_go = True, 0, None

    @classmethod
    @contextmanager
    def open(cls, store: str | os.PathLike, *, fingerprint: str, extractor: dict,
             dtype: str = "float32") -> Iterator[StoreSession]:
        """Open (creating the directory if needed) and lock the store for writing.

        Raises
        ------
        StoreVersionError
            When `store` is a v1 single-file store.
        StoreMismatchError
            When the store holds another extractor's features or another dtype.
        StoreLockedError
            When another process writes the store.
        StoreWriteError
            When the folder cannot be written.
        """
        store = os.fspath(store)
        if dtype not in schema.DTYPES:
            raise ValueError(f"`dtype` must be one of 'float32', 'float16'. Received: dtype={dtype!r}")
        created = not os.path.isdir(store)
        if not created and not os.path.exists(manifest_path(store)):  # a store's folder may hold a user's README
            _refuse_foreign_folder(store)
        if created:
            if os.path.isfile(store):
                check_store_path(store)  # a v1 single-file store: one line saying what to do
            try:
                os.makedirs(store)
            except OSError as err:
                raise durable.write_error(err, store=store, what="the store directory") from err
        if not is_writable(store):
            raise StoreWriteError(f"{store}: the folder is read-only; the store needs a writable folder "
                                  "(copy the store elsewhere to extend it, or read it as it is).")
        try:
            lock = writer_lock(store)
            lock.__enter__()
        except OSError as err:
            if isinstance(err, BlockingIOError):
                raise
            raise durable.write_error(err, store=store, what="the lock file") from err
        session = None
        try:
            manifest = read_manifest(store)
            if manifest is not None and not manifest.shards and manifest.dtype != dtype:
                manifest = None  # it lists no rows: the store starts again as `dtype` (a re-run with --dtype)
            if manifest is not None:
                check_identity(store, manifest, fingerprint, None, dtype, extractor)
            session = cls(store, manifest, fingerprint, extractor, dtype)
            yield session
        except BaseException:
            if created and _holds_nothing(store):
                shutil.rmtree(store, ignore_errors=True)  # a run that failed before its first row leaves nothing
            raise
        finally:
            release = lambda: lock.__exit__(None, None, None)  # noqa: E731
            if session is None:
                release()
            else:
                session._close(release)

    # --- the lock ---------------------------------------------------------------------------------------
    @contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """Write `what` (the manifest, the view) under the store's lock: refused once the session has closed."""
        with self._gate:
            if not self._holding:
                raise StoreLockedError(f"{self.store}: {what} not written: this writer has let go of the store's lock "
                                       "(its run stopped); re-run the same command to resume")
            self._writes += 1
        try:
            yield
        finally:
            release = None
            with self._gate:
                self._writes -= 1
                if not self._writes:
                    release, self._let_go = self._let_go, None
            if release is not None:  # the session closed during this write: the lock goes now
                release()

    def _close(self, release) -> None:
        """End the session: no write from now on; the lock let go now, or by the write under way as it ends."""
        with self._gate:
            self._holding = False
            if self._writes:
                self._let_go = release
                return
        release()

    # --- what is stored ---------------------------------------------------------------------------------
    def locations(self) -> dict[str, tuple[int, int, bool, str]]:
        """`key -> (shard index, row, ok, error)` of every stored row (the first copy of a key wins).

        A listed shard that is missing or cannot be read (deleted, truncated, damaged on disk) is unlisted here, in
        one atomic manifest commit, with a warning: its rows are then missing, and this run extracts them again
        (what "re-run the extraction to rebuild it" promises the readers)."""
        if self._locations is None:
            locations, readable, damaged = {}, [], []
            for record in self.manifest.shards if self.manifest else ():
                try:
                    keys, ok, errors = read_shard(shard_path(self.store, record.file), record.rows)
                except StoreDamagedError as err:
                    if not err.certain:
                        raise  # locked, permissions, I/O: the file may be fine; never unlist it for that
                    damaged.append((record, err))
                    continue
                _index(locations, len(readable), keys, ok, errors)  # its place among the readable shards
                readable.append(record)
            if damaged:
                self._commit(self.manifest.with_shards(readable))
                for record, err in damaged:
                    logger.warning("%s: %s; its %d rows are extracted again", self.store,
                                   str(err).split(";")[0], record.rows)
            self._locations = locations  # only once it matches the manifest
        return self._locations

    def _add_shard(self, s: int, record: ShardRecord) -> None:
        _index(self._locations, s, *read_shard(shard_path(self.store, record.file), record.rows))

    def missing(self, keys: Sequence[str]) -> list[str]:
        """The distinct non-empty `keys` not stored yet, in their first order."""
        stored = self.locations()
        seen: set[str] = set()
        out = []
        for key in keys:
            if key and key not in stored and key not in seen:
                seen.add(key)
                out.append(key)
        return out

    @property
    def n_features(self) -> int | None:
        return self.manifest.n_features if self.manifest else None

    # --- writing shards ---------------------------------------------------------------------------------
    def shard_writer(self, keys: Sequence[str], *, n_features: int, versions: dict | None = None,
                     stop: threading.Event | None = None) -> ShardWriter:
        """Create or resume the shard of `keys` (not yet committed); `stop` ends a wait for its lock (`ShardWriter.open`)."""
        if self.manifest is None:
            self.manifest = new_manifest(self.fingerprint, self.extractor, n_features, self.dtype)
        check_identity(self.store, self.manifest, self.fingerprint, n_features, self.dtype)
        return ShardWriter.open(self.store, keys, fingerprint=self.fingerprint, n_features=n_features,
                                dtype=self.dtype, versions=versions, stop=stop)

    def commit(self, writer: ShardWriter, versions: dict | None = None) -> None:
        """Mark the shard complete, close it and list it in the manifest (atomically): its rows now belong to the
        store. Closed first: a listed shard is open for writing nowhere (HDF5's lock refused the readers of a shard
        still open here, and they said it could not be read)."""
        if not writer.complete:
            writer.finish()
        failed = writer.failed()
        writer.close()
        if any(s.file == writer.name for s in self.manifest.shards):
            return  # committed already: a shard is listed once
        record = ShardRecord(writer.name, writer.n_rows, failed, dict(versions or {}))
        self._append(record)

    def commit_shard(self, keys: Sequence[str], *, n_features: int, versions: dict | None = None) -> None:
        """Commit the shard of `keys` that another process (a Dask worker) completed; the file is only read."""
        if self.manifest is None:
            self.manifest = new_manifest(self.fingerprint, self.extractor, n_features, self.dtype)
        check_identity(self.store, self.manifest, self.fingerprint, n_features, self.dtype)
        name = shard_name(self.fingerprint, list(keys), runtime_tag(versions))
        if any(s.file == name for s in self.manifest.shards):
            return
        stored, ok, _ = read_shard(shard_path(self.store, name), len(keys))  # refuses an incomplete shard
        if stored != list(keys):
            raise StoreDamagedError(f"{shard_path(self.store, name)} holds other keys than planned; delete it and re-run.")
        record = ShardRecord(name, len(keys), int(np.count_nonzero(~ok)), dict(versions or {}))
        self._append(record)

    def _append(self, record: ShardRecord) -> None:
        """List one more shard: the manifest committed atomically, then this session's manifest and key cache.

        Refused (StoreLockedError) once the session has closed: a run's writer thread that a second Ctrl-C left
        writing finishes its shard, which the next run lists (as after a kill between a shard's last row and its
        commit), and never commits a manifest that another writer, holding the lock by then, would not expect."""
        self._commit(self.manifest.with_shards([*self.manifest.shards, record]),
                     f"the manifest listing shard {record.file}")
        if self._locations is not None:
            self._add_shard(len(self.manifest.shards) - 1, record)

    def record_stop(self, reason: str) -> None:
        """Keep in the manifest why this extraction stopped where a re-run stops again (features the store cannot
        hold), so that its readers do not advise resuming; "" clears it (a new run). Nothing for a store without a
        manifest yet."""
        if self.manifest is None or self.manifest.stopped == reason:
            return
        self._commit(replace(self.manifest, stopped=reason))

    def write_manifest(self) -> None:
        """Commit this session's manifest as it is (a compaction's, once the view no longer uses the shards it drops)."""
        self._commit(self.manifest)

    def _commit(self, manifest: Manifest, what: str = "the manifest") -> None:
        """Replace `manifest.json` by `manifest` (atomically, under the store's lock: `_writing`), then use it; a
        failed write is one StoreWriteError."""
        with self._writing(what):
            try:
                commit_manifest(self.store, manifest)
            except OSError as err:
                raise durable.write_error(err, store=self.store, what="the manifest") from err
            self.manifest = manifest

    def adopt(self, manifest) -> None:
        """Use `manifest` (not committed here) for what follows, e.g. the view written next; the key -> row cache
        is rebuilt from it when next needed."""
        self.manifest, self._locations = manifest, None

    def ensure_manifest(self, n_features: int) -> None:
        """Commit an empty manifest for a new store that has nothing to extract (every image failed)."""
        if self.manifest is None:
            self._commit(new_manifest(self.fingerprint, self.extractor, n_features, self.dtype))

    def remove_orphans(self, keep: Sequence[str] = ()) -> int:
        """Delete shard files that no manifest lists (partial shards of another plan, temporary files), and the
        temporary files of a manifest or view write that a killed writer left in the store folder; a shard whose
        lock another process holds (a Dask task of a stopped run, still writing it) is kept."""
        removed = 0
        for name in os.listdir(self.store):  # we hold the lock: no other writer has a write in flight
            if name.startswith((durable.temporary_prefix(schema.MANIFEST_FILE), durable.temporary_prefix(schema.VIEW_FILE))):
                os.remove(os.path.join(self.store, name))
                removed += 1
        folder = shards_dir(self.store)
        if not os.path.isdir(folder):
            return removed
        kept = {s.file for s in self.manifest.shards} if self.manifest else set()
        kept.update(keep)
        # a killed creation's temporary file of a shard that a re-run made (under its lock) and listed since: its rows
        # reserved, up to a whole shard's size; kept with that shard's files below, it stayed for good
        durable.remove_dead_temporaries(folder, kept.__contains__)
        files: dict[str, list[str]] = {}  # shard -> its files: itself, its lock file, a temporary file
        for name in os.listdir(folder):
            files.setdefault(shard_of(name), []).append(name)
        for shard, names in files.items():
            if shard in kept:
                continue
            # a shard that a Dask task of a stopped run still writes (its lock held) stays, with its files: that task
            # finishes it for the run that plans it again; the others go, the lock file last, while held
            with unless_locked(shard_lock_path(self.store, shard)) as free:
                if free:
                    for name in names:
                        if name != shard_lock_name(shard):
                            os.remove(os.path.join(folder, name))
                            removed += 1
                    os.remove(shard_lock_path(self.store, shard))
        return removed

    # --- the view ---------------------------------------------------------------------------------------
    def write_view(self, *, ids, keys, labels, classes, split, view=None, source=None, stats=None, reasons=None,
                   attrs=None, index_sha256: str = "", versions=None) -> dict[str, Any]:
        """Rewrite `features.h5` for the current index from the stored rows; return its counts.

        Parameters
        ----------
        ids, keys : sequence of str of length n
            Each row's id and content key ("" when the file could not be read: the row fails with `reasons`).
        labels : array-like of int of shape (n,)
            Codes into `classes`, -1 for unlabelled.
        classes, split, view, source
            As in a v1 store.
        stats : mapping of `schema.STAT_COLUMNS` names to array-like of int of shape (n,), default=None
            The files' stat when their keys were computed (a column not given: -1, unknown).
        reasons : sequence of str of length n, default=None
            Why a keyless row failed.
        attrs : dict of str to str
            Extra root attributes.

        Returns
        -------
        dict
            ``rows``, ``failed``, ``pending`` and ``complete``, and the ``layout`` of `features`.
        """
        n = len(ids)
        keys = [str(k) for k in keys]
        shard, row = np.full(n, -1, np.int32), np.full(n, -1, np.int64)
        ok, errors = np.zeros(n, bool), [""] * n
        reasons = reasons if reasons is not None else [""] * n
        stored = self.locations()
        pending = 0
        for i, key in enumerate(keys):
            loc = stored.get(key) if key else None
            if loc is not None:
                shard[i], row[i], ok[i], errors[i] = loc
            elif key:
                pending += 1
                errors[i] = PENDING
            else:
                errors[i] = reasons[i] or "no content key"
        unset = np.full(n, -1, np.int64)
        columns = {"ids": list(ids), "keys": keys, "labels": labels, "classes": list(classes), "split": list(split),
                   "view": np.zeros(n, np.int16) if view is None else view,
                   "source": np.arange(n) if source is None else source, "ok": ok, "errors": errors,
                   "shard": shard, "shard_row": row,
                   **{name: (stats or {}).get(name, unset) for name in schema.STAT_COLUMNS}}
        with self._writing(f"the view {schema.VIEW_FILE}"):
            layout = write_view(self.store, self.manifest, columns, complete=pending == 0, attrs=dict(attrs or {}),
                                index_sha256=index_sha256, versions=dict(versions or {}))
        return {"rows": n, "failed": int(np.count_nonzero(~ok)) - pending, "pending": pending,
                "complete": pending == 0, "layout": layout}

    # --- compaction -------------------------------------------------------------------------------------
    def compact(self, shard_rows: int | None = None, *, failed: bool = False) -> dict[str, int]:
        """Drop the stored rows that the view does not reference, and with `failed` the failed rows
        (`features_store.compaction.compact`)."""
        return compact(self, shard_rows, failed=failed)


def _refuse_foreign_folder(store: str) -> None:
    """A folder that holds files of its own (the images, a project's files, a `shards/` folder of other files) is not
    made a store: its features, manifest and shards would be written among them (and the other files of `shards/`
    deleted as unlisted shard files), and a store's parent would list them."""
    foreign = store_foreign_files(store)
    if foreign:
        raise StoreWriteError(f"{store} is a folder of other files ({some(foreign)}), not a feature store; refusing to "
                              "write a store among them: give --out a new or empty folder")


def _holds_nothing(store: str) -> bool:
    """Only the lock file (and a shards folder without a shard, its lock files aside): nothing that any process
    wrote rows into."""
    try:
        names = set(os.listdir(store))
        shards = os.path.join(store, schema.SHARDS_DIR)
        return names <= {schema.LOCK_FILE, schema.SHARDS_DIR} and not (
            os.path.isdir(shards) and any(n != shard_lock_name(shard_of(n)) for n in os.listdir(shards)))
    except OSError:
        return False


def is_writable(path: str | os.PathLike) -> bool:
    """Whether a writer could write in the folder `path` (its permissions, and a read-only mount for root)."""
    path = os.fspath(path)
    return os.access(path, os.W_OK) and not _read_only_mount(path)


def _read_only_mount(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
