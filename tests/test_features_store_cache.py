"""The path-keyed feature cache: keys, append/lookup round trip, counters, crash leftovers, damage, locking,
read-only lookups."""

import hashlib
import multiprocessing
import os
import subprocess

import h5py
import numpy as np
import pytest

from features_store import StoreMismatchError, cache

FP = "ab" * 32
SPEC = {"name": "test", "version": 1, "config": {}}


def _rows(n, d=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_path_keys_follow_content_changes_and_skip_missing_files(tmp_path):
    a = tmp_path / "a.png"
    a.write_bytes(b"x")
    first = cache.path_keys([a, str(a), tmp_path / "missing.png"])
    assert first[0] == first[1] and first[2] == b"" and len(first[0]) == 64
    os.utime(a, ns=(1, 1))
    assert cache.path_keys([a])[0] != first[0]
    b = tmp_path / "b.png"  # two files of one size and mtime, swapped: each path gets a new key
    b.write_bytes(b"y")
    os.utime(b, ns=(1, 1))
    before = cache.path_keys([a, b])
    a.rename(tmp_path / "t.png")
    b.rename(a)
    (tmp_path / "t.png").rename(b)
    after = cache.path_keys([a, b])
    assert after[0] != before[0] and after[1] != before[1]


def test_array_keys_depend_on_the_pixels():
    images = np.zeros((3, 2, 2, 3), np.uint8)
    images[2, 0, 0, 0] = 1
    keys = cache.array_keys(images)
    assert keys[0] == keys[1] != keys[2]


def test_append_then_lookup_round_trip_with_counters(tmp_path):
    keys = cache.array_keys(np.arange(5, dtype=np.uint8).reshape(5, 1))
    x = _rows(5)
    assert cache.append(tmp_path, FP, keys[:3], x[:3], extractor=SPEC, names=["a", "b", "c"]) == 3
    assert cache.append(tmp_path, FP, keys[1:], x[1:], extractor=SPEC) == 2  # two already there
    features, found = cache.lookup(tmp_path, FP, keys[::-1])
    assert found.all()
    np.testing.assert_array_equal(features, x[::-1])
    info = cache.cache_info(tmp_path, FP)
    assert (info.n_rows, info.n_features, info.n_extracted, info.n_hits) == (5, 4, 7, 5)
    assert not any(p.suffix == ".tmp" or ".tmp-" in p.name for p in tmp_path.iterdir())
    with h5py.File(info.path, "r") as f:  # grown in whole chunks
        assert f["features"].shape[0] % f["features"].chunks[0] == 0


def test_rows_past_the_counter_are_never_returned(tmp_path):
    keys = cache.array_keys(np.arange(3, dtype=np.uint8).reshape(3, 1))
    cache.append(tmp_path, FP, keys[:1], _rows(1), extractor=SPEC)
    with h5py.File(cache.cache_path(tmp_path, FP), "r+") as f:  # a crash after the rows, before the counter
        f["keys"][1] = keys[1]
        f["features"][1] = 123.0
    features, found = cache.lookup(tmp_path, FP, keys)
    assert found.tolist() == [True, False, False]
    cache.append(tmp_path, FP, keys[1:2], _rows(1, seed=1), extractor=SPEC)
    features, found = cache.lookup(tmp_path, FP, keys[1:2])
    np.testing.assert_array_equal(features, _rows(1, seed=1))


def test_a_damaged_file_is_never_read_and_a_writer_moves_it_aside(tmp_path, caplog):
    path = cache.cache_path(tmp_path, FP)
    path.write_bytes(b"not hdf5 at all")
    keys = cache.array_keys(np.zeros((2, 1), np.uint8))
    features, found = cache.lookup(tmp_path, FP, keys)
    assert not found.any() and path.read_bytes() == b"not hdf5 at all"  # a lookup changes nothing
    assert "it is not used" in caplog.text
    cache.append(tmp_path, FP, keys[:1], _rows(1), extractor=SPEC)
    assert any(p.name.startswith(path.name + ".damaged-") for p in tmp_path.iterdir())
    assert "moved it to" in caplog.text
    assert cache.lookup(tmp_path, FP, keys)[1].all()


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_lookup_writes_nothing(tmp_path):
    keys = cache.array_keys(np.arange(3, dtype=np.uint8).reshape(3, 1))
    cache.append(tmp_path, FP, keys[:2], _rows(2), extractor=SPEC)
    before = _digests(tmp_path)
    stat = cache.cache_path(tmp_path, FP).stat()
    hits = cache.cache_info(tmp_path, FP).n_hits
    assert cache.lookup(tmp_path, FP, keys)[1].tolist() == [True, True, False]
    assert _digests(tmp_path) == before and cache.cache_path(tmp_path, FP).stat().st_mtime_ns == stat.st_mtime_ns
    assert cache.cache_info(tmp_path, FP).n_hits == hits + 2  # counted in this process, not in the file


def _read_only_lookup(folder, keys, expected):
    features, found = cache.lookup(folder, FP, keys)
    assert found.tolist() == [True, True, False]
    np.testing.assert_array_equal(features, expected)
    assert cache.cache_info(folder, FP).n_rows == 2
    assert not cache.writable(folder) and not cache.writable(folder / "sub")


def test_a_lookup_in_a_read_only_folder(tmp_path):
    keys = cache.array_keys(np.arange(3, dtype=np.uint8).reshape(3, 1))
    folder = tmp_path / "cache"
    cache.append(folder, FP, keys[:2], _rows(2), extractor=SPEC)
    os.remove(f"{cache.cache_path(folder, FP)}.lock")  # a shared cache as published: no lock file beside it
    before = _digests(folder)
    if os.geteuid() == 0:  # root ignores permission bits: a read-only bind mount is read-only for root too
        ro = tmp_path / "ro"
        ro.mkdir()
        if subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(ro)], capture_output=True).returncode:
            pytest.skip("root, and cannot bind-mount read-only here")
        try:
            _read_only_lookup(ro, keys, _rows(2))
        finally:
            subprocess.run(["umount", str(ro)], check=True)
    else:
        os.chmod(folder, 0o555)
        try:
            _read_only_lookup(folder, keys, _rows(2))
        finally:
            os.chmod(folder, 0o755)
    assert _digests(folder) == before


