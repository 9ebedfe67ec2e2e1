import os
import re
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from PIL import Image

import features_store
from extract import ImageReadError, get_extractor, read_index
from pipelines.cli import main
from pipelines.runs.extraction import run_extract
from pipelines.runs.planning import default_store_path


def small_vgg(**kw):
    return get_extractor("vgg16", **({"weights": "none", "input_size": 32, "batch_size": 3} | kw))


def test_store_round_trip_matches_direct_extraction(csv_index):
    index = read_index(csv_index)
    extractor = small_vgg()
    result = run_extract(index, extractor)
    assert result.store == default_store_path(index, extractor)
    assert result.store.name == f"index.vgg16-{extractor.fingerprint()[:10]}" and not result.up_to_date
    assert result.store.is_dir() and (result.store / "features.h5").is_file()  # a store is a directory
    X, y, ids = features_store.load(result.store)
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in index.paths])
    np.testing.assert_allclose(X, small_vgg()(images), rtol=1e-5, atol=1e-6)  # other batches: float32 tolerance
    assert ids.tolist() == index.ids and y.tolist() == index.labels
    info = features_store.read_info(result.store)
    assert info.complete and info.fingerprint == extractor.fingerprint()
    assert info.extractor == extractor.spec() and info.index_sha256 == index.sha256()
    with h5py.File(result.store / "features.h5", "r") as f:  # plain h5py reads the view
        assert f["features"].shape == (8, 512) and f.attrs["complete"]
        np.testing.assert_array_equal(f["features"][:], features_store.read_features(result.store))


def test_cache_hit_does_no_model_work(csv_index):
    index = read_index(csv_index)
    first = run_extract(index, small_vgg())
    again = small_vgg()
    result = run_extract(index, again)
    assert result.up_to_date and result.n_extracted == 0 and result.store == first.store
    assert again._model is None  # the model was never built


def test_other_fingerprint_is_refused_before_building(csv_index, tmp_path):
    index = read_index(csv_index)
    out = tmp_path / "s"
    run_extract(index, small_vgg(), out)
    other = small_vgg(pooling="avg")
    with pytest.raises(features_store.StoreMismatchError,  # what differs is named (it was two hashes)
                       match=r"another extractor .*; stored -> asked: pooling 'flatten' -> 'avg'\); use another"):
        run_extract(index, other, out)
    assert other._model is None
    vgg19 = get_extractor("vgg19", weights="none", input_size=32)  # each named on its own side (it said the
    with pytest.raises(features_store.StoreMismatchError) as caught:  # store's model where the asked one goes)
        run_extract(index, vgg19, out)
    assert re.search(rf"another extractor \(vgg16, fingerprint {small_vgg().fingerprint()[:12]}\), not of the one "
                     rf"asked for \(vgg19, fingerprint {vgg19.fingerprint()[:12]}; stored -> asked: name 'vgg16' -> "
                     r"'vgg19'\)", str(caught.value))


def test_a_relabelled_index_reuses_the_store_and_builds_no_model(csv_index, tmp_path):
    out = tmp_path / "s"
    run_extract(read_index(csv_index), small_vgg(), out)
    X = features_store.read_features(out)
    csv_index.write_text(csv_index.read_text().replace(",b\n", ",c\n"))
    again = small_vgg()
    result = run_extract(read_index(csv_index), again, out)
    assert result.up_to_date and result.n_extracted == 0 and again._model is None
    assert sorted(set(features_store.read_meta(out).labels)) == ["a", "c"]
    np.testing.assert_array_equal(features_store.read_features(out), X)


def test_a_reordered_and_resplit_index_reuses_the_store(csv_index, tmp_path):
    out = tmp_path / "s"
    run_extract(read_index(csv_index), small_vgg(), out)
    X, ids = features_store.read_features(out), features_store.read_meta(out).ids.tolist()
    before = features_store.read_info(out).index_sha256
    lines = csv_index.read_text().strip().splitlines()
    rows = lines[1:][::-1]  # reversed, with a split column that the first index had not
    resplit = csv_index.parent / "resplit.csv"
    resplit.write_text("filename,label,split\n" + "".join(f"{r},{'val' if i % 4 == 0 else 'train'}\n"
                                                         for i, r in enumerate(rows)))
    again = small_vgg()
    index = read_index(resplit)
    result = run_extract(index, again, out)
    assert result.up_to_date and result.n_extracted == 0 and again._model is None
    info = features_store.read_info(out)
    assert info.index_sha256 == index.sha256() != before and info.split_counts == {"train": 6, "val": 2}
    order = [ids.index(i) for i in index.ids]
    assert features_store.read_meta(out).ids.tolist() == index.ids
    np.testing.assert_array_equal(features_store.read_features(out), X[order])  # the same stored rows
    assert info.stored_rows == 8 and info.garbage_rows == 0


