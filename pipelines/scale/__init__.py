"""Scale-out: extraction on Dask (`distributed`), one idempotent task per shard of the store.

Dask itself is imported only when a client is made or used (it is the optional `dask` extra)."""
