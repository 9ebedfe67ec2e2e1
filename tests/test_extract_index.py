import hashlib

import pytest

from extract import IndexValidationError, read_index


def write_csv(path, text):
    path.write_text(text)
    return path


def test_csv_index_keeps_order_labels_and_extra_columns(tmp_path):
    csv = write_csv(tmp_path / "i.csv", "filename,label,split,weight\nb.png,cat,train,1\na.png,dog,test,2\n")
    index = read_index(csv)
    assert index.ids == ["b.png", "a.png"]
    assert index.labels == ["cat", "dog"]
    assert index.split == ["train", "test"]
    assert index.frame["weight"].tolist() == ["1", "2"]
    assert index.classes == ["cat", "dog"]
    assert index.root == tmp_path


def test_csv_without_label_is_unlabelled(tmp_path):
    index = read_index(write_csv(tmp_path / "i.csv", "filename\nx.png\ny.png\n"))
    assert index.labels == ["", ""] and not index.has_labels


def test_images_root_overrides_csv_folder(tmp_path):
    (tmp_path / "pics").mkdir()
    index = read_index(write_csv(tmp_path / "i.csv", "filename\nx.png\n"), images_root=tmp_path / "pics")
    assert index.paths == [tmp_path / "pics" / "x.png"]


@pytest.mark.parametrize(
    "text, match",
    [
        pytest.param("name,label\nx.png,a\n", "must have a `filename` column", id="missing-column"),
        pytest.param("filename,label\n", "no rows", id="empty"),
        pytest.param("filename,label\nx.png,a\ny.png,b\nx.png,c\n", "line 4: duplicate filename 'x.png'.*line 2", id="duplicate"),
        pytest.param("filename,label\nx.png,a\ny.png,\n", "line 3: blank label", id="blank-label"),
        pytest.param("filename,label\n../outside.png,a\n", "line 2: the path '../outside.png' escapes", id="escape"),
        pytest.param("filename,label\n/etc/passwd,a\n", "escapes the images root", id="absolute"),
        pytest.param("filename,label,split\nx.png,a,holdout\n", "`split` must be one of", id="bad-split"),
        pytest.param("filename,label\n,a\n", "line 2: empty filename", id="empty-filename"),
        pytest.param("filename,label\nx.png,a\ny.png,b\x00c\n", "line 3: the label 'b.x00c' holds a NUL", id="nul"),
        pytest.param("filename,label\na/../../x.png,a\n", "line 2: the path 'a/../../x.png' escapes", id="dotdot"),
    ],
)
def test_csv_validation_errors_name_the_row(tmp_path, text, match):
    with pytest.raises(IndexValidationError, match=match):
        read_index(write_csv(tmp_path / "i.csv", text))


def test_symlinks_under_the_root_may_point_anywhere_and_a_broken_one_is_a_failed_row(tmp_path):
    """A folder of links into a shared dataset is an index like any other (a link out of the root was refused as
    "escapes the images root", and a dangling one stopped the run where a missing file is a failed row)."""
    from extract.content import content_keys

    shared, root = tmp_path / "shared", tmp_path / "root"
    shared.mkdir()
    root.mkdir()
    (shared / "x.png").write_bytes(b"pixels")
    (root / "x.png").symlink_to(shared / "x.png")
    (root / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (root / "loop").symlink_to(root / "loop")
    index = read_index(write_csv(root / "i.csv", "filename,label\nx.png,a\ngone.png,a\nloop/y.png,b\n"))
    keys, _, reasons = content_keys(index.root, index.ids)
    assert keys[0] == hashlib.sha256(b"pixels").hexdigest() and keys[1:] == ["", ""]
    assert reasons[1] == "file not found" and "symbolic links" in reasons[2]


def test_a_broken_link_in_a_folder_index_is_a_failed_row_not_left_out(tmp_path):
    """A class folder (or a flat folder) of links into a shared dataset, one of them dangling: it was left out of
    the index without a word, where a CSV lists it as a failed row."""
    from extract.content import content_keys

    for folder in (tmp_path / "classes" / "cat", tmp_path / "flat"):
        folder.mkdir(parents=True)
        (folder / "ok.png").write_bytes(b"pixels")
        (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "classes" / "dog").mkdir()
    (tmp_path / "classes" / "dog" / "only.jpg").symlink_to(tmp_path / "nowhere.jpg")
    index = read_index(tmp_path / "classes")
    assert index.ids == ["cat/gone.png", "cat/ok.png", "dog/only.jpg"] and index.labels == ["cat", "cat", "dog"]
    _, _, reasons = content_keys(index.root, index.ids)
    assert reasons == ["file not found", "", "file not found"]
    assert read_index(tmp_path / "flat").ids == ["gone.png", "ok.png"]


def test_hidden_files_and_folders_in_class_folders_are_left_out(tmp_path):
    """As in a flat folder: a Mac's `._x.jpg` beside each image and a `.thumbnails/` folder were rows (failed ones,
    or thumbnails trained on as images of the class)."""
    (tmp_path / "cat" / ".thumbnails").mkdir(parents=True)
    (tmp_path / "cat" / "x.jpg").write_bytes(b"x")
    (tmp_path / "cat" / "._x.jpg").write_bytes(b"AppleDouble")
    (tmp_path / "cat" / ".thumbnails" / "x.jpg").write_bytes(b"x")
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "._only.jpg").write_bytes(b"AppleDouble")
    assert read_index(tmp_path).ids == ["cat/x.jpg"]


def test_missing_index_file(tmp_path):
    with pytest.raises(IndexValidationError, match="does not exist"):
        read_index(tmp_path / "nope.csv")