def test_bad_images_are_failed_rows_and_the_run_goes_on(csv_index, tmp_path):
    root = csv_index.parent
    (root / "a" / "broken.png").write_bytes(b"not a png")
    (root / "a" / "empty.jpg").write_bytes(b"")
    text = csv_index.read_text() + "a/broken.png,a\na/empty.jpg,a\na/missing.png,a\n"
    csv_index.write_text(text)
    result = run_extract(read_index(csv_index), small_vgg(), tmp_path / "s")
    assert result.n_failed == 3 and result.n_rows == 11
    errors = dict(features_store.read_errors(result.store))
    assert set(errors) == {"a/broken.png", "a/empty.jpg", "a/missing.png"}
    assert "empty file" in errors["a/empty.jpg"] and "not found" in errors["a/missing.png"]
    X, _, ids = features_store.load(result.store)
    assert len(X) == 8 and np.isfinite(X).all()


def test_strict_stops_at_first_failure(csv_index, tmp_path):
    csv_index.write_text(csv_index.read_text() + "a/missing.png,a\n")
    with pytest.raises(ImageReadError, match="a/missing.png: file not found"):
        run_extract(read_index(csv_index), small_vgg(), tmp_path / "s", strict=True)


def test_progress_callback_sees_every_row(csv_index, tmp_path):
    seen = []

    class Bar:
        def __init__(self, total, initial):
            seen.append(("start", total, initial))

        def update(self, n):
            seen.append(n)

        def close(self):
            seen.append("closed")

    run_extract(read_index(csv_index), small_vgg(), tmp_path / "s", progress=Bar)
    assert seen[0] == ("start", 8, 0) and sum(n for n in seen[1:-1]) == 8 and seen[-1] == "closed"


class _StopAfterSix:
    """A progress bar that stops the run (a Ctrl-C) once 6 rows are durable."""

    def __init__(self, total, initial):
        self.done = 0

    def update(self, n):  # called once a batch is durable
        self.done += n
        if self.done >= 6:
            raise KeyboardInterrupt

    def close(self):
        pass


def _interrupted_store(csv_index, tmp_path):
    out = tmp_path / "s"
    with pytest.raises(KeyboardInterrupt):
        run_extract(read_index(csv_index), small_vgg(), out, progress=_StopAfterSix, shard_rows=100)
    return out


def test_inspect_counts_the_rows_an_interrupted_run_left_to_resume(csv_index, tmp_path):
    """After a Ctrl-C, inspect said "stored: 0 rows" and "8 of 8 rows not extracted yet" though the interrupted
    shard held durable rows that the re-run resumed."""
    from pipelines.runs.inspection import describe_store

    out = _interrupted_store(csv_index, tmp_path)
    status = next(line for line in describe_store(out).splitlines() if line.startswith("status:"))
    assert status == ("status:      INCOMPLETE (8 of 8 rows not extracted yet, 6 of them on disk in the shards of an "
                      "unfinished run (running now, or interrupted: a re-run resumes them)); re-run extract to resume")
    assert run_extract(read_index(csv_index), small_vgg(), out).n_extracted == 2  # resumed: 6 were kept


def test_inspect_json_counts_the_rows_an_interrupted_run_left_to_resume(csv_index, tmp_path):
    """`inspect --json`, "the same as one JSON object", said only done=0 of rows=8: not the 6 rows on disk."""
    from pipelines.runs.inspection import store_summary

    out = _interrupted_store(csv_index, tmp_path)
    summary = store_summary(out)
    assert (summary["complete"], summary["pending_rows"], summary["resumable_rows"]) == (False, 8, 6)
    assert len(summary["unlisted_shards"]) == 1 and summary["unlisted_bytes"] > 0
    run_extract(read_index(csv_index), small_vgg(), out)
    summary = store_summary(out)
    assert (summary["complete"], summary["pending_rows"], summary["resumable_rows"]) == (True, 0, 0)
    assert summary["unlisted_shards"] == [] and summary["unlisted_bytes"] == 0


