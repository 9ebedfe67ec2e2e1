"""The HDF5 feature store: one resumable, fingerprinted file of features per index and extractor."""

from features_store.errors import (
    FeatureStoreError,
    StoreDamagedError,
    StoreIncompleteError,
    StoreLockedError,
    StoreMismatchError,
    StoreNotFoundError,
)
from features_store.loader import iter_batches, load
from features_store.plan import batch_plan, chunk_rows, default_store_name
from features_store.reader import StoreInfo, StoreMeta, read_errors, read_features, read_info, read_meta
from features_store.schema import SCHEMA_VERSION
from features_store.writer import StoreWriter

__all__ = [
    "SCHEMA_VERSION",
    "FeatureStoreError",
    "StoreDamagedError",
    "StoreIncompleteError",
    "StoreInfo",
    "StoreLockedError",
    "StoreMeta",
    "StoreMismatchError",
    "StoreNotFoundError",
    "StoreWriter",
    "batch_plan",
    "chunk_rows",
    "default_store_name",
    "iter_batches",
    "load",
    "read_errors",
    "read_features",
    "read_info",
    "read_meta",
]
