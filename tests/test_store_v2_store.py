"""Store v2 units on real files: shard planning and naming, the view's features layout, compaction, commits."""

import hashlib
import json
import os

import h5py
import numpy as np
import pytest

import features_store as fs
from features_store import view as view_module
from features_store.reader import open_view

FP = "f" * 64


def keys(n, salt=""):
    return [hashlib.sha256(f"{salt}{i}".encode()).hexdigest() for i in range(n)]


def rows(k):
    idx = np.array([int(x[:8], 16) % 1000 for x in k], dtype=np.float32)
    return np.stack([idx, idx + 0.5, -idx], axis=1)


def fill(store, k, shard_rows):
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}) as s:
        for part in fs.plan_shards(s.missing(k), shard_rows):
            with s.shard_writer(part, n_features=3) as w:
                w.write(rows(part), np.ones(len(part), bool))
                s.commit(w)


def view(store, k, **kw):
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}) as s:
        return s.write_view(ids=[f"{x[:6]}.png" for x in k], keys=k, labels=np.zeros(len(k), int), classes=["a"],
                            split=[""] * len(k), **kw)


def test_plans_and_shard_names_are_deterministic():
    k = keys(10)
    assert fs.plan_shards(k, 4) == [k[:4], k[4:8], k[8:]]
    assert fs.shard_name(FP, k[:4]) == fs.shard_name(FP, list(k[:4]))
    assert fs.shard_name(FP, k[:4]) != fs.shard_name("e" * 64, k[:4]) != fs.shard_name(FP, k[1:5])
    assert fs.default_shard_rows(512) == 4096 and fs.default_shard_rows(25088) == 4096
    assert fs.default_shard_rows(1 << 20) == 256  # 4 MiB rows: 1 GiB per shard
    with pytest.raises(ValueError, match="shard_rows"):
        fs.plan_shards(k, 0)


def test_a_resume_under_another_backend_or_keras_starts_a_new_shard(tmp_path):
    """A partial shard written by one backend is never completed by another (their last bits differ)."""
    store, k = tmp_path / "store", keys(8)
    tf = {"keras_backend": "tensorflow", "keras": "3.15.1"}
    with fs.ShardWriter.open(store, k, fingerprint=FP, n_features=3, versions=tf) as w:
        w.write(rows(k[:4]), np.ones(4, bool), [""] * 4)  # killed here: 4 of 8 rows durable
    with fs.ShardWriter.open(store, k, fingerprint=FP, n_features=3, versions=dict(tf)) as w:
        assert w.n_done == 4  # the same runtime resumes it
        same = w.name
    for other in ({"keras_backend": "torch", "keras": "3.15.1"}, {"keras_backend": "tensorflow", "keras": "3.16.0"},
                  {**tf, "backend_version": "2.22.0"}):
        with fs.ShardWriter.open(store, k, fingerprint=FP, n_features=3, versions=other) as w:
            assert w.n_done == 0 and w.name != same
    assert fs.runtime_tag(tf) == "tensorflow/3.15.1" and fs.runtime_tag({"python": "3.11"}) == ""


def test_an_ordered_view_is_virtual_and_a_shuffled_one_is_materialised(tmp_path, monkeypatch):
    monkeypatch.setattr(view_module, "MAX_MAPPINGS", 8)  # the real threshold is 1024 runs; the logic is the same
    store, k = tmp_path / "store", keys(60)
    fill(store, k, 16)
    assert view(store, k)["layout"] == "virtual"
    with h5py.File(store / "features.h5", "r") as f:
        assert f["features"].is_virtual and len(f["features"].virtual_sources()) == 4
        np.testing.assert_array_equal(f["features"][:], rows(k))
    shuffled = [k[i] for i in np.random.default_rng(0).permutation(60)]
    assert view(store, shuffled)["layout"] == "materialised"
    with h5py.File(store / "features.h5", "r") as f:
        assert not f["features"].is_virtual
        np.testing.assert_array_equal(f["features"][:], rows(shuffled))
    np.testing.assert_array_equal(fs.read_features(store), rows(shuffled))
    np.testing.assert_array_equal(fs.read_features(store, [5, 1, 5]), rows(shuffled)[[5, 1, 5]])
    assert fs.read_info(store).features_layout == "materialised"


