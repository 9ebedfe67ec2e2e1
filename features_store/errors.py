"""The feature store's exceptions: one base, each also deriving from the builtin it refines."""


class FeatureStoreError(Exception):
    """Base class for every error raised by `features_store`."""


class StoreNotFoundError(FeatureStoreError, FileNotFoundError):
    """The store file does not exist."""


class StoreMismatchError(FeatureStoreError, ValueError):
    """The store was written for another extractor, index or shape than the one asked for."""


class StoreIncompleteError(FeatureStoreError, RuntimeError):
    """The store is a resumable partial; it is read only when the caller allows it."""


class StoreDamagedError(FeatureStoreError, OSError):
    """The file is not a readable featurehead store."""


class StoreLockedError(FeatureStoreError, BlockingIOError):
    """Another process holds the store open for writing (or reading, when we want to write)."""
