"""SIGKILL a store writer at random moments; every kill must leave a store that a re-run completes to exactly the
clean result.

The writer is a real subprocess using the v2 API (`StoreSession`, `plan_shards`, `ShardWriter`), writing small
batches with short sleeps, and rewriting the view after each committed shard as `run_extract` does. After each
kill, what is on disk must keep the store's promises: the manifest lists only complete shards, an uncommitted
shard holds exactly its first `n_done` rows (a whole number of batches, equal to the clean values), no durable row
is ever lost, and a partial view is refused unless `allow_incomplete` and then reads exactly its done rows.
"""

import errno
import hashlib
import os
import random
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

import features_store as fs

N, D, SHARD, BATCH = 256, 512, 64, 8  # 4 shards of 8 batches each
FP = "c" * 64
KEYS = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(N)]

SCRIPT = f"""
import hashlib, sys, time
import numpy as np
import features_store as fs

store, sleep = sys.argv[1], float(sys.argv[2])
keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range({N})]
row_of = {{k: i for i, k in enumerate(keys)}}


def rows(part):
    r = np.array([row_of[k] for k in part])
    x = np.sin(r[:, None] * 0.01 + np.arange({D})[None, :]).astype(np.float32)
    return x, r % 37 != 5, [f"row {{i}} failed: é" for i in r]


def view():
    s.write_view(ids=[f"{{i}}.png" for i in range({N})], keys=keys, labels=np.arange({N}) % 3,
                 classes=["a", "b", "c"], split=["train"] * {N})


with fs.StoreSession.open(store, fingerprint="{FP}", extractor={{"name": "crash"}}) as s:
    committed = s.manifest.stored_rows if s.manifest else 0
    for part in fs.plan_shards(s.missing(keys), {SHARD}):
        with s.shard_writer(part, n_features={D}) as w:
            if w.n_done:
                print("resumed", w.n_done, flush=True)
            for lo in range(w.n_done, w.n_rows, {BATCH}):
                w.write(*rows(part[lo : lo + {BATCH}]))
                print(committed + w.n_done, flush=True)
                time.sleep(sleep)
            s.commit(w)
        committed += len(part)
        view()
    view()  # as run_extract, a run always ends by rewriting the view (a kill may land between commit and view)
    s.remove_orphans()
"""


def expected(rows=None):
    rows = np.arange(N) if rows is None else np.asarray(rows)
    x = np.sin(rows[:, None] * 0.01 + np.arange(D)[None, :]).astype(np.float32)
    x[rows % 37 == 5] = np.nan
    return x


def run_writer(store, *, sleep=0.0, kill_at=None, jitter=0.0):
    """Run the writer to the end, or SIGKILL it `jitter` s after it reports `kill_at` durable rows (-1: at once).

    Returns the writer's stdout lines.
    """
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(store), str(sleep)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    with proc:
        if kill_at is None:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            return out.splitlines()
        if kill_at >= 0:
            for line in proc.stdout:  # progress lines, not a clock: a loaded machine cannot skew the kills
                lines.append(line.strip())
                if not line.startswith("resumed") and int(line) >= kill_at:
                    break
        time.sleep(jitter)
        proc.kill()  # SIGKILL: no cleanup of any kind runs
        out, _ = proc.communicate(timeout=60)
    return lines + out.splitlines()


def check_disk(store):
    """Check what a killed writer left; return (durable rows, whether a shard was left part-written)."""
    manifest = fs.read_manifest(store) if store.exists() else None
    listed = {s.file for s in manifest.shards} if manifest else set()
    durable, mid_shard = 0, False
    for record in manifest.shards if manifest else ():
        with h5py.File(store / "shards" / record.file, "r") as f:
            assert f.attrs["complete"] and int(f.attrs["n_done"]) == record.rows == len(f["keys"])
        durable += record.rows
    for path in sorted((store / "shards").glob("shard-*.h5")) if (store / "shards").is_dir() else ():
        if path.name in listed:
            continue
        with h5py.File(path, "r") as f:  # an uncommitted shard: exactly its first n_done rows are final
            n_done, n_rows = int(f.attrs["n_done"]), len(f["keys"])
            keys = f["keys"].asstr()[:].tolist()
            assert n_done % BATCH == 0 and n_done <= n_rows
            rows = [KEYS.index(k) for k in keys[:n_done]]
            np.testing.assert_array_equal(f["features"][:n_done], expected(rows))
            assert f["ok"][:n_done].tolist() == [r % 37 != 5 for r in rows]
        durable += n_done
        mid_shard |= 0 < n_done < n_rows
    if manifest is not None and (store / "features.h5").exists():
        check_partial_view(store)
    return durable, mid_shard


def check_partial_view(store):
    """A view left by a killed run opens, is refused as incomplete, and reads exactly its done rows when allowed."""
    info = fs.read_info(store)
    assert info.n_rows == N and info.n_done <= N
    if not info.complete:
        with pytest.raises(fs.StoreIncompleteError, match="re-run the extraction to resume it"):
            fs.read_features(store)
        with pytest.raises(fs.StoreIncompleteError):
            fs.load(store)
    meta = fs.read_meta(store, allow_incomplete=True)
    rows = np.array([int(i.split(".")[0]) for i in meta.ids])
    np.testing.assert_array_equal(fs.read_features(store, allow_incomplete=True), expected(rows))
    assert meta.ok.tolist() == (rows % 37 != 5).tolist()


