"""Store v2 damaged on disk: bytes overwritten inside a shard or the view, a manifest that no longer parses. Each
is one line that names the file and what to do, and doing it gives back the clean store."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest

import features_store
from extract import get_extractor, read_index
from pipelines.cli import main
from pipelines.runs.extraction import run_extract

TOL = dict(rtol=1e-5, atol=1e-6)  # float32 network, other batch compositions


@pytest.fixture(scope="module")
def vgg():
    return get_extractor("vgg16", weights="none", input_size=32, batch_size=3)


@pytest.fixture
def extracted(image_folder, tmp_path, vgg):
    """A complete store of the 8 test images in shards of 3 rows, its index and its features by id."""
    files = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.*") if p.suffix != ".csv")
    rows = [(f, f.split("/")[0], "train" if f[2] in "01" else "test") for f in files]
    csv = image_folder / "index.csv"
    pd.DataFrame(rows, columns=["filename", "label", "split"]).to_csv(csv, index=False)
    store = tmp_path / "store"
    run_extract(read_index(csv), vgg, store, shard_rows=3)
    return store, csv, by_id(store)


def by_id(store):
    X, _, ids = features_store.load(store, ok_only=False)
    return dict(zip(ids.tolist(), X))


def assert_same_features(store, before):
    """The store holds the rows of `before` (id -> features), within a float32 network's tolerance."""
    after = by_id(store)
    assert set(after) == set(before)
    for i, x in before.items():
        np.testing.assert_allclose(after[i], x, **TOL)


def overwrite_rows(shard, rows, byte=b"\xff"):
    """Overwrite feature rows of a shard file in place, as a bad disk or a stray write would."""
    with h5py.File(shard, "r") as f:
        offset, width = f["features"].id.get_offset(), f["features"].shape[1] * f["features"].dtype.itemsize
    with open(shard, "r+b") as f:
        for r in rows:
            f.seek(offset + r * width)
            f.write(byte * width)