def test_class_folders(image_folder):
    index = read_index(image_folder)
    assert len(index) == 8
    assert index.classes == ["a", "b"]
    assert index.ids[0] == "a/0.png" and set(index.split) == {""}


def test_split_folders(tmp_path, image_folder):
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(image_folder / "a", root / "train" / "a")
    shutil.copytree(image_folder / "b", root / "test" / "b")
    index = read_index(root)
    assert index.split == ["train"] * 4 + ["test"] * 4
    assert index.ids[0] == "train/a/0.png"


@pytest.mark.parametrize("train, val, test", [
    pytest.param("train", "valid", "test", id="valid"),
    pytest.param("train", "validation", "test", id="validation"),
    pytest.param("Train", "Val", "TEST", id="any-case"),
    pytest.param("TRAIN", "Validation", "Test", id="alias-any-case"),
])
def test_split_folders_take_the_csv_split_names_in_any_case(tmp_path, image_folder, train, val, test):
    """`valid/` was left out of the index without a word, and `Train/` and `TEST/` became classes; a CSV's split
    column took them all."""
    import shutil

    root = tmp_path / "ds"
    for split, (cls, i) in ((train, ("a", 0)), (val, ("a", 2)), (test, ("b", 0))):
        (root / split / cls).mkdir(parents=True)
        shutil.copy(image_folder / cls / f"{i}.png", root / split / cls / f"{i}.png")
    index = read_index(root)
    assert index.ids == [f"{train}/a/0.png", f"{val}/a/2.png", f"{test}/b/0.png"]  # the files' own paths
    assert index.split == ["train", "val", "test"] and index.labels == ["a", "a", "b"]
    assert index.left_out == ()


def test_split_folders_with_other_folders_beside_them(tmp_path, image_folder):
    """The split folders are the index; other folders beside them that hold images are named (`left_out`), and two
    folders of one split are refused (which one is meant is not known)."""
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(image_folder / "a", root / "train" / "a")
    shutil.copytree(image_folder / "b", root / "dev" / "b")
    (root / "docs").mkdir()
    (root / "docs" / "notes.txt").write_text("no image here")
    (root / ".cache" / "x").mkdir(parents=True)
    (root / ".cache" / "x" / "0.png").write_bytes(b"x")
    index = read_index(root)
    assert set(index.split) == {"train"} and index.left_out == ("dev",)
    shutil.copytree(image_folder / "a", root / "Train" / "a")
    with pytest.raises(IndexValidationError, match=r"ds: the folders Train and train are both split 'train'; "
                                                   "keep one of them"):
        read_index(root)


def test_a_class_named_test_beside_the_others_is_a_class(tmp_path, image_folder):
    """`root/{cat,dog,Test}/*.png`: `Test` holds images, no class folder, so it names a class, not a split (it was
    read as a split folder with no class in it, and the index failed with "no images found")."""
    import shutil

    root = tmp_path / "ds"
    for name, cls in (("cat", "a"), ("dog", "b"), ("Test", "a")):
        shutil.copytree(image_folder / cls, root / name)
    index = read_index(root)
    assert index.classes == ["Test", "cat", "dog"] and set(index.split) == {""} and len(index) == 12
    assert index.ids[0] == "Test/0.png" and index.left_out == ()
    # one class folder with an image inside a split-named folder makes them split folders again
    shutil.copytree(image_folder / "a", root / "train" / "a")
    index = read_index(root)
    assert len(index) == 4 and index.ids[0] == "train/a/0.png" and set(index.split) == {"train"}
    assert index.left_out == ("cat", "dog")  # Test: a split folder of the index now, with no class in it


def test_empty_folder_is_an_error_and_a_flat_one_is_unlabelled(tmp_path):
    """A flat folder (new images to predict, the commonest case there) was refused: it is an unlabelled index."""
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(IndexValidationError, match="no images found"):
        read_index(tmp_path)
    for name in ("b.jpg", "a.PNG", ".hidden.jpg"):
        (tmp_path / name).write_bytes(b"x")
    index = read_index(tmp_path)
    assert index.ids == ["a.PNG", "b.jpg"] and index.labels == ["", ""] and index.split == ["", ""]
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "c.jpg").write_bytes(b"x")
    assert read_index(tmp_path).ids == ["cls/c.jpg"]  # with class folders, those are the index


def test_sha256_changes_with_rows(tmp_path):
    a = read_index(write_csv(tmp_path / "a.csv", "filename,label\nx.png,1\n"))
    b = read_index(write_csv(tmp_path / "b.csv", "filename,label\nx.png,2\n"))
    c = read_index(write_csv(tmp_path / "c.csv", "filename,label\nx.png,1\n"))
    assert a.sha256() == c.sha256() != b.sha256()


def test_an_inode_number_past_int64_is_kept_in_63_bits(tmp_path, monkeypatch):
    """Some filesystems (overlayfs with xino, some network mounts) give inode numbers >= 2**63: the stat table
    is int64, and building it failed on every extract."""
    import os

    from extract import content

    (tmp_path / "x.png").write_bytes(b"pixels")
    real = os.stat

    class BigInode:  # the real stat, but for its inode number
        def __init__(self, st):
            self.st = st

        def __getattr__(self, name):
            return 2**63 + 5 if name == "st_ino" else getattr(self.st, name)

    def big_inode(path, *args, **kwargs):
        return BigInode(real(path, *args, **kwargs))

    monkeypatch.setattr(content.os, "stat", big_inode)
    keys, stats, _ = content.content_keys(tmp_path, ["x.png"])
    assert keys == [hashlib.sha256(b"pixels").hexdigest()] and stats["inode"].tolist() == [5]
