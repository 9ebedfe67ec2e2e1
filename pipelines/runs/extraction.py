"""The extraction runner: index -> content keys -> only the missing rows through the model -> store shards -> view.

A store (a directory, see `features_store`) keys its rows by image content. Each run hashes the index's files
(size and mtime spare unchanged ones), asks the store which keys it lacks, extracts only those into new shards,
and rewrites the view from the index. A relabel, a new split, a moved root or a removed image extracts nothing
and builds no model. Decoding (a thread pool a few batches ahead), the forward pass and the HDF5 writes (one
writer thread) overlap, each behind a bounded queue.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import features_store
from extract import ImageIndex, ImageReadError, canonical_json
from extract.augment import view_layout
from extract.content import content_keys, content_seed, view_key
from extract.images import decoded_batches

from ..scale.distributed import fill_store_on_dask
from .versions import base_versions, library_versions
from .views import AugmentedViews, apply_views, store_identity, training_split

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractResult:
    """What an extraction run did (plain values)."""

    store: Path
    n_rows: int
    n_failed: int
    n_extracted: int  # rows computed by this run (0 when everything was stored already)
    up_to_date: bool
    fingerprint: str
    garbage_rows: int = 0


def default_store_path(index: ImageIndex, extractor, views: AugmentedViews | None = None) -> Path:
    """A store directory next to the index, naming the model and a short fingerprint (and the augmentation)."""
    src = Path(index.source)
    stem, parent = (src.name, src.parent) if src.is_dir() else (src.stem, src.parent)
    if views is not None:
        stem = f"{stem}.aug{views.k}-{views_identity(views)[:8]}"
    return parent / features_store.default_store_name(stem, extractor.name, extractor.fingerprint())


def views_identity(views: AugmentedViews) -> str:
    import hashlib

    return hashlib.sha256(canonical_json(views.to_dict()).encode()).hexdigest()


def label_codes(labels, classes) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup.get(lab, -1) for lab in labels], dtype=np.int32)


@dataclass
class RowPlan:
    """The store rows of an index: each row's key, and how to compute a key's features."""

    keys: list[str]
    source: np.ndarray
    view: np.ndarray
    split: list[str]
    size: np.ndarray
    mtime_ns: np.ndarray
    reasons: list[str]
    todo: dict = field(default_factory=dict)  # key -> (path, view number, seed, id)


def plan_rows(index: ImageIndex, store: Path, views: AugmentedViews | None, workers: int | None) -> RowPlan:
    """Hash the index's files (sparing those unchanged since the store's last view) and lay out the rows."""
    prev_root, known = (None, {})
    if store.is_dir():
        prev_root, known = features_store.read_file_keys(store)
    if prev_root is None or Path(prev_root).resolve() != index.root.resolve():
        known = {}  # another root: the same ids may be other files, so hash them all (extracting none)
    content, size, mtime, reasons = content_keys(index.root, index.ids, known, workers=workers)
    split = index.split if views is None else training_split(index, views)
    source, view = view_layout(split, 0 if views is None else views.k)
    aug = canonical_json(views.to_dict()) if views is not None else ""
    paths, ids = index.paths, index.ids
    keys, todo = [], {}
    for r, v in zip(source.tolist(), view.tolist()):
        base = content[r]
        key = base if (v == 0 or not base) else view_key(base, v, aug)
        keys.append(key)
        if key and key not in todo:
            todo[key] = (paths[r], v, content_seed(base), ids[r])
    return RowPlan(keys, source, view, list(split), size[source], mtime[source],
                   [reasons[r] for r in source.tolist()], todo)


@dataclass
class Target:
    """One store being filled by a run: its session, its missing keys and its shard writers as they go."""

    session: features_store.StoreSession
    missing: list[str]
    shard_rows: int | None
    versions: dict = field(default_factory=dict)
    n_features: int | None = None
    _plan: list = field(default_factory=list)
    _writer: features_store.ShardWriter | None = None
    _need: set = field(default_factory=set)

    def start(self, n_features: int, versions: dict) -> set[str]:
        """Plan the shards and return the keys still to compute (those not durable in a resumed shard)."""
        self.n_features, self.versions = n_features, versions
        rows = self.shard_rows or features_store.default_shard_rows(n_features)
        self._plan = features_store.plan_shards(self.missing, rows)
        self._need = set()
        store = self.session.store
        for keys in self._plan:
            done = _durable_rows(store, self.session.fingerprint, keys, versions)
            self._need.update(keys[done:])
        self._plan = list(reversed(self._plan))  # popped from the end
        return self._need

    def write(self, keys: Sequence[str], features: np.ndarray, ok: np.ndarray, errors: Sequence[str]) -> None:
        """Route the rows this store needs, in order, into its shards, committing each shard as it fills."""
        mine = [i for i, k in enumerate(keys) if k in self._need]
        while mine:
            writer = self._current()
            expected = writer.keys[writer.n_done : writer.n_done + len(mine)]
            take = len(expected)
            if [keys[i] for i in mine[:take]] != expected:
                raise RuntimeError(f"rows arrived out of plan order for shard {writer.name}")  # a bug, not input
            sel = np.asarray(mine[:take])
            writer.write(features[sel], ok[sel], [errors[i] for i in sel])
            mine = mine[take:]
            if writer.n_done == writer.n_rows:
                self._close_current()

    def _current(self) -> features_store.ShardWriter:
        while self._writer is None:
            keys = self._plan.pop()
            writer = self.session.shard_writer(keys, n_features=self.n_features, versions=self.versions)
            if writer.n_done == writer.n_rows:  # complete on disk but not committed (a crash in between)
                self.session.commit(writer, self.versions)
                writer.close()
                continue
            self._writer = writer
        return self._writer

    def _close_current(self) -> None:
        try:
            self.session.commit(self._writer, self.versions)
        finally:
            self._writer.close()
            self._writer = None

    def finish(self) -> None:
        """Commit every remaining planned shard (those complete on disk already)."""
        while self._plan or self._writer is not None:
            writer = self._current()
            if writer.n_done != writer.n_rows:
                raise RuntimeError(f"shard {writer.name} was left with {writer.n_rows - writer.n_done} rows unwritten")
            self._close_current()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _durable_rows(store: str, fingerprint: str, keys: Sequence[str], versions: dict) -> int:
    """Rows of the planned shard of `keys` already durable on disk (0 when it does not exist yet, or was
    written under another backend or Keras version: that one is not resumed)."""
    import h5py

    runtime = features_store.runtime_tag(versions)
    path = os.path.join(store, "shards", features_store.shard_name(fingerprint, keys, runtime))
    if not os.path.exists(path):
        return 0
    try:
        with h5py.File(path, "r") as f:
            return int(f.attrs["n_done"])
    except (OSError, KeyError):
        return 0


class AsyncWriter:
    """Runs `write(*item)` on one thread behind a bounded queue, so the HDF5 writes and the commits overlap the
    next forward pass; `put` blocks when `depth` items wait (memory stays flat), and re-raises a failed write."""

    def __init__(self, write: Callable, depth: int = 2):
        self._write, self._queue, self._error = write, queue.Queue(maxsize=depth), None
        self._thread = threading.Thread(target=self._run, name="featurehead-writer", daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                try:
                    self._write(*item)
                except BaseException as err:  # handed to the producer by put/close
                    self._error = err

    def _raise(self):
        if self._error is not None:
            raise self._error

    def put(self, *item) -> None:
        self._raise()
        self._queue.put(item)

    def close(self) -> None:
        """Wait for every queued write; raise the first failure."""
        self._queue.put(None)
        self._thread.join()
        self._raise()


def fill_stores(plan: RowPlan, targets: Sequence[Target], build: Callable[[], tuple[list[int], Callable]], *,
                input_size: tuple[int, int], views: AugmentedViews | None, strict: bool, workers: int | None,
                progress, batch_size: int, resize: str = "squash") -> int:
    """Compute the keys that any target lacks, once, and write each target's share; return the rows computed.

    `build()` is called only when something is missing: it builds the model and returns the feature width of
    each target and `compute(images) -> [features of each target]`. Three stages overlap: the decoding pool
    (`extract.images.decoded_batches`, a few batches ahead), the forward pass here, and the writes on an
    `AsyncWriter`, each behind a bounded queue.
    """
    if not any(t.missing for t in targets):
        return 0
    dims, compute = build()
    versions = library_versions()
    need: set[str] = set()
    for target, dim in zip(targets, dims):
        need |= target.start(dim, versions)
    # one order for all, the rows' order: each target's missing keys are a subsequence of it
    keys = [k for k in dict.fromkeys(plan.keys) if k in need]
    batches = features_store.batch_plan(len(keys), batch_size)
    bar = progress(total=len(keys), initial=0) if progress else None
    paths = [plan.todo[k][0] for k in keys]

    def write(batch_keys, outputs, ok, errors):
        for target, out in zip(targets, outputs):
            target.write(batch_keys, out, ok, errors)
        if bar is not None:
            bar.update(len(batch_keys))

    writer = AsyncWriter(write)
    try:
        for lo, hi, images, ok, errors in decoded_batches(paths, input_size, batches, workers, resize):
            batch_keys = keys[lo:hi]
            if strict and not ok.all():
                bad = int(np.flatnonzero(~ok)[0])
                raise ImageReadError(f"{plan.todo[batch_keys[bad]][3]}: {errors[bad]} (--strict stops at the first failure)")
            if views is not None:
                view = np.array([plan.todo[k][1] for k in batch_keys], np.int16)
                seeds = np.array([plan.todo[k][2] for k in batch_keys], np.int64)
                images = apply_views(images, ok, seeds, view, views)
            if ok.all():
                outputs = compute(images)
            else:
                outputs = [np.full((hi - lo, d), np.nan, np.float32) for d in dims]
                if ok.any():
                    for out, part in zip(outputs, compute(images[ok])):
                        out[ok] = part
            writer.put(batch_keys, outputs, ok, errors)
        writer.close()
        for target in targets:
            target.finish()
    finally:
        if writer._thread.is_alive():  # stopped by an error here: let the queued writes end, keep our error
            try:
                writer.close()
            except BaseException:
                pass
        for target in targets:
            target.close()
        if bar is not None:
            bar.close()
    return len(keys)


def view_args(index: ImageIndex, plan: RowPlan, views: AugmentedViews | None) -> dict:
    """The `StoreSession.write_view` arguments of the current index."""
    classes = index.classes
    ids = np.asarray(index.ids, dtype=object)[plan.source]
    attrs = {"index_source": index.source, "images_root": str(index.root)}
    if views is not None:
        attrs["augmentation"] = canonical_json(views.to_dict())
    return dict(ids=ids.tolist(), keys=plan.keys, labels=label_codes(index.labels, classes)[plan.source],
                classes=classes, split=np.asarray(plan.split, dtype=object)[plan.source].tolist(),
                view=plan.view, source=plan.source, size=plan.size, mtime_ns=plan.mtime_ns, reasons=plan.reasons,
                attrs=attrs, index_sha256=store_identity(index, views))


def run_extract(
    index: ImageIndex,
    extractor,
    out=None,
    *,
    strict: bool = False,
    workers: int | None = None,
    progress=None,
    views: AugmentedViews | None = None,
    shard_rows: int | None = None,
    dtype: str | None = None,
    client=None,
) -> ExtractResult:
    """Bring the store `out` up to date with `index`: extract only the images it lacks, then rewrite its view.

    Parameters
    ----------
    index : ImageIndex
    extractor : extract.Extractor
    out : str or Path, optional
        The store directory; defaults to `default_store_path(index, extractor)`.
    strict : bool
        Stop at the first image that fails instead of recording it as a failed row.
    workers : int, optional
        Decoding threads; default `extract.images.default_workers()`, every core (benchmarks/README.md,
        "Input pipeline", measures the choice).
    progress : callable, optional
        `progress(total=..., initial=...)` returning an object with `update(n)` and `close()` (tqdm fits).
    views : AugmentedViews, optional
        Also store `views.k` augmented views of each training row after the originals. Views are keyed by the
        image's content, the view number and the augmentation, so they survive a relabel.
    shard_rows : int, optional
        Rows per shard; default `features_store.default_shard_rows` (4096, or fewer past 1 GiB of features).
    dtype : {"float32", "float16"}, optional
        Storage type of the features; default the existing store's own, float32 for a new store.
    client : distributed.Client, optional
        Extract the shards as Dask tasks on this client's workers (see `pipelines.scale.distributed`); the workers must
        see `out` and the images at the same paths (a shared filesystem on a real cluster).

    Returns
    -------
    ExtractResult
    """
    if views is not None:
        views.validate()
    if shard_rows is not None and (isinstance(shard_rows, bool) or not isinstance(shard_rows, int) or shard_rows < 1):
        raise ValueError(f"`shard_rows` (--shard-rows) must be a positive integer. Received: {shard_rows!r}")
    out = Path(out) if out is not None else default_store_path(index, extractor, views)
    fp = extractor.fingerprint()
    if out.is_file():
        features_store.read_manifest(out)  # a v1 single-file store: one line that says what to do
    if dtype is None:
        manifest = features_store.read_manifest(out) if out.is_dir() else None
        dtype = manifest.dtype if manifest is not None else "float32"
    plan = plan_rows(index, out, views, workers)
    if strict and any(plan.reasons):
        bad = next(i for i, reason in enumerate(plan.reasons) if reason)
        raise ImageReadError(f"{index.ids[plan.source[bad]]}: {plan.reasons[bad]} (--strict stops at the first failure)")
    with features_store.StoreSession.open(out, fingerprint=fp, extractor=extractor.spec(), dtype=dtype) as session:
        target = Target(session, session.missing(plan.keys), shard_rows)
        args = view_args(index, plan, views)
        if client is not None:
            if target.missing and session.manifest is not None:
                session.write_view(**args, versions=base_versions())  # "incomplete" until the new rows are in
            extractor.validate()
            n_extracted = fill_store_on_dask(client, session, plan, target.missing, extractor, views=views,
                                             shard_rows=shard_rows, dtype=dtype, strict=strict, progress=progress)
            if session.manifest is None:  # nothing could be read: the width comes from the model here
                session.ensure_manifest(extractor.output_dim)
            session.write_view(**args, versions=base_versions())
            session.remove_orphans()
            info = features_store.read_info(out)
            return ExtractResult(out, info.n_rows, info.n_failed, n_extracted, n_extracted == 0, fp,
                                 info.garbage_rows)
        if target.missing or session.manifest is None:
            extractor.validate()
            session.ensure_manifest(extractor.output_dim)  # builds the model: something is to extract
            # readers see "incomplete, re-run" until the new rows are in, never a stale view of another index
            session.write_view(**args, versions=base_versions())

        def build():
            return [extractor.output_dim], lambda images: [extractor(images)]

        n_extracted = fill_stores(plan, [target], build, input_size=extractor.input_shape[:2], views=views,
                                  strict=strict, workers=workers, progress=progress,
                                  batch_size=extractor.batch_size, resize=extractor.resize)
        session.write_view(**args, versions=base_versions())
        session.remove_orphans()
    info = features_store.read_info(out)
    return ExtractResult(out, info.n_rows, info.n_failed, n_extracted, n_extracted == 0, fp, info.garbage_rows)