def test_pending_keys_make_the_view_incomplete_until_they_are_stored(tmp_path):
    store, k = tmp_path / "store", keys(10)
    fill(store, k[:6], 4)
    counts = view(store, k)
    assert (counts["pending"], counts["complete"]) == (4, False)
    with pytest.raises(fs.StoreIncompleteError, match="6 of 10"):
        fs.load(store)
    np.testing.assert_array_equal(fs.read_features(store, allow_incomplete=True), rows(k[:6]))
    info = fs.read_info(store)
    assert (info.n_rows, info.n_done, info.complete, info.n_failed) == (10, 6, False, 0)
    fill(store, k, 4)
    assert view(store, k)["complete"]
    np.testing.assert_array_equal(fs.load(store)[0], rows(k))


def test_keyless_rows_fail_with_their_reason_and_do_not_block_completion(tmp_path):
    store, k = tmp_path / "store", keys(4)
    fill(store, k, 4)
    view(store, k[:3] + [""], reasons=["", "", "", "cannot read the file: No such file"])
    info = fs.read_info(store)
    assert info.complete and info.n_failed == 1
    assert fs.read_errors(store) == [(f"{''[:6]}.png", "cannot read the file: No such file")]
    X, _, ids = fs.load(store)
    assert len(ids) == 3 and np.isnan(fs.read_features(store)[3]).all()


def test_compaction_keeps_whole_shards_rewrites_the_rest_and_commits_first(tmp_path):
    store, k = tmp_path / "store", keys(12)
    fill(store, k, 4)
    before = {s.file for s in fs.read_manifest(store).shards}
    live = k[:4] + k[5:7]  # shard 0 whole, shard 1 in part, shard 2 gone
    view(store, live)
    assert fs.read_info(store).garbage_rows == 6
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}) as s:
        counts = s.compact()
    assert counts == {"rows_before": 12, "rows_after": 6, "shards_before": 3, "shards_after": 2}
    after = {s.file for s in fs.read_manifest(store).shards}
    assert len(before & after) == 1  # the whole shard is kept as it is
    assert sorted(p.name for p in (store / "shards").iterdir()) == sorted(after)
    np.testing.assert_array_equal(fs.read_features(store), rows(live))
    info = fs.read_info(store)
    assert (info.stored_rows, info.garbage_rows, info.complete) == (6, 0, True)
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["schema_version"] == 2 and len(manifest["shards"]) == 2


def test_compaction_copies_a_stored_inf_as_it_is(tmp_path):
    """An older featurehead stored a model's inf as an ok row; compacting such a store was refused with the
    extraction's "the model gave ... inf" line, though compact runs no model."""
    store, k = tmp_path / "store", keys(8)
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}) as s:
        for part in fs.plan_shards(s.missing(k), 4):
            with s.shard_writer(part, n_features=3) as w:
                x = rows(part)
                x[1, 2] = np.inf
                w.write(x, np.ones(len(part), bool), finite=False)  # as the older version wrote it
                s.commit(w)
    view(store, k[1:3] + k[5:])
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}) as s:
        assert s.compact()["rows_after"] == 5
    with h5py.File(store / "features.h5", "r") as f:  # the copies, as an outside tool reads them
        stored = f["features"][:]
    assert np.isinf(stored[[0, 2], 2]).all() and np.isfinite(np.delete(stored, [0, 2], axis=0)).all()  # k1, k5
    # featurehead's readers refuse an ok row's inf (train failed on it): extracting it again says what it is
    with pytest.raises(fs.StoreDamagedError, match=r"NaN or inf features in 2 rows .* an older featurehead stored"):
        fs.read_features(store)


