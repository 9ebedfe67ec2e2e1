"""Store v2 under faults: a full disk (a real tmpfs as root, and an injected file-size limit everywhere), a second
writer, a read-only folder, a missing shard, SIGKILL. Each ends in one line and a store that resumes to exactly
the clean run."""

import os
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import file_size_limit

import features_store as fs

N, D = 300, 1024  # 4 KiB of features per row: 1.2 MB in all, in shards of 64 rows

WRITER = f"""
import sys, time
import numpy as np
import features_store as fs
from features_store.errors import FeatureStoreError

store, sleep = sys.argv[1], float(sys.argv[2])
keys = [__import__("hashlib").sha256(str(i).encode()).hexdigest() for i in range({N})]
try:
    with fs.StoreSession.open(store, fingerprint="c" * 64, extractor={{"name": "faults"}}) as s:
        for part in fs.plan_shards(s.missing(keys), 64):
            with s.shard_writer(part, n_features={D}) as w:
                for lo in range(w.n_done, w.n_rows, 8):
                    rows = np.array([keys.index(k) for k in part[lo:lo + 8]])
                    x = np.sin(rows[:, None] * 0.01 + np.arange({D})[None, :]).astype(np.float32)
                    w.write(x, rows % 37 != 5, [f"row {{r}} failed" for r in rows])
                    print(w.n_done, flush=True)
                    time.sleep(sleep)
                s.commit(w)
        s.write_view(ids=[f"{{i}}.png" for i in range({N})], keys=keys, labels=np.arange({N}) % 3,
                     classes=["a", "b", "c"], split=["train"] * {N})
except FeatureStoreError as err:
    print(f"writer: error: {{err}}", file=sys.stderr)
    sys.exit(2)
"""


def expected():
    rows = np.arange(N)
    x = np.sin(rows[:, None] * 0.01 + np.arange(D)[None, :]).astype(np.float32)
    x[rows % 37 == 5] = np.nan
    return x


def run(store, *, sleep=0.0, fsize=None, kill_after=None, timeout=120):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(store), str(sleep)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=file_size_limit(fsize))
    if kill_after is not None:
        for line in proc.stdout:  # progress lines, not a clock
            if int(line) >= kill_after:
                break
        proc.kill()
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def stored_rows(store):
    """Rows the manifest claims (0 when the failed run left no store: a new store is removed if it holds nothing)."""
    manifest = fs.read_manifest(store) if store.exists() else None
    return manifest.stored_rows if manifest else 0


def assert_clean(store):
    np.testing.assert_array_equal(fs.read_features(store), expected())
    info = fs.read_info(store)
    assert info.complete and info.n_rows == info.stored_rows == N and info.garbage_rows == 0
    assert info.n_failed == int(np.count_nonzero(np.arange(N) % 37 == 5))


def test_an_injected_write_failure_is_one_line_and_the_rerun_equals_a_clean_run(tmp_path):
    store = tmp_path / "store"
    # 200 KiB per file: the second shard (256 KiB of features) cannot be reserved
    code, err = run(store, fsize=200 << 10)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert str(store) in lines[0] and "re-run" in lines[0] and ("too large" in lines[0] or "space" in lines[0])
    assert stored_rows(store) < N  # nothing unwritten is claimed
    code, err = run(store)
    assert code == 0, err
    assert_clean(store)


def test_sigkill_at_many_moments_resumes_to_exactly_the_clean_run(tmp_path):
    store = tmp_path / "store"
    for kill_after in (8, 72, 136, 200, 264):
        run(store, sleep=0.003, kill_after=kill_after)
        manifest = fs.read_manifest(store)
        if manifest is not None:  # what the manifest lists is complete and durable
            for record in manifest.shards:
                with h5py.File(store / "shards" / record.file, "r") as f:
                    assert f.attrs["complete"] and int(f.attrs["n_done"]) == record.rows
    code, err = run(store)
    assert code == 0, err
    assert_clean(store)
    assert sorted(os.listdir(store / "shards")) == sorted(s.file for s in fs.read_manifest(store).shards)


def test_a_second_writer_is_refused_with_one_line(tmp_path):
    store = tmp_path / "store"
    with fs.StoreSession.open(store, fingerprint="c" * 64, extractor={"name": "faults"}):
        code, err = run(store)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "another process" in err, err
    code, err = run(store)
    assert code == 0, err
    assert_clean(store)


def test_another_extractor_is_refused(tmp_path):
    store = tmp_path / "store"
    assert run(store)[0] == 0
    with pytest.raises(fs.StoreMismatchError, match="another extractor"):
        with fs.StoreSession.open(store, fingerprint="d" * 64, extractor={"name": "other"}):
            pass


