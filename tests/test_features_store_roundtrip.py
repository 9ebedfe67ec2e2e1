"""Round trip through a v2 store: columns, features in any order, filters, batches, errors, refusals."""

import hashlib
import json
import re
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
    StoreVersionError,
)

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


def test_a_reordered_view_reads_the_same_stored_rows_in_its_order(store, args):
    order = [5, 11, 0, 3, 9, 1, 8, 2, 10, 4, 7, 6]  # the index reordered: no row is extracted again
    reordered = {k: (np.asarray(v)[order].tolist() if k in ("ids", "keys", "split") else np.asarray(v)[order])
                 for k, v in args.items() if k in ("ids", "keys", "labels", "split", "view", "source")}
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "vgg16"}) as session:
        assert session.missing(reordered["keys"]) == []
        session.write_view(**{**args, **reordered})
    np.testing.assert_array_equal(fs.read_features(store), expected_features()[order])
    asked = [11, 0, 0, 6, 3]
    np.testing.assert_array_equal(fs.read_features(store, asked), expected_features()[order][asked])
    assert fs.read_meta(store).ids.tolist() == [args["ids"][i] for i in order]
    with h5py.File(store / "features.h5", "r") as f:  # the virtual dataset maps each run of rows
        np.testing.assert_array_equal(f["features"][:], expected_features()[order])
    assert fs.read_info(store).stored_rows == N


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


def test_float16_refuses_features_beyond_its_range_and_keeps_what_was_written(tmp_path):
    """float16 turns |x| >= 65520 into inf: never stored as the features of an ok row."""
    x = np.arange(4 * D, dtype=np.float32).reshape(4, D) / 7
    ok, errors = np.ones(4, bool), [""] * 4
    with fs.StoreSession.open(tmp_path / "half", fingerprint=FP, extractor={"name": "vgg16", "config": {}},
                              dtype="float16") as session:
        with session.shard_writer(KEYS[:4], n_features=D) as writer:
            writer.write(x[:2], ok[:2], errors[:2])
            x[3, 1] = 7e4
            with pytest.raises(fs.FeatureRangeError, match=r"1 features of 1 rows \(the first: row 3 of shard .*"
                                                            r"beyond float16's range \(largest \|x\| 7e\+04 > 65504\)"
                                                            r", the dtype of this store; extract with --dtype float32"):
                writer.write(x[2:], ok[2:], errors[2:])
            assert writer.n_done == 2  # the rows before are kept, nothing of the refused batch
            writer.write(x[2:], np.array([True, False]), ["", "unreadable"])  # a failed row's values are not
            assert writer.n_done == 4                                         # features: stored as NaN
    with h5py.File(next((tmp_path / "half" / "shards").glob("*.h5"))) as f:
        stored = f["features"][:]
    assert np.isnan(stored[3]).all() and np.isfinite(stored[:3]).all()
    np.testing.assert_allclose(stored[:3], x[:3], rtol=1e-3)


def test_the_models_inf_or_nan_is_refused_not_stored_as_an_ok_row(tmp_path):
    """--precision float16 overflowing inside the model stored inf, exit 0; training failed on it later."""
    x = np.ones((4, D), np.float32)
    ok, errors = np.ones(4, bool), [""] * 4
    with fs.StoreSession.open(tmp_path / "s", fingerprint=FP, extractor={"name": "vgg16", "config": {}}) as session:
        with session.shard_writer(KEYS[:4], n_features=D) as writer:
            writer.write(x[:2], ok[:2], errors[:2])
            for bad in (np.inf, np.nan):
                x[3, 1] = bad
                with pytest.raises(fs.FeatureRangeError, match=r"the model gave 1 features of 1 rows that are inf or "
                                                                r"NaN \(the first: row 3 of shard .*\), so nothing of "
                                                                r"that batch is stored"):
                    writer.write(x[2:], ok[2:], errors[2:])
                assert writer.n_done == 2
            writer.write(x[2:], ok[2:], errors[2:], finite=False)  # compaction: rows copied as they are stored
            assert writer.n_done == 4


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
    with pytest.raises(StoreMismatchError, match="another extractor"):
        next(fs.iter_batches(store, 4, fingerprint="0" * 64))


def test_a_writer_of_another_extractor_is_refused_and_changes_nothing(store):
    before = sorted(p.name for p in (store / "shards").iterdir())
    with pytest.raises(StoreMismatchError, match="another extractor"):
        with fs.StoreSession.open(store, fingerprint="0" * 64, extractor={"name": "vgg19"}):
            pass
    assert sorted(p.name for p in (store / "shards").iterdir()) == before
    np.testing.assert_array_equal(fs.read_features(store, fingerprint=FP), expected_features())


