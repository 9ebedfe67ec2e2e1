"""The one-writer lock of a store: `STORE/.lock`, held with `filelock` (an advisory `flock` on POSIX); the lock of
one shard file, held by whoever writes that shard; and `folder_lock`, the same for a folder of other results (a head
bundle, a report)."""

from __future__ import annotations

import errno
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import filelock

from features_store import schema
from features_store.errors import StoreLockedError

_WRITER_WAIT_S = 0.5
_SHARD_POLL_S = 0.1  # how soon a wait for a shard's lock sees `stop`
# How long a wait for a shard's lock goes on while its holder writes nothing to the shard: a legitimate holder writes a
# batch of rows every few seconds (minutes for the largest models on a CPU); one silent for longer is stuck, or gone
# while its lock stayed. `SHARD_WAIT_ENV` overrides it (in the environment of the process that waits: a Dask worker's).
_SHARD_STALL_S = 600.0
SHARD_WAIT_ENV = "FEATUREHEAD_SHARD_LOCK_WAIT"

logger = logging.getLogger(__name__)


@contextmanager
def writer_lock(store: str | os.PathLike) -> Iterator[None]:
    """Hold the store's writer lock, or raise StoreLockedError when another process holds it (after
    `_WRITER_WAIT_S`: a reader's `writer_running` probe holds it for microseconds, which must not refuse a writer)."""
    store = os.fspath(store)
    # not per thread: a session that closes during a write of its run's writer thread lets that thread release it
    lock = filelock.FileLock(os.path.join(store, schema.LOCK_FILE), timeout=_WRITER_WAIT_S, thread_local=False)
    try:
        lock.acquire()
    except filelock.Timeout as err:
        raise StoreLockedError(
            f"{store} is being written by another process (an extraction or compaction still running?); "
            "wait for it to finish, or stop it and re-run to resume."
        ) from err
    try:
        yield
    finally:
        lock.release()


def writer_running(store: str | os.PathLike) -> bool:
    """Whether a live process holds the store's writer lock now (this process too, through `writer_lock`).

    True only when that is certain: the lock is a `flock`, which the kernel drops when its holder exits however it
    ends, so a probe that finds it taken has found a running writer. The probe takes it shared and without waiting,
    and drops it at once (a writer starting in that instant waits for it: `writer_lock`); it never creates the
    lock file, which a reader may have no right to. False when the lock is free, and whenever it cannot tell (no
    lock file, no `flock` here or on this filesystem, a file it may not open).
    """
    try:
        import fcntl
    except ImportError:  # Windows: filelock locks otherwise there
        return False
    try:
        fd = os.open(os.path.join(os.fspath(store), schema.LOCK_FILE), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:  # EWOULDBLOCK alone is contention; ENOSYS, ENOLCK, EACCES... cannot tell
        return err.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)  # drops the probe's shared lock, if it got it
    return False


def shard_lock_wait() -> float:
    """Seconds a wait for a shard's lock goes on while its holder writes nothing: `SHARD_WAIT_ENV`, else 600."""
    value = os.environ.get(SHARD_WAIT_ENV, "").strip()
    if not value:
        return _SHARD_STALL_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not seconds > 0:  # NaN too; inf waits for as long as the lock is held, as before the wait had an end
        raise ValueError(f"`{SHARD_WAIT_ENV}` must be a positive number of seconds (inf: no end). Received: "
                         f"{SHARD_WAIT_ENV}={value!r}")
    return seconds


class _Progress:
    """Whether the holder of a shard's lock has stopped writing the shard: the file `watch` (its stat: a batch of rows
    written and fsynced changes its mtime) has not changed for `wait` seconds of `clock`."""

    def __init__(self, watch: str | None, wait: float, clock=time.monotonic):
        self._watch, self._wait, self._clock = watch, wait, clock
        self._seen, self._since = self._stat(), clock()

    def _stat(self) -> tuple[int, int, int] | None:
        if self._watch is None:
            return None
        try:
            st = os.stat(self._watch)
        except OSError:  # not created yet, or gone
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def stalled(self) -> bool:
        now, seen = self._clock(), self._stat()
        if seen != self._seen:
            self._seen, self._since = seen, now
        return now - self._since >= self._wait


def hold_shard_lock(path: str | os.PathLike, what: str, *, stop: threading.Event | None = None,
                    watch: str | os.PathLike | None = None) -> filelock.BaseFileLock:
    """Acquire and return the lock file `path` of one shard, waiting (with a warning naming `what`) while another
    process holds it and writes the shard `watch`; raise StoreLockedError (the lock never taken) when `stop` is set,
    or when that holder has written nothing for `shard_lock_wait()` seconds.

    The store's lock does not cover a Dask worker: a task of a stopped run goes on writing its shard after its driver
    died (a running thread cannot be stopped), and a second writer would resume that shard from rows that the first is
    still writing. So a writer waits for as long as the holder writes (it lets go when its shard is done, or when its
    process dies), but not for ever: a stuck holder, or a lock left by a process on a machine that is gone (a
    filesystem without `flock`, where `filelock` falls back to a lock file whose owner it cannot check from here),
    ends the wait in one line, on a Dask worker too, whose warning only its log shows. `stop` is for a wait on a
    thread that a Ctrl-C does not reach (a run's writer thread, whose run is stopping). Not per thread: a run's writer
    thread opens a shard that the run's main thread may close (after an error)."""
    lock = filelock.FileLock(os.fspath(path), timeout=0, thread_local=False)
    try:
        lock.acquire()
        return lock
    except filelock.Timeout:
        pass
    wait = shard_lock_wait()
    logger.warning("%s is being written by another process (a Dask task of a stopped run?); waiting for it to "
                   "finish%s", what, "" if math.isinf(wait) else f", for up to {wait:g} s without a row written")
    progress = _Progress(None if watch is None else os.fspath(watch), wait)
    while stop is None or not stop.is_set():
        try:
            lock.acquire(timeout=_SHARD_POLL_S)
            return lock
        except filelock.Timeout:
            pass
        if progress.stalled():
            raise StoreLockedError(
                f"{what} is locked by another process that has written nothing to it for {wait:g} s (stuck, or gone "
                f"and its lock left behind): stop that process, or delete the lock file {os.fspath(path)} when none "
                f"runs, then re-run the same command to resume ({SHARD_WAIT_ENV} sets the wait, in seconds)"
            )
    raise StoreLockedError(f"{what} is being written by another process; stopped waiting for it (the run is "
                           "stopping): re-run once it has finished to resume")


@contextmanager
def unless_locked(path: str | os.PathLike) -> Iterator[bool]:
    """Hold the lock file `path` for the block and yield True, or yield False at once when a process holds it."""
    lock = filelock.FileLock(os.fspath(path), timeout=0, thread_local=False)
    try:
        lock.acquire()
    except filelock.Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


@contextmanager
def folder_lock(folder: str | os.PathLike, name: str, *, timeout: float, busy: Exception) -> Iterator[None]:
    """Hold the lock file `folder/name`, waiting up to `timeout` seconds; raise `busy` when another process holds
    it longer, and an OSError naming `folder` (not its lock file) when it cannot be made (a read-only folder)."""
    lock = filelock.FileLock(os.path.join(folder, name), timeout=timeout)
    try:
        lock.acquire()
    except filelock.Timeout as err:
        raise busy from err
    except OSError as err:
        raise OSError(err.errno, err.strerror or os.strerror(err.errno), os.fspath(folder)) from err
    try:
        yield
    finally:
        lock.release()
