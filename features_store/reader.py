"""Reading a store: its summary (`read_info`), its per-row columns (`read_meta`), features and failures.

Readers open the view file and read features from the shards directly (never through the virtual dataset). They
refuse, with one line, a view whose shards are missing or incomplete, and a NaN or inf read for a row marked ok (a
damaged shard: the writer refuses them). Every function returns plain values.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from features_store import schema
from features_store.durable import h5_reading
from features_store.errors import StoreDamagedError, StoreIncompleteError, StoreMismatchError, StoreNotFoundError
from features_store.lock import writer_running
from features_store.manifest import Manifest, ShardRecord, check_store_path, read_manifest, some, store_foreign_files
from features_store.shard import read_shard, shard_path, shard_versions
from features_store.view import stored_labels, take_rows, view_columns


@dataclass(frozen=True)
class StoreInfo:
    """Summary of a store: its attributes and counts, as plain values."""

    path: str
    schema_version: int
    fingerprint: str
    extractor: dict
    index_sha256: str
    n_rows: int  # rows in the view
    n_features: int
    n_done: int  # view rows whose features are stored (or whose image failed)
    n_failed: int
    complete: bool
    classes: tuple[str, ...]
    created: str
    versions: dict
    attrs: dict
    dtype: str
    split_counts: dict[str, int]
    stored_rows: int  # every feature row held in shards, garbage included
    garbage_rows: int  # stored rows that the view does not reference
    shards: tuple[dict, ...]  # file, rows, failed, versions of each committed shard
    features_layout: str
    stopped: str = ""  # why the last extraction stopped where a re-run stops again ("" when it did not)


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


def _str(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class _View:
    """The view file's columns and the shards it references, checked."""

    def __init__(self, store: str | os.PathLike):
        self.store = check_store_path(store)
        self.manifest: Manifest | None = read_manifest(self.store)
        path = os.path.join(self.store, schema.VIEW_FILE)
        foreign = store_foreign_files(self.store) if self.manifest is None else []
        if foreign:  # e.g. the images' folder
            raise StoreNotFoundError(f"{self.store} is not a feature store (it holds {some(foreign)}); "
                                     "give the --out of `featurehead extract`")
        if (self.manifest is None or not os.path.exists(path)) and writer_running(self.store):
            # a new store's first run, before its first view: "no features yet" or "a run stopped" would be wrong
            raise StoreIncompleteError(
                f"{self.store} is being written: an extraction still running holds its writer lock and has not "
                f"written the view ({schema.VIEW_FILE}) yet; wait for it to finish, or stop it and re-run the same "
                "`featurehead extract` to resume."
            )
        if self.manifest is None:
            raise StoreNotFoundError(
                f"{self.store} holds no features yet; run `featurehead extract ... --out {self.store}`."
            )
        if not os.path.exists(path):  # the shards keep their rows: a re-run finds them and writes the view
            raise StoreIncompleteError(
                f"{self.store} has no view file ({schema.VIEW_FILE}: a run stopped before writing it, or it was "
                f"deleted), though its manifest lists {self.manifest.stored_rows} stored rows; re-run the same "
                "`featurehead extract` to write it."
            )
        self._stamp = _stamp(path)  # before the read: a view replaced after it is seen as replaced
        self._successor: tuple[_View, dict] | None = None  # the view that replaced this one, and its key -> row
        self.cols = view_columns(path)  # StoreDamagedError: one line that says extract rewrites it
        self.attrs = self.cols["attrs"]
        # a keyed row without a location is still to extract (failed images are stored rows, with ok=False)
        self.pending = (self.cols["shard"] < 0) & (self.cols["keys"] != "")

    def check_shards(self) -> None:
        """Refuse a view that references a missing or incomplete shard (a virtual dataset would read NaN)."""
        files = self.cols["shard_files"]
        for s in np.unique(self.cols["shard"][self.cols["shard"] >= 0]):
            path = shard_path(self.store, files[s])
            if not os.path.exists(path):
                if self.replaced():
                    continue  # a writer committed a new view meanwhile: `features` reads these rows through it
                raise StoreDamagedError(f"{self.store}: the shard {files[s]} that the view uses is missing; "
                                        "re-run the extraction to rebuild it.")
            try:
                with h5_reading(path) as f:
                    complete = bool(f.attrs.get("complete", False))
            except OSError as err:
                raise StoreDamagedError(f"{self.store}: the shard {files[s]} cannot be read ({err}); "
                                        "re-run the extraction to rebuild it.") from err
            if not complete:
                raise StoreDamagedError(f"{self.store}: the shard {files[s]} that the view uses is incomplete; "
                                        "re-run the extraction to finish it.")

    def visible(self, *, fingerprint: str | None, allow_incomplete: bool) -> np.ndarray:
        """The rows that may be read: all of a complete view; its done rows when a partial one is allowed."""
        if fingerprint is not None and fingerprint != self.manifest.fingerprint:
            raise StoreMismatchError(
                f"{self.store} holds features of fingerprint {self.manifest.fingerprint[:12]}, not {fingerprint[:12]}: "
                "the features come from another extractor. Re-extract with this extractor or pick the right store."
            )
        pending = self._locate_pending() if self.pending.any() else self.pending
        n_pending = int(np.count_nonzero(pending))
        if n_pending and not allow_incomplete:
            done = f"{len(pending) - n_pending} of {len(pending)} rows extracted"
            if writer_running(self.store):  # "re-run to resume" would start a second writer, refused
                raise StoreIncompleteError(f"{self.store} is being extracted now ({done}); wait for the extraction to "
                                           "finish, or stop it and re-run the same `featurehead extract` to resume.")
            if self.manifest.stopped:  # a re-run stops again: the note says why and what to do instead
                raise StoreIncompleteError(f"{self.store} is incomplete ({done}): its extraction stopped, and a re-run "
                                           f"stops again: {self.manifest.stopped}")
            raise StoreIncompleteError(f"{self.store} is incomplete ({done}); re-run the extraction to resume it.")
        self.check_shards()
        return np.flatnonzero(~pending)

    def _locate_pending(self, listed=None) -> np.ndarray:
        """Locate the view's pending rows whose keys a committed shard holds (a run killed after committing shards,
        before rewriting the view; `info` counts them done), in the columns read; return the rows still pending.
        `listed`: what `_stored()` gave, when the caller has read it."""
        c = self.cols
        where: dict[str, tuple[str, int, bool, str]] = {}
        for record, keys, ok, errors in self._stored() if listed is None else listed:
            for r, key in enumerate(keys):
                where.setdefault(key, (record.file, r, bool(ok[r]), str(errors[r])))  # the first copy, as writers
        files = list(c["shard_files"])
        index = {file: s for s, file in enumerate(files)}
        shard, row, ok, errors = c["shard"].copy(), c["shard_row"].copy(), c["ok"].copy(), c["errors"].tolist()
        pending = self.pending.copy()
        for i in np.flatnonzero(self.pending):
            found = where.get(c["keys"][i])
            if found is not None:
                file, r, ok[i], errors[i] = found
                shard[i], row[i], pending[i] = index.setdefault(file, len(index)), r, False
        files += list(index)[len(files):]
        self.cols = {**c, "shard_files": files, "shard": shard, "shard_row": row, "ok": ok,
                     "errors": np.array(errors, dtype=str)}
        return pending

    def meta(self, rows: np.ndarray) -> StoreMeta:
        c = self.cols
        return StoreMeta(ids=c["ids"][rows], labels=stored_labels(c["labels"][rows], c["classes"]),
                         codes=c["labels"][rows], classes=c["classes"], split=c["split"][rows], view=c["view"][rows],
                         source=c["source"][rows], ok=c["ok"][rows], errors=c["errors"][rows])

    def features(self, rows: np.ndarray) -> np.ndarray:
        """Features of view rows `rows` (any order, repeats allowed), read from the shards; NaN for failed rows.

        Readers take no lock: when a shard has gone because a writer replaced the view meanwhile (a compaction
        commits the new view, then deletes the shards it rewrote), the same rows are read by their keys through
        the new view."""
        rows = np.asarray(rows, dtype=np.int64)
        try:
            return self._features(rows)
        except FileNotFoundError as err:
            if not self.replaced():
                raise StoreDamagedError(f"{self.store}: a shard that the view uses is missing ({err}); re-run the "
                                        "extraction to rebuild it.") from err
        if self._successor is None or self._successor[0].replaced():
            fresh = _View(self.store)
            stored = ~fresh.pending
            keys = fresh.cols["keys"].tolist()
            # each key's first row in the new view that is stored (not pending: that would read as NaN)
            position = {key: i for i in reversed(range(len(keys))) if (key := keys[i]) and stored[i]}
            self._successor = (fresh, position)
        fresh, position = self._successor
        keys = self.cols["keys"][rows].tolist()
        keyed = np.array([bool(key) for key in keys], dtype=bool)  # a file unreadable when hashed has no key: NaN
        if any(key not in position for key in keys if key):
            raise StoreDamagedError(f"{self.store} changed while it was read (another index was extracted into it); "
                                    "read it again.")
        out = np.full((len(rows), self.manifest.n_features), np.nan, dtype=np.float32)
        out[keyed] = fresh.features(np.array([position[key] for key in keys if key], dtype=np.int64))
        return out

    def replaced(self) -> bool:
        """Whether the view file has been replaced since this view was read."""
        return _stamp(os.path.join(self.store, schema.VIEW_FILE)) != self._stamp

    def _features(self, rows: np.ndarray) -> np.ndarray:
        out = np.full((len(rows), self.manifest.n_features), np.nan, dtype=np.float32)
        shard, shard_row, ok = self.cols["shard"][rows], self.cols["shard_row"][rows], self.cols["ok"][rows]
        for s in np.unique(shard[shard >= 0]):
            mine = np.flatnonzero(shard == s)
            path = shard_path(self.store, self.cols["shard_files"][s])
            with h5_reading(path) as f:
                if shard_row[mine].max() >= len(f["features"]):
                    raise StoreDamagedError(
                        f"{os.path.join(self.store, schema.VIEW_FILE)} is not a readable store view (its `shard_row` "
                        f"column holds {int(shard_row[mine].max())}, past the {len(f['features'])} rows of the shard "
                        f"{self.cols['shard_files'][s]}); re-run the extraction to rewrite it."
                    )
                values = take_rows(f["features"], shard_row[mine])
            bad = ok[mine] & ~_finite_rows(values)
            if bad.any():
                raise self._non_finite(s, path, rows[mine[bad]])
            out[mine] = values
        return out

    def _non_finite(self, s: int, path: str, rows: np.ndarray) -> StoreDamagedError:
        """The writer refuses a NaN or inf for an ok row, so view rows `rows` of shard `s` holding one means its bytes
        were damaged (or an older featurehead stored a model's overflow); without checksums, plausible wrong values
        go unseen."""
        n = len(rows)
        return StoreDamagedError(
            f"{self.store}: the shard {self.cols['shard_files'][s]} holds NaN or inf features in {n} row"
            f"{'s' if n > 1 else ''} marked extracted (the first: {self.cols['ids'][rows[0]]}): the file is damaged (or "
            f"holds a model's overflow that an older featurehead stored); delete {path} and re-run the same "
            "`featurehead extract`: it extracts that shard's rows again."
        )

    def _stored(self) -> list[tuple[ShardRecord, list[str], np.ndarray, np.ndarray]]:
        """Each shard of the manifest: its record, keys, ok flags and errors.

        Readers take no lock: a listed shard that has gone because a writer committed another manifest meanwhile (a
        compaction commits, then deletes the shards it rewrote) is read through the manifest now, as `features`
        reads through the new view."""
        while True:
            try:
                return [(record, *read_shard(shard_path(self.store, record.file), record.rows))
                        for record in self.manifest.shards]
            except StoreDamagedError as err:
                now = read_manifest(self.store) if isinstance(err.__cause__, FileNotFoundError) else None
                if now is None or now == self.manifest:
                    raise  # the manifest still lists it: the shard is missing indeed
                self.manifest = now  # each retry follows another commit

    def info(self) -> StoreInfo:
        listed = self._stored()  # first: it may read a manifest committed since this view was opened
        c, a, m = self.cols, self.attrs, self.manifest
        names, counts = np.unique(c["split"], return_counts=True) if len(c["split"]) else ([], [])
        wanted = set(c["keys"].tolist()) - {""}
        stored_live, stored = 0, set()
        shards = []
        for record, keys, _, _ in listed:
            stored_live += sum(1 for k in keys if k in wanted and k not in stored)  # a second copy is garbage
            stored.update(keys)
            shards.append({**record.to_dict(), "versions": record.versions or _versions(self.store, record.file)})
        # rows still to extract, counted against the manifest now (a crashed run committed shards after the view);
        # their ok flags too, as the readers see them
        pending = self._locate_pending(listed) if self.pending.any() else self.pending
        c, n_pending = self.cols, int(np.count_nonzero(pending))
        return StoreInfo(
            path=self.store, schema_version=int(a["schema_version"]), fingerprint=m.fingerprint,
            extractor=m.extractor, index_sha256=_str(a.get("index_sha256", "")), n_rows=len(c["ids"]),
            n_features=m.n_features, n_done=len(c["ids"]) - n_pending,
            n_failed=int(np.count_nonzero(~c["ok"] & ~pending)), complete=not self.pending.any(),
            classes=tuple(c["classes"]), created=m.created, versions=json.loads(_str(a.get("versions", "{}"))),
            attrs={k: _str(v) for k, v in a.items() if k not in schema.VIEW_ATTRS}, dtype=m.dtype,
            split_counts={str(n): int(k) for n, k in zip(names, counts)}, stored_rows=m.stored_rows,
            garbage_rows=m.stored_rows - stored_live, shards=tuple(shards),
            features_layout=_str(a.get("features_layout", "")), stopped=m.stopped,
        )


