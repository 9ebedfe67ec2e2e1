import json
import shutil
import subprocess

import h5py
import numpy as np
import pytest

import features_store as fs
from features_store import (
    SCHEMA_VERSION,
    StoreDamagedError,
    StoreIncompleteError,
    StoreMismatchError,
    StoreNotFoundError,
    StoreWriter,
)

N, D = 12, 6
FAILED = {3: "cannot identify image file 'b.png'", 7: "truncated JPEG"}


@pytest.fixture
def args():
    return dict(
        fingerprint="f" * 64,
        extractor={"name": "vgg16", "config": {"pooling": "avg"}},
        index_sha256="a" * 64,
        n_features=D,
        ids=[f"img/{i:02d}.png" for i in range(N)],
        labels=np.array([0, 1, 2, -1, 0, 1, 2, 0, 1, 2, 0, 1]),
        classes=["cat", "dog", "émeu"],
        split=["train"] * 6 + ["val"] * 3 + ["test"] * 2 + [""],
        view=np.array([0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        source=np.array([0, 0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
        versions={"h5py": h5py.__version__},
        attrs={"index_path": "flowers.csv"},
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


def write_store(path, args, stop=N, batch_size=5, finish=True, **options):
    with StoreWriter.open(path, **args, **options) as writer:
        for lo, hi in fs.batch_plan(stop, batch_size, writer.n_done):
            writer.write(lo, *rows(lo, hi))
        if finish:
            writer.finish()
        return writer.n_done


@pytest.fixture
def store(tmp_path, args):
    path = tmp_path / "flowers.vgg16-ffffffffff.h5"
    write_store(path, args)
    return path


def test_round_trip_info(store, args):
    info = fs.read_info(store)
    assert info.schema_version == SCHEMA_VERSION
    assert (info.n_rows, info.n_features, info.n_done, info.n_failed) == (N, D, N, 2)
    assert info.complete and info.fingerprint == args["fingerprint"]
    assert info.extractor == args["extractor"] and info.versions == args["versions"]
    assert info.classes == ("cat", "dog", "émeu") and info.attrs == {"index_path": "flowers.csv"}
    assert info.dtype == "float32" and info.chunks == (N, D)
    assert info.split_counts == {"train": 6, "val": 3, "test": 2, "": 1}
    assert info.created.endswith("+00:00")


def test_round_trip_features_and_meta(store, args):
    np.testing.assert_array_equal(fs.read_features(store), expected_features())
    meta = fs.read_meta(store)
    assert meta.ids.tolist() == args["ids"]
    assert meta.labels.tolist()[:4] == ["cat", "dog", "émeu", ""]
    np.testing.assert_array_equal(meta.codes, args["labels"])
    np.testing.assert_array_equal(meta.view, args["view"])
    np.testing.assert_array_equal(meta.source, args["source"])
    assert meta.ok.tolist() == [i not in FAILED for i in range(N)]
    assert meta.errors[7] == "truncated JPEG" and meta.errors[0] == ""


def test_read_features_rows_in_the_order_asked(store):
    asked = np.array([11, 0, 5, 5, 2])
    np.testing.assert_array_equal(fs.read_features(store, asked), expected_features()[asked])
    assert fs.read_features(store, []).shape == (0, D)


def test_read_features_rejects_rows_out_of_range(store):
    with pytest.raises(IndexError, match=r"`rows` must lie in \[0, 12\). Received: rows from 0 to 12"):
        fs.read_features(store, [0, 12])


def test_plain_h5py_reads_the_schema(store):
    with h5py.File(store, "r") as f:
        assert f["features"].dtype == np.float32 and f["features"].chunks == (N, D)
        assert f["ids"].asstr()[0] == "img/00.png"
        assert f["labels"].dtype == np.int32 and f["view"].dtype == np.int16
        assert f["errors"].dtype.itemsize == 256
        assert json.loads(f.attrs["extractor"]) == {"config": {"pooling": "avg"}, "name": "vgg16"}
        assert f.attrs["n_done"] == N and bool(f.attrs["complete"])


@pytest.mark.skipif(shutil.which("h5dump") is None, reason="h5dump is not installed")
def test_h5dump_reads_the_header(store):
    out = subprocess.run(["h5dump", "-H", str(store)], capture_output=True, text=True, check=True).stdout
    for name in ("features", "ids", "labels", "errors", "fingerprint", "n_done"):
        assert f'"{name}"' in out


@pytest.mark.parametrize("dtype, compression", [("float16", None), ("float32", "gzip"), ("float32", "lzf")])
def test_round_trip_options(tmp_path, args, dtype, compression):
    path = tmp_path / "s.h5"
    write_store(path, args, dtype=dtype, compression=compression)
    assert fs.read_info(path).dtype == dtype
    got = fs.read_features(path)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected_features(), rtol=1e-3)


def test_long_error_is_cut_on_a_character_boundary(tmp_path, args):
    path = tmp_path / "s.h5"
    with StoreWriter.open(path, **args) as writer:
        x, ok, _ = rows(0, N)
        writer.write(0, x, ok, ["x" + "é" * 300 if not good else "" for good in ok])
    # 1 + 2 * 127 = 255 bytes; a 128th "é" would split across the 256-byte limit
    assert fs.read_errors(path)[0] == ("img/03.png", "x" + "é" * 127)


def test_partial_store_is_refused_then_visible_when_allowed(tmp_path, args):
    path = tmp_path / "s.h5"
    assert write_store(path, args, stop=5, finish=False) == 5
    message = rf"{path} is incomplete \(5 of 12 rows\); re-run the extraction to resume it"
    for read in (fs.read_features, fs.read_meta, fs.load):
        with pytest.raises(StoreIncompleteError, match=message):
            read(path)
    with pytest.raises(StoreIncompleteError, match=message):
        fs.iter_batches(path, 4)
    np.testing.assert_array_equal(fs.read_features(path, allow_incomplete=True), expected_features()[:5])
    assert len(fs.read_meta(path, allow_incomplete=True).ids) == 5
    assert fs.read_info(path).n_done == 5 and not fs.read_info(path).complete
    assert fs.read_errors(path) == [("img/03.png", FAILED[3])]


def test_resume_equals_one_go(tmp_path, args, store):
    path = tmp_path / "resumed.h5"
    write_store(path, args, stop=7, batch_size=3, finish=False)
    with StoreWriter.open(path, **args) as writer:
        assert (writer.n_done, writer.n_failed) == (7, 1)
        for lo, hi in fs.batch_plan(N, 4, writer.n_done):
            writer.write(lo, *rows(lo, hi))
        writer.finish()
    np.testing.assert_array_equal(fs.read_features(path), fs.read_features(store))
    assert fs.read_meta(path).errors.tolist() == fs.read_meta(store).errors.tolist()
    assert fs.read_info(path).n_failed == 2


def test_open_complete_store_gives_all_rows_done(store, args):
    with StoreWriter.open(store, **args) as writer:
        assert writer.n_done == N
    assert fs.read_info(store).complete


@pytest.mark.parametrize(
    "change, match",
    [
        pytest.param({"fingerprint": "e" * 64}, "fingerprint: stored='f+', asked='e+'", id="fingerprint"),
        pytest.param({"index_sha256": "b" * 64}, "index_sha256: stored='a+', asked='b+'", id="index"),
        pytest.param({"n_features": D + 1}, "n_features: stored=6, asked=7", id="n_features"),
        pytest.param({"dtype": "float16"}, "dtype: stored='float32', asked='float16'", id="dtype"),
    ],
)
def test_mismatch_is_refused(store, args, change, match):
    with pytest.raises(StoreMismatchError, match=rf"{match}.*use another --out or delete {store}"):
        StoreWriter.open(store, **{**args, **change})


def test_mismatch_in_rows_is_refused(store, args):
    more = {**args, "ids": args["ids"] + ["x.png"], "labels": np.append(args["labels"], 0),
            "split": args["split"] + [""], "view": None, "source": None}
    with pytest.raises(StoreMismatchError, match=r"n_rows: stored=12, asked=13"):
        StoreWriter.open(store, **more)


def test_fingerprint_check_on_read(store):
    message = "fingerprint ffffffffffff, not eeeeeeeeeeee: the features come from another extractor"
    with pytest.raises(StoreMismatchError, match=message):
        fs.read_features(store, fingerprint="e" * 64)
    with pytest.raises(StoreMismatchError, match=message):
        fs.load(store, fingerprint="e" * 64)
    assert fs.load(store, fingerprint="f" * 64)[0].shape == (N - 2, D)


def test_damaged_file(tmp_path, args):
    path = tmp_path / "s.h5"
    path.write_bytes(b"not an hdf5 file" * 64)
    with pytest.raises(StoreDamagedError, match=rf"{path} cannot be opened as an HDF5 file.*delete {path}"):
        fs.read_info(path)
    with pytest.raises(StoreDamagedError, match=f"delete {path}"):
        StoreWriter.open(path, **args)
    assert path.read_bytes() == b"not an hdf5 file" * 64


def test_foreign_hdf5_file(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(StoreDamagedError, match=r"is not a featurehead store \(missing 'features'\)"):
        fs.read_info(path)


def test_missing_file(tmp_path):
    with pytest.raises(StoreNotFoundError, match="No feature store at .*missing.h5"):
        fs.load(tmp_path / "missing.h5")


def test_write_rejects_wrong_start(tmp_path, args):
    with StoreWriter.open(tmp_path / "s.h5", **args) as writer:
        writer.write(0, *rows(0, 4))
        with pytest.raises(ValueError, match=r"`start` must be the next row to write, 4. Received: start=3"):
            writer.write(3, *rows(3, 6))


@pytest.mark.parametrize(
    "features, ok, match",
    [
        pytest.param(np.zeros((2, D + 1), np.float32), np.ones(2, bool), r"shape \(n, 6\)", id="width"),
        pytest.param(np.zeros((2, D), np.int64), np.ones(2, bool), "dtype int64", id="dtype"),
        pytest.param(np.zeros((2, D), np.float32), np.ones(3, bool), r"`ok` must be a bool array of shape \(2,\)",
                     id="ok"),
        pytest.param(np.zeros((N + 1, D), np.float32), np.ones(N + 1, bool), "exceed the store's 12 rows",
                     id="too-many"),
    ],
)
def test_write_validates_batch(tmp_path, args, features, ok, match):
    with StoreWriter.open(tmp_path / "s.h5", **args) as writer:
        with pytest.raises(ValueError, match=match):
            writer.write(0, features, ok)


def test_finish_needs_every_row(tmp_path, args):
    with StoreWriter.open(tmp_path / "s.h5", **args) as writer:
        with pytest.raises(ValueError, match=r"`finish\(\)` needs all 12 rows written. Received: n_done=0"):
            writer.finish()


@pytest.mark.parametrize(
    "change, match",
    [
        pytest.param({"labels": np.full(N, 3)}, r"`labels` must be codes in \[-1, 3\)", id="labels"),
        pytest.param({"split": ["train"] * (N - 1) + ["dev"]}, "Received: split='dev'", id="split"),
        pytest.param({"ids": []}, r"`ids` must not be empty", id="empty"),
        pytest.param({"dtype": "float64"}, "Received: dtype='float64'", id="dtype"),
        pytest.param({"compression": "zstd"}, "Received: compression='zstd'", id="compression"),
        pytest.param({"attrs": {"n_done": "3"}}, r"Received: attrs\['n_done'\]='3'", id="attrs"),
    ],
)
def test_open_validates_columns(tmp_path, args, change, match):
    with pytest.raises(ValueError, match=match):
        StoreWriter.open(tmp_path / "s.h5", **{**args, **change})
    assert not list(tmp_path.iterdir())


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
