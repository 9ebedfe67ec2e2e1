"""Filling stores with the rows they lack: the shard writers of each store (`Target`) and the overlapped
decode -> forward pass -> write loop (`fill_stores`, the writes on an `AsyncWriter` thread).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

import features_store
from extract import ImageReadError
from extract.batches import decoded_batches

from .planning import RowPlan
from .versions import library_versions
from .views import AugmentedViews, apply_views

logger = logging.getLogger(__name__)


@dataclass
class Target:
    """One store being filled by a run: its session, its missing keys and its shard writers as they go."""

    session: features_store.StoreSession
    missing: list[str]
    shard_rows: int | None
    n_index_keys: int = 0  # the keys of the whole index (a Dask run's shard size depends on it)
    versions: dict = field(default_factory=dict)
    n_features: int | None = None
    _plan: list = field(default_factory=list)
    _writer: features_store.ShardWriter | None = None
    _need: set = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)  # set: a wait for a shard's lock gives up

    def start(self, n_features: int, versions: dict) -> set[str]:
        """Plan the shards and return the keys still to compute (those not durable in a resumed shard)."""
        self.n_features, self.versions = n_features, versions
        # the plan that resumes the most rows already on disk: ours, or a Dask run's (smaller shards)
        candidates = features_store.shard_rows_candidates(self.shard_rows, self.n_index_keys, n_features, dask=False)
        self._plan = features_store.plan_resuming(self.session.store, self.session.fingerprint, self.missing,
                                                  candidates, features_store.runtime_tag(versions))
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
            mine = [i for i in mine if keys[i] in self._need]  # less the rows another writer stored since the plan
            if not mine:
                return
            if writer is None:
                raise RuntimeError("rows arrived beyond the planned shards")  # a bug, not input
            expected = writer.keys[writer.n_done : writer.n_done + len(mine)]
            take = len(expected)
            if [keys[i] for i in mine[:take]] != expected:
                raise RuntimeError(f"rows arrived out of plan order for shard {writer.name}")  # a bug, not input
            sel = np.asarray(mine[:take])
            writer.write(features[sel], ok[sel], [errors[i] for i in sel])
            mine = mine[take:]
            if writer.n_done == writer.n_rows:
                self._close_current()

    def _current(self) -> features_store.ShardWriter | None:
        """The shard being filled; shards already complete on disk are committed on the way; None past the plan."""
        while self._writer is None:
            if not self._plan:
                return None
            keys = self._plan.pop()
            writer = self.session.shard_writer(keys, n_features=self.n_features, versions=self.versions,
                                               stop=self._stop)
            # the plan read the shard's durable rows without its lock: a Dask task of a stopped run may have written
            # more since (its lock, held until its shard was done, is ours now); those rows are not written again
            self._need.difference_update(writer.keys[: writer.n_done])
            if writer.n_done == writer.n_rows:  # complete on disk but not committed (a crash in between)
                try:
                    self.session.commit(writer, self.versions)
                finally:  # its shard's lock too, also when the commit fails
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
        while (writer := self._current()) is not None:
            if writer.n_done != writer.n_rows:
                raise RuntimeError(f"shard {writer.name} was left with {writer.n_rows - writer.n_done} rows unwritten")
            self._close_current()

    def stop_waiting(self) -> None:
        """End a wait (on the writer thread) for a shard that another process holds: the run is stopping, and that
        shard is left to it (it raises StoreLockedError there)."""
        self._stop.set()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _durable_rows(store: str, fingerprint: str, keys: Sequence[str], versions: dict) -> int:
    """Rows of the planned shard of `keys` already durable on disk (0 when it does not exist yet, or was
    written under another backend or Keras version: that one is not resumed)."""
    name = features_store.shard_name(fingerprint, keys, features_store.runtime_tag(versions))
    return features_store.durable_rows(store, name)


class AsyncWriter:
    """Runs `write(*item)` on one thread behind a bounded queue, so the HDF5 writes and the commits overlap the
    next forward pass; `put` blocks when `depth` items wait (memory stays flat), and re-raises a failed write."""

    def __init__(self, write: Callable, depth: int = 2):
        self._write, self._queue, self._error = write, queue.Queue(maxsize=depth), None
        # set as the thread ends: not Thread.join or is_alive, since Python 3.11 marks a thread whose join a Ctrl-C cut
        # short as stopped while it still runs (and join then returns at once)
        self._done = threading.Event()
        self._ending, self._at_end = threading.Lock(), None  # `when_done`'s
        self._thread = threading.Thread(target=self._run, name="featurehead-writer", daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                if self._error is None and self._at_end is None:  # handed over by `when_done`: the run has ended
                    try:
                        self._write(*item)
                    except BaseException as err:  # handed to the producer by put/close
                        self._error = err
                if self._at_end is not None and self._queue.empty():  # close's None may not have been queued
                    return
        finally:
            with self._ending:
                self._done.set()
                at_end = self._at_end
            if at_end is not None:
                try:
                    at_end()
                except BaseException:  # the run has ended with its own error already
                    logger.debug("closing the shards after the writer thread failed", exc_info=True)

    def when_done(self, func: Callable[[], None]) -> None:
        """Call `func` now when the thread has ended; else on the thread, as it ends: after the write under way,
        the items still queued then dropped (the run that queued them has ended, its error raised)."""
        with self._ending:
            if not self._done.is_set():
                self._at_end = func
                try:  # wakes a thread that waits for an item
                    self._queue.put_nowait(None)
                except queue.Full:  # it has items to drop first
                    pass
                return
        func()

    @property
    def running(self) -> bool:
        """Whether the thread has not ended yet (a write under way, or items still to come)."""
        return not self._done.is_set()

    def _raise(self):
        if self._error is not None:
            raise self._error

    def put(self, *item) -> None:
        self._raise()
        self._queue.put(item)

    def close(self) -> None:
        """Wait for every queued write; raise the first failure."""
        self._queue.put(None)
        self._done.wait()
        self._raise()


def computed_batches(decoded, stream: Callable, dims: Sequence[int], *, strict: bool, name_of: Callable[[int], str],
                     views: AugmentedViews | None = None, view_seeds: Sequence[tuple[int, int]] | None = None):
    """`(lo, hi, ok, errors, [features of each target])` for each of the decoded batches
    (`extract.batches.decoded_batches`), in order: the augmented views applied, the ok rows through
    `stream` (which keeps batches in flight from one to the next), a failed row's features NaN.

    `name_of(i)` names row i in the error that `strict` raises at the first failed row, once the batches before
    its batch are out (under jax and torch one of them is still in flight then: it is yielded, so written, first);
    `view_seeds[i]` is row i's (view, seed) when `views` is given."""
    batches_in: deque = deque()  # (lo, hi, ok, errors) of each batch handed to the forward pass, not yet out
    stopped: list[ImageReadError] = []  # the --strict error, raised after the batches before it

    def chunks():
        for lo, hi, images, ok, errors in decoded:
            if strict and not ok.all():
                bad = int(np.flatnonzero(~ok)[0])
                stopped.append(ImageReadError(f"{name_of(lo + bad)}: {errors[bad]} (--strict stops at the first "
                                              "failure)"))
                return
            if views is not None:
                view = np.array([v for v, _ in view_seeds[lo:hi]], np.int16)
                seeds = np.array([seed for _, seed in view_seeds[lo:hi]], np.int64)
                images = apply_views(images, ok, seeds, view, views)
            batches_in.append((lo, hi, ok, errors))
            yield images if ok.all() else images[ok]

    for parts in stream(chunks()):
        lo, hi, ok, errors = batches_in.popleft()
        outputs = parts
        if not ok.all():
            outputs = [np.full((hi - lo, d), np.nan, np.float32) for d in dims]
            for out, part in zip(outputs, parts):
                out[ok] = part
        yield lo, hi, ok, errors, outputs
    if stopped:
        raise stopped[0]