def test_a_missing_or_incomplete_shard_is_refused_not_read_as_nan(tmp_path):
    store = tmp_path / "store"
    assert run(store)[0] == 0
    first = fs.read_manifest(store).shards[0].file
    shutil.copy(store / "shards" / first, tmp_path / "kept.h5")
    os.remove(store / "shards" / first)
    with pytest.raises(fs.StoreDamagedError, match="missing"):
        fs.read_features(store)
    with h5py.File(store / "features.h5", "r") as f:  # what an outside tool would see: the NaN fill value
        assert np.isnan(f["features"][0]).all()
    shutil.copy(tmp_path / "kept.h5", store / "shards" / first)
    with h5py.File(store / "shards" / first, "r+") as f:
        f.attrs.modify("complete", False)
    with pytest.raises(fs.StoreDamagedError, match="incomplete"):
        fs.load(store)


def test_a_moved_store_reads_from_any_working_directory(tmp_path, monkeypatch):
    store = tmp_path / "store"
    assert run(store)[0] == 0
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(store, moved)
    shutil.rmtree(store)
    monkeypatch.chdir(tmp_path)
    with h5py.File(moved / "features.h5", "r") as f:  # plain h5py, through the virtual dataset
        assert f["features"].is_virtual
        np.testing.assert_array_equal(f["features"][:], expected())
    np.testing.assert_array_equal(fs.read_features(moved), expected())


def test_a_read_only_folder_is_one_line_and_still_readable(tmp_path):
    store = tmp_path / "store"
    assert run(store)[0] == 0
    if os.geteuid() == 0:  # root ignores permission bits: use a read-only bind mount
        ro = tmp_path / "ro"
        ro.mkdir()
        if subprocess.run(["mount", "--bind", "-o", "ro", str(store), str(ro)], capture_output=True).returncode:
            pytest.skip("cannot bind-mount read-only here")
        try:
            _check_read_only(ro)
        finally:
            subprocess.run(["umount", str(ro)], check=True)
    else:
        os.chmod(store, 0o555)
        try:
            _check_read_only(store)
        finally:
            os.chmod(store, 0o755)


def _check_read_only(store):
    with pytest.raises(fs.StoreWriteError, match="read-only"):
        with fs.StoreSession.open(store, fingerprint="c" * 64, extractor={"name": "faults"}):
            pass
    assert_clean(store)


def test_not_enough_space_shows_two_different_sizes(small_disk):
    """'it needs 1.6 MiB, 1.6 MiB is free' (both rounded) said nothing: as many decimals as tell them apart."""
    from features_store import durable

    free = durable.free_bytes(small_disk.path)
    with pytest.raises(fs.StoreWriteError) as info:
        durable.check_free(small_disk.path, free - durable.MIB + 2000, store="s", what="shard x")
    need, have = re.search(r"it needs (.+), (.+) is free", str(info.value)).groups()
    assert need != have and need.endswith("MiB"), str(info.value)


def test_a_real_full_disk_is_one_line_and_resumes_after_space_is_freed(tmpfs):
    mnt = tmpfs("1m")
    store = mnt / "store"
    code, err = run(store)  # 1.2 MB of features cannot fit in 1 MiB
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "space" in lines[0] and str(store) in lines[0]
    assert stored_rows(store) < N
    subprocess.run(["mount", "-o", "remount,size=4m", str(mnt)], check=True)  # space is freed
    code, err = run(store)
    assert code == 0, err
    assert_clean(store)


def test_an_export_into_a_small_read_only_filesystem_says_read_only(tmpfs, tmp_path):
    """A read-only mount with less free space than the export needs said 'not enough free space ... Free some
    space': freeing it only led to the read-only error."""
    store = tmp_path / "store"
    assert run(store)[0] == 0
    mnt = tmpfs("64k")
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    with pytest.raises(fs.StoreWriteError) as err:
        fs.export(store, mnt / "e.h5")
    assert str(err.value) == f"{mnt}: cannot write {mnt / 'e.h5'} (Read-only file system); it needs a writable folder."


