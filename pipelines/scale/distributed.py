"""Distributed extraction on Dask: each shard of the store is one idempotent task.

The driver hashes the index, plans the missing keys into shards (`features_store.plan_shards`, the same plan as a
single-process run), and submits one `extract_shard` task per shard. A worker writes only its own shard file, in
place, resuming from that shard's durable rows; it builds its model once and keeps it for every shard it runs.
Only the driver commits shards to the manifest and writes the view. A task that runs twice finds its shard
complete and returns at once; a task whose worker was killed runs again elsewhere and resumes the shard.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence

import features_store
from extract.batches import decoded_batches

from ..runs.filling import computed_batches
from ..runs.versions import library_versions
from . import DaskWorkersDiedError

logger = logging.getLogger(__name__)

# The model of the last extractor a worker process ran: built by its first shard, reused by the others (only the
# last: a long-lived worker serving a sweep would otherwise hold every backbone it was ever sent).
_WORKER_MODELS: dict[str, object] = {}  # key: class and fingerprint
_CONNECT_TIMEOUT_S = 30  # a scheduler's address: how long to try to connect, and to wait for its handshake


def client_from_spec(spec: str, *, quiet: bool = False):
    """A `distributed.Client` for `--dask`: ``local:N`` starts a LocalCluster of N one-thread worker processes,
    ``tcp://HOST:PORT`` connects to a running scheduler. `quiet`: the local cluster logs only critical events
    (its workers share our terminal; a task's error reaches the caller as the task's exception)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise ValueError("`--dask` needs dask.distributed: pip install 'featurehead[dask]'") from err
    if spec.startswith("local:"):
        try:
            n = int(spec.split(":", 1)[1])
            if n < 1:
                raise ValueError
        except ValueError:
            raise ValueError(f"`--dask local:N` needs a positive number of workers. Received: --dask {spec}") from None
        # any free port on this machine only (None would take 8787 and warn when another cluster holds it)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                               silence_logs=logging.CRITICAL if quiet else logging.WARNING)
        client = None
        try:
            client = Client(cluster)
            client.register_plugin(_ignore_sigint_plugin())  # restarted workers get it too
        except BaseException:  # a Ctrl-C too: the caller gets no client to close, so its worker processes stayed
            if client is not None:
                client.close()
            cluster.close()
            raise
        return client
    if spec.startswith(("tcp://", "tls://", "ucx://")):
        _check_scheduler(spec, _CONNECT_TIMEOUT_S)
        return Client(spec, timeout=f"{_CONNECT_TIMEOUT_S}s")
    raise ValueError(f"`--dask` must be local:N or a scheduler address such as tcp://HOST:8786. Received: {spec}")


def _check_scheduler(address: str, timeout: float) -> None:
    """Raise a ValueError unless `address` answers Dask's handshake within about `timeout` seconds.

    Dask's `connect` retries a refused connection or an unknown host until its timeout (30 s of the same error), so
    one attempt of its connector comes first and says what is wrong at once. `Client(address, timeout=...)` waited for
    ever on a server that accepts and never answers (an HTTP port: the dashboard's 8787), and a server that answers
    first (an SSH banner) came out as a MemoryError of Dask's decoder: hence the handshake."""
    import asyncio

    from distributed.comm import connect, parse_address
    from distributed.comm.registry import get_backend
    from distributed.security import Security

    args = Security().get_connection_args("client")  # what `Client` connects with (TLS from Dask's configuration)

    async def handshake():
        scheme, loc = parse_address(address)
        try:
            comm = await asyncio.wait_for(get_backend(scheme).get_connector().connect(loc, **args), timeout)
        except (OSError, asyncio.TimeoutError) as err:  # Dask's CommClosedError is an OSError
            return err
        await comm.close()
        comm = await asyncio.wait_for(connect(address, timeout=timeout, **args), timeout + 1)
        await comm.close()
        return None

    try:
        unreachable = asyncio.run(handshake())
    except asyncio.TimeoutError as err:  # connected, no handshake (Dask's own "Timed out" is a plain OSError)
        raise ValueError(f"{address} accepts connections but does not answer as a Dask scheduler (a dashboard's or "
                         "another service's port?): give --dask the scheduler's address, tcp://HOST:8786 by default"
                         ) from err
    except OSError:  # the scheduler went away between the attempt and the handshake: Dask's line says so
        raise
    except Exception as err:  # noqa: BLE001  (whatever Dask's decoder makes of another protocol's bytes)
        raise ValueError(f"{address} does not answer as a Dask scheduler (another service's port?): give --dask the "
                         f"scheduler's address, tcp://HOST:8786 by default ({type(err).__name__} in the handshake)") from err
    if unreachable is not None:
        raise ValueError(_unreachable(address, unreachable, timeout)) from unreachable


