"""The feature store's exceptions: one base, each also deriving from the builtin it refines."""


class FeatureStoreError(Exception):
    """Base class for every error raised by `features_store`."""


class FeatureRangeError(FeatureStoreError, ValueError):
    """Features that the store's dtype cannot hold: finite values beyond float16's range would be stored as inf.

    `store` (the store whose shard refused them) and `reason` (the message without it) are set where it is raised;
    attributes, not constructor arguments, so that the error pickles as it is (from a Dask worker)."""

    store: str | None = None
    reason: str | None = None


def feature_range_error(store, reason: str) -> FeatureRangeError:
    """A FeatureRangeError of `store`: "STORE: reason", with `store` and `reason` set."""
    err = FeatureRangeError(f"{store}: {reason}")
    err.store, err.reason = str(store), reason
    return err


class StoreNotFoundError(FeatureStoreError, FileNotFoundError):
    """The store file does not exist."""


class StoreMismatchError(FeatureStoreError, ValueError):
    """The store was written for another extractor, index or shape than the one asked for."""


class StoreIncompleteError(FeatureStoreError, RuntimeError):
    """The store is a resumable partial; it is read only when the caller allows it."""


class StoreDamagedError(FeatureStoreError, OSError):
    """The file is not a readable featurehead store.

    `certain` is False when a file could not be read for a reason that may pass (a lock held by another process,
    permissions, an I/O error): the file itself may be fine.
    """

    certain = True


class StoreLockedError(FeatureStoreError, BlockingIOError):
    """Another process holds the store open for writing (or reading, when we want to write)."""


class StoreWriteError(FeatureStoreError, OSError):
    """Writing the store failed (full disk, quota, I/O error, read-only folder); nothing unwritten is claimed."""


class StoreVersionError(FeatureStoreError, ValueError):
    """The path holds a store of another schema version (a v1 single-file store)."""
