
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import features_store
from extract import get_extractor, read_index
from extract.augment import Augmentation
from pipelines.cli import main
from pipelines.runs.extraction import run_extract
from pipelines.runs.planning import default_store_path, views_identity
from pipelines.runs.training import run_train, split_rows
from pipelines.runs.views import AugmentedViews, assign_split

VIEWS = AugmentedViews(2, Augmentation(rotation=0.1, zoom=0.1, flip=True), seed=3)


def small_vgg(**kw):
    return get_extractor("vgg16", **({"weights": "none", "input_size": 32, "batch_size": 3} | kw))


@pytest.fixture
def split_index(image_folder):
    """index.csv with a split column: 3 train + 1 val per class."""
    rows = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.*"))
    lines = ["filename,label,split"] + [f"{r},{r[0]},{'val' if r[2] == '3' else 'train'}" for r in rows]
    path = image_folder / "split.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_views_follow_the_originals_and_only_train_rows_get_them(split_index, tmp_path):
    index = read_index(split_index)
    result = run_extract(index, small_vgg(), tmp_path / "aug", views=VIEWS)
    meta = features_store.read_meta(result.store)
    assert result.n_rows == 8 + 6 * 2
    assert meta.view[:8].tolist() == [0] * 8 and meta.source[:8].tolist() == list(range(8))
    views = meta.view > 0
    assert (meta.split[meta.source[views]] == "train").all()  # never a view of a val/test row
    assert (meta.ids[views] == meta.ids[meta.source[views]]).all()
    assert (meta.labels[views] == meta.labels[meta.source[views]]).all()
    plain = run_extract(index, small_vgg(), tmp_path / "plain")
    np.testing.assert_allclose(features_store.read_features(result.store, np.arange(8)),
                               features_store.read_features(plain.store), rtol=1e-5, atol=1e-6)
    X = features_store.read_features(result.store)
    assert not np.allclose(X[8], X[0])  # a view is not its original


def test_no_view_of_a_training_image_is_validated_on(csv_index, tmp_path):
    result = run_extract(read_index(csv_index), small_vgg(), tmp_path / "aug", views=VIEWS)
    meta = features_store.read_meta(result.store)
    assert set(meta.split[:8]) == {"train", "val"}  # no split column: one is drawn from the images' content
    assert all(set(meta.split[:8][meta.labels[:8] == c]) == {"train", "val"} for c in "ab")
    train, val = split_rows(meta)
    n_val = len(val)
    assert (meta.view[val] == 0).all() and 2 <= n_val <= 6
    assert not np.isin(meta.source[train], val).any()
    assert (meta.view[train] > 0).sum() == 2 * (8 - n_val)
    trained = run_train(result.store, tmp_path / "head")
    assert trained.n_train == (8 - n_val) * 3 and trained.n_val == n_val
    # the MLP's own early-stopping hold-out keeps each image with its views (groups = source rows)
    mlp = run_train(result.store, tmp_path / "head-mlp", head="mlp",
                    params={"epochs": 2, "hidden_layer_sizes": (8,), "validation_fraction": 0.34})
    assert mlp.n_train == (8 - n_val) * 3