def test_compact_keeps_the_shards_an_interrupted_extract_resumes(csv_index, tmp_path):
    """compact deleted every shard file its manifest does not list, an interrupted extract's unfinished shards
    too, so the re-run extracted all 8 rows again (a review of this change found it)."""
    from pipelines.runs.inspection import compact_store

    out = _interrupted_store(csv_index, tmp_path)
    compact_store(out)
    assert run_extract(read_index(csv_index), small_vgg(), out).n_extracted == 2  # resumed: 6 were kept


def _many_images(tmp_path, n):
    root = tmp_path / "many"
    rows = ["filename,label"]
    for i in range(n):
        arr = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        path = root / f"{i % 3}" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path)
        rows.append(f"{i % 3}/{i:03d}.png,{i % 3}")
    (root / "index.csv").write_text("\n".join(rows) + "\n")
    return root / "index.csv"


def _shard_progress(out):
    """Rows durable in the shard files on disk, committed or not."""
    total = 0
    for path in (out / "shards").glob("*.h5") if (out / "shards").is_dir() else ():
        try:
            with h5py.File(path, "r") as f:
                total += int(f.attrs["n_done"])
        except (OSError, KeyError):  # a shard being created under its temporary name
            pass
    return total


def test_resume_after_sigkill_equals_a_clean_run(tmp_path):
    csv = _many_images(tmp_path, 120)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pipelines.cli", "-q", "extract", str(csv), "--weights", "none",
           "--input-size", "32", "--batch-size", "2", "--workers", "1", "--shard-rows", "16", "--out", str(out)]
    env = dict(os.environ)
    kills, partial = 0, []
    for delay in (0.0, 0.5, 0.3, 0.8, 0.2, 1.0):  # after this run starts writing: at once, then mid-run
        before = _shard_progress(out)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        # wait until this run writes rows (progress lines would do too; the files are what matter), then a bit
        while proc.poll() is None and time.monotonic() < deadline and _shard_progress(out) == before:
            time.sleep(0.01)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        done = _shard_progress(out)
        if (out / "features.h5").exists():
            info = features_store.read_info(out)  # never garbage: the view opens after every kill
            assert info.n_done <= info.n_rows
            if info.complete:
                break
        if 0 < done < 120:
            partial.append(done)
        if kills >= 2 and partial:
            break
    assert kills >= 1 and partial, "no kill landed mid-run: the resume from a partial store was not exercised"
    assert main(cmd[3:]) == 0  # the resume: in this process (the kills above were of real ones), no TF start-up
    clean = run_extract(read_index(csv), small_vgg(batch_size=2), tmp_path / "clean")
    a, b = features_store.read_meta(out), features_store.read_meta(clean.store)
    assert a.ids.tolist() == b.ids.tolist() and a.ok.all() and b.ok.all()
    np.testing.assert_allclose(features_store.read_features(out), features_store.read_features(clean.store),
                               rtol=1e-5, atol=1e-6)
    info = features_store.read_info(out)
    assert info.stored_rows == 120 and len(os.listdir(out / "shards")) == len(info.shards)  # no stray shard