def test_refuses_another_fingerprint_and_bad_rows(tmp_path):
    keys = cache.array_keys(np.zeros((1, 1), np.uint8))
    cache.append(tmp_path, FP, keys, _rows(1), extractor=SPEC)
    os.replace(cache.cache_path(tmp_path, FP), cache.cache_path(tmp_path, FP[:16] + "cd" * 24))
    with pytest.raises(StoreMismatchError, match="caches features of fingerprint") as err:
        cache.lookup(tmp_path, FP[:16] + "cd" * 24, keys)
    # the file is whole, only misnamed: the advice is to move it, never to delete it (issue 13, item 9)
    assert "move that file away" in str(err.value) and "delete" not in str(err.value)
    with pytest.raises(ValueError, match=r"`features` must have shape \(1, n_features\)"):
        cache.append(tmp_path, FP, keys, _rows(2), extractor=SPEC)
    with pytest.raises(ValueError, match="`fingerprint` must be a hex digest string"):
        cache.cache_path(tmp_path, "abc")
    cache.append(tmp_path, FP, cache.array_keys(np.ones((1, 1), np.uint8)), _rows(1), extractor=SPEC)
    with pytest.raises(StoreMismatchError, match="holds 4 features per row, not 5"):
        cache.append(tmp_path, FP, cache.array_keys(np.full((1, 1), 2, np.uint8)), _rows(1, d=5), extractor=SPEC)


def _append_worker(args):
    root, start = args
    keys = cache.array_keys(np.arange(40, dtype=np.uint8).reshape(40, 1))
    x = np.repeat(np.arange(40, dtype=np.float32)[:, None], 4, axis=1)
    for lo in range(start, 40, 5):  # overlapping key ranges, interleaved with the other process
        cache.append(root, FP, keys[lo:lo + 10], x[lo:lo + 10], extractor=SPEC)
        cache.lookup(root, FP, keys[:lo])


def test_two_processes_share_one_file_without_duplicates(tmp_path):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.map(_append_worker, [(str(tmp_path), 0), (str(tmp_path), 2)])
    keys = cache.array_keys(np.arange(40, dtype=np.uint8).reshape(40, 1))
    features, found = cache.lookup(tmp_path, FP, keys)
    assert found.all() and cache.cache_info(tmp_path, FP).n_rows == 40
    np.testing.assert_array_equal(features[:, 0], np.arange(40))