def test_assign_split_follows_each_images_content():
    """The split an augmented store assigns (no split column) is drawn per image from its content key: a reorder, a
    relabel or an append changes no other image's split, so no stored view is extracted again (a review found a
    reversed index re-extracting views and moving images between train and val)."""
    keys = [f"key{i}" for i in range(400)]
    labels = ["a"] * 200 + ["b"] * 200
    split = assign_split(labels, validation_fraction=0.2, random_state=0, keys=keys)
    of = dict(zip(keys, split))
    assert split == assign_split(labels, validation_fraction=0.2, random_state=0, keys=keys)
    assert split != assign_split(labels, validation_fraction=0.2, random_state=1, keys=keys)  # seeded
    for label in "ab":  # about the fraction of each class
        share = np.mean([s == "val" for lab, s in zip(labels, split) if lab == label])
        assert 0.12 < share < 0.28
    reversed_ = assign_split(labels[::-1], validation_fraction=0.2, random_state=0, keys=keys[::-1])
    assert dict(zip(keys[::-1], reversed_)) == of
    relabelled = ["b" if i < 20 else lab for i, lab in enumerate(labels)]
    assert assign_split(relabelled, validation_fraction=0.2, random_state=0, keys=keys) == split
    more = assign_split(labels + ["c"] * 30, validation_fraction=0.2, random_state=0,
                        keys=keys + [f"new{i}" for i in range(30)])
    assert more[:400] == split
    twice = assign_split(labels + ["a"], validation_fraction=0.2, random_state=0, keys=keys + ["key0"])
    assert twice[-1] == twice[0]  # one image listed twice: never both trained and validated on

    assert assign_split(["a", "a", ""], keys=["x", "y", "z"])[-1] == ""
    with pytest.raises(ValueError, match=r"`--augment` needs at least 2 labelled rows to split. Received: 1"):
        assign_split(["a", ""])
    for seed in range(30):  # small classes: at least one val and one train image each; a lone image is trained on
        with_single = ["a"] * 2 + ["b"] * 3 + ["c"]
        for fraction in (0.01, 0.2, 0.99):
            split = assign_split(with_single, validation_fraction=fraction, random_state=seed, keys=list("uvwxyz"))
            assert split[-1] == "train"
            for label in "ab":
                assert {s for lab, s in zip(with_single, split) if lab == label} == {"train", "val"}
    assert assign_split(["a", "b"], random_state=0) == ["train", "train"]  # every class single: nothing held out


def test_views_are_identical_after_a_crash_and_resume(split_index, tmp_path):
    index = read_index(split_index)

    class Crash:
        def __init__(self, total, initial):
            self.seen = 0

        def update(self, n):
            self.seen += n
            if self.seen >= 9:
                raise KeyboardInterrupt

        def close(self):
            pass

    with pytest.raises(KeyboardInterrupt):
        run_extract(index, small_vgg(), tmp_path / "crashed", views=VIEWS, progress=Crash, shard_rows=4)
    partial = features_store.read_info(tmp_path / "crashed")
    assert not partial.complete and 0 < partial.n_done < partial.n_rows
    with pytest.raises(features_store.StoreIncompleteError):
        features_store.load(tmp_path / "crashed")
    resumed = run_extract(index, small_vgg(), tmp_path / "crashed", views=VIEWS, shard_rows=4)
    clean = run_extract(index, small_vgg(batch_size=4), tmp_path / "clean", views=VIEWS)
    assert 0 < resumed.n_extracted <= resumed.n_rows - partial.n_done  # committed shards are not redone
    np.testing.assert_allclose(features_store.read_features(resumed.store),
                               features_store.read_features(clean.store), rtol=1e-5, atol=1e-6)


def test_augmentation_is_part_of_the_store_identity(split_index, tmp_path):
    index = read_index(split_index)
    out = tmp_path / "aug"
    run_extract(index, small_vgg(), out, views=VIEWS)
    X = features_store.read_features(out)
    other = AugmentedViews(2, Augmentation(rotation=0.2), seed=3)
    # views are keyed by (content, view, augmentation): another augmentation extracts only its own views
    assert run_extract(index, small_vgg(), out, views=other).n_extracted == 6 * 2
    plain = run_extract(index, small_vgg(), out)
    assert (plain.n_extracted, plain.n_rows) == (0, 8)
    paths = {default_store_path(index, small_vgg(), v) for v in (None, VIEWS, other)}
    assert len(paths) == 3
    assert run_extract(index, small_vgg(), out, views=VIEWS).up_to_date  # its views are still stored
    np.testing.assert_array_equal(features_store.read_features(out), X)