def test_an_incomplete_store_is_refused_unless_allowed(tmp_path, args):
    path = tmp_path / "partial"
    with fs.StoreSession.open(path, fingerprint=FP, extractor={"name": "vgg16"}) as session:
        first = fs.plan_shards(KEYS, 5)[0]
        with session.shard_writer(first, n_features=D) as writer:
            writer.write(*rows(0, 5))
            session.commit(writer)
        with session.shard_writer(KEYS[5:10], n_features=D) as writer:
            writer.write(*rows(5, 8))  # written, not committed: still pending in the view
        session.write_view(**args)
    info = fs.read_info(path)
    assert not info.complete and (info.n_rows, info.n_done, info.n_failed) == (N, 5, 1)
    for read in (fs.read_features, fs.read_meta, fs.load, lambda p: fs.iter_batches(p, 4), fs.export):
        with pytest.raises(StoreIncompleteError, match=r"is incomplete \(5 of 12 rows extracted\); re-run"):
            read(path) if read is not fs.export else read(path, tmp_path / "x.h5")
    np.testing.assert_array_equal(fs.read_features(path, allow_incomplete=True), expected_features()[:5])
    np.testing.assert_array_equal(fs.read_features(path, [4, 0, 4], allow_incomplete=True),
                                  expected_features()[[4, 0, 4]])
    assert fs.read_meta(path, allow_incomplete=True).ids.tolist() == args["ids"][:5]
    X, _, ids = fs.load(path, allow_incomplete=True)  # ok rows only: row 3 failed
    assert ids.tolist() == [args["ids"][i] for i in (0, 1, 2, 4)]
    np.testing.assert_array_equal(X, expected_features()[[0, 1, 2, 4]])
    assert fs.read_errors(path) == [("img/03.png", FAILED[3])]  # pending rows are not failures

    write_store(path, args)  # the re-run resumes the part-written shard and completes the store
    assert fs.read_info(path).complete and fs.read_info(path).stored_rows == N
    np.testing.assert_array_equal(fs.read_features(path), expected_features())


def test_a_v1_single_file_store_is_refused_with_one_line(tmp_path):
    old = tmp_path / "flowers.vgg16-0123456789.h5"
    with h5py.File(old, "w") as f:  # what v1 wrote: one file with the features and the columns
        f.create_dataset("features", data=np.zeros((2, D), np.float32))
        f.attrs["schema_version"] = 1
    size = old.stat().st_size
    for call in (fs.read_info, fs.read_meta, fs.load, lambda p: fs.read_features(p),
                 lambda p: fs.StoreSession.open(p, fingerprint=FP, extractor={}).__enter__()):
        with pytest.raises(StoreVersionError) as err:
            call(old)
        message = str(err.value)
        assert len(message.splitlines()) == 1 and "v1 single-file store" in message
        assert f"--out {tmp_path / 'flowers.vgg16-0123456789'} " in message
    assert old.is_file() and old.stat().st_size == size  # left untouched


def test_a_stores_view_file_given_for_the_store_names_the_store(store):
    """`train STORE/features.h5` was called a v1 single-file store, with advice to re-extract into STORE/features."""
    view = store / "features.h5"
    for call in (fs.read_info, fs.load, lambda p: fs.StoreSession.open(p, fingerprint=FP, extractor={}).__enter__()):
        with pytest.raises(fs.StoreNotFoundError) as err:
            call(view)
        assert str(err.value) == (f"{view} is the view file of the store {store}; featurehead's commands take the "
                                  f"store directory: {store}")


def test_export_writes_one_self_contained_file(store, tmp_path, args):
    out = tmp_path / "exported.h5"
    assert fs.export(store, out) == N
    with h5py.File(out, "r") as f:
        assert not f["features"].is_virtual and "shard" not in f and "shard_files" not in f
        np.testing.assert_array_equal(f["features"][:], expected_features())
        assert f["ids"].asstr()[:].tolist() == args["ids"] and f.attrs["features_layout"] == "exported"
    assert fs.export(store, tmp_path / "new" / "folder" / "x.h5") == N  # its folders are made
    assert fs.export(store, out) == N  # an earlier export is replaced
    (tmp_path / "empty.h5").touch()
    assert fs.export(store, tmp_path / "empty.h5") == N  # so is an empty file (mktemp)
    for foreign, data in (("index.csv", b"filename,label\n"), ("other.h5", None)):  # it overwrote them, exit 0
        if data is None:
            with h5py.File(tmp_path / foreign, "w") as f:
                f["x"] = np.arange(3)
        else:
            (tmp_path / foreign).write_bytes(data)
        before = (tmp_path / foreign).read_bytes()
        with pytest.raises(fs.StoreWriteError, match=r"exists and is not a file that export wrote \(the index\? an "
                                                     r"image\?\); refusing to overwrite it: choose another --out"):
            fs.export(store, tmp_path / foreign)
        assert (tmp_path / foreign).read_bytes() == before
    with pytest.raises(fs.StoreWriteError, match=r"is a folder; give the file to write, e\.g\. .*features\.h5"):
        fs.export(store, tmp_path / "new")
    view = (store / "features.h5").read_bytes()
    for inside in (store, store / "features.h5", store / "sub" / "x.h5"):  # it overwrote the store's own view
        with pytest.raises(fs.StoreWriteError, match=r"is inside the store .*; export to a file outside it, e\.g\. "):
            fs.export(store, inside)
    assert (store / "features.h5").read_bytes() == view and not (store / "sub").exists()
    with pytest.raises(fs.StoreNotFoundError, match="is a file that `featurehead export` wrote"):
        fs.read_info(out)  # it was called "a featurehead v1 single-file store", to re-extract


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


@pytest.mark.parametrize("batch_size", [1, 3, 5, 100, np.int64(3), np.int32(5)])
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


@pytest.mark.parametrize("bad", [0, -2, 2.0, True, np.int64(0)])
def test_iter_batches_rejects_bad_batch_size(store, bad):
    with pytest.raises(ValueError, match=re.escape(f"`batch_size` must be a positive integer. Received: batch_size={bad!r}")):
        fs.iter_batches(store, bad)


def test_read_errors(store):
    assert fs.read_errors(store) == [("img/03.png", FAILED[3]), ("img/07.png", FAILED[7])]