def _stamp(path: str) -> tuple[int, int] | None:
    """Which file is at `path` now (inode, mtime): a replaced view file has another one."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def _versions(store: str, file: str) -> dict:
    try:
        return shard_versions(shard_path(store, file))
    except (OSError, KeyError, ValueError):
        return {}


def open_view(store: str | os.PathLike) -> _View:
    return _View(store)


def read_info(store: str | os.PathLike) -> StoreInfo:
    """Read the summary of a store, complete or partial.

    Parameters
    ----------
    store : str or path-like
        The store directory.

    Returns
    -------
    StoreInfo

    Raises
    ------
    StoreNotFoundError
        When `store` does not exist, is not a store, or holds no features yet.
    StoreIncompleteError
        When a run committed shards but stopped before writing the view file (re-running it writes the view), or
        a writer still running holds the lock of a store that has no view yet (its first run).
    StoreVersionError
        When `store` is a v1 single-file store.
    StoreDamagedError
        When the view or the manifest cannot be read.
    """
    return _View(store).info()


def read_meta(store: str | os.PathLike, *, allow_incomplete: bool = False) -> StoreMeta:
    """Read the per-row columns of a store.

    Parameters
    ----------
    store : str or path-like
        The store directory.
    allow_incomplete : bool, default=False
        Read a partial store; only its done rows are returned.

    Returns
    -------
    StoreMeta
    """
    view = _View(store)
    return view.meta(view.visible(fingerprint=None, allow_incomplete=allow_incomplete))


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
    store: str | os.PathLike,
    rows: Sequence[int] | np.ndarray | None = None,
    *,
    fingerprint: str | None = None,
    allow_incomplete: bool = False,
) -> np.ndarray:
    """Read feature rows, in the order asked.

    Parameters
    ----------
    store : str or path-like
        The store directory.
    rows : array-like of int of shape (n,), default=None
        Positions among the visible rows (as in `read_meta`), in any order, repeats allowed; None reads all.
    fingerprint : str, default=None
        When given, refuse a store written by another extractor.
    allow_incomplete : bool, default=False
        Read a partial store, whose visible rows are its done rows.

    Returns
    -------
    ndarray of shape (n, n_features), dtype float32
        NaN rows for images that failed.
    """
    view = _View(store)
    visible = view.visible(fingerprint=fingerprint, allow_incomplete=allow_incomplete)
    return view.features(visible[_as_rows(rows, len(visible))])


def read_errors(store: str | os.PathLike) -> list[tuple[str, str]]:
    """List the failed rows of the view (complete or not; pending rows are not failures).

    Returns
    -------
    list of tuple of (str, str)
        ``(id, reason)`` per failed row, in row order.
    """
    view = _View(store)
    c = view.cols
    failed = np.flatnonzero(~c["ok"] & ~view.pending)
    return [(str(c["ids"][i]), str(c["errors"][i])) for i in failed]


def keys_sha256(store: str | os.PathLike) -> str:
    """The sha256 of the view's content keys, in row order: two stores of one extractor with the same index and
    this hash hold the same images' features in the same rows (a copy), whatever their paths."""
    return digest_keys(view_columns(os.path.join(os.fspath(store), schema.VIEW_FILE))["keys"])