def test_compaction_killed_while_deleting_frees_the_rest_when_run_again(tmp_path):
    """A compaction killed after its commit, while deleting the old shards, left them on disk; running it again
    found nothing to rewrite and returned without deleting them: the disk space it promises stayed used (a review
    reproduced it with SIGKILL and EIO at the second remove)."""
    store, k = tmp_path / "store", keys(12)
    fill(store, k, 4)
    view(store, k[:6])
    old = {p.name: p.read_bytes() for p in (store / "shards").iterdir()}
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}) as s:
        s.compact()
    kept = {p.name for p in (store / "shards").iterdir()}
    for name, data in old.items():  # the files the kill left: unlisted by the committed manifest
        (store / "shards" / name).write_bytes(data)
    assert len(list((store / "shards").iterdir())) > len(kept)
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}) as s:
        counts = s.compact()
    assert counts["rows_after"] == counts["rows_before"] == 6
    assert {p.name for p in (store / "shards").iterdir()} == kept
    np.testing.assert_array_equal(fs.read_features(store), rows(k[:6]))


def test_compaction_resumed_after_an_interruption_keeps_every_live_row(tmp_path):
    """An interrupted compaction has listed some of its new shards beside the old ones (a kill or a full disk
    after their commit); compacting again must keep every live row, the new shards' included."""
    store, k = tmp_path / "store", keys(12)
    fill(store, k, 4)
    live = k[:4] + k[5:7]
    view(store, live)
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}) as s:
        # the first shard the compaction plans ([k5] at one row per shard), committed before the interruption
        with s.shard_writer(k[5:6], n_features=3) as w:
            w.write(rows(k[5:6]), np.ones(1, bool))
            s.commit(w, versions={"compacted": "true"})
    assert fs.read_info(store).stored_rows == 13
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}) as s:
        counts = s.compact(shard_rows=1)
    assert counts["rows_after"] == 6
    info = fs.read_info(store)
    assert (info.stored_rows, info.garbage_rows, info.complete) == (6, 0, True)
    np.testing.assert_array_equal(fs.read_features(store), rows(live))


def test_a_reader_that_opened_the_view_before_a_compaction_reads_the_same_rows(tmp_path):
    """Readers take no lock: a compaction commits its view, then deletes the shards it rewrote, under a reader."""
    store, k = tmp_path / "store", keys(12)
    fill(store, k, 4)
    live = k[:4] + k[5:7] + k[8:9]
    view(store, live)
    before = {r.file for r in fs.read_manifest(store).shards}
    batches = fs.iter_batches(store, batch_size=3)
    first = next(batches)[0]  # the view is open; shards 1 and 2 are still the old ones
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}) as s:
        assert s.compact()["rows_after"] == 7
    assert len(before - {p.name for p in (store / "shards").iterdir()}) == 2  # rewritten, then deleted
    rest = [x for x, _, _ in batches]
    np.testing.assert_array_equal(np.concatenate([first, *rest]), rows(live))
    # a row whose features were dropped meanwhile (listed again, not extracted yet) is an error, never NaN
    batches = fs.iter_batches(store, batch_size=3)
    next(batches)
    view(store, live[:4])
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}) as s:
        s.compact()
    view(store, live)  # k5, k6, k8 pending again
    with pytest.raises(fs.StoreDamagedError, match="changed while it was read"):
        list(batches)


def test_a_reader_that_opened_the_view_before_a_compaction_reads_its_summary(tmp_path):
    """`info` read the shards of the manifest it had opened: "the shard ... that the view uses is missing; re-run the
    extraction" (`run_extract` reads it after releasing the lock: an extraction that succeeded exited 2 when a
    compaction began)."""
    store, k = tmp_path / "store", keys(12)
    fill(store, k, 4)
    live = k[:4] + k[5:7] + k[8:9]
    view(store, live)
    stale = open_view(store)
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}) as s:
        s.compact()
    info = stale.info()
    assert (info.n_rows, info.n_done, info.stored_rows, info.garbage_rows, info.complete) == (7, 7, 7, 0, True)
    assert [shard["file"] for shard in info.shards] == [r.file for r in fs.read_manifest(store).shards]
    np.testing.assert_array_equal(stale.features(np.arange(7)), rows(live))


