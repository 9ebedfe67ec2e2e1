"""The one-writer lock of a store: `STORE/.lock`, held with `filelock` (an advisory `flock` on POSIX); the lock of
one shard file, held by whoever writes that shard; and `folder_lock`, the same for a folder of other results (a head
bundle, a report)."""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import filelock

from features_store import schema
from features_store.errors import StoreLockedError

_WRITER_WAIT_S = 0.5
_SHARD_POLL_S = 0.1  # how soon a wait for a shard's lock sees `stop`

logger = logging.getLogger(__name__)


@contextmanager
def writer_lock(store: str | os.PathLike) -> Iterator[None]:
    """Hold the store's writer lock, or raise StoreLockedError when another process holds it (after
    `_WRITER_WAIT_S`: a reader's `writer_running` probe holds it for microseconds, which must not refuse a writer)."""
    store = os.fspath(store)
    lock = filelock.FileLock(os.path.join(store, schema.LOCK_FILE), timeout=_WRITER_WAIT_S)
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


def hold_shard_lock(path: str | os.PathLike, what: str, *, stop: threading.Event | None = None) -> filelock.BaseFileLock:
    """Acquire and return the lock file `path` of one shard, waiting (with a warning naming `what`) while another
    process holds it, until `stop` is set: then raise StoreLockedError (the lock never taken).

    The store's lock does not cover a Dask worker: a task of a stopped run goes on writing its shard after its driver
    died (a running thread cannot be stopped), and a second writer would resume that shard from rows that the first is
    still writing. No timeout: the holder lets go when its shard is done, or when its process dies. `stop` is for a
    wait on a thread that a Ctrl-C does not reach (a run's writer thread, whose run is stopping). Not per thread: a
    run's writer thread opens a shard that the run's main thread may close (after an error)."""
    lock = filelock.FileLock(os.fspath(path), timeout=0, thread_local=False)
    try:
        lock.acquire()
        return lock
    except filelock.Timeout:
        logger.warning("%s is being written by another process (a Dask task of a stopped run?); waiting for it to "
                       "finish", what)
    while stop is None or not stop.is_set():
        try:
            lock.acquire(timeout=_SHARD_POLL_S)
            return lock
        except filelock.Timeout:
            pass
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