def test_sigkill_at_random_moments_leaves_a_store_that_a_rerun_completes_to_the_clean_result(tmp_path):
    clean = tmp_path / "clean"
    run_writer(clean)
    rng = random.Random(20240)
    store = tmp_path / "crash"
    durable, mid_shard, resumed = [0], 0, []
    for kill_at in (-1, 16, 56, 100, 136, 176, 216, 240):
        lines = run_writer(store, sleep=0.003, kill_at=kill_at, jitter=rng.uniform(0, 0.012))
        resumed += [int(line.split()[1]) for line in lines if line.startswith("resumed")]
        done, partial = check_disk(store)
        assert done >= durable[-1], f"a kill lost durable rows: {durable} then {done}"
        durable.append(done)
        mid_shard += partial
    assert mid_shard >= 3, f"kills did not land mid-shard: durable rows after each kill {durable}"
    assert resumed and min(resumed) > 0, "no run resumed a part-written shard"

    run_writer(store)
    got, want = fs.read_info(store), fs.read_info(clean)
    assert got.complete and (got.n_rows, got.stored_rows, got.garbage_rows) == (N, N, 0)
    assert got.n_failed == want.n_failed == int(np.count_nonzero(np.arange(N) % 37 == 5))
    np.testing.assert_array_equal(fs.read_features(store), fs.read_features(clean))
    np.testing.assert_array_equal(fs.read_features(store), expected())
    a, b = fs.read_meta(store), fs.read_meta(clean)
    for name in ("ids", "labels", "ok", "errors", "split"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert sorted(p.name for p in (store / "shards").iterdir()) == sorted(s["file"] for s in got.shards)
    assert [s["file"] for s in got.shards] == [s["file"] for s in want.shards]  # the same plan, the same shards


def test_atomic_write_names_the_file_not_its_temporary_name(tmp_path):
    """A read-only folder was reported as '.../.x.json.tmp-123: Read-only file system'."""
    from features_store.durable import atomic_write

    def write(tmp):
        raise OSError(errno.EROFS, "Read-only file system", tmp)

    with pytest.raises(OSError) as err:
        atomic_write(tmp_path / "x.json", write)
    assert err.value.filename == str(tmp_path / "x.json") and err.value.errno == errno.EROFS


def test_a_killed_writers_temporary_file_is_removed(tmp_path):
    """A SIGKILLed export left its whole copy of the features as .e.h5.tmp-PID for good (export and the
    pretrained models call this before they write)."""
    from features_store.durable import remove_dead_writers_files

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    if _pid_alive(gone.pid):  # reused already (rare): the test cannot tell a dead writer here
        pytest.skip("the finished process's pid was taken again")
    (tmp_path / f".e.h5.tmp-{gone.pid}").write_bytes(b"a killed export's copy")
    (tmp_path / f".e.h5.tmp-{os.getppid()}").write_bytes(b"a live writer's")  # our parent: alive
    (tmp_path / f".other.h5.tmp-{gone.pid}").write_bytes(b"another file's")
    (tmp_path / f".m.keras.tmp-{gone.pid}.keras").write_bytes(b"a killed pretraining's model")
    remove_dead_writers_files(tmp_path / "e.h5")
    remove_dead_writers_files(tmp_path / "m.keras", suffix=".keras")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".e.h5.tmp-{os.getppid()}", f".other.h5.tmp-{gone.pid}"]
    # a whole folder's at once (a report's thumbnails): every dead writer's, whatever its file; nothing else
    from features_store.durable import remove_dead_temporaries

    (tmp_path / f".t.png.tmp-{gone.pid}").write_bytes(b"a killed report's thumbnail")
    (tmp_path / f".m.keras.tmp-{gone.pid}.keras").write_bytes(b"a killed pretraining's model")
    (tmp_path / f"notes.tmp-{gone.pid}").write_bytes(b"a user's file")
    (tmp_path / f".draft.tmp-{gone.pid}.md").write_bytes(b"a user's hidden file of that shape")
    (tmp_path / ".backup.tmp-20240101123045").write_bytes(b"a number no pid can be")  # crashed os.kill
    remove_dead_temporaries(tmp_path, {"t.png", "m.keras"}.__contains__)  # only the writer's own files
    remove_dead_writers_files(tmp_path / "backup")
    (tmp_path / ".backup.tmp-\u00b2").write_bytes(b"'2' is a digit to str.isdigit, not to int")  # export failed
    remove_dead_writers_files(tmp_path / "backup")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".backup.tmp-20240101123045", ".backup.tmp-\u00b2", f".draft.tmp-{gone.pid}.md", f".e.h5.tmp-{os.getppid()}",
        f".other.h5.tmp-{gone.pid}", f"notes.tmp-{gone.pid}"]


def test_a_killed_creations_temporary_file_of_a_shard_made_again_is_removed(tmp_path):
    """A SIGKILL while a shard was created left `.shard-....h5.tmp-PID` (the shard's rows reserved: up to 1 GiB);
    the re-run made that shard again and listed it, and remove_orphans kept every file of a listed shard, that one
    too, for good (test_resume_after_sigkill_equals_a_clean_run found it now and then: 9 files, 8 shards)."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    if _pid_alive(gone.pid):  # reused already (rare): the test cannot tell a dead writer here
        pytest.skip("the finished process's pid was taken again")
    store = tmp_path / "s"
    keys = KEYS[:8]
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "crash"}) as s:
        with s.shard_writer(keys, n_features=4) as w:
            w.write(np.ones((8, 4), np.float32), np.ones(8, bool), [""] * 8)
            s.commit(w)
        shards = store / "shards"
        name = s.manifest.shards[0].file
        (shards / f".{name}.tmp-{gone.pid}").write_bytes(b"a killed creation's reserved rows")
        (shards / f".{name}.tmp-{os.getppid()}").write_bytes(b"a live writer's")  # our parent: alive
        s.remove_orphans()
    assert sorted(p.name for p in shards.iterdir()) == sorted([name, f".{name}.tmp-{os.getppid()}"])


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