def test_a_store_that_another_process_holds_open_for_writing_is_read_and_never_unlisted(tmp_path, monkeypatch):
    """Readers took HDF5's file lock: while another process held the view or a listed shard open for writing (a Dask
    task run twice reopens its complete shard; any tool opening the view in "r+"), every read said the file "cannot be
    read" or "is not a readable store view; re-run the extraction". The store's files are never written under the
    names readers open, so readers take no HDF5 lock. A shard that cannot be opened right now (HDF5's lock, when the
    environment insists on it) is reported, and never unlisted (and extracted again)."""
    import subprocess
    import sys

    from pipelines.runs.inspection import describe_store

    monkeypatch.delenv("HDF5_USE_FILE_LOCKING", raising=False)  # HDF5 lets it override the program's choice
    store, k = tmp_path / "store", keys(8)
    fill(store, k, 4)
    view(store, k)
    manifest = (store / "manifest.json").read_bytes()
    shard = store / "shards" / fs.read_manifest(store).shards[0].file
    hold = ("import h5py, sys, time; files = [h5py.File(p, 'r+') for p in sys.argv[1:]]; print('open', flush=True); "
            "time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(shard), str(store / "features.h5")],
                              stdout=subprocess.PIPE, text=True)
    locked = ("import sys, features_store as fs\n"
              "with fs.StoreSession.open(sys.argv[1], fingerprint='f' * 64, extractor={'name': 't'}) as s:\n"
              "    s.missing([])")
    try:
        assert holder.stdout.readline().strip() == "open"
        np.testing.assert_array_equal(fs.load(store)[0], rows(k))
        assert fs.read_info(store).n_done == 8 and "status:      complete" in describe_store(store)
        fs.export(store, tmp_path / "one.h5")
        with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}) as s:
            assert s.missing(k) == []
        refused = subprocess.run([sys.executable, "-c", locked, str(store)], capture_output=True, text=True,
                                 env={**os.environ, "HDF5_USE_FILE_LOCKING": "TRUE"})
        assert "StoreDamagedError" in refused.stderr and "cannot be read" in refused.stderr, refused.stderr[-600:]
        assert (store / "manifest.json").read_bytes() == manifest
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    with h5py.File(tmp_path / "one.h5", "r") as f:
        np.testing.assert_array_equal(f["features"][:], rows(k))
    # the view open here with h5py's own flags, its virtual `features` holding the shards open: HDF5 refuses a second
    # open of a file with other flags, so a reader takes those
    with h5py.File(store / "features.h5", "r") as f, h5py.File(shard, "r"):
        np.testing.assert_array_equal(f["features"][:], fs.read_features(store))


_NO_FLOCK = """
#include <errno.h>
int flock(int fd, int operation) { errno = ENOLCK; return -1; }
"""


def test_a_store_on_a_filesystem_without_flock_is_read(tmp_path, monkeypatch):
    """On NFS without its lock daemon `flock` fails with ENOLCK (HDF5 tolerates only ENOSYS): every read said the view
    "is not a readable store view ... re-run the extraction to rewrite it", which a re-run could not mend. Such a
    filesystem is stood for by a C shim, preloaded into the reader, whose `flock` fails so."""
    import shutil
    import subprocess
    import sys

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or not sys.platform.startswith("linux"):
        pytest.skip("needs a C compiler and LD_PRELOAD (Linux)")
    (tmp_path / "noflock.c").write_text(_NO_FLOCK)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(tmp_path / "noflock.so"), str(tmp_path / "noflock.c")],
                   check=True)
    store, k = tmp_path / "store", keys(8)
    fill(store, k, 4)
    view(store, k)
    monkeypatch.delenv("HDF5_USE_FILE_LOCKING", raising=False)  # HDF5 lets it override the program's choice
    reader = ("import sys, features_store as fs; from pipelines.cli import main; X, y, ids = fs.load(sys.argv[1]); "
              "print(X.sum()); sys.exit(main(['-q', 'inspect', sys.argv[1]]))")
    done = subprocess.run([sys.executable, "-c", reader, str(store)], capture_output=True, text=True,
                          env={**os.environ, "LD_PRELOAD": str(tmp_path / "noflock.so")})
    assert done.returncode == 0, done.stderr[-600:]
    assert float(done.stdout.split()[0]) == pytest.approx(float(rows(k).sum()), rel=1e-5)
    assert "status:      complete" in done.stdout