def _unreachable(address: str, err: BaseException, timeout: float) -> str:
    """The line for an address whose first connection attempt failed with `err` (Dask wraps the socket's error in a
    CommClosedError: its cause says what happened)."""
    import asyncio
    import socket

    while isinstance(err.__cause__, OSError):
        err = err.__cause__
    if isinstance(err, ConnectionRefusedError):
        return (f"nothing listens at {address} (connection refused): check the host and port of --dask "
                "(tcp://HOST:8786 by default) and that `dask scheduler` runs there")
    if isinstance(err, socket.gaierror):
        return f"cannot resolve the host of {address} ({err.strerror}): check the host name in --dask"
    if isinstance(err, asyncio.TimeoutError):
        return (f"no answer from {address} within {timeout:g} s (the host down, or a firewall dropping the "
                "connection?): check the address given to --dask")
    return f"cannot connect to {address} ({err.strerror or err}): check the address given to --dask"


def _ignore_sigint_plugin():
    """A Dask worker plugin that makes each local worker process ignore SIGINT: a terminal's Ctrl-C reaches the
    whole process group, and each worker printed a KeyboardInterrupt traceback before our one line; the client
    stops them itself. (Set inside the workers, not inherited from us: we keep our own Ctrl-C.)"""
    from distributed.diagnostics.plugin import WorkerPlugin

    class IgnoreSigint(WorkerPlugin):
        name = "featurehead-ignore-sigint"

        def setup(self, worker):
            import signal
            import threading

            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGINT, signal.SIG_IGN)

    return IgnoreSigint()


def _worker_extractor(extractor):
    # the batch size is not part of the fingerprint, but a run must use its own (a smaller one after running out
    # of memory): a long-lived worker kept the first run's
    key = (f"{type(extractor).__module__}.{type(extractor).__qualname__}:{extractor.fingerprint()}:"
           f"{extractor.batch_size}")
    if key not in _WORKER_MODELS:
        _WORKER_MODELS.clear()
        _WORKER_MODELS[key] = extractor
    return _WORKER_MODELS[key]


def extract_shard(store: str, keys: Sequence[str], items: Sequence[tuple[str, int, int]], extractor, views,
                  dtype: str, strict: bool, decode_workers: int | None) -> dict:
    """Write (or finish) the shard of `keys` on this worker; return its name, rows and failed rows.

    `items[i]` is `(path, view number, content seed)` of `keys[i]`, optionally followed by the file's size and
    mtime_ns when it was hashed (then a file changed since stops the task with `extract.ImageChangedError`).
    Idempotent: a complete shard is returned as is.
    """
    node = os.uname().nodename
    # the driver made the store folder and hashed the images there: a worker that does not see them is on
    # another filesystem
    for what, folder in (("store", store), ("images", os.path.dirname(items[0][0]) if items else None)):
        if folder is not None and not os.path.isdir(folder):
            raise ValueError(f"the Dask worker on {node} does not see the {what} folder {folder}: the workers must see "
                             "the store and the images at the driver's paths (a shared filesystem)")
    extractor = _worker_extractor(extractor)
    versions = {**library_versions(), "worker": f"{node}:{os.getpid()}"}
    n_features = extractor.output_dim  # builds the model once per worker process
    with features_store.ShardWriter.open(store, keys, fingerprint=extractor.fingerprint(), n_features=n_features,
                                         dtype=dtype, versions=versions) as writer:
        start = writer.n_done
        todo = items[start:]
        paths = [item[0] for item in todo]
        stats = [tuple(item[3:5]) for item in todo] if all(len(item) == 5 for item in todo) else None
        plan = features_store.batch_plan(len(todo), extractor.batch_size)
        decoded = decoded_batches(paths, extractor.input_shape[:2], plan, decode_workers, extractor.resize,
                                  stats=stats)
        rows = computed_batches(decoded, lambda chunks: ([out] for out in extractor.stream(chunks)), [n_features],
                                strict=strict, name_of=paths.__getitem__, views=views,
                                view_seeds=None if views is None else [item[1:3] for item in todo])
        for _, _, ok, errors, (features,) in rows:
            writer.write(features, ok, errors)
        if not writer.complete:
            writer.finish()
        return {"name": writer.name, "rows": writer.n_rows, "written": writer.n_rows - start,
                "failed": writer.failed(), "n_features": n_features, "versions": versions}