APPEND = """
import sys
import numpy as np
from features_store import FeatureStoreError, cache

keys = cache.array_keys(np.arange(2000, dtype=np.int16).reshape(2000, 1))
try:
    cache.append(sys.argv[1], "ab" * 32, keys[:int(sys.argv[2])], np.ones((int(sys.argv[2]), 512), np.float32),
                 extractor={"name": "test"})
except FeatureStoreError as err:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)
"""


def test_an_append_that_meets_a_file_size_limit_is_one_error_and_keeps_the_cached_rows(tmp_path):
    """HDF5 meeting a full disk or a file-size limit while it grew the cache printed tracebacks, crashed the process
    (exit -11) or cut the file short, and the next append moved the whole cache aside."""
    import sys

    from conftest import file_size_limit

    def append(n, fsize=None):
        out = subprocess.run([sys.executable, "-c", APPEND, str(tmp_path), str(n)], capture_output=True, text=True,
                             timeout=60, preexec_fn=file_size_limit(fsize))
        return out.returncode, out.stderr.splitlines()

    assert append(100) == (0, [])  # 512 rows a chunk: 1 MiB
    size = os.path.getsize(cache.cache_path(tmp_path, FP))
    for limit in (2 * size, 4 * size):  # the 2000 rows need 4 MiB
        code, err = append(2000, limit)
        assert code == 2 and len(err) == 1 and "file-size limit" in err[0] and "feature cache" in err[0], (code, err)
        assert sorted(p.name for p in tmp_path.iterdir()) == [f"features-{FP[:16]}.h5", f"features-{FP[:16]}.h5.lock"]
        assert cache.cache_info(tmp_path, FP).n_rows == 100
    assert append(2000) == (0, [])
    keys = cache.array_keys(np.arange(2000, dtype=np.int16).reshape(2000, 1))
    features, found = cache.lookup(tmp_path, FP, keys)
    assert found.all() and cache.cache_info(tmp_path, FP).n_rows == 2000
    np.testing.assert_array_equal(features, np.ones((2000, 512), np.float32))


KILLED_CREATION = """
import os, signal, sys
import numpy as np
from features_store import cache

def replace(src, dst):  # SIGKILL at the rename of the new cache file: its temporary file is whole and reserved
    os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
keys = cache.array_keys(np.arange(600, dtype=np.int16).reshape(600, 1))
cache.append(sys.argv[1], "ab" * 32, keys, np.ones((600, 512), np.float32), extractor={"name": "test"})
"""


def test_a_creation_killed_before_its_rename_leaves_no_file_for_good(tmp_path):
    """A first append SIGKILLed while it created the cache left `features-....h5.tmp-PID`, with the blocks reserved
    for all its rows, for good: no later append removed it (it is `atomic_write`'s temporary file now)."""
    import signal
    import sys

    proc = subprocess.run([sys.executable, "-c", KILLED_CREATION, str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert any(".tmp-" in p.name for p in tmp_path.iterdir())  # what the kill left
    keys = cache.array_keys(np.arange(3, dtype=np.int16).reshape(3, 1))
    assert cache.append(tmp_path, FP, keys, _rows(3), extractor=SPEC) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"features-{FP[:16]}.h5", f"features-{FP[:16]}.h5.lock"]
    np.testing.assert_array_equal(cache.lookup(tmp_path, FP, keys)[0], _rows(3))


@pytest.mark.parametrize("cut", [1 / 8, 1 / 4, 1 / 2], ids=["an eighth", "a quarter", "half"])
def test_a_file_cut_short_is_moved_aside_by_a_writer_not_extended_and_read(tmp_path, caplog, cut):
    """HDF5 refuses a file shorter than it says it is; reserving an append's space before opening it extended the
    file past that check, so the cut-off part read as zeros: the append failed with a 'write error' every time and
    lookups raised HDF5's errors."""
    keys = cache.array_keys(np.arange(3000, dtype=np.int16).reshape(3000, 1))
    x = _rows(3000, d=64)
    cache.append(tmp_path, FP, keys[:1500], x[:1500], extractor=SPEC)
    path = cache.cache_path(tmp_path, FP)
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * (1 - cut)))
    cache.append(tmp_path, FP, keys[1500:], x[1500:], extractor=SPEC)
    assert "moved it to" in caplog.text
    assert any(p.name.startswith(path.name + ".damaged-") for p in tmp_path.iterdir())
    features, found = cache.lookup(tmp_path, FP, keys)
    assert found.tolist() == [False] * 1500 + [True] * 1500
    np.testing.assert_array_equal(features, x[1500:])