def test_a_partial_shard_that_another_process_writes_is_never_started_again(tmp_path):
    import subprocess
    import sys

    store, k = tmp_path / "store", keys(4)
    with fs.ShardWriter.open(store, k, fingerprint=FP, n_features=3) as w:
        w.write(rows(k[:2]), np.ones(2, bool))
        path = w.path
    holder = subprocess.Popen([sys.executable, "-c", f"import h5py, sys, time; f = h5py.File({str(path)!r}, 'r+'); "
                               "print('open', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(fs.StoreWriteError, match="is open for writing in another process .a Dask worker"):
            fs.ShardWriter.open(store, k, fingerprint=FP, n_features=3)  # (it said "Resource temporarily unavailable")
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    with fs.ShardWriter.open(store, k, fingerprint=FP, n_features=3) as w:
        assert w.n_done == 2  # its durable rows are still there


def test_a_new_store_before_its_first_view_is_being_written_while_its_writer_holds_the_lock(tmp_path, capsys):
    """A reader of a new store in its first run, before the first view (the model still building, or the first
    shard just committed), said "holds no features yet; run featurehead extract" or "a run stopped before writing
    it" while the run went on. The writer here is a real `StoreSession`, which holds the real lock."""
    from pipelines.cli import main

    store, k = tmp_path / "store", keys(4)
    still = (f"{store} is being written: an extraction still running holds its writer lock and has not written the "
             "view (features.h5) yet; wait for it to finish, or stop it and re-run the same `featurehead extract` to "
             "resume.")
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}) as s:
        with pytest.raises(fs.StoreIncompleteError) as err:  # no manifest yet
            fs.read_info(store)
        assert str(err.value) == still
        with s.shard_writer(k, n_features=3) as w:
            w.write(rows(k), np.ones(len(k), bool))
            s.commit(w)
        for read in (fs.read_info, fs.read_meta, fs.load):
            with pytest.raises(fs.StoreIncompleteError) as err:
                read(store)
            assert str(err.value) == still
        capsys.readouterr()
        for command in (["inspect", str(store)], ["train", str(store), "--out", str(tmp_path / "head")]):
            assert main(["-q", *command]) == 2
            assert capsys.readouterr().err.strip().splitlines() == [f"featurehead {command[0]}: error: {still}"]
    # the writer gone, its lock with it: now a run did stop before writing the view
    with pytest.raises(fs.StoreIncompleteError, match="a run stopped before writing it"):
        fs.read_info(store)


def test_a_folder_is_a_store_by_its_manifest_or_by_shard_files_alone_in_its_shards_folder(tmp_path):
    """Any `shards/` folder made a store of its folder (a WebDataset's tar files): the feature cache refused it as
    "a feature store", and readers said to extract into it, which then deleted those files as unlisted shards."""
    theirs = tmp_path / "theirs"
    (theirs / "shards").mkdir(parents=True)
    assert not fs.is_store(theirs)  # an empty shards folder: nothing a run would resume
    (theirs / "shards" / "train-000.tar").write_bytes(b"mine")
    assert not fs.is_store(theirs)
    with pytest.raises(fs.StoreNotFoundError, match=r"is not a feature store \(it holds shards/train-000\.tar\)"):
        fs.read_info(theirs)
    with pytest.raises(fs.StoreWriteError, match=r"is a folder of other files \(shards/train-000\.tar\), not a "):
        fill(theirs, keys(2), 2)
    assert sorted(p.name for p in (theirs / "shards").iterdir()) == ["train-000.tar"]
    # a new store's first run, stopped before its first commit: its shard's rows, which a re-run resumes
    store, k = tmp_path / "store", keys(4)
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}) as s:
        with s.shard_writer(k, n_features=3) as w:
            w.write(rows(k[:2]), np.ones(2, bool))
    assert not (store / "manifest.json").exists() and fs.is_store(store)
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}) as s:  # resumed, nothing refused
        with s.shard_writer(k, n_features=3) as w:
            assert w.n_done == 2
            w.write(rows(k[2:]), np.ones(2, bool))
            s.commit(w)
    assert fs.is_store(store)


