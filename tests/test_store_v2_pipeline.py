"""Store v2 through extraction: what users do every week (relabel, append, remove, move, edit) extracts only
what the store lacks, and the view always follows the index."""

import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import features_store
from extract import ImageChangedError, get_extractor, read_index
from extract.augment import Augmentation
from pipelines.cli import main
from pipelines.runs.extraction import run_extract
from pipelines.runs.inspection import describe_store
from pipelines.runs.views import AugmentedViews

TOL = dict(rtol=1e-5, atol=1e-6)  # float32 network, other batch compositions


@pytest.fixture(scope="module")
def vgg():
    return get_extractor("vgg16", weights="none", input_size=32, batch_size=3)


def by_id(store):
    X, _, ids = features_store.load(store, ok_only=False)
    return dict(zip(ids.tolist(), X))


def write_csv(path, rows):
    pd.DataFrame(rows, columns=["filename", "label", "split"]).to_csv(path, index=False)
    return path


def base_rows(root):
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.*") if p.suffix != ".csv")
    return [(f, f.split("/")[0], "train" if f[2] in "01" else "test") for f in files]


def _saved_model(path):
    import keras

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 4, strides=4, name="conv")(keras.layers.Rescaling(1 / 255)(inputs))
    keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="gap")(x)).save(path)
    return path


