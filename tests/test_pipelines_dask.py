"""Extraction on Dask (`LocalCluster`, 2 one-thread worker processes): the same store as a single process, a
worker SIGKILLed mid-shard, a restarted driver, and a shard task run twice."""

import hashlib
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

distributed = pytest.importorskip("distributed")

import features_store  # noqa: E402
from extract import get_extractor, read_index  # noqa: E402
from extract.applications import VGG16Extractor  # noqa: E402
from pipelines.runs.extraction import run_extract  # noqa: E402
from pipelines.runs.planning import plan_rows  # noqa: E402
from pipelines.scale.distributed import extract_shard  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-6)
SMALL = dict(weights="none", input_size=32, batch_size=4)


class BlockingVGG16(VGG16Extractor):
    """VGG16 (same name, config and fingerprint) that, once in the whole cluster, blocks on its second batch
    after publishing its pid, so that the test can SIGKILL the worker in the middle of a shard."""

    def __init__(self, marker_dir=None, **config):
        super().__init__(**config)
        self.__dict__["marker_dir"] = marker_dir

    def __getstate__(self):  # the marker travels to the workers; it is not part of the config or fingerprint
        return {**super().__getstate__(), "marker_dir": self.__dict__.get("marker_dir")}

    def __call__(self, images):
        calls = self.__dict__["_calls"] = self.__dict__.get("_calls", 0) + 1
        marker_dir = self.__dict__.get("marker_dir")
        if calls == 2 and marker_dir is not None:
            try:  # only one process wins the rename
                os.rename(os.path.join(marker_dir, "block"), os.path.join(marker_dir, f"blocked-{os.getpid()}"))
            except FileNotFoundError:
                return super().__call__(images)
            while True:
                time.sleep(1)
        return super().__call__(images)


class GatedVGG16(VGG16Extractor):
    """VGG16 (same name, config and fingerprint) that runs two batches, then waits for the event `gate` before the
    next (a batch's rows are written once the next one is computed): a shard task that goes on running after its
    driver died."""

    def __init__(self, gate=None, **config):
        super().__init__(**config)
        self.__dict__["gate"] = gate

    def __call__(self, images):
        calls = self.__dict__["_calls"] = self.__dict__.get("_calls", 0) + 1
        if calls > 2:
            self.__dict__["gate"].wait()
        return super().__call__(images)


@pytest.fixture(scope="module")
def client():
    # the dashboard on a free port, not 8787, which another test process's cluster may hold
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address="127.0.0.1:0")
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


@pytest.fixture(scope="module")
def vgg16():
    """The extractor of the single-process runs in this process: its model built, and its forward pass traced, once
    (the same config and fingerprint as each test's `get_extractor("vgg16", **SMALL)` sent to the workers)."""
    return get_extractor("vgg16", **SMALL)