def test_a_reader_probing_the_lock_does_not_refuse_a_writer_starting_then(tmp_path):
    """`writer_running` takes the lock shared for an instant; a writer that starts in it waits, not "is being
    written by another process". The probe's hold is stretched here to 0.1 s (a real shared flock on the file)."""
    import fcntl
    import threading

    store = tmp_path / "store"
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}):
        pass  # the store folder and its lock file exist
    fd = os.open(store / ".lock", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    release = threading.Timer(0.1, os.close, (fd,))
    release.start()
    try:
        with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}):
            pass
    finally:
        release.join()


def _wait_for(condition, what):
    import time

    deadline = time.monotonic() + 60  # a guard against a hang, not a timing assertion
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_second_writer_of_a_shard_waits_for_the_first_and_finds_it_where_that_one_left_it(tmp_path, caplog):
    """A Dask task of a stopped run goes on writing its shard: a re-run's writer opened that shard at once (HDF5's lock
    refused it, "open for writing in another process"; with HDF5's locking off, both wrote it, each resuming from the
    rows it had seen). This process's two writers stand for the two processes (each holds its own lock file)."""
    import logging
    import threading

    store, k = tmp_path / "store", keys(4)
    first = fs.ShardWriter.open(store, k, fingerprint=FP, n_features=3)
    first.write(rows(k[:2]), np.ones(2, bool))
    second = []
    thread = threading.Thread(target=lambda: second.append(fs.ShardWriter.open(store, k, fingerprint=FP,
                                                                                n_features=3)), daemon=True)
    with caplog.at_level(logging.WARNING, logger="features_store"):
        thread.start()
        _wait_for(lambda: "is being written by another process" in caplog.text or second,
                  "the second writer neither waited nor opened the shard")
    assert second == [], "the second writer opened a shard that another writer still writes"
    first.write(rows(k[2:]), np.ones(2, bool))
    first.finish()
    first.close()
    thread.join(60)
    assert len(second) == 1 and second[0].complete and second[0].n_done == 4
    second[0].close()
    assert os.listdir(store / "shards") == [first.name]  # a complete shard's lock file goes with its writer


def test_a_wait_for_a_shard_whose_holder_writes_nothing_ends_in_one_line(tmp_path, monkeypatch):
    """The wait had no end: a stuck holder of a shard's lock (or one gone with its lock left behind, on a filesystem
    without flock) left a re-run, or a Dask worker whose warning only its log shows, waiting for ever."""
    from features_store.lock import SHARD_WAIT_ENV, shard_lock_wait
    from features_store.shard import shard_lock_path

    store, k = tmp_path / "store", keys(4)
    stuck = fs.ShardWriter.open(store, k, fingerprint=FP, n_features=3)  # another process's writer: never writes again
    os.utime(stuck.path, ns=(1, 1))
    stuck.write(rows(k[:1]), np.ones(1, bool))
    assert os.stat(stuck.path).st_mtime_ns != 1  # a batch written moves what a waiter watches (the shard's stat)
    lock = shard_lock_path(store, stuck.name)
    try:
        monkeypatch.setenv(SHARD_WAIT_ENV, "0.3")
        with pytest.raises(fs.StoreLockedError) as err:
            fs.ShardWriter.open(store, k, fingerprint=FP, n_features=3)
        assert str(err.value) == (
            f"{store}: shard {stuck.name} is locked by another process that has written nothing to it for 0.3 s "
            f"(stuck, or gone and its lock left behind): stop that process, or delete the lock file {lock} when none "
            f"runs, then re-run the same command to resume ({SHARD_WAIT_ENV} sets the wait, in seconds)")
        for value in ("soon", "nan", "0"):
            monkeypatch.setenv(SHARD_WAIT_ENV, value)
            with pytest.raises(ValueError, match=rf"^`{SHARD_WAIT_ENV}` must be a positive number of seconds \(inf: no "
                                                 f"end\\). Received: {SHARD_WAIT_ENV}='{value}'$"):
                fs.ShardWriter.open(store, k, fingerprint=FP, n_features=3)
        monkeypatch.setenv(SHARD_WAIT_ENV, "inf")
        assert shard_lock_wait() == float("inf")  # the wait without an end, as before it had one
    finally:
        stuck.close()  # its process stopped
    with fs.ShardWriter.open(store, k, fingerprint=FP, n_features=3) as w:
        assert w.n_done == 1  # resumed from its durable row