def fill_store_on_dask(client, session, plan, missing: list[str], extractor, *, views, shard_rows: int | None,
                       dtype: str, strict: bool, progress, after_first_commit=None) -> int:
    """Extract the `missing` keys of one store as shard tasks on `client`; commit each as it completes.

    `after_first_commit()`, when given, runs once the first shard is committed (a new store's manifest exists
    from then on: the driver never builds the model)."""
    from concurrent.futures import CancelledError

    from distributed import KilledWorker, as_completed
    from distributed.comm.core import CommClosedError

    if not missing:
        return 0
    n_features = session.n_features
    # the plan that resumes the most rows already on disk: ours, or a single-process run's (larger shards)
    candidates = features_store.shard_rows_candidates(shard_rows, plan.n_keys, n_features, dask=True)
    shards = features_store.plan_resuming(session.store, session.fingerprint, missing, candidates,
                                          features_store.runtime_tag(library_versions()))
    run_id = uuid.uuid4().hex[:8]  # task keys unique per run: idempotence comes from the shard file
    futures = {}
    hashed = {k: (int(size), int(mtime)) for k, (size, mtime) in zip(missing, plan.hashed_stats(missing))}
    store = os.path.abspath(session.store)  # the workers of a cluster do not run in our working directory
    for keys in shards:
        items = [(os.path.abspath(plan.todo[k][0]), int(plan.todo[k][1]), int(plan.todo[k][2]), *hashed[k])
                 for k in keys]
        future = client.submit(extract_shard, store, keys, items, extractor, views, dtype,
                               strict, 1, key=f"featurehead-shard-{features_store.shard_name(session.fingerprint, keys)}-{run_id}",
                               pure=False)  # a dead worker's task is rescheduled by the scheduler itself
        futures[future] = keys
    bar = progress(total=len(missing), initial=0) if progress else None
    done = 0
    try:
        for future in as_completed(futures):
            try:
                result = future.result()  # a task's error (bad input, a full disk) is raised here, as one line
            except KilledWorker as err:
                raise DaskWorkersDiedError(
                    f"the Dask workers that ran a shard of {session.store} died, {len(missing)} rows to extract "
                    "(a worker's memory limit? the workers' and the scheduler's logs say); the shards written are "
                    "kept: re-run the same command to resume"
                ) from err
            except (CancelledError, CommClosedError) as err:  # the scheduler died, or the network went
                raise DaskWorkersDiedError(
                    f"lost the Dask scheduler while extracting {session.store} ({type(err).__name__}); the shards "
                    "written are kept: re-run the same command, with a scheduler running, to resume"
                ) from err
            first = session.manifest is None
            session.commit_shard(futures[future], n_features=result["n_features"], versions=result["versions"])
            if first and after_first_commit is not None:
                after_first_commit()
            done += result["written"]
            if bar is not None:
                bar.update(result["rows"])
    finally:
        for future in futures:
            future.cancel()
        if bar is not None:
            bar.close()
    return done