def test_views_follow_the_image_not_its_row(split_index, tmp_path):
    from extract import load_image
    from extract.augment import row_views
    from extract.content import content_seed, file_sha256

    index = read_index(split_index)
    out = tmp_path / "aug"
    run_extract(index, small_vgg(), out, views=VIEWS)
    before = features_store.read_meta(out)
    X = features_store.read_features(out)
    # each view is drawn from the image's content seed: recompute the views of one image directly
    r = int(np.flatnonzero(before.split == "train")[0])
    image = load_image(index.paths[r], 32)
    seed = content_seed(file_sha256(index.paths[r]))
    views = row_views(image, VIEWS.augmentation, VIEWS.k, seed=VIEWS.seed, row=seed)
    rows = np.flatnonzero((before.source == r) & (before.view > 0))
    np.testing.assert_allclose(X[rows], small_vgg()(views), rtol=1e-5, atol=1e-6)
    # the index reversed: every image, view included, keeps its stored rows (nothing is extracted again)
    lines = split_index.read_text().strip().splitlines()
    reversed_csv = split_index.parent / "reversed.csv"
    reversed_csv.write_text("\n".join([lines[0], *lines[1:][::-1]]) + "\n")
    again = small_vgg()
    result = run_extract(read_index(reversed_csv), again, out, views=VIEWS)
    assert result.n_extracted == 0 and result.up_to_date and again._model is None
    after = features_store.read_meta(out)
    Y = features_store.read_features(out)

    def by_image(meta, features):
        return {(i, int(v)): x for i, v, x in zip(meta.ids, meta.view, features)}

    old, new = by_image(before, X), by_image(after, Y)
    assert old.keys() == new.keys()
    for key, x in old.items():
        np.testing.assert_array_equal(new[key], x)


def test_an_index_split_without_train_rows_is_refused(image_folder, tmp_path):
    csv = image_folder / "val.csv"
    csv.write_text("filename,label,split\na/0.png,a,val\nb/0.png,b,test\n")
    with pytest.raises(ValueError, match=r"augments only rows whose split is 'train'"):
        run_extract(read_index(csv), small_vgg(), tmp_path / "s", views=VIEWS)


def test_cli_extract_augment(split_index, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["-q", "extract", str(split_index), "--weights", "none", "--input-size", "32", "--augment", "1",
                 "--rotation", "0.05", "--flip", "--out", str(out)])
    assert code == 0 and capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    info = features_store.read_info(out)
    assert info.n_rows == 8 + 6 and '"rotation":0.05' in info.attrs["augmentation"]