def test_a_wait_for_a_shard_lasts_while_its_holder_writes_rows(tmp_path):
    """The wait's end is counted from the holder's last write to the shard file, not from the wait's start: a holder
    that writes a batch now and then (a large model on a CPU) is waited for however long its shard takes."""
    from features_store.lock import _Progress

    shard, now = tmp_path / "shard.h5", [0.0]
    shard.write_bytes(b"rows")
    progress = _Progress(str(shard), 10, clock=lambda: now[0])
    now[0] = 9.9
    assert not progress.stalled()
    os.utime(shard, ns=(1, 1))  # a batch written: the file's mtime moves
    now[0] = 15
    assert not progress.stalled()
    now[0] = 24.9
    assert not progress.stalled()
    now[0] = 25
    assert progress.stalled()  # 10 s without a write
    assert not _Progress(str(tmp_path / "not yet"), 10, clock=lambda: now[0]).stalled()


def test_a_session_writes_nothing_once_it_has_let_go_of_the_lock(tmp_path, monkeypatch):
    """A run's writer thread that a second Ctrl-C left writing committed its shard to the manifest after the run had let
    go of the store's lock: a writer that took the lock meanwhile had its commits overwritten by a manifest it did not
    expect. A commit under way as the session closes now ends before the lock goes, and a commit after it is refused;
    the next run lists that shard, complete on disk."""
    import threading

    from features_store import store as store_module
    from features_store.lock import writer_running

    store, k = tmp_path / "store", keys(12)
    fill(store, k[:4], 4)
    entered, go = threading.Event(), threading.Event()
    commit = store_module.commit_manifest

    def slow_commit(*args):  # a slow disk
        entered.set()
        assert go.wait(30)
        commit(*args)

    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}) as s:
        under_way, late = (s.shard_writer(part, n_features=3) for part in (k[4:8], k[8:]))
        for writer, part in ((under_way, k[4:8]), (late, k[8:])):
            writer.write(rows(part), np.ones(4, bool))
        monkeypatch.setattr(store_module, "commit_manifest", slow_commit)
        thread = threading.Thread(target=s.commit, args=(under_way,), daemon=True)
        thread.start()
        assert entered.wait(30)
    assert writer_running(store)  # the session has closed; its lock stays with the commit under way
    go.set()
    thread.join(30)
    assert not writer_running(store)  # and goes with it
    monkeypatch.undo()
    with pytest.raises(fs.StoreLockedError, match=f"the manifest listing shard {late.name} not written: this writer "
                                                  "has let go of the store's lock"):
        s.commit(late)
    listed = [r.file for r in fs.read_manifest(store).shards]
    assert listed[-1] == under_way.name and late.name not in listed and len(listed) == 2
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}) as s:
        assert s.missing(k) == k[8:]
        with s.shard_writer(k[8:], n_features=3) as writer:
            assert writer.complete
            s.commit(writer)
    view(store, k)
    np.testing.assert_array_equal(fs.load(store)[0], rows(k))


def test_orphans_that_another_process_writes_are_kept_until_it_lets_go(tmp_path):
    """A re-run with another plan (another index, another --shard-rows) removed as an orphan the shard that a Dask
    task of a stopped run still wrote: that task's work was lost (it went on writing a deleted file)."""
    store, k = tmp_path / "store", keys(6)
    fill(store, k, 6)
    other = keys(3, "other")
    writer = fs.ShardWriter.open(store, other, fingerprint=FP, n_features=3)  # another process's, still writing
    writer.write(rows(other[:1]), np.ones(1, bool))
    try:
        with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}) as s:
            assert s.remove_orphans() == 0
        assert os.path.exists(writer.path)
    finally:
        writer.close()  # its process let go (or died) with the shard unfinished
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}) as s:
        assert s.remove_orphans() == 1
    assert os.listdir(store / "shards") == [fs.read_manifest(store).shards[0].file]  # its lock file went too