@pytest.fixture
def index(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    lines = ["filename,label"]
    for i in range(24):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(root / f"{i}.png")
        lines.append(f"{i}.png,{'ab'[i % 2]}")
    (root / "index.csv").write_text("\n".join(lines) + "\n")
    return read_index(root / "index.csv")


def by_id(store):
    X, _, ids = features_store.load(store, ok_only=False)
    return dict(zip(ids.tolist(), X))


def assert_same_store(a, b):
    fa, fb = by_id(a), by_id(b)
    assert set(fa) == set(fb)
    for i in fa:
        np.testing.assert_allclose(fa[i], fb[i], **TOL)
    ia, ib = features_store.read_info(a), features_store.read_info(b)
    assert (ia.n_rows, ia.stored_rows, ia.n_failed, ia.complete) == (ib.n_rows, ib.stored_rows, ib.n_failed, True)
    files = sorted(s["file"] for s in ia.shards)
    assert len(set(files)) == len(files) == len(os.listdir(a / "shards"))  # each shard listed once, no stray file


def test_dask_run_equals_a_single_process_run(client, vgg16, index, tmp_path):
    (index.root / "7.png").write_bytes(b"broken")  # a failed row is counted the same way
    single = run_extract(index, vgg16, tmp_path / "single", shard_rows=8)
    dask = run_extract(index, get_extractor("vgg16", **SMALL), tmp_path / "dask", shard_rows=8, client=client)
    assert (dask.n_extracted, dask.n_extracted_failed, dask.n_failed) == (
        single.n_extracted, single.n_extracted_failed, single.n_failed) == (24, 1, 1)
    assert_same_store(dask.store, single.store)
    workers = {s["versions"]["worker"] for s in features_store.read_info(dask.store).shards}
    assert len(workers) >= 1


def test_a_restarted_driver_keeps_complete_shards_and_a_shard_task_is_idempotent(client, vgg16, index, tmp_path):
    extractor = get_extractor("vgg16", **SMALL)
    store = tmp_path / "dask"
    plan = plan_rows(index, store, None, None)
    shards = features_store.plan_shards(list(dict.fromkeys(plan.keys)), 8)
    items = [(str(plan.todo[k][0]), 0, int(plan.todo[k][2])) for k in shards[0]]
    args = (str(store), shards[0], items, extractor, None, "float32", False, 1)
    store.mkdir()
    # the driver died after a worker completed shard 0 but before committing it: the task ran, nothing else did
    first = client.submit(extract_shard, *args, pure=False).result()
    path = store / "shards" / first["name"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    again = client.submit(extract_shard, *args, pure=False).result()  # the same task, run twice
    assert (first["written"], again["written"]) == (8, 0)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest  # the same file
    result = run_extract(index, extractor, store, shard_rows=8, client=client)  # the driver, run again
    assert result.n_extracted == 16  # only the shards not done
    names = [s["file"] for s in features_store.read_info(store).shards]
    assert names.count(first["name"]) == 1
    clean = run_extract(index, vgg16, tmp_path / "clean", shard_rows=8)
    assert_same_store(store, clean.store)


def test_a_rerun_waits_for_a_stopped_runs_shard_task_and_stores_its_rows_once(vgg16, index, tmp_path, caplog,
                                                                              monkeypatch):
    """The task of a killed driver still wrote its shard when a single-process re-run began: the re-run planned that
    shard's rows from what was durable then, and opened the shard either while the task wrote it (HDF5: "open for
    writing in another process", exit 2) or after the task had finished it: "internal error: rows arrived beyond the
    planned shards", exit 3. (The task runs in a thread here; a worker process holds the same lock file.)"""
    import logging
    import threading

    from pipelines.scale import distributed as scale

    monkeypatch.setattr(scale, "_WORKER_MODELS", {})  # the stand-in task's model is not kept in this process
    store = tmp_path / "dask"
    store.mkdir()
    plan = plan_rows(index, store, None, None)
    keys = list(dict.fromkeys(plan.keys))  # one shard of 24 rows: the re-run's plan too (shard_rows=24)
    items = [(str(plan.todo[k][0]), 0, int(plan.todo[k][2])) for k in keys]
    gate = threading.Event()
    task_extractor = GatedVGG16(gate, **SMALL)

    def until(condition, what):
        deadline = time.monotonic() + 120  # a guard against a hang, not a timing assertion
        while not condition():
            assert time.monotonic() < deadline, what
            time.sleep(0.1)

    with ThreadPoolExecutor(2) as pool, caplog.at_level(logging.WARNING, logger="features_store"):
        task = pool.submit(extract_shard, str(store), keys, items, task_extractor, None, "float32", False, 1)
        try:
            until(lambda: task_extractor.__dict__.get("_calls", 0) > 2 or task.done(), "the task wrote no batch")
            rerun = pool.submit(run_extract, index, vgg16, store, shard_rows=24)
            until(lambda: "is being written by another process" in caplog.text or rerun.done(), "the re-run is stuck")
            assert not rerun.done(), f"the re-run did not wait for the task's shard ({rerun.exception()!r})"
        finally:
            gate.set()
        assert task.result(timeout=120)["written"] == 24
        result = rerun.result(timeout=120)
    assert (result.n_rows, result.n_failed) == (24, 0)
    clean = run_extract(index, vgg16, tmp_path / "clean", shard_rows=24)
    assert_same_store(store, clean.store)


def test_a_shard_task_that_waits_for_a_stuck_holder_is_one_line_and_the_store_resumes(client, vgg16, index, tmp_path):
    """A worker waited for a shard's lock with no end: a stuck holder of it (or one gone with its lock left behind, on
    a filesystem without flock) left the run waiting for ever, its warning only in the worker's log. The holder here
    is another process that holds the lock and writes nothing."""
    import subprocess
    import sys

    from features_store.lock import SHARD_WAIT_ENV
    from features_store.shard import shard_lock_path
    from pipelines.runs.versions import library_versions

    extractor = get_extractor("vgg16", **SMALL)
    store = tmp_path / "dask"
    plan = plan_rows(index, store, None, None)
    shards = features_store.plan_shards(list(dict.fromkeys(plan.keys)), 8)  # the run's plan (shard_rows=8)
    name = features_store.shard_name(extractor.fingerprint(), shards[1], features_store.runtime_tag(library_versions()))
    lock = shard_lock_path(store, name)
    os.makedirs(os.path.dirname(lock))
    hold = (f"import filelock, time; held = filelock.FileLock({lock!r}); held.acquire(); print('held', flush=True); "
            "time.sleep(600)")

    def set_wait(value):
        if value is None:
            os.environ.pop(SHARD_WAIT_ENV, None)
        else:
            os.environ[SHARD_WAIT_ENV] = value

    with subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout.readline().strip() == "held"
            client.run(set_wait, "0.5")  # in the workers' environment, where the wait is
            with pytest.raises(features_store.StoreLockedError) as caught:
                run_extract(index, extractor, store, shard_rows=8, client=client)
        finally:
            client.run(set_wait, None)
            holder.kill()
    assert str(caught.value).startswith(f"{store}: shard {name} is locked by another process that has written "
                                        "nothing to it for 0.5 s")
    assert f"delete the lock file {lock} when none runs" in str(caught.value) and "\n" not in str(caught.value)
    resumed = run_extract(index, get_extractor("vgg16", **SMALL), store, shard_rows=8, client=client)
    clean = run_extract(index, vgg16, tmp_path / "clean", shard_rows=8)
    assert_same_store(resumed.store, clean.store)


def test_cli_joins_a_running_scheduler_by_address(client, index, tmp_path, capsys):
    from pipelines.cli import main

    address = client.scheduler.address
    assert address.startswith("tcp://")
    out = tmp_path / "cli"
    argv = ["-q", "extract", str(index.root / "index.csv"), "--weights", "none", "--input-size", "32",
            "--batch-size", "4", "--shard-rows", "8", "--dask", address, "--out", str(out)]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    workers = {s["versions"]["worker"] for s in features_store.read_info(out).shards}
    assert all(":" in w for w in workers) and len(features_store.read_info(out).shards) == 3
    assert main(argv[:-4] + ["--dask", "local:0", "--out", str(out)]) == 2
    assert "positive number of workers" in capsys.readouterr().err


def _serve(reply: bytes):
    """A local TCP server that is not a Dask scheduler: it accepts, sends `reply`, and keeps the connection open."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    held = []

    def accept():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            held.append(conn)
            conn.sendall(reply)

    threading.Thread(target=accept, daemon=True).start()
    return server, held


@pytest.mark.parametrize("reply", [pytest.param(b"", id="silent-http-port"),
                                   pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n" * 4, id="ssh-banner")])
def test_an_address_that_is_not_a_scheduler_is_one_line_in_time(reply, monkeypatch):
    """The dashboard's port (HTTP waits for a request) hung `Client(address, timeout=...)` for ever; a service that
    speaks first (an SSH banner) was a MemoryError of Dask's decoder: an "internal error"."""
    import threading

    from pipelines.scale import distributed as scale

    monkeypatch.setattr(scale, "_CONNECT_TIMEOUT_S", 1)
    server, held = _serve(reply)
    outcome = []

    def connect():
        try:
            outcome.append(scale.client_from_spec(f"tcp://127.0.0.1:{server.getsockname()[1]}"))
        except Exception as err:  # noqa: BLE001
            outcome.append(err)

    try:
        thread = threading.Thread(target=connect, daemon=True)  # a hung Client must fail the test, not hang it
        thread.start()
        thread.join(15)
        assert outcome, "client_from_spec still waiting after 15 s"
        assert isinstance(outcome[0], ValueError), outcome[0]
        assert "does not answer as a Dask scheduler" in str(outcome[0]) and "\n" not in str(outcome[0])
    finally:
        server.close()
        for conn in held:
            conn.close()



def _refused_address() -> str:
    """A local port where nothing listens: bound, then closed."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


@pytest.mark.parametrize("address, said", [
    pytest.param(None, "nothing listens at tcp://127.0.0.1:", id="refused"),
    pytest.param("tcp://nonexistent.invalid:8786", "cannot resolve the host of tcp://nonexistent.invalid:8786",
                 id="unknown-host")])
def test_an_address_where_nothing_listens_is_one_line_at_once(address, said, index, capsys):
    """Dask's `connect` retried a refused connection and an unknown host for the whole 30 s connect timeout, then
    said only "Timed out trying to connect". The CLI runs in a thread given 20 s: the old code's 30 s fail it."""
    import threading

    from pipelines.cli import main

    argv = ["-q", "extract", str(index.root / "index.csv"), "--weights", "none", "--input-size", "32",
            "--dask", address or _refused_address(), "--out", str(index.root.parent / "never")]
    codes = []
    thread = threading.Thread(target=lambda: codes.append(main(argv)), daemon=True)
    thread.start()
    thread.join(20)
    assert codes == [2], "still connecting after 20 s" if not codes else codes
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and said in err and "--dask" in err, err
    assert not (index.root.parent / "never").exists()


# One process runs the CLI twice (a Python start-up and a TensorFlow import fewer than two `featurehead` processes);
# each run starts its own `--dask local:1` cluster, whose fresh worker shares this process's stderr (the terminal).
# The --strict run goes first, so that its one-line error comes from a process that starts Keras as a user's
# `featurehead` does (quietly, its fd 2 caught and given back on the way out); the plain run after it still has a
# fresh worker. The marker line between the runs tells whose output is whose; whatever the process writes at exit
# is the plain run's, which must be nothing.
_TWO_RUNS = """
import json, sys
from pipelines.cli import main
strict, plain, broken = json.loads(sys.argv[1])
assert "keras" not in sys.modules, "the --strict run must start Keras itself"
with open(broken, "rb") as f:
    kept = f.read()
with open(broken, "wb") as f:
    f.write(b"broken")
print(f"exit {main(strict)}", flush=True)
with open(broken, "wb") as f:
    f.write(kept)
print("=== the plain run ===", flush=True)
print("=== the plain run ===", file=sys.stderr, flush=True)
print(f"exit {main(plain)}", flush=True)
"""


def test_cli_local_workers_keep_tensorflow_notes_from_the_terminal(index, tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "local"
    argv = ["-q", "extract", str(index.root / "index.csv"), "--weights", "none", "--input-size", "32",
            "--batch-size", "4", "--dask", "local:1"]
    # --strict stops a task (7.png broken for that run): the error is one line, Dask's log silent
    runs = [argv + ["--strict", "--out", str(tmp_path / "strict")], argv + ["--out", str(out)],
            str(index.root / "7.png")]
    proc = subprocess.run([sys.executable, "-c", _TWO_RUNS, json.dumps(runs)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    out1, _, out2 = proc.stdout.partition("=== the plain run ===\n")
    err1, marked, err2 = proc.stderr.partition("=== the plain run ===\n")
    assert marked, proc.stderr
    assert out1.splitlines()[-1:] == ["exit 2"], proc.stdout
    assert len(err1.splitlines()) == 1, err1
    assert "7.png" in err1 and "--strict stops at the first failure" in err1
    assert out2.splitlines()[-2:] == [str(out), "exit 0"], proc.stdout
    assert err2 == ""  # the workers share the terminal; without -v their TensorFlow start-up is silent


def test_a_shard_task_stops_on_a_file_changed_since_it_was_hashed(client, index, tmp_path):
    from extract import ImageChangedError

    plan = plan_rows(index, tmp_path / "s", None, None)
    keys = list(dict.fromkeys(plan.keys))[:4]
    items = [(str(plan.todo[k][0]), 0, int(plan.todo[k][2]), size, mtime)
             for k, (size, mtime) in zip(keys, plan.hashed_stats(keys))]
    (tmp_path / "s").mkdir()
    args = (str(tmp_path / "s"), keys, items, get_extractor("vgg16", **SMALL), None, "float32", False, 1)
    assert client.submit(extract_shard, *args, pure=False).result()["written"] == 4  # unchanged: extracted
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(items[1][0])  # replaced after it was hashed
    args = (str(tmp_path / "t"), keys, items, *args[3:])
    (tmp_path / "t").mkdir()
    with pytest.raises(ImageChangedError, match="changed after it was hashed"):
        client.submit(extract_shard, *args, pure=False).result()


def test_relative_paths_reach_workers_that_run_in_another_directory(client, vgg16, index, tmp_path, monkeypatch):
    """A cluster's workers do not share the driver's working directory: a relative --images-root and --out were
    sent as they were (every image "vanished after it was hashed", or the shards went to the workers' folder)."""
    from pipelines.cli import main

    elsewhere = tmp_path / "workers-cwd"
    elsewhere.mkdir()
    before = client.run(os.getcwd)
    client.run(os.chdir, str(elsewhere))
    try:
        monkeypatch.chdir(index.root.parent)
        argv = ["-q", "extract", "imgs/index.csv", "--images-root", "imgs", "--weights", "none", "--input-size",
                "32", "--batch-size", "4", "--shard-rows", "8", "--dask", client.scheduler.address, "--out", "rel"]
        assert main(argv) == 0
    finally:
        for worker, cwd in before.items():
            client.run(os.chdir, cwd, workers=[worker])
    assert os.listdir(elsewhere) == []  # nothing written where the workers run
    clean = run_extract(index, vgg16, tmp_path / "clean", shard_rows=8)
    assert_same_store(index.root.parent / "rel", clean.store)


def test_a_worker_keeps_only_the_model_of_the_last_extractor(client):
    from pipelines.scale import distributed as scale

    def built(seeds):
        for seed in seeds:
            scale._worker_extractor(get_extractor("vgg16", **SMALL, seed=seed))
        return len(scale._WORKER_MODELS)

    assert client.submit(built, [11, 12, 13], pure=False).result() == 1


def test_a_run_uses_its_own_batch_size_on_a_long_lived_worker():
    """The worker's cached extractor kept the first run's batch size (not part of the fingerprint): a smaller one,
    after running out of memory, had no effect until the workers restarted."""
    from pipelines.scale import distributed as scale

    first = scale._worker_extractor(get_extractor("vgg16", **{**SMALL, "batch_size": 2}))
    again = scale._worker_extractor(get_extractor("vgg16", **{**SMALL, "batch_size": 2}))
    other = scale._worker_extractor(get_extractor("vgg16", **{**SMALL, "batch_size": 8}))
    assert again is first and other.batch_size == 8


def test_dask_shards_spread_an_index_over_the_workers_and_replan_the_same():
    """One 4096-row shard was one task: one worker busy, the bar still until the end."""
    from features_store.plan import DASK_MIN_SHARD_ROWS, dask_shard_rows

    assert dask_shard_rows(48, 512) == DASK_MIN_SHARD_ROWS
    assert dask_shard_rows(3000, 512) == 94  # 32 shards: 8 tasks for each of 4 workers
    assert dask_shard_rows(10**6, 512) == features_store.default_shard_rows(512)
    assert dask_shard_rows(10**6, 10**6) == features_store.default_shard_rows(10**6)  # wide rows: smaller shards


def test_a_worker_that_does_not_see_the_store_or_the_images_says_so(index, tmp_path):
    """It said the images "vanished after they were hashed" (a re-run repeated it), or that a shard was missing."""
    plan = plan_rows(index, tmp_path / "s", None, None)
    keys = list(dict.fromkeys(plan.keys))[:4]
    items = [(str(plan.todo[k][0]), 0, int(plan.todo[k][2])) for k in keys]
    extractor = get_extractor("vgg16", **SMALL)
    with pytest.raises(ValueError, match=r"does not see the store folder .*/s: the workers must see the store and "
                                         r"the images at the driver's paths \(a shared filesystem\)"):
        extract_shard(str(tmp_path / "s"), keys, items, extractor, None, "float32", False, 1)
    (tmp_path / "s").mkdir()
    elsewhere = [(str(tmp_path / "gone" / os.path.basename(p)), *rest) for p, *rest in items]
    with pytest.raises(ValueError, match=r"does not see the images folder .*/gone: the workers must see"):
        extract_shard(str(tmp_path / "s"), keys, elsewhere, extractor, None, "float32", False, 1)
    assert not (tmp_path / "s" / "shards").exists()


def test_a_new_store_whose_run_fails_after_a_shard_says_incomplete(client, index, tmp_path):
    """A failed or killed Dask run of a new store left committed shards but no view: inspect and load said it
    "holds no features yet"."""
    from extract import ImageReadError
    from pipelines.runs.inspection import describe_store

    (index.root / "23.png").write_bytes(b"broken")  # the last row of the last shard: the others finish first
    with pytest.raises(ImageReadError, match="--strict stops at the first failure"):
        run_extract(index, get_extractor("vgg16", **SMALL), tmp_path / "dask", shard_rows=8, client=client,
                    strict=True)
    assert features_store.read_manifest(tmp_path / "dask").shards  # a shard was committed before the failure
    assert "status:      INCOMPLETE (" in describe_store(tmp_path / "dask")
    with pytest.raises(features_store.StoreIncompleteError):
        features_store.load(tmp_path / "dask")


def test_a_run_resumes_the_shards_another_mode_cut(tmp_path):
    """A Dask run cuts smaller shards than a single process (or than an older featurehead's Dask run): the rows an
    interrupted run of the other mode left on disk were extracted again, its shards removed as orphans."""
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(24)]
    store = tmp_path / "s"
    store.mkdir()
    other = features_store.plan_shards(keys, 8)  # what the interrupted run planned
    with features_store.ShardWriter.open(store, other[1], fingerprint="f" * 12, n_features=3) as writer:
        writer.write(np.ones((5, 3), np.float32), np.ones(5, bool))
    assert features_store.plan_resuming(store, "f" * 12, keys, [16, 8]) == other  # 5 rows on disk in its plan
    assert features_store.plan_resuming(store, "f" * 12, keys, [16, 12]) == features_store.plan_shards(keys, 16)
    assert features_store.plan_resuming(tmp_path / "new", "f" * 12, keys, [16, 8]) == features_store.plan_shards(keys, 16)


def test_local_workers_ignore_a_terminals_ctrl_c_and_the_driver_does_not():
    """A Ctrl-C reaches the whole process group: each local worker printed a KeyboardInterrupt traceback."""
    from pipelines.scale.distributed import client_from_spec

    before = signal.getsignal(signal.SIGINT)
    client = client_from_spec("local:1", quiet=True)
    try:
        def ignored():
            return signal.getsignal(signal.SIGINT) == signal.SIG_IGN

        assert list(client.run(ignored).values()) == [True]
        assert signal.getsignal(signal.SIGINT) is before  # ours is left as it was
    finally:
        cluster = client.cluster
        client.close()
        cluster.close()



def _worker_pids() -> set[int]:
    """This process's children that run a local cluster's worker (multiprocessing's resource tracker stays)."""
    import psutil

    pids = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(p.cmdline()):
                pids.add(p.pid)
        except psutil.NoSuchProcess:  # gone meanwhile
            pass
    return pids


@pytest.mark.parametrize("fails", ["client", "plugin"])
def test_a_local_cluster_whose_client_fails_is_closed(fails, monkeypatch):
    """`Client(cluster)` or `register_plugin` raising left the LocalCluster and its worker processes running."""
    from pipelines.scale import distributed as scale

    def broken(*args, **kwargs):
        raise RuntimeError("refused")

    monkeypatch.setattr(*((distributed, "Client") if fails == "client" else (scale, "_ignore_sigint_plugin")), broken)
    before = _worker_pids()
    with pytest.raises(RuntimeError, match="refused"):
        scale.client_from_spec("local:1", quiet=True)
    assert _worker_pids() - before == set()


def test_cli_closes_its_local_cluster_when_a_plugin_fails(index, monkeypatch, capsys):
    """`extract --dask local:N` registered its quiet-Keras plugin outside the `try` that closes the cluster."""
    from pipelines.cli import app, main

    def broken():
        raise RuntimeError("refused")

    monkeypatch.setattr(app, "quiet_keras_plugin", broken)
    before = _worker_pids()
    assert main(["-q", "extract", str(index.root / "index.csv"), "--weights", "none", "--input-size", "32",
                 "--dask", "local:1", "--out", str(index.root.parent / "never")]) == app.EXIT_INTERNAL_ERROR
    assert "RuntimeError: refused" in capsys.readouterr().err
    assert _worker_pids() - before == set()


def test_cli_refuses_augment_past_the_view_column_before_a_local_cluster_starts(index, monkeypatch, capsys):
    """`--augment 32768 --dask local:N` started the cluster (seconds, N processes), then was refused."""
    from pipelines.cli import main

    def started(*args, **kwargs):
        raise AssertionError("a LocalCluster started")

    monkeypatch.setattr(distributed, "LocalCluster", started)
    assert main(["-q", "extract", str(index.root / "index.csv"), "--weights", "none", "--input-size", "32",
                 "--augment", "32768", "--dask", "local:1", "--out", str(index.root.parent / "never")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "`k` (--augment) must be a positive integer of at most 32767" in err, err
    assert not (index.root.parent / "never").exists()


# The tests below kill the module cluster's workers (their nannies start fresh ones, which import TensorFlow again
# when they get a shard): they come last in the file, so that on one test process they usually run last (a test
# stolen by the other process may run after them: slower, on fresh workers, not wrong; no test here depends on order).


def test_a_worker_killed_mid_shard_costs_nothing(client, index, tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    (markers / "block").touch()
    extractor = BlockingVGG16(str(markers), **SMALL, seed=1)  # a model no worker has built yet
    assert extractor.fingerprint() == get_extractor("vgg16", **SMALL, seed=1).fingerprint()
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(run_extract, index, extractor, tmp_path / "dask", shard_rows=8, client=client)
        deadline = time.monotonic() + 120
        while not (blocked := [p for p in os.listdir(markers) if p.startswith("blocked-")]):
            assert time.monotonic() < deadline and not run.done(), "no worker blocked"
            time.sleep(0.2)
        os.kill(int(blocked[0].split("-")[1]), signal.SIGKILL)  # the worker dies in the middle of a shard
        result = run.result(timeout=300)
    assert result.n_rows == 24 and result.n_failed == 0
    assert not os.path.exists(f"/proc/{blocked[0].split('-')[1]}")  # the worker really died
    clean = run_extract(index, get_extractor("vgg16", **SMALL, seed=1), tmp_path / "clean", shard_rows=8)
    assert_same_store(result.store, clean.store)


class DyingVGG16(VGG16Extractor):
    """VGG16 whose forward pass kills its worker process, wherever it runs."""

    def __call__(self, images):
        os._exit(1)


def test_workers_that_keep_dying_are_one_line_and_the_store_resumes(client, vgg16, index, tmp_path):
    """On the module's cluster, with the scheduler allowing no failure while it runs (its own cluster cost a worker
    that imported TensorFlow again). Its workers die and come back without a model: it runs after the others."""
    from pipelines.scale import DaskWorkersDiedError

    def allow_failures(n, dask_scheduler):  # distributed.scheduler.allowed-failures, read when a scheduler starts
        before, dask_scheduler.allowed_failures = dask_scheduler.allowed_failures, n
        return before

    before = client.run_on_scheduler(allow_failures, 0)
    try:
        with pytest.raises(DaskWorkersDiedError, match="died.*re-run the same command to resume") as caught:
            run_extract(index, DyingVGG16(**SMALL), tmp_path / "dask", shard_rows=8, client=client)
    finally:
        client.run_on_scheduler(allow_failures, before)
    assert "\n" not in str(caught.value)
    resumed = run_extract(index, vgg16, tmp_path / "dask", shard_rows=8)
    clean = run_extract(index, vgg16, tmp_path / "clean", shard_rows=8)
    assert_same_store(resumed.store, clean.store)