def fill_stores(plan: RowPlan, targets: Sequence[Target], build: Callable[[], tuple[list[int], Callable]], *,
                input_size: tuple[int, int], views: AugmentedViews | None, strict: bool, workers: int | None,
                progress, batch_size: int, resize: str = "squash") -> int:
    """Compute the keys that any target lacks, once, and write each target's share; return the rows computed.

    `build()` is called only when something is missing: it builds the model and returns the feature width of
    each target and `stream(chunks)`, a generator of [features of each target] for each array of images that
    the iterable `chunks` yields, in order (an extractor's `stream`, which keeps two batches in flight on a GPU
    across the arrays). Three stages overlap: the decoding pool (`extract.batches.decoded_batches`, a few batches
    ahead), the forward pass here, and the writes on an `AsyncWriter`, each behind a bounded queue.
    """
    if not any(t.missing for t in targets):
        return 0
    dims, stream = build()
    versions = library_versions()
    need: set[str] = set()
    for target, dim in zip(targets, dims):
        need |= target.start(dim, versions)
    # one order for all, the rows' order: each target's missing keys are a subsequence of it
    keys = [k for k in dict.fromkeys(plan.keys) if k in need]
    batches = features_store.batch_plan(len(keys), batch_size)
    bar = progress(total=len(keys), initial=0) if progress else None
    paths = [plan.todo[k][0] for k in keys]
    stats = plan.hashed_stats(keys)  # a file changed since it was hashed stops the run (extract.ImageChangedError)

    def write(batch_keys, outputs, ok, errors):
        for target, out in zip(targets, outputs):
            target.write(batch_keys, out, ok, errors)
        if bar is not None:
            bar.update(len(batch_keys))

    writer = AsyncWriter(write)
    decoded = decoded_batches(paths, input_size, batches, workers, resize, stats=stats)
    try:
        rows = computed_batches(decoded, stream, dims, strict=strict, name_of=lambda i: plan.todo[keys[i]][3],
                                views=views, view_seeds=None if views is None else
                                [plan.todo[k][1:3] for k in keys])
        for lo, hi, ok, errors, outputs in rows:
            writer.put(keys[lo:hi], outputs, ok, errors)
        writer.close()
        for target in targets:
            target.finish()
    finally:
        for target in targets:  # a Ctrl-C waited (a second one needed) for a shard's lock that another process held
            target.stop_waiting()
        if writer.running:  # stopped by an error here: let the queued writes end, keep our error
            try:
                writer.close()
            except BaseException:
                pass

        def close_targets():
            for target in targets:
                target.close()

        # now, or (a second Ctrl-C cut the wait above short) by the writer thread once its writes end: a shard it is
        # writing is never closed, nor its lock let go, under it
        writer.when_done(close_targets)
        if bar is not None:
            bar.close()
    return len(keys)