def _cli_limited(fsize, *args):
    """`featurehead ARGS` in a process whose files may not grow past `fsize` bytes (`ulimit -f`): HDF5 then fails
    to flush or close a file, which h5py raises as RuntimeError, not OSError."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "-q", *args], capture_output=True, text=True,
                         env=env, timeout=300, preexec_fn=file_size_limit(fsize))
    noise = ("WARNING: All log messages before absl", "I0000 ", "E0000 ", "W0000 ")  # TensorFlow's, not ours
    return out.returncode, [line for line in out.stderr.splitlines() if not line.startswith(noise)]


def _assert_file_size_line(code, err, path):
    assert code == 2 and len(err) == 1, (code, err)
    assert str(path) in err[0] and "file-size limit" in err[0] and "ulimit -f" in err[0], err
    assert "free some space" not in err[0] and "MiB free" not in err[0], err


def test_a_file_size_limit_in_hdf5s_flush_is_one_line_and_the_store_resumes(csv_index, image_folder, tmp_path,
                                                                            capsys):
    from extract import get_extractor, read_index
    from pipelines.cli import main
    from pipelines.runs.extraction import run_extract

    store = tmp_path / "store"
    args = ["extract", str(csv_index), "--model", "vgg16", "--weights", "none", "--input-size", "32",
            "--shard-rows", "8", "--out", str(store)]
    # the view (15 KiB) fits, a shard of 8 rows (27 KiB) does not: HDF5 fails to close it
    code, err = _cli_limited(20 << 10, *args)
    _assert_file_size_line(code, err, store)
    assert stored_rows(store) == 0 and not [p for p in (store / "shards").iterdir() if ".tmp-" in p.name]
    assert main(["-q", *args]) == 0, capsys.readouterr().err  # the resume: in this process, no TF start-up
    clean = run_extract(read_index(csv_index), get_extractor("vgg16", weights="none", input_size=32), tmp_path / "c")
    np.testing.assert_allclose(fs.read_features(store), fs.read_features(clean.store), rtol=1e-5, atol=1e-6)
    # export: the checked free space is there, the limit is not; it segfaulted (exit 139) after h5py's tracebacks
    out = tmp_path / "exported.h5"
    code, err = _cli_limited(24 << 10, "export", str(store), "--out", str(out))
    _assert_file_size_line(code, err, out)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert fs.read_info(store).complete


EIO_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/types.h>
/* From the FAIL_AT-th pwrite to a file whose path holds FAIL_PATH on, every such write fails with EIO. */
static long count = 0;
static int fail(int fd) {
  char link[64], path[4096];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, sizeof path - 1);
  if (n < 0) return 0;
  path[n] = 0;
  if (!strstr(path, getenv("FAIL_PATH"))) return 0;
  return ++count >= atol(getenv("FAIL_AT"));
}
ssize_t pwrite64(int fd, const void *b, size_t n, off_t o) {
  static ssize_t (*real)(int, const void *, size_t, off_t);
  if (!real) real = dlsym(RTLD_NEXT, "pwrite64");
  if (fail(fd)) { errno = EIO; return -1; }
  return real(fd, b, n, o);
}
ssize_t pwrite(int fd, const void *b, size_t n, off_t o) {
  static ssize_t (*real)(int, const void *, size_t, off_t);
  if (!real) real = dlsym(RTLD_NEXT, "pwrite");
  if (fail(fd)) { errno = EIO; return -1; }
  return real(fd, b, n, o);
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None or not sys.platform.startswith("linux"),
                    reason="the I/O-error shim is built with gcc and preloaded (Linux)")
def test_an_io_error_while_writing_a_shards_rows_is_one_line_and_the_store_resumes(csv_index, tmp_path):
    """EIO from the disk (a failing disk, NFS) while a shard's rows were written: h5py printed its tracebacks as the
    per-write dataset objects were freed, then the process segfaulted (exit 139) at the next flush."""
    from extract import get_extractor, read_index
    from pipelines.runs.extraction import run_extract

    shim = tmp_path / "eio.so"
    (tmp_path / "eio.c").write_text(EIO_SHIM)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(shim), str(tmp_path / "eio.c"), "-ldl"], check=True)
    vgg = get_extractor("vgg16", weights="none", input_size=32)
    clean = run_extract(read_index(csv_index), vgg, tmp_path / "c")
    args = [sys.executable, "-m", "pipelines.cli", "-q", "extract", str(csv_index), "--model", "vgg16", "--weights",
            "none", "--input-size", "32", "--shard-rows", "4"]
    noise = ("WARNING: All log messages before absl", "I0000 ", "E0000 ", "W0000 ")
    store = tmp_path / "store"
    # the second write to a shard: its first rows (the first, 1, creates the shard); 2 to 4 all crashed
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "LD_PRELOAD": str(shim), "FAIL_PATH": "shards/shard-",
           "FAIL_AT": "2"}
    out = subprocess.run([*args, "--out", str(store)], capture_output=True, text=True, env=env, timeout=300)
    err = [line for line in out.stderr.splitlines() if not line.startswith(noise)]
    assert out.returncode == 2 and len(err) == 1 and "Input/output error while writing rows 0-4" in err[0], err
    assert run_extract(read_index(csv_index), vgg, store, shard_rows=4).n_extracted > 0  # the resume, here
    np.testing.assert_allclose(fs.read_features(store), fs.read_features(clean.store), rtol=1e-5, atol=1e-6)


SHUFFLED_VIEW = """
import sys
import numpy as np
import features_store as fs
from features_store.errors import FeatureStoreError

