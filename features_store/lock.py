"""The one-writer lock of a store: `STORE/.lock`, held with `filelock` (an advisory `flock` on POSIX); and
`folder_lock`, the same for a folder of other results (a head bundle, a report)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import filelock

from features_store import schema
from features_store.errors import StoreLockedError


@contextmanager
def writer_lock(store: str | os.PathLike) -> Iterator[None]:
    """Hold the store's writer lock, or raise StoreLockedError at once when another process holds it."""
    store = os.fspath(store)
    lock = filelock.FileLock(os.path.join(store, schema.LOCK_FILE), timeout=0)
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