def test_cli_extract_bad_augmentation_is_one_line(split_index, tmp_path, capsys):
    code = main(["-q", "extract", str(split_index), "--weights", "none", "--input-size", "32", "--augment", "1",
                 "--rotation", "1.5", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "`--rotation` must be a number in [0, 1). Received: --rotation 1.5" in err  # the flag, not the parameter


def test_augmentation_options_without_augment_are_refused_not_ignored(split_index, tmp_path, capsys):
    """Given at its default value too (`--rotation 0.1`, `--augment-seed 0`: it passed without a word)."""
    for extra in (["--rotation", "0.3"], ["--flip", "--augment-seed", "2"], ["--rotation", "0.1"],
                  ["--flip", "--augment-seed", "0"]):
        code = main(["-q", "extract", str(split_index), "--weights", "none", "--input-size", "32", *extra,
                     "--out", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert err.endswith(("--rotation takes effect only with --augment K; add it, or leave it out\n",
                             "--flip, --augment-seed take effect only with --augment K; add it, or leave them out\n"))
        assert extra[0] in err and not (tmp_path / "x").exists()
    code = main(["-q", "finetune", str(tmp_path / "no-head"), "--unfreeze", "1", "--zoom", "0.2",
                 "--out", str(tmp_path / "f")])
    assert code == 2 and "--zoom takes effect only with --augment; add it, or leave it out" in capsys.readouterr().err


def test_cli_augment_preview_writes_a_grid(csv_index, tmp_path, capsys):
    from pipelines.runs.views import PREVIEW_GAP

    out = tmp_path / "grid.png"
    code = main(["augment-preview", str(csv_index), "--out", str(out), "--n-images", "2", "--views", "3",
                 "--size", "40", "--contrast", "0.2"])
    assert code == 0 and capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    with Image.open(out) as grid:
        assert grid.size == (4 * 42 + 2 + PREVIEW_GAP - 2, 2 * 42 + 2)  # the originals set apart by a wider gap


def test_augment_preview_refuses_to_write_over_an_image_of_the_index(csv_index, capsys):
    """`--out` naming one of the index's own images replaced it with the grid (the next extract saw an edit)."""
    from extract import read_index

    image = Path(read_index(csv_index).paths[0])
    before = image.read_bytes()
    code = main(["augment-preview", str(csv_index), "--out", str(image)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "is an image of the index" in err
    assert image.read_bytes() == before
    # an index image that is a link: its target, under another name, is refused too
    target = csv_index.parent / "raw.png"
    image.rename(target)
    image.symlink_to(target)
    assert main(["augment-preview", str(csv_index), "--out", str(target)]) == 2
    assert target.read_bytes() == before


@pytest.mark.parametrize("bad", [{"size": 0}, {"n_images": 0}, {"k": -1}])
def test_augment_preview_refuses_sizes_below_one(csv_index, tmp_path, bad):
    from pipelines.runs.views import run_augment_preview

    name, value = next(iter(bad.items()))  # size 0 hung; 0 images was an IndexError
    with pytest.raises(ValueError, match=rf"`{name}` must be a positive integer. Received: {name}={value}"):
        run_augment_preview(csv_index, tmp_path / "g.png", Augmentation(), **bad)


def test_cli_augment_preview_writes_the_format_its_name_says(csv_index, tmp_path, capsys):
    assert main(["augment-preview", str(csv_index), "--out", str(tmp_path / "grid.jpg"), "--n-images", "1"]) == 0
    with Image.open(tmp_path / "grid.jpg") as grid:
        assert grid.format == "JPEG"
    capsys.readouterr()
    missing = csv_index.parent / "missing.csv"  # refused before any image is read: these are not there
    missing.write_text("filename,label\nnot-there.png,a\n")
    for name in ("grid.txt", "grid.psd"):  # .psd: Pillow reads it but cannot write it
        assert main(["augment-preview", str(missing), "--out", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert len(err.splitlines()) == 1 and "`--out` must end in one of .png, .jpg" in err
        assert not (tmp_path / name).exists()


def test_cli_augment_preview_onto_a_full_disk_keeps_the_previous_grid(small_disk, csv_index, tmp_path, capsys):
    mnt = small_disk.path
    (mnt / "grid.png").write_bytes(b"the previous grid")
    small_disk.fill()  # the disk is full
    assert main(["augment-preview", str(csv_index), "--out", str(mnt / "grid.png")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "No space left" in err and str(mnt / "grid.png") in err
    assert (mnt / "grid.png").read_bytes() == b"the previous grid"
    assert sorted(p.name for p in mnt.iterdir()) == ["filler", "grid.png"]


def test_cli_augment_preview_of_unreadable_images(image_folder, tmp_path, capsys):
    csv = image_folder / "bad.csv"
    csv.write_text("filename,label\nmissing.png,a\n")
    assert main(["augment-preview", str(csv), "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err  # the path and the root, not just "file not found"
    assert f"the first image could not be read ({image_folder / 'missing.png'}: file not found)" in err
    assert f"is --images-root {image_folder} right?" in err
    csv.write_text("filename,label\nmissing.png,a\nnone.png,a\n")
    assert main(["augment-preview", str(csv), "--out", str(tmp_path / "g.png")]) == 2
    assert "none of the first 2 images could be read (" in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def test_cli_augment_preview_lists_the_images_it_leaves_out(csv_index, tmp_path, capsys):
    """An unreadable image among the first ones has no row in the grid: it is listed, and the exit code is 1 (as
    extract's for failed rows); it left the grid a row short without a word."""
    from extract import read_index
    from pipelines.runs.views import PREVIEW_GAP

    first = Path(read_index(csv_index).paths[1])
    first.write_bytes(b"not an image")
    code = main(["augment-preview", str(csv_index), "--out", str(tmp_path / "g.png"), "--n-images", "3", "--views",
                 "2", "--size", "40"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 1 and lines[-1] == str(tmp_path / "g.png")
    assert lines[:-1] == [f"left out of the grid, could not be read: {first}: not an image file"], lines
    with Image.open(tmp_path / "g.png") as grid:
        assert grid.size == (3 * 42 + 2 + PREVIEW_GAP - 2, 2 * 42 + 2)  # two rows, of the two that could be read


def test_an_assigned_split_survives_a_reorder_and_an_append(csv_index, tmp_path):
    """No split column: the split drawn from each image's content. The index reversed extracts nothing; images
    appended in a new class extract only themselves and their own views, and nobody else's split moves."""
    out = tmp_path / "aug"
    run_extract(read_index(csv_index), small_vgg(), out, views=VIEWS)
    before = features_store.read_meta(out)
    split_of = dict(zip(before.ids[before.view == 0], before.split[before.view == 0]))
    lines = csv_index.read_text().strip().splitlines()
    reversed_csv = csv_index.parent / "reversed.csv"
    reversed_csv.write_text("\n".join([lines[0], *lines[1:][::-1]]) + "\n")
    again = run_extract(read_index(reversed_csv), small_vgg(), out, views=VIEWS)
    assert (again.n_extracted, again.garbage_rows) == (0, 0)
    for i in range(3):
        make_image_at = csv_index.parent / "c" / f"{i}.png"
        make_image_at.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(make_image_at)
    appended = csv_index.parent / "appended.csv"
    appended.write_text("\n".join([*lines, "c/0.png,c", "c/1.png,c", "c/2.png,c"]) + "\n")
    grown = run_extract(read_index(appended), small_vgg(), out, views=VIEWS)
    meta = features_store.read_meta(out)
    originals = meta.view == 0
    assert dict(zip(meta.ids[originals][:8], meta.split[originals][:8])) == split_of
    new_train = int((meta.split[originals][8:] == "train").sum())
    assert (grown.n_extracted, grown.garbage_rows) == (3 + 2 * new_train, 0)


def test_assign_split_counts_no_unreadable_row():
    """A class of one readable and one unreadable image: the readable one is trained on (it was 'val' for about
    half the seeds, and `train --head mlp` then refused the store: a 'val' label that no 'train' row has)."""
    for seed in range(20):
        split = assign_split(["a", "a", "b", "b"], random_state=seed, keys=["ka", "", "kb", "kc"])
        assert split[:2] == ["train", "train"] and sorted(split[2:]) == ["train", "val"]


@pytest.mark.parametrize("k", [0, 32768, True, np.bool_(True), 3.0])
def test_augmented_views_refuse_k_outside_the_view_column(k):
    with pytest.raises(ValueError, match=rf"`k` \(--augment\) must be a positive integer of at most 32767 \(the "
                       rf"store's `view` column is int16\)\. Received: k={re.escape(repr(k))}"):
        AugmentedViews(k).validate()


def test_augmented_views_take_numpy_integers_as_the_same_views():
    """np.int64(3) was refused as k (scikit-learn's parameter validation takes any integral number), and a numpy
    seed made the store's identity fail (not JSON)."""
    plain = AugmentedViews(3, seed=7, validation_fraction=0.25)
    numpy = AugmentedViews(np.int64(3), seed=np.uint8(7), validation_fraction=np.float32(0.25))
    numpy.validate()
    assert views_identity(numpy) == views_identity(plain)
    with pytest.raises(ValueError, match=r"`seed` \(--augment-seed\) must be an integer\. Received: seed=0\.5"):
        AugmentedViews(3, seed=0.5).validate()