n = int(sys.argv[2])
keys = [__import__("hashlib").sha256(str(i).encode()).hexdigest() for i in range(n)]
keys = [keys[i] for i in np.random.default_rng(0).permutation(n)]  # past 1024 runs: `features` is materialised
try:
    with fs.StoreSession.open(sys.argv[1], fingerprint="c" * 64, extractor={"name": "faults"}) as s:
        print(s.write_view(ids=[f"{k[:8]}.png" for k in keys], keys=keys, labels=np.zeros(n, int), classes=["a"],
                           split=["train"] * n)["layout"])
except FeatureStoreError as err:
    print(f"writer: error: {err}", file=sys.stderr)
    sys.exit(2)
"""


def _shuffled_view_store(store, n, scratch):
    """A store of `n` one-feature rows in storage order; returns the size of its view in a shuffled order (written
    in a copy under `scratch`)."""
    keys = [__import__("hashlib").sha256(str(i).encode()).hexdigest() for i in range(n)]
    with fs.StoreSession.open(store, fingerprint="c" * 64, extractor={"name": "faults"}) as s:
        with s.shard_writer(keys, n_features=1) as w:
            w.write(np.arange(n, dtype=np.float32)[:, None], np.ones(n, bool))
            s.commit(w)
    copy = scratch / "sized"
    shutil.copytree(store, copy)
    assert _write_shuffled_view(copy, n) == (0, [])
    return os.path.getsize(copy / "features.h5")


def _write_shuffled_view(store, n, fsize=None):
    out = subprocess.run([sys.executable, "-c", SHUFFLED_VIEW, str(store), str(n)], capture_output=True, text=True,
                         timeout=120, preexec_fn=file_size_limit(fsize))
    return out.returncode, out.stderr.splitlines()


def _assert_view_refused(store, n, code, err, why):
    assert code == 2 and len(err) == 1 and why in err[0] and "the view features.h5" in err[0], (code, err)
    assert sorted(p.name for p in store.iterdir()) == [".lock", "manifest.json", "shards"]  # no temporary file left
    assert _write_shuffled_view(store, n) == (0, [])  # the limit lifted, the same write succeeds
    assert fs.read_info(store).features_layout == "materialised"
    np.testing.assert_array_equal(fs.load(store)[0][:, 0], np.random.default_rng(0).permutation(n))  # row j: perm[j]


def test_a_materialised_view_that_meets_a_file_size_limit_is_one_line(tmp_path):
    """A shuffled index's view copies the features in through HDF5: a limit met near its end made HDF5 fail as it
    freed or flushed its objects, printing tracebacks, then crash the process (exit -11)."""
    store = tmp_path / "store"
    size = _shuffled_view_store(store, 2000, tmp_path)
    for fraction in (0.9, 0.99):
        code, err = _write_shuffled_view(store, 2000, fsize=int(size * fraction))
        assert code == 2 and len(err) == 1 and "file-size limit" in err[0], (fraction, code, err)
    _assert_view_refused(store, 2000, code, err, "file-size limit")


def test_a_materialised_view_that_the_free_space_cannot_hold_is_refused_before_it_is_written(tmp_path, tmpfs):
    """The free-space check before a materialised view counted 16 bytes for each row's `errors` (it takes 256) and
    no overhead for a variable-length string: with the space in between (10,000 rows: 4.8 MB of view, 3.8 MB
    counted), HDF5 met the full disk mid-write."""
    mnt = tmpfs("16m")
    store = mnt / "store"
    size = _shuffled_view_store(store, 10000, tmp_path)
    filler = mnt / "filler"
    filler.write_bytes(b"\0" * (shutil.disk_usage(mnt).free - int(size * 0.9)))  # 90% of the view's size is free
    code, err = _write_shuffled_view(store, 10000)
    filler.unlink()
    _assert_view_refused(store, 10000, code, err, "not enough free space")