_HOLD_A_LOCK = """
import sys, time, filelock
lock = filelock.FileLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


# `featurehead` as started from a terminal, whose Ctrl-C raises KeyboardInterrupt (a command that a script starts in
# the background, as `.ci/run &` does, inherits an ignored SIGINT, and Python keeps it ignored: that run never stopped),
# with every thread's stack on stderr at SIGUSR1: what a run that did not stop was doing
_CLI_WITH_STACKS = ("import faulthandler, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                    "faulthandler.register(signal.SIGUSR1, all_threads=True); "
                    "from pipelines.cli import main; sys.exit(main())")


def _interrupted_once(argv):
    """Run `featurehead ARGV` until it waits for a shard's lock, send it one SIGINT; its exit code and stderr lines
    (None when it was still running 20 s later: then its threads' stacks end the lines, and it is killed)."""
    import threading

    with subprocess.Popen([sys.executable, "-c", _CLI_WITH_STACKS, *argv], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True) as proc:
        lines = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
        reader.start()
        deadline = time.monotonic() + 120
        while not any("waiting for it to finish" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, lines
            time.sleep(0.05)
        time.sleep(0.5)  # the forward pass fills the writer's queue meanwhile
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
            proc.kill()
            code = None
        reader.join(10)
    return code, lines


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGINT sent to a child process (POSIX)")
def test_one_ctrl_c_stops_a_run_that_waits_for_a_shard_another_process_holds(tmp_path):
    """The writer thread waited for that shard's lock (no timeout) with the queue full: a Ctrl-C then blocked in the
    drain of the queue until the other process let go, and only a second Ctrl-C stopped the run."""
    csv = _many_images(tmp_path, 14)
    args = ["--weights", "none", "--input-size", "32", "--batch-size", "2", "--workers", "1", "--shard-rows", "4"]
    clean = run_extract(read_index(csv), small_vgg(batch_size=2), tmp_path / "clean", shard_rows=4).store
    first, second = (s.file for s in features_store.read_manifest(clean).shards[:2])
    out = tmp_path / "held"
    (out / "shards").mkdir(parents=True)
    # the second shard's lock, held by another process: its writer waits with 5 batches to come (the queue holds 2)
    with subprocess.Popen([sys.executable, "-c", _HOLD_A_LOCK, str(out / "shards" / f".{second}.lock")],
                          stdout=subprocess.PIPE, text=True) as holder:
        try:
            assert holder.stdout.readline().strip() == "held"
            code, lines = _interrupted_once(["-q", "extract", str(csv), *args, "--out", str(out)])
            assert code is not None, "one Ctrl-C left the run waiting (20 s):\n" + "".join(lines[-150:])
            assert code == 130, lines
            assert lines[-1] == "featurehead extract: interrupted; re-run the same command to resume\n"
            assert holder.poll() is None and not (out / "shards" / second).exists()  # its shard: left to its holder
            assert [s.file for s in features_store.read_manifest(out).shards] == [first]  # what was written is kept
        finally:
            holder.kill()
    again = run_extract(read_index(csv), small_vgg(batch_size=2), out, shard_rows=4)
    assert again.n_extracted == 10  # resumed: the 4 rows of the first shard were not extracted again
    np.testing.assert_allclose(features_store.read_features(out), features_store.read_features(clean), rtol=1e-5)
    assert sorted(os.listdir(out / "shards")) == sorted(os.listdir(clean / "shards"))  # no stray shard or lock


def test_a_ctrl_c_in_the_writers_close_still_waits_for_the_write_under_way():
    """Python 3.11 marks a thread whose join a KeyboardInterrupt cut short as stopped: the run's error path took the
    writer thread for done (its close returned at once) and closed the shards that thread was still writing."""
    import threading

    from pipelines.runs.filling import AsyncWriter

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("a SIGINT reaches only the main thread")
    started, release, done = threading.Event(), threading.Event(), []

    def write():
        started.set()
        release.wait(30)
        done.append(True)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        writer = AsyncWriter(write)
        writer.put()
        assert started.wait(30)
        with pytest.raises(KeyboardInterrupt):  # the timer started inside: its SIGINT never lands outside the block
            threading.Timer(0.2, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)).start()
            writer.close()
    finally:
        signal.signal(signal.SIGINT, previous)
    threading.Timer(0.3, release.set).start()
    writer.close()  # what fill_stores does after an error: wait for the writes under way
    assert done == [True]


def test_a_second_ctrl_c_never_closes_a_shard_under_the_writer_thread(tmp_path, monkeypatch):
    """A second Ctrl-C cut short the wait of fill_stores' error path for the write under way (the first Ctrl-C's
    drain), and that path then closed the shard that the writer thread was writing and let its lock go: another
    process could take the shard while this one still wrote it. Its shards are now closed as that thread ends. And
    that write, the last of its shard, then committed the shard to the manifest after the run had let go of the store's
    lock (a writer holding it by then would have had its commits overwritten): it is left complete on disk, for the
    next run to list."""
    import threading

    from features_store.lock import unless_locked, writer_running
    from features_store.shard import ShardWriter, shard_lock_path
    from pipelines.runs.filling import Target

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("a SIGINT reaches only the main thread")
    csv = _many_images(tmp_path, 14)
    out = tmp_path / "out"
    stopping, seen, calls = threading.Event(), [], []
    main_thread = threading.main_thread().ident
    write, stop_waiting = ShardWriter.write, Target.stop_waiting

    def slow_write(self, *args, **kwargs):  # a slow disk: both Ctrl-Cs come during the second write, a shard's last
        calls.append(self.name)
        if len(calls) == 2:
            signal.pthread_kill(main_thread, signal.SIGINT)
            assert stopping.wait(30)  # fill_stores' error path has begun: it then waits for this write
            time.sleep(0.5)
            signal.pthread_kill(main_thread, signal.SIGINT)
            deadline = time.monotonic() + 30  # a guard against a hang, not a timing assertion
            while writer_running(out):  # the main thread goes on, out of the run, and lets go of the store's lock
                assert time.monotonic() < deadline, "the run kept the store's lock"
                time.sleep(0.05)
            seen.append((bool(self._file.id.valid), self._lock is not None))
        return write(self, *args, **kwargs)

    def stop_waiting_seen(self):
        stopping.set()
        stop_waiting(self)

    monkeypatch.setattr(ShardWriter, "write", slow_write)
    monkeypatch.setattr(Target, "stop_waiting", stop_waiting_seen)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_extract(read_index(csv), small_vgg(batch_size=2), out, shard_rows=4)
    finally:
        signal.signal(signal.SIGINT, previous)
    for thread in threading.enumerate():
        if thread.name == "featurehead-writer":
            thread.join(30)
    assert seen == [(True, True)]  # the shard still open and locked while its writer thread wrote it
    with unless_locked(shard_lock_path(out, calls[1])) as free:
        assert free  # and let go once that thread ended
    assert not features_store.read_manifest(out).shards  # its shard complete on disk, not listed after the lock went
    assert features_store.durable_rows(out, calls[1]) == 4
    monkeypatch.undo()
    again = run_extract(read_index(csv), small_vgg(batch_size=2), out, shard_rows=4)
    assert (again.n_extracted, features_store.read_info(again.store).stored_rows) == (10, 14)
    clean = run_extract(read_index(csv), small_vgg(batch_size=2), tmp_path / "clean", shard_rows=4)
    np.testing.assert_allclose(features_store.read_features(out), features_store.read_features(clean.store), rtol=1e-5)


def test_same_images_under_another_root_extract_nothing(csv_index, tmp_path):
    import shutil

    other = tmp_path / "copy"
    shutil.copytree(csv_index.parent, other)
    out = tmp_path / "s"
    run_extract(read_index(csv_index), small_vgg(), out)
    X = features_store.read_features(out)
    again = small_vgg()
    result = run_extract(read_index(csv_index, images_root=other), again, out)
    assert result.up_to_date and result.n_extracted == 0 and again._model is None
    assert features_store.read_info(out).attrs["images_root"] == str(other)
    np.testing.assert_array_equal(features_store.read_features(out), X)


def test_the_store_records_its_index_and_images_root_as_absolute_paths(csv_index, tmp_path, monkeypatch):
    """Typed relative, they were recorded relative to where `extract` ran: `report` and `finetune` from another
    folder could not find the images, and the next extract from there hashed every file again."""
    from extract import content

    monkeypatch.chdir(csv_index.parent.parent)
    rel = csv_index.relative_to(csv_index.parent.parent)
    out = tmp_path / "s"
    run_extract(read_index(rel, images_root=rel.parent), small_vgg(), out)
    attrs = features_store.read_info(out).attrs
    assert (attrs["index_source"], attrs["images_root"]) == (str(csv_index), str(csv_index.parent))
    monkeypatch.chdir(tmp_path)
    hashed = []
    monkeypatch.setattr(content, "file_sha256", lambda path: hashed.append(path))
    assert run_extract(read_index(csv_index), small_vgg(), out).n_extracted == 0 and hashed == []


def test_a_read_only_store_that_is_up_to_date_says_so_and_one_that_is_not_is_refused(csv_index, tmp_path):
    """A published store on a read-only mount was refused even when it listed this very index: nothing needs
    writing then. Anything to write (a relabel here) is still one line."""
    store = tmp_path / "s"
    run_extract(read_index(csv_index), small_vgg(), store)
    before = {p.name: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    ro = tmp_path / "ro"
    if os.geteuid() == 0:  # root ignores permission bits: a read-only bind mount
        ro.mkdir()
        if subprocess.run(["mount", "--bind", "-o", "ro", str(store), str(ro)], capture_output=True).returncode:
            pytest.skip("root, and cannot bind-mount read-only here")
    else:
        os.chmod(store, 0o555)
        ro = store
    relabelled = tmp_path / "relabelled.csv"
    relabelled.write_text(csv_index.read_text().replace(",a\n", ",z\n"))
    try:
        again = small_vgg()
        result = run_extract(read_index(csv_index), again, ro)
        assert result.up_to_date and result.n_extracted == 0 and again._model is None
        with pytest.raises(features_store.StoreWriteError, match="the folder is read-only"):
            run_extract(read_index(relabelled, csv_index.parent), small_vgg(), ro)
    finally:
        if ro != store:
            subprocess.run(["umount", str(ro)], check=True)
        else:
            os.chmod(store, 0o755)
    assert {p.name: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before


def test_a_v1_single_file_store_is_refused_with_one_line(csv_index, tmp_path):
    old = tmp_path / "index.vgg16-0123456789.h5"
    with h5py.File(old, "w") as f:
        f.attrs["schema_version"] = 1
    extractor = small_vgg()
    with pytest.raises(features_store.StoreVersionError) as err:
        run_extract(read_index(csv_index), extractor, old)
    assert len(str(err.value).splitlines()) == 1 and f"--out {tmp_path / 'index.vgg16-0123456789'} " in str(err.value)
    assert extractor._model is None and old.is_file()


def test_a_folder_of_other_files_is_not_made_a_store(csv_index, tmp_path, capsys):
    """`extract --out photos/` wrote features.h5, manifest.json and shards/ among the user's images, exit 0."""
    from pipelines.cli import main

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"mine")
    (folder / ".DS_Store").write_bytes(b"")
    code = main(["extract", str(csv_index), "--weights", "none", "--input-size", "32", "--out", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1
    assert f"{folder} is a folder of other files (a.jpg), not a feature store; refusing" in err
    assert sorted(p.name for p in folder.iterdir()) == [".DS_Store", "a.jpg"]
    theirs = tmp_path / "theirs" / "shards"  # a shards folder of other files (a WebDataset's): it deleted them, exit 0
    theirs.mkdir(parents=True)
    (theirs / "train-000.tar").write_bytes(b"mine")
    code = main(["extract", str(csv_index), "--weights", "none", "--input-size", "32", "--out", str(theirs.parent)])
    err = capsys.readouterr().err
    assert code == 2 and f"{theirs.parent} is a folder of other files (shards/train-000.tar), not a feature " in err
    assert [p.name for p in theirs.parent.iterdir()] == ["shards"] and (theirs / "train-000.tar").read_bytes() == b"mine"
    (folder / "a.jpg").unlink()  # only hidden files left: a store may be made there
    assert run_extract(read_index(csv_index), small_vgg(), folder).n_extracted == len(read_index(csv_index).ids)
    (folder / "README.txt").write_text("my notes")  # a store's own folder may hold a user's file
    assert run_extract(read_index(csv_index), small_vgg(), folder).up_to_date
    assert main(["compact", str(folder)]) == 0


def test_a_model_that_gives_inf_stops_the_run_in_one_line(csv_index, tmp_path, capsys):
    """A float16 overflow inside the model was stored as inf for ok rows, exit 0 (here: a float32 overflow)."""
    import keras

    from pipelines.cli import main

    inputs = keras.Input((16, 16, 3))
    conv = keras.layers.Conv2D(1, 16, name="huge")
    model = keras.Model(inputs, conv(inputs))
    conv.set_weights([np.full((16, 16, 3, 1), 1e36, np.float32), np.zeros(1, np.float32)])
    model.save(tmp_path / "huge.keras")
    code = main(["-q", "extract", str(csv_index), "--model", "keras", "--weights", str(tmp_path / "huge.keras"),
                 "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "that are inf or NaN" in err
    assert features_store.read_info(tmp_path / "s").n_done == 0


@pytest.mark.parametrize("workers", [0, -1, 2.5, True])
def test_a_bad_workers_is_refused_before_the_store_is_made(csv_index, tmp_path, workers):
    out = tmp_path / "store"
    with pytest.raises(ValueError, match=re.escape(f"`workers` (--workers) must be a positive integer. Received: {workers!r}")):
        run_extract(read_index(csv_index), small_vgg(), out, workers=workers)
    assert not out.exists()  # no "incomplete" store left behind


def test_numpy_integers_are_workers_and_shard_rows(csv_index, tmp_path):
    result = run_extract(read_index(csv_index), small_vgg(), tmp_path / "store", workers=np.int64(2),
                         shard_rows=np.int64(3))
    info = features_store.read_info(result.store)
    assert info.complete and [s["rows"] for s in info.shards] == [3, 3, 2]
