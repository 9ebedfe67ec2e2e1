"""The one-writer lock of a store: `STORE/.lock`, held with `filelock` (an advisory `flock` on POSIX)."""

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