def test_a_committed_shard_is_listed_once_and_an_orphan_is_removed(tmp_path):
    store, k = tmp_path / "store", keys(6)
    fill(store, k, 6)
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}) as s:
        with s.shard_writer(k, n_features=3) as w:  # the same keys: the same, complete file
            assert w.complete and w.n_done == 6
            s.commit(w)
        with s.shard_writer(keys(3, "orphan"), n_features=3) as w:
            w.write(rows(keys(2, "orphan")), np.ones(2, bool))  # a partial shard of a plan that changed
        for left in (".manifest.json.tmp-4242", ".features.h5.tmp-4243"):  # a killed writer's, never renamed
            (store / left).write_bytes(b"\0" * 100)
        assert s.remove_orphans() == 3
    assert len(fs.read_manifest(store).shards) == 1
    assert sorted(p.name for p in store.iterdir() if p.name.startswith(".")) == [".lock"]


def test_a_run_killed_after_committing_shards_reads_them_when_a_partial_store_is_allowed(tmp_path):
    """A run writes its view first ("incomplete"), then commits shards; killed before its last view, the store had
    8 of 12 rows done for `read_info`, while `load(allow_incomplete=True)` returned none of them and `export` said
    "its view was written with 0 of 12 rows extracted"."""
    store, k = tmp_path / "store", keys(12)
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}) as s:
        s.ensure_manifest(3)
        s.write_view(ids=[f"{x[:6]}.png" for x in k], keys=k, labels=np.arange(12) % 2, classes=["a", "b"],
                     split=["train"] * 12)
        for part in fs.plan_shards(k[:8], 4):  # committed; the kill comes before the view is written again
            with s.shard_writer(part, n_features=3) as w:
                w.write(rows(part), np.arange(len(part)) != 1, ["", "unreadable", "", ""])
                s.commit(w)
    info = fs.read_info(store)
    assert info.n_done == 8 and not info.complete
    assert info.n_failed == 2  # as the readers see them (it said 0: the view's own ok flags of pending rows)
    X, y, ids = fs.load(store, allow_incomplete=True)  # ok rows only: row 1 of each shard failed
    done = [0, 2, 3, 4, 6, 7]
    np.testing.assert_array_equal(X, rows([k[i] for i in done]))
    assert ids.tolist() == [f"{k[i][:6]}.png" for i in done] and y.tolist() == ["ab"[i % 2] for i in done]
    meta = fs.read_meta(store, allow_incomplete=True)
    assert meta.ok.tolist() == [i not in (1, 5) for i in range(8)] and meta.errors[1] == "unreadable"
    np.testing.assert_array_equal(fs.read_features(store, [7, 0], allow_incomplete=True), rows([k[7], k[0]]))
    for read in (fs.load, lambda p: fs.export(p, tmp_path / "x.h5")):
        with pytest.raises(fs.StoreIncompleteError, match=r"is incomplete \(8 of 12 rows extracted\); re-run"):
            read(store)
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}):  # a run going on: not "re-run"
        with pytest.raises(fs.StoreIncompleteError) as err:
            fs.load(store)
        assert str(err.value) == (f"{store} is being extracted now (8 of 12 rows extracted); wait for the extraction "
                                  "to finish, or stop it and re-run the same `featurehead extract` to resume.")


def test_a_shard_is_closed_before_it_is_listed_so_a_reader_of_the_store_reads_it(tmp_path):
    """`featurehead inspect` while extract runs: a shard the manifest lists must be open for writing nowhere, or
    HDF5's lock made the reader say the shard "cannot be read; re-run the extraction to rebuild it"."""
    import subprocess
    import sys

    store, k = tmp_path / "store", keys(8)
    fill(store, k[:4], 4)
    view(store, k)  # as an extract of 4 more images writes it first: incomplete until they are in
    reader = ("import sys, features_store as fs; info = fs.read_info(sys.argv[1]); "
              "x = fs.read_features(sys.argv[1], allow_incomplete=True); print(info.n_done, info.stored_rows, len(x))")
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "t"}) as s:
        with s.shard_writer(k[4:], n_features=3) as w:
            w.write(rows(k[4:]), np.ones(4, bool))
            s.commit(w)  # listed: readers may read it from now on
            done = subprocess.run([sys.executable, "-c", reader, str(store)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-400:]
    assert done.stdout.split() == ["8", "8", "8"]
