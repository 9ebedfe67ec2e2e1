"""The HDF5 feature store (schema 2): a directory of content-keyed, immutable shards behind an atomic manifest,
and a view file, `features.h5`, that lists the current index's rows.

`features_store` knows nothing of images or models: writers give it keys and arrays.
"""

from features_store.errors import (
    FeatureRangeError,
    FeatureStoreError,
    StoreDamagedError,
    StoreIncompleteError,
    StoreLockedError,
    StoreMismatchError,
    StoreNotFoundError,
    StoreVersionError,
    StoreWriteError,
)
from features_store.export import export
from features_store.loader import iter_batches, load
from features_store.manifest import Manifest, ShardRecord, is_store, read_manifest
from features_store.plan import (
    batch_plan,
    chunk_rows,
    dask_shard_rows,
    default_shard_rows,
    default_store_name,
    plan_shards,
    shard_rows_candidates,
)
from features_store.reader import (
    StoreInfo,
    StoreMeta,
    digest_keys,
    keys_sha256,
    read_errors,
    read_features,
    read_file_keys,
    read_info,
    read_meta,
)
from features_store.schema import SCHEMA_VERSION
from features_store.shard import (
    ShardWriter,
    durable_rows,
    plan_resuming,
    runtime_tag,
    shard_name,
    shards_dir,
    unlisted_shards,
)
from features_store.store import StoreSession, is_writable

__all__ = [
    "SCHEMA_VERSION",
    "FeatureRangeError",
    "FeatureStoreError",
    "Manifest",
    "ShardRecord",
    "ShardWriter",
    "StoreDamagedError",
    "StoreIncompleteError",
    "StoreInfo",
    "StoreLockedError",
    "StoreMeta",
    "StoreMismatchError",
    "StoreNotFoundError",
    "StoreSession",
    "StoreVersionError",
    "StoreWriteError",
    "batch_plan",
    "chunk_rows",
    "dask_shard_rows",
    "default_shard_rows",
    "default_store_name",
    "durable_rows",
    "export",
    "is_store",
    "iter_batches",
    "load",
    "plan_resuming",
    "plan_shards",
    "digest_keys",
    "is_writable",
    "keys_sha256",
    "read_errors",
    "read_features",
    "read_file_keys",
    "read_info",
    "read_manifest",
    "read_meta",
    "runtime_tag",
    "shard_name",
    "shard_rows_candidates",
    "shards_dir",
    "unlisted_shards",
]
