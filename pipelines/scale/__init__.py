"""Scale-out: extraction on Dask (`distributed`), one idempotent task per shard of the store.

Dask itself is imported only when a client is made or used (it is the optional `dask` extra)."""


class DaskWorkersDiedError(RuntimeError):
    """Dask gave up on a shard task because the workers running it kept dying (`distributed.KilledWorker`)."""