def test_damaged_feature_bytes_are_refused_by_every_reader_and_a_rerun_restores_them(extracted, tmp_path, vgg,
                                                                                  capsys):
    store, csv, before = extracted
    shard = store / "shards" / json.loads((store / "manifest.json").read_text())["shards"][1]["file"]
    overwrite_rows(shard, [1])  # 0xff bytes: NaN in a row that the shard marks ok
    reads = {"load": lambda: features_store.load(store), "read_features": lambda: features_store.read_features(store),
             "iter_batches": lambda: list(features_store.iter_batches(store, 2)),
             "export": lambda: features_store.export(store, tmp_path / "x.h5")}
    for name, read in reads.items():
        with pytest.raises(features_store.StoreDamagedError) as err:
            read()
        message = str(err.value)
        assert len(message.splitlines()) == 1, name
        assert f"the shard {shard.name} holds NaN or inf features in 1 row marked extracted" in message, name
        assert f"delete {shard} and re-run the same `featurehead extract`" in message, name
    assert not (tmp_path / "x.h5").exists()
    capsys.readouterr()
    assert main(["train", str(store), "--out", str(tmp_path / "head")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(store) in err[0] and shard.name in err[0], err
    shard.unlink()  # what the line says to do
    again = run_extract(read_index(csv), vgg, store, shard_rows=3)
    assert again.n_extracted == 3 and features_store.read_info(store).complete
    assert_same_features(store, before)


def _overwrite_column(view, name, value):
    """Overwrite the first value of a view column in place, without HDF5 (h5py would encode it)."""
    with h5py.File(view, "r") as f:
        offset, size = f[name].id.get_offset(), f[name].dtype.itemsize
    with open(view, "r+b") as f:
        f.seek(offset)
        f.write(value if isinstance(value, bytes) else np.asarray([value], f"<i{size}").tobytes())


@pytest.mark.parametrize("column, value, why", [
    ("errors", b"\xff" * 8, "its `errors` column is not UTF-8 text"),
    ("labels", 7, r"its `labels` column holds 7, outside \[-1, 2\)"),
    ("labels", -2, r"its `labels` column holds -2, outside \[-1, 2\)"),
    ("shard_row", 99, "its `shard_row` column holds 99, past the 3 rows of the shard"),
])
def test_a_damaged_view_column_is_one_line_and_extract_rewrites_it(extracted, tmp_path, vgg, capsys, column, value,
                                                                    why):
    store, csv, before = extracted
    view = store / "features.h5"
    _overwrite_column(view, column, value)
    wanted = rf"{view} is not a readable store view \({why}.*\); re-run the extraction to rewrite it\.$"
    reads = [lambda: features_store.load(store), lambda: features_store.read_features(store)]
    if column != "shard_row":  # only a read of the features finds where they are not
        reads += [lambda: features_store.read_info(store), lambda: features_store.read_meta(store)]
    for read in reads:
        with pytest.raises(features_store.StoreDamagedError, match=wanted):
            read()
    capsys.readouterr()
    for command in (["train", str(store), "--out", str(tmp_path / "head")], ["inspect", str(store)]):
        code = main(command)
        err = capsys.readouterr().err.strip().splitlines()
        if command[0] == "train" or column != "shard_row":
            assert code == 2 and len(err) == 1 and str(view) in err[0] and "re-run the extraction" in err[0], err
    again = run_extract(read_index(csv), vgg, store, shard_rows=3)
    assert again.n_extracted == 0 and features_store.read_info(store).complete
    assert_same_features(store, before)


def test_a_corrupted_manifest_says_to_delete_it_and_extract_finds_the_shards_again(extracted, vgg, capsys):
    store, csv, before = extracted
    manifest = store / "manifest.json"
    shards = sorted(p.name for p in (store / "shards").iterdir())
    manifest.write_bytes(manifest.read_bytes()[:40])  # cut short: a disk that failed under a copy
    capsys.readouterr()
    assert main(["inspect", str(store)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{manifest} is not a readable store manifest" in err[0], err
    assert "delete it and re-run the same `featurehead extract`" in err[0] and "new directory" not in err[0], err
    manifest.unlink()  # what the line says to do
    again = run_extract(read_index(csv), vgg, store, shard_rows=3)
    assert again.n_extracted == 0 and features_store.read_info(store).complete  # every shard listed again
    assert sorted(p.name for p in (store / "shards").iterdir()) == shards
    assert_same_features(store, before)


def test_a_deleted_view_file_says_so_and_extract_writes_it_again(extracted, vgg, capsys):
    """It said the store "holds no features yet; run featurehead extract", though its manifest listed every row."""
    store, csv, before = extracted
    (store / "features.h5").unlink()
    with pytest.raises(features_store.StoreIncompleteError, match=r"has no view file \(features.h5: a run stopped "
                       r"before writing it, or it was deleted\), though its manifest lists 8 stored rows; re-run"):
        features_store.read_info(store)
    assert main(["-q", "train", str(store), "--out", str(store.parent / "head")]) == 2
    assert "has no view file" in capsys.readouterr().err
    assert run_extract(read_index(csv), vgg, store).n_extracted == 0
    assert_same_features(store, before)


def test_after_a_deleted_manifest_a_rerun_without_the_stores_dtype_says_which_and_is_not_stuck(extracted, vgg,
                                                                                                   tmp_path):
    """A float16 store's manifest deleted, then extract re-run without --dtype: its shard was refused as "other keys
    or another shape; delete it", and --dtype float16 after that as "stores float32 features" (a review)."""
    _, csv, _ = extracted
    store = tmp_path / "half"
    run_extract(read_index(csv), vgg, store, shard_rows=3, dtype="float16")
    before = by_id(store)
    (store / "manifest.json").unlink()
    with pytest.raises(features_store.StoreMismatchError, match="holds float16 features, not float32: re-run with "
                                                                "--dtype float16"):
        run_extract(read_index(csv), vgg, store, shard_rows=3)
    assert run_extract(read_index(csv), vgg, store, shard_rows=3, dtype="float16").n_extracted == 0
    assert_same_features(store, before)