def digest_keys(keys) -> str:
    """`keys_sha256` of a view's `keys` column already read."""
    return hashlib.sha256("\n".join(np.asarray(keys).tolist()).encode("ascii")).hexdigest()


def read_file_keys(store: str | os.PathLike) -> tuple[str | None, dict[str, tuple[int, int, int, int, str]]]:
    """The images root and `id -> (size, mtime_ns, inode, ctime_ns, key)` of the last view's original rows, for
    the quick path (-1: unknown).

    Returns (None, {}) when the store has no readable view yet.
    """
    path = os.path.join(os.fspath(store), schema.VIEW_FILE)
    if not os.path.isfile(path):
        return None, {}
    try:
        c = view_columns(path)
    except StoreDamagedError:  # the next view written replaces it; every file is hashed again
        return None, {}
    keep = (c["view"] == 0) & (c["keys"] != "") & (c["size"] >= 0)
    stats = np.stack([c[name][keep] for name in schema.STAT_COLUMNS], axis=1).tolist()
    table = {str(i): (*stat, str(k)) for i, stat, k in zip(c["ids"][keep], stats, c["keys"][keep])}
    return _str(c["attrs"].get("images_root", "")) or None, table


def _finite_rows(values: np.ndarray) -> np.ndarray:
    """Whether each row holds no NaN or inf, through per-row temporaries only: `np.isfinite(values)` would make a
    bool copy a quarter of the features' size while `train` reads them (max and min carry a NaN, and show an inf)."""
    if not values.size:
        return np.ones(len(values), dtype=bool)
    return np.isfinite(values.max(axis=1)) & np.isfinite(values.min(axis=1))
