"""Round trip through a v2 store: columns, features in any order, filters, batches, errors, refusals."""

import hashlib
import json
import shutil
import subprocess

import h5py
import numpy as np
import pytest

import features_store as fs
from features_store import SCHEMA_VERSION, StoreDamagedError, StoreMismatchError, StoreNotFoundError

N, D = 12, 6
FAILED = {3: "cannot identify image file 'b.png'", 7: "truncated JPEG"}
FP = "f" * 64
KEYS = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(N)]


@pytest.fixture
def args():
    return dict(
        ids=[f"img/{i:02d}.png" for i in range(N)],
        keys=KEYS,
        labels=np.array([0, 1, 2, -1, 0, 1, 2, 0, 1, 2, 0, 1]),
        classes=["cat", "dog", "émeu"],
        split=["train"] * 6 + ["val"] * 3 + ["test"] * 2 + [""],
        view=np.array([0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        source=np.array([0, 0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
        attrs={"index_path": "flowers.csv"},
        index_sha256="a" * 64,
        versions={"h5py": h5py.__version__},
    )


def rows(lo, hi):
    x = np.arange(lo * D, hi * D, dtype=np.float32).reshape(hi - lo, D) / 7
    ok = np.array([i not in FAILED for i in range(lo, hi)])
    errors = [FAILED.get(i, "") for i in range(lo, hi)]
    return x, ok, errors


def expected_features():
    x, ok, _ = rows(0, N)
    x[~ok] = np.nan
    return x


def write_store(path, args, *, batch_size=5, shard_rows=5, dtype="float32"):
    with fs.StoreSession.open(path, fingerprint=FP, extractor={"name": "vgg16", "config": {"pooling": "avg"}},
                              dtype=dtype) as session:
        for part in fs.plan_shards(session.missing(args["keys"]), shard_rows):
            with session.shard_writer(part, n_features=D) as writer:
                first = KEYS.index(part[0])
                for lo in range(writer.n_done, len(part), batch_size):
                    hi = min(lo + batch_size, len(part))
                    writer.write(*rows(first + lo, first + hi))
                session.commit(writer)
        return session.write_view(**args)


@pytest.fixture
def store(tmp_path, args):
    path = tmp_path / "flowers.vgg16-ffffffffff"
    write_store(path, args)
    return path


def test_round_trip_info(store, args):
    info = fs.read_info(store)
    assert (info.schema_version, info.n_rows, info.n_features, info.n_done, info.n_failed) == (SCHEMA_VERSION, N, D, N, 2)
    assert info.complete and info.fingerprint == FP and info.classes == ("cat", "dog", "émeu")
    assert info.extractor == {"name": "vgg16", "config": {"pooling": "avg"}} and info.attrs == {"index_path": "flowers.csv"}
    assert info.split_counts == {"train": 6, "val": 3, "test": 2, "": 1} and info.index_sha256 == "a" * 64
    assert (info.stored_rows, info.garbage_rows, len(info.shards)) == (N, 0, 3)


def test_round_trip_features_and_meta(store, args):
    np.testing.assert_array_equal(fs.read_features(store), expected_features())
    meta = fs.read_meta(store)
    assert meta.ids.tolist() == args["ids"] and meta.split.tolist() == args["split"]
    np.testing.assert_array_equal(meta.codes, args["labels"])
    np.testing.assert_array_equal(meta.view, args["view"])
    np.testing.assert_array_equal(meta.source, args["source"])
    assert meta.labels[3] == "" and meta.labels[2] == "émeu"
    assert meta.ok.tolist() == [i not in FAILED for i in range(N)] and meta.errors[7] == "truncated JPEG"


def test_read_features_rows_in_the_order_asked(store):
    asked = [11, 0, 5, 5, 2]
    np.testing.assert_array_equal(fs.read_features(store, asked), expected_features()[asked])


def test_read_features_rejects_rows_out_of_range(store):
    with pytest.raises(IndexError, match=r"`rows` must lie in \[0, 12\)"):
        fs.read_features(store, [0, 12])


def test_plain_h5py_reads_the_view(store):
    with h5py.File(store / "features.h5", "r") as f:
        assert f["features"].dtype == np.float32 and f["features"].shape == (N, D) and f["features"].is_virtual
        np.testing.assert_array_equal(f["features"][:], expected_features())
        assert f["ids"].asstr()[0] == "img/00.png" and f["keys"].asstr()[1] == KEYS[1]
        assert f["labels"].dtype == np.int32 and f["view"].dtype == np.int16
        assert f["errors"].dtype.itemsize == 256
        assert json.loads(f.attrs["extractor"]) == {"config": {"pooling": "avg"}, "name": "vgg16"}
        assert f.attrs["schema_version"] == 2 and bool(f.attrs["complete"])


@pytest.mark.skipif(shutil.which("h5dump") is None, reason="h5dump is not installed")
def test_h5dump_reads_the_header(store):
    out = subprocess.run(["h5dump", "-H", str(store / "features.h5")], capture_output=True, text=True,
                         check=True).stdout
    for name in ("features", "ids", "labels", "errors", "fingerprint", "complete"):
        assert f'"{name}"' in out


def test_float16_storage(tmp_path, args):
    path = tmp_path / "half"
    write_store(path, args, dtype="float16")
    assert fs.read_info(path).dtype == "float16"
    np.testing.assert_allclose(fs.read_features(path), expected_features(), rtol=1e-3)
    with pytest.raises(StoreMismatchError, match="float16"):
        write_store(path, args)


def test_long_error_is_cut_on_a_character_boundary(tmp_path, args):
    global FAILED
    saved = FAILED
    FAILED = {3: "é" * 200}  # 400 bytes of UTF-8
    try:
        path = tmp_path / "long"
        write_store(path, args)
        reason = fs.read_errors(path)[0][1]
    finally:
        FAILED = saved
    assert reason == "é" * 128 and len(reason.encode()) == 256


def test_a_resumed_shard_equals_one_go(tmp_path, args):
    path = tmp_path / "resumed"
    with fs.StoreSession.open(path, fingerprint=FP, extractor={"name": "vgg16"}) as session:
        with session.shard_writer(KEYS, n_features=D) as writer:
            writer.write(*rows(0, 5))  # then the process "dies": the shard is neither complete nor committed
    with pytest.raises(StoreNotFoundError, match="holds no features yet"):
        fs.read_info(path)
    with fs.StoreSession.open(path, fingerprint=FP, extractor={"name": "vgg16"}) as session:
        with session.shard_writer(KEYS, n_features=D) as writer:
            assert writer.n_done == 5
            writer.write(*rows(5, N))
            session.commit(writer)
        session.write_view(**args)
    np.testing.assert_array_equal(fs.read_features(path), expected_features())


def test_fingerprint_check_on_read(store):
    fs.read_features(store, fingerprint=FP)
    with pytest.raises(StoreMismatchError, match="another extractor"):
        fs.load(store, fingerprint="0" * 64)


def test_damaged_view_and_foreign_or_missing_paths(tmp_path, store):
    (store / "features.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(StoreDamagedError, match="re-run the extraction"):
        fs.read_info(store)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreNotFoundError, match="holds no features yet"):
        fs.read_meta(tmp_path / "empty")
    with pytest.raises(StoreNotFoundError, match="No feature store"):
        fs.load(tmp_path / "nowhere")


def test_shard_writes_are_validated(tmp_path):
    with fs.StoreSession.open(tmp_path / "s", fingerprint=FP, extractor={"name": "t"}) as session:
        with session.shard_writer(KEYS[:4], n_features=D) as writer:
            with pytest.raises(ValueError, match=r"`features` must have shape \(n, 6\)"):
                writer.write(np.zeros((2, 5), np.float32), np.ones(2, bool))
            with pytest.raises(ValueError, match="rows left"):
                writer.write(np.zeros((5, D), np.float32), np.ones(5, bool))
            with pytest.raises(ValueError, match="needs all 4 rows written"):
                writer.finish()
        with pytest.raises(ValueError, match="`keys` must not be empty"):
            session.shard_writer([], n_features=D)


@pytest.mark.parametrize(
    "kwargs, expected_rows",
    [
        pytest.param({}, [0, 1, 2, 4, 5, 6, 8, 9, 10, 11], id="ok-only"),
        pytest.param({"ok_only": False}, list(range(N)), id="all"),
        pytest.param({"split": "val"}, [6, 8], id="val"),
        pytest.param({"split": ["test", ""]}, [9, 10, 11], id="splits"),
        pytest.param({"views": False, "split": "train"}, [0, 2, 4, 5], id="originals"),
    ],
)
def test_load_filters(store, args, kwargs, expected_rows):
    X, y, ids = fs.load(store, **kwargs)
    np.testing.assert_array_equal(X, expected_features()[expected_rows])
    assert ids.tolist() == [args["ids"][i] for i in expected_rows]
    names = ["cat", "dog", "émeu"]
    assert y.tolist() == [names[c] if c >= 0 else "" for c in args["labels"][expected_rows]]


def test_load_rejects_unknown_split(store):
    with pytest.raises(ValueError, match="Received: split='training'"):
        fs.load(store, split="training")


@pytest.mark.parametrize("batch_size", [1, 3, 5, 100])
def test_iter_batches_covers_every_row_once(store, batch_size):
    batches = list(fs.iter_batches(store, batch_size, ok_only=False))
    assert all(len(X) == len(y) == len(ids) <= batch_size for X, y, ids in batches)
    X = np.concatenate([b[0] for b in batches])
    ids = np.concatenate([b[2] for b in batches])
    np.testing.assert_array_equal(X, expected_features())
    assert ids.tolist() == fs.read_meta(store).ids.tolist()


def test_iter_batches_filters_like_load(store):
    X, y, ids = fs.load(store, split="train", views=False)
    batches = list(fs.iter_batches(store, 3, split="train", views=False))
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), X)
    assert np.concatenate([b[1] for b in batches]).tolist() == y.tolist()


def test_iter_batches_rejects_bad_batch_size(store):
    with pytest.raises(ValueError, match="`batch_size` must be a positive integer. Received: batch_size=0"):
        fs.iter_batches(store, 0)


def test_read_errors(store):
    assert fs.read_errors(store) == [("img/03.png", FAILED[3]), ("img/07.png", FAILED[7])]