@pytest.mark.parametrize("model", ["vgg16", "keras"])
def test_relabel_and_new_columns_rewrite_only_the_view_without_keras(image_folder, tmp_path, vgg, model):
    """Also for a saved model, whose input size is read from the model: a relabel built it (a review)."""
    csv = write_csv(image_folder / "index.csv", base_rows(image_folder))
    store = tmp_path / "store"
    if model == "keras":
        flags = ["--model", "keras", "--weights", str(_saved_model(tmp_path / "m.keras"))]
        vgg = get_extractor("keras", weights=flags[-1])
    else:
        flags = ["--model", "vgg16", "--weights", "none", "--input-size", "32"]
    first = run_extract(read_index(csv), vgg, store, shard_rows=3)
    assert first.n_extracted == 8 and len(features_store.read_info(store).shards) == 3
    before = by_id(store)
    rows = [(f, "zebra" if i % 3 == 0 else lab, "val" if i == 1 else split)
            for i, (f, lab, split) in enumerate(base_rows(image_folder))]
    frame = pd.DataFrame(rows, columns=["filename", "label", "split"]).assign(site=["x"] * 8)
    frame.to_csv(csv, index=False)
    script = ("import sys; from pipelines.cli import main; rc = main(sys.argv[1:]); "
              "print('keras loaded' if {'keras', 'tensorflow'} & set(sys.modules) else 'no keras'); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", script, "-q", "extract", str(csv), *flags, "--out", str(store)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "up to date" in out.stdout and out.stdout.strip().endswith("no keras")
    meta = features_store.read_meta(store)
    assert sorted(set(meta.labels)) == ["a", "b", "zebra"] and (meta.split == "val").sum() == 1
    after = by_id(store)
    for i in before:
        np.testing.assert_array_equal(after[i], before[i])  # the same stored rows
    info = features_store.read_info(store)
    assert (info.stored_rows, info.garbage_rows, info.n_rows) == (8, 0, 8)


def test_append_extracts_only_the_new_images(image_folder, tmp_path, vgg):
    rows = base_rows(image_folder)
    csv = write_csv(image_folder / "index.csv", rows[:6])
    store = tmp_path / "store"
    run_extract(read_index(csv), vgg, store)
    before = by_id(store)
    write_csv(csv, rows)
    again = run_extract(read_index(csv), vgg, store)
    assert again.n_extracted == 2 and again.n_rows == 8
    after = by_id(store)
    for i in before:
        np.testing.assert_array_equal(after[i], before[i])
    clean = run_extract(read_index(csv), vgg, tmp_path / "clean")
    for i, x in by_id(clean.store).items():
        np.testing.assert_allclose(after[i], x, **TOL)


def test_removed_rows_become_garbage_until_compact(image_folder, tmp_path, vgg):
    rows = base_rows(image_folder)
    csv = write_csv(image_folder / "index.csv", rows)
    store = tmp_path / "store"
    run_extract(read_index(csv), vgg, store, shard_rows=3)
    before = by_id(store)
    write_csv(csv, rows[2:])
    again = run_extract(read_index(csv), vgg, store)
    assert (again.n_extracted, again.n_rows, again.garbage_rows) == (0, 6, 2)
    old = {name: (store / "shards" / name).read_bytes() for name in os.listdir(store / "shards")}
    assert main(["-q", "compact", str(store)]) == 0
    info = features_store.read_info(store)
    assert (info.stored_rows, info.garbage_rows, info.n_rows) == (6, 0, 6)
    assert len(os.listdir(store / "shards")) == len(info.shards)
    assert not any(line.startswith("unlisted:") for line in describe_store(store).splitlines())
    # a compaction killed while deleting the old shards leaves them: inspect says so, compact deletes them
    gone = sorted(set(old) - set(os.listdir(store / "shards")))
    for name in gone:
        (store / "shards" / name).write_bytes(old[name])
    unlisted = [line for line in describe_store(store).splitlines() if line.startswith("unlisted:")]
    assert len(unlisted) == 1 and unlisted[0].startswith(f"unlisted:    {len(gone)} shard file")
    assert unlisted[0].endswith(f"(`featurehead compact {store}` deletes those)")
    assert main(["-q", "compact", str(store)]) == 0
    assert len(os.listdir(store / "shards")) == len(info.shards)
    after = by_id(store)
    assert set(after) == {r[0] for r in rows[2:]}
    for i in after:
        np.testing.assert_array_equal(after[i], before[i])


def test_a_moved_copy_of_the_images_extracts_nothing(image_folder, tmp_path, vgg):
    csv = write_csv(image_folder / "index.csv", base_rows(image_folder))
    store = tmp_path / "store"
    run_extract(read_index(csv), vgg, store)
    before = by_id(store)
    moved = tmp_path / "moved"
    shutil.copytree(image_folder, moved, copy_function=shutil.copy)  # new mtimes too
    again = run_extract(read_index(moved / "index.csv"), vgg, store)
    assert again.n_extracted == 0 and again.up_to_date
    assert features_store.read_info(store).attrs["images_root"] == str(moved)
    for i, x in by_id(store).items():
        np.testing.assert_array_equal(x, before[i])


def test_an_image_edited_in_place_is_the_only_one_extracted_again(image_folder, tmp_path, vgg):
    csv = write_csv(image_folder / "index.csv", base_rows(image_folder))
    store = tmp_path / "store"
    run_extract(read_index(csv), vgg, store)
    before = by_id(store)
    edited = "a/0.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(image_folder / edited)
    again = run_extract(read_index(csv), vgg, store)
    assert (again.n_extracted, again.garbage_rows) == (1, 1)
    after = by_id(store)
    assert not np.allclose(after[edited], before[edited])
    fresh = vgg(np.full((1, 32, 32, 3), 200, np.uint8))[0]
    np.testing.assert_allclose(after[edited], fresh, **TOL)
    for i in set(before) - {edited}:
        np.testing.assert_array_equal(after[i], before[i])


def test_files_swapped_or_rewritten_with_their_size_and_mtime_are_hashed_again(tmp_path, vgg):
    """Size and mtime alone let a swap of two same-size files (common for BMP or raw TIFF unpacked from an archive,
    all with one mtime) keep each other's features, the run "up to date"; the inode and ctime catch it. A view
    written before those columns existed has every file hashed once more, and extracts nothing."""
    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(5)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{name}.bmp")
        os.utime(root / f"{name}.bmp", ns=(1_577_836_800 * 10**9,) * 2)
    csv = write_csv(tmp_path / "index.csv", [(f"{n}.bmp", n, "") for n in "abc"])
    store = tmp_path / "store"
    run_extract(read_index(csv, root), vgg, store)
    before = by_id(store)
    os.rename(root / "a.bmp", root / "t.bmp")
    os.rename(root / "b.bmp", root / "a.bmp")
    os.rename(root / "t.bmp", root / "b.bmp")
    c = (root / "c.bmp").read_bytes()  # rewritten in place with other pixels, then its mtime set back
    edited = np.asarray(Image.open(root / "c.bmp"))[::-1].copy()
    Image.fromarray(edited).save(root / "c.bmp")
    os.utime(root / "c.bmp", ns=(1_577_836_800 * 10**9,) * 2)
    assert len(c) == (root / "c.bmp").stat().st_size
    again = run_extract(read_index(csv, root), vgg, store)
    after = by_id(store)
    assert again.n_extracted == 1  # only c's new content; a and b only moved
    np.testing.assert_array_equal(after["a.bmp"], before["b.bmp"])
    np.testing.assert_array_equal(after["b.bmp"], before["a.bmp"])
    np.testing.assert_allclose(after["c.bmp"], vgg(edited[None])[0], **TOL)
    with h5py.File(store / "features.h5", "r+") as f:  # a view of before the inode and ctime columns
        del f["inode"], f["ctime_ns"]
    assert run_extract(read_index(csv, root), vgg, store).n_extracted == 0
    with h5py.File(store / "features.h5", "r") as f:
        assert (f["inode"][:] > 0).all() and (f["ctime_ns"][:] > 0).all()


def test_a_shard_finished_but_not_yet_listed_is_committed_by_the_next_run(image_folder, tmp_path, vgg):
    """A kill (or a full disk) between a shard's last row and the manifest's commit leaves the shard complete on disk
    and unlisted; the next run lists it without extracting anything again."""
    csv = write_csv(image_folder / "index.csv", base_rows(image_folder))
    store = tmp_path / "store"
    run_extract(read_index(csv), vgg, store, shard_rows=3)
    before = by_id(store)
    manifest = json.loads((store / "manifest.json").read_text())
    for drop in (manifest["shards"][-1:], manifest["shards"]):  # the last shard, then every shard unlisted
        kept = [s for s in manifest["shards"] if s not in drop]
        (store / "manifest.json").write_text(json.dumps({**manifest, "shards": kept}))
        again = run_extract(read_index(csv), vgg, store, shard_rows=3)
        assert again.n_extracted == 0 and features_store.read_info(store).complete
        assert len(json.loads((store / "manifest.json").read_text())["shards"]) == len(manifest["shards"])
        for i, x in by_id(store).items():
            np.testing.assert_array_equal(x, before[i])


def test_a_deleted_or_truncated_shard_is_extracted_again_by_the_next_run(image_folder, tmp_path, vgg, caplog):
    csv = write_csv(image_folder / "index.csv", base_rows(image_folder))
    store = tmp_path / "store"
    run_extract(read_index(csv), vgg, store, shard_rows=3)
    before = by_id(store)
    shards = [s["file"] for s in json.loads((store / "manifest.json").read_text())["shards"]]
    (store / "shards" / shards[0]).unlink()
    data = (store / "shards" / shards[1]).read_bytes()
    (store / "shards" / shards[1]).write_bytes(data[: len(data) // 2])
    data = bytearray((store / "shards" / shards[2]).read_bytes())
    data[200:1200] = bytes(1000)  # HDF5's structures inside it overwritten
    (store / "shards" / shards[2]).write_bytes(bytes(data))
    with pytest.raises(features_store.StoreDamagedError, match="re-run the extraction to rebuild it"):
        features_store.load(store)
    again = run_extract(read_index(csv), vgg, store, shard_rows=3)
    assert again.n_extracted == 8 and features_store.read_info(store).complete
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 3 and all("rows are extracted again" in w for w in warned)
    # an unlisted (partial) shard cut short, as a disk that filled while it was created leaves it: started again
    manifest = json.loads((store / "manifest.json").read_text())
    last, rows = manifest["shards"][-1]["file"], manifest["shards"][-1]["rows"]
    (store / "manifest.json").write_text(json.dumps({**manifest, "shards": manifest["shards"][:-1]}))
    (store / "shards" / last).write_bytes((store / "shards" / last).read_bytes()[:3000])
    assert run_extract(read_index(csv), vgg, store, shard_rows=3).n_extracted == rows
    for i, x in by_id(store).items():
        np.testing.assert_allclose(x, before[i], **TOL)


class _Meanwhile:
    """A progress bar (the hook `run_extract` calls once the rows are planned, before any decoding) that does
    something to the images first: what another program may do while an extraction runs."""

    def __init__(self, act):
        self.act = act

    def __call__(self, total, initial):
        self.act()
        return self

    def update(self, n):
        pass

    def close(self):
        pass


def test_an_image_replaced_or_removed_during_extraction_stops_the_run_and_a_rerun_is_clean(image_folder, tmp_path,
                                                                                          vgg):
    csv = write_csv(image_folder / "index.csv", base_rows(image_folder))
    clean = by_id(run_extract(read_index(csv), vgg, tmp_path / "clean").store)
    store = tmp_path / "store"
    original = (image_folder / "b" / "0.png").read_bytes()
    other = Image.fromarray(np.full((40, 40, 3), 7, np.uint8))  # another size of file: its stat differs
    with pytest.raises(ImageChangedError, match=r"b/0\.png changed after it was hashed.*re-run the same command"):
        run_extract(read_index(csv), vgg, store, progress=_Meanwhile(lambda: other.save(image_folder / "b" / "0.png")))
    (image_folder / "b" / "0.png").write_bytes(original)
    kept, aside = image_folder / "b" / "3.jpg", tmp_path / "aside.jpg"  # not stored by the first run
    with pytest.raises(ImageChangedError, match=r"b/3\.jpg vanished after it was hashed"):
        run_extract(read_index(csv), vgg, store, progress=_Meanwhile(lambda: kept.rename(aside)))
    aside.rename(kept)  # back: a file that was away for a moment is not a failed row for good
    again = run_extract(read_index(csv), vgg, store)  # nothing stored under a key of content it did not read
    assert (again.n_failed, features_store.read_info(store).complete) == (0, True)
    got = by_id(store)
    assert sorted(got) == sorted(clean)
    for i, x in got.items():
        np.testing.assert_allclose(x, clean[i], **TOL)


def test_the_same_bytes_under_two_names_are_extracted_once(image_folder, tmp_path, vgg):
    shutil.copy(image_folder / "a" / "0.png", image_folder / "a" / "copy.png")
    csv = write_csv(image_folder / "index.csv", base_rows(image_folder))
    result = run_extract(read_index(csv), vgg, tmp_path / "store")
    info = features_store.read_info(result.store)
    assert (result.n_extracted, info.n_rows, info.stored_rows) == (8, 9, 8)
    got = by_id(result.store)
    np.testing.assert_array_equal(got["a/copy.png"], got["a/0.png"])


def test_an_unreadable_image_is_a_failed_row_that_a_fixed_file_replaces(image_folder, tmp_path, vgg):
    csv = write_csv(image_folder / "index.csv", base_rows(image_folder))
    (image_folder / "b" / "1.jpg").write_bytes(b"not a jpeg")
    store = tmp_path / "store"
    first = run_extract(read_index(csv), vgg, store)
    assert first.n_failed == 1 and features_store.read_errors(store)[0][0] == "b/1.jpg"
    assert run_extract(read_index(csv), vgg, store).n_extracted == 0  # the same bytes fail the same way
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image_folder / "b" / "1.jpg", format="JPEG")
    fixed = run_extract(read_index(csv), vgg, store)
    assert (fixed.n_extracted, fixed.n_failed) == (1, 0)


def test_a_failure_that_was_not_the_contents_fault_is_tried_again_after_compact_failed(image_folder, tmp_path, vgg,
                                                                                        monkeypatch, capsys):
    """A failure is stored under the content's key, so a file unreadable for a while (an I/O error, Pillow's
    decompression-bomb limit set low: here) stayed failed in every later run, and compact kept it (a review).
    `compact --failed` drops the failed rows; the next extract tries them again and equals a clean run."""
    for name in ("a/big.png", "b/big.jpg"):  # 64x64: past a limit of 1024 pixels (Pillow refuses > 2x)
        Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(image_folder / name)
    csv = write_csv(image_folder / "index.csv", base_rows(image_folder))
    clean = tmp_path / "clean"
    run_extract(read_index(csv), vgg, clean)
    store = tmp_path / "store"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1024)  # the user's own setting, later raised again
    first = run_extract(read_index(csv), vgg, store, shard_rows=3)
    monkeypatch.undo()
    assert first.n_failed == 2 and "too large" in features_store.read_errors(store)[0][1]
    assert run_extract(read_index(csv), vgg, store).n_failed == 2  # the same content: failed as stored
    capsys.readouterr()
    listed = store.with_name(store.name + ".failed.csv")  # extract's list of the failed rows, as the CLI writes it
    listed.write_text("id,reason\na/big.png,too large\n")
    assert main(["-q", "compact", str(store), "--failed"]) == 0
    assert capsys.readouterr().out.startswith("compacted: 10 -> 8 stored rows")
    assert not listed.exists()  # it listed rows that no longer fail (they are gone, to be tried again)
    assert not features_store.read_info(store).complete
    again = run_extract(read_index(csv), vgg, store)
    assert (again.n_extracted, again.n_failed) == (2, 0)
    ours, expected = by_id(store), by_id(clean)
    assert set(ours) == set(expected)
    for i in expected:
        np.testing.assert_allclose(ours[i], expected[i], **TOL)
    assert len(os.listdir(store / "shards")) == len(features_store.read_info(store).shards)


def test_augmented_views_survive_a_relabel(image_folder, tmp_path, vgg):
    rows = base_rows(image_folder)
    csv = write_csv(image_folder / "index.csv", rows)
    views = AugmentedViews(2, Augmentation(rotation=0.1, flip=True), seed=3)
    store = tmp_path / "store"
    first = run_extract(read_index(csv), vgg, store, views=views)
    assert first.n_rows == 8 + 2 * 4
    X0 = features_store.read_features(store)
    write_csv(csv, [(f, "other" if lab == "a" else lab, split) for f, lab, split in rows])
    again = run_extract(read_index(csv), vgg, store, views=views)
    assert again.n_extracted == 0
    np.testing.assert_array_equal(features_store.read_features(store), X0)
    assert "other" in set(features_store.read_meta(store).labels)


def test_inspect_json_export_and_a_v1_file(image_folder, tmp_path, vgg, capsys):
    csv = write_csv(image_folder / "index.csv", base_rows(image_folder))
    store = tmp_path / "store"
    run_extract(read_index(csv), vgg, store, shard_rows=5)
    capsys.readouterr()
    assert main(["inspect", str(store), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {"rows": 8, "stored_rows": 8, "garbage_rows": 0, "shards": 2, "failed": 0, "complete": True}.items() \
        <= summary.items()
    assert summary["fingerprint"] == vgg.fingerprint()
    assert summary["shard_versions"][0]["keras_backend"]
    import cv2
    import simplejpeg

    # the decoders' versions are recorded with each shard: they decide the pixels
    assert summary["shard_versions"][0]["opencv"] == cv2.__version__
    assert summary["shard_versions"][0]["simplejpeg"] == simplejpeg.__version__
    assert main(["-q", "export", str(store), "--out", str(tmp_path / "one.h5")]) == 0
    with h5py.File(tmp_path / "one.h5", "r") as f:
        assert not f["features"].is_virtual and "shard" not in f
        np.testing.assert_array_equal(f["features"][:], features_store.read_features(store))
        assert f["ids"].asstr()[:].tolist() == features_store.read_meta(store).ids.tolist()
    v1 = tmp_path / "old.h5"
    with h5py.File(v1, "w") as f:
        f.attrs["schema_version"] = 1
    capsys.readouterr()
    assert main(["train", str(v1), "--out", str(tmp_path / "head")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "v1 single-file store" in err[0] and "--out" in err[0]


def _cli(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, env=env,
                         timeout=300)
    # TensorFlow's C++ start-up notes are not ours
    noise = ("WARNING: All log messages before absl", "I0000 ", "E0000 ", "W0000 ")
    return out.returncode, [line for line in out.stderr.splitlines() if not line.startswith(noise)]


@pytest.fixture(scope="module")
def sixty_images(tmp_path_factory):
    """60 images of 40 px with their index, and the clean run's store of them at 64 px (for both disk sizes)."""
    root = tmp_path_factory.mktemp("sixty")
    for i in range(60):
        path = root / "imgs" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(path)
    csv = write_csv(root / "index.csv", [(f"imgs/{i}.png", "ab"[i % 2], "") for i in range(60)])
    clean = run_extract(read_index(csv), get_extractor("vgg16", weights="none", input_size=64), root / "clean")
    return csv, by_id(clean.store)


@pytest.mark.parametrize("size", ["1536k", "24k"])  # the shards do not fit; not even the view does
def test_extract_onto_a_full_disk_says_one_line_and_resumes_to_the_clean_run(tmpfs, sixty_images, size, capsys):
    csv, want = sixty_images
    mnt = tmpfs(size)
    store = mnt / "store"
    args = ["-q", "extract", str(csv), "--model", "vgg16", "--weights", "none", "--input-size", "64",
            "--shard-rows", "16", "--out", str(store)]  # 60 rows x 8 KiB of features do not fit
    code, err = _cli(*args)  # a process of its own: its stderr is all that the user sees, HDF5's included
    assert 0 < code < 128 and len(err) == 1, err
    assert str(store) in err[0] and "free" in err[0] and "re-run" in err[0]
    with pytest.raises((features_store.StoreIncompleteError, features_store.StoreNotFoundError)):
        features_store.read_features(store)  # never zeros, never "up to date"
    subprocess.run(["mount", "-o", "remount,size=8m", str(mnt)], check=True)  # space is freed
    assert main(args) == 0, capsys.readouterr().err  # the re-run: in this process, no TF start-up
    got = by_id(store)
    assert set(got) == set(want)
    for i in want:
        np.testing.assert_allclose(got[i], want[i], **TOL)


def test_export_onto_a_full_disk_says_one_line_and_leaves_nothing(image_folder, tmp_path, tmpfs, vgg):
    store = run_extract(read_index(write_csv(image_folder / "index.csv", base_rows(image_folder))), vgg,
                        tmp_path / "store").store
    mnt = tmpfs("24k")
    code, err = _cli("-q", "export", str(store), "--out", str(mnt / "e.h5"))
    assert code == 2 and len(err) == 1 and "not enough free space" in err[0], err
    assert list(mnt.iterdir()) == []
