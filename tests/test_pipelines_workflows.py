import re
from pathlib import Path

import numpy as np
import pytest

import features_store
from extract import read_index
from extract.autoencoder import build_autoencoder
from pipelines.cli import main
from pipelines.workflows.pretrain import CAEConfig, CNNConfig, class_rows, image_batches


def last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_pretrain_cae_then_extract_with_it(csv_index, tmp_path, capsys):
    out = tmp_path / "models" / "cae.keras"
    code = main(["-q", "pretrain-cae", str(csv_index), "--out", str(out), "--input-size", "16", "--filters", "4,2",
                 "--epochs", "2", "--batch-size", "3", "--workers", "1"])
    assert code == 0 and last_line(capsys) == str(out)
    assert out.is_file() and (out.parent / "cae_reconstructions.png").is_file() and (out.parent / "cae_loss.png").is_file()
    # a second model in the same folder has plots of its own (its reconstructions replaced the first one's)
    code = main(["-q", "pretrain-cae", str(csv_index), "--out", str(out.with_name("b.keras")), "--input-size", "16",
                 "--filters", "4,2", "--epochs", "1", "--batch-size", "3", "--workers", "1"])
    assert capsys.readouterr().out.startswith("trained a CAE on 8 images for 1 epoch; final loss ")
    assert code == 0 and sorted(p.name for p in out.parent.iterdir()) == [
        ".b.keras.lock", ".cae.keras.lock",
        "b.keras", "b_loss.png", "b_reconstructions.png", "cae.keras", "cae_loss.png", "cae_reconstructions.png"]

    store = tmp_path / "cae"
    code = main(["-q", "extract", str(csv_index), "--model", "cae", "--weights", str(out), "--input-size", "16",
                 "--out", str(store), "--workers", "1"])
    assert code == 0 and last_line(capsys) == str(store)
    X, _, _ = features_store.load(store)
    assert X.shape == (8, 4 * 4 * 2)


def test_pretrain_cae_fits_the_train_split_never_val_or_test(csv_index, tmp_path, capsys):
    """It fitted every row of the index, the 'test' images too, that a head on its features was then scored on."""
    rows = csv_index.read_text().splitlines()
    splits = ["train", "train", "val", "test"] * 2
    with_split = tmp_path / "split.csv"
    with_split.write_text("filename,label,split\n" + "".join(f"{r},{s}\n" for r, s in zip(rows[1:], splits)))
    argv = ["-q", "pretrain-cae", str(with_split), "--images-root", str(csv_index.parent), "--input-size", "16",
            "--filters", "4,2", "--epochs", "1", "--batch-size", "3", "--out", str(tmp_path / "cae.keras")]
    assert main(argv) == 0
    assert "trained a CAE on 4 images" in capsys.readouterr().out
    with_split.write_text("filename,label,split\n" + "".join(f"{r},test\n" for r in rows[1:]))
    assert main(argv) == 2
    assert "the index has a split column but no 'train' rows" in capsys.readouterr().err


def test_a_pretrained_model_onto_a_full_disk_is_one_line_and_keeps_the_previous_model(
        small_disk, csv_index, tmp_path, capsys
):
    """Two full disks: one that cannot hold even the model's weights (1.6 KiB here) is refused before the training
    (it was found at the save, the training lost); one that holds them but not the saved file (46 KiB) fails at the
    save. Each is one line, and the previous model stays."""
    mnt = small_disk.path
    (mnt / "cae.keras").write_bytes(b"the previous model")
    argv = ["-q", "pretrain-cae", str(csv_index), "--out", str(mnt / "cae.keras"), "--input-size", "16",
            "--filters", "4,2", "--epochs", "1", "--batch-size", "3", "--workers", "1"]
    small_disk.fill()  # the disk is full
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"featurehead pretrain-cae: error: {mnt / 'cae.keras'}: not enough free space for the "
                                "trained CAE: its weights alone take 1 KiB, 0 KiB is free. Free some space and re-run "
                                "the same command (nothing was trained yet)."]
    (mnt / "filler").unlink()
    small_disk.fill(leave=16 << 10)  # room for the weights, not for the saved model
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "No space left" in err and str(mnt / "cae.keras") in err
    assert (mnt / "cae.keras").read_bytes() == b"the previous model"
    assert sorted(p.name for p in mnt.iterdir()) == [".cae.keras.lock", "cae.keras", "filler"]


@pytest.mark.parametrize("command", ["pretrain-cae", "pretrain-cnn"])
def test_a_read_only_out_is_one_line_before_any_training(read_only_folder, csv_index, capsys, command):
    """A read-only --out folder was found when the trained model was saved: the whole training was lost."""
    from pipelines.workflows.pretrain import run_pretrain_cae, run_pretrain_cnn

    started = []

    def progress(total):  # the CLI's progress bar: made when the training begins
        started.append(total)
        return __import__("tqdm").tqdm(total=total, disable=True)

    out = read_only_folder / "m.keras"
    index = read_index(csv_index)
    with pytest.raises(OSError) as err:
        if command == "pretrain-cae":
            run_pretrain_cae(index, out, CAEConfig(input_size=16, filters=(4, 2), epochs=1, batch_size=3),
                             progress=progress)
        else:
            run_pretrain_cnn(index, out, CNNConfig(input_size=16, epochs=1, batch_size=3), progress=progress)
    assert err.value.filename == str(out) and started == []
    code = main(["-q", command, str(csv_index), "--out", str(out), "--input-size", "16", "--epochs", "1"])
    lines = capsys.readouterr().err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"featurehead {command}: error: {out}: "), lines
    assert list(read_only_folder.iterdir()) == []


@pytest.mark.parametrize("command", ["pretrain-cae", "pretrain-cnn"])
def test_a_second_pretraining_into_the_same_out_is_one_line_at_once(csv_index, tmp_path, capsys, command):
    """Two at once into one --out could leave one's model beside the other's plots, both exit 0."""
    import filelock

    out = tmp_path / "m.keras"
    with filelock.FileLock(tmp_path / ".m.keras.lock"):  # another pre-training into m.keras, running
        code = main(["-q", command, str(csv_index), "--out", str(out), "--input-size", "16", "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err == (f"featurehead {command}: error: {out} is being written by another featurehead "
                                 "command (a pretrain-cae or pretrain-cnn with the same --out?); give this one another "
                                 "--out, or re-run when it has finished\n"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.keras.lock", "imgs"]


def test_pretrain_cnn_on_some_classes_then_transfer_and_extract(csv_index, tmp_path, capsys):
    base = tmp_path / "base.keras"
    args = ["--input-size", "16", "--epochs", "1", "--batch-size", "4", "--workers", "1"]
    assert main(["-q", "pretrain-cnn", str(csv_index), "--classes", "b,a", "--out", str(base), *args]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == str(base) and "classes b,a" in lines[0]
    assert (tmp_path / "base_loss.png").is_file()

    head = tmp_path / "head.keras"
    assert main(["-q", "pretrain-cnn", str(csv_index), "--base", str(base), "--out", str(head), *args]) == 0
    assert last_line(capsys) == str(head) and head.is_file()

    store = tmp_path / "base"  # --input-size omitted: the saved model's own (16)
    code = main(["-q", "extract", str(csv_index), "--model", "keras", "--weights", str(base), "--layer",
                 "features_flatten", "--out", str(store), "--workers", "1"])
    assert code == 0 and last_line(capsys) == str(store)
    assert features_store.read_info(store).n_features == 6 * 6 * 32


@pytest.mark.parametrize(
    "argv, match",
    [
        pytest.param(["pretrain-cae", "{index}", "--out", "{tmp}/cae.h5"], r"`--out` must be a \.keras file\. Received: --out '.*cae\.h5'", id="suffix"),
        pytest.param(["pretrain-cae", "{index}", "--out", "{tmp}/cae.keras", "--input-size", "30"],
                     r"`--input-size` must be a positive integer divisible by 2 \*\* len\(filters\) = 4\. Received: --input-size 30", id="size"),
        pytest.param(["pretrain-cae", "{index}", "--out", "{tmp}/folder.keras"],
                     r"`--out` must be a \.keras file; .*folder\.keras is a folder", id="folder"),
        pytest.param(["pretrain-cae", "{index}", "--out", "{tmp}/cae.keras", "--filters", "8,x"],
                     r"`--filters` must be comma-separated integers\. Received: --filters '8,x'", id="filters"),
        pytest.param(["pretrain-cnn", "{index}", "--out", "{tmp}/cnn.keras", "--classes", "a,z"],
                     r"`--classes` must be at least 2 distinct labels of the index \['a', 'b'\], none repeated\. Received: --classes \['a', 'z'\]", id="classes"),
        pytest.param(["pretrain-cnn", "{index}", "--out", "{tmp}/cnn.keras", "--classes", "a,b,a"],  # trained 3 units
                     r"`--classes` must be at least 2 distinct labels of the index \['a', 'b'\], none repeated\. Received: --classes \['a', 'b', 'a'\]", id="classes-repeated"),
        pytest.param(["pretrain-cnn", "{index}", "--out", "{tmp}/cnn.keras", "--input-size", "0"],  # was taken as 28
                     r"`--input-size` must be an integer >= 6 .*Received: --input-size 0", id="cnn-size-0"),
        pytest.param(["pretrain-cnn", "{index}", "--out", "{tmp}/cnn.keras", "--input-size", "5"],  # was Keras's shape error
                     r"`--input-size` must be an integer >= 6 \(two 3x3 convolutions and a 2x2 pooling\)\. Received: --input-size 5", id="cnn-size"),
        pytest.param(["pretrain-cnn", "{index}", "--out", "{tmp}/cnn.keras", "--base", "{tmp}/cae.keras",
                      "--input-size", "64"], r"--input-size and --channels come from --base .*cae\.keras \(its input: 16 px\); "
                     r"leave them out", id="base-size"),
        pytest.param(["pretrain-cnn", "{index}", "--out", "{tmp}/cnn.keras", "--base", "{tmp}/none.keras"],
                     r"the saved model .*none\.keras does not exist", id="base"),
        pytest.param(["extract", "{index}", "--model", "keras", "--weights", "{tmp}/none.keras"],
                     r"the saved model .*none\.keras does not exist", id="extract-missing"),
        pytest.param(["extract", "{index}", "--model", "cae", "--weights", "{tmp}/cae.keras", "--input-size", "224"],
                     r"`--input-size` must match the input size of the model in .*cae\.keras \(16\) or be omitted\. Received: --input-size 224", id="extract-size"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(csv_index, tmp_path, capsys, argv, match):
    build_autoencoder(input_size=16).save(tmp_path / "cae.keras")
    (tmp_path / "folder.keras").mkdir()  # refused only after training (a temporary file: "Is a directory")
    argv = [a.format(index=csv_index, tmp=tmp_path) for a in argv]
    assert main(["-q", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.search(match, err), err


def test_class_rows_follow_the_split_column(tmp_path):
    rows = [("x0.png", "a", "train"), ("x1.png", "b", "train"), ("x2.png", "c", "train"), ("x3.png", "a", "val"),
            ("x4.png", "b", "test"), ("x5.png", "c", "test")]
    csv = tmp_path / "index.csv"
    csv.write_text("filename,label,split\n" + "".join(f"{f},{lab},{s}\n" for f, lab, s in rows))
    classes, picked = class_rows(read_index(csv), ["b", "a"])
    assert classes == ["b", "a"]
    assert picked["train"].tolist() == [0, 1] and picked["val"].tolist() == [3] and picked["test"].tolist() == [4]
    with pytest.raises(ValueError, match=r"the index has no 'train' rows of the classes \['c', 'b'\]"):
        csv.write_text("filename,label,split\nx0.png,a,train\nx1.png,b,val\nx2.png,c,test\n")
        class_rows(read_index(csv), ["c", "b"])
    # it trained on one class and scored the rest as misses, exit 0
    with pytest.raises(ValueError, match=r"the 'train' rows of the classes \['a', 'b', 'c'\] are all of \['a'\]"):
        csv.write_text("filename,label,split\nx0.png,a,train\nx1.png,a,train\nx2.png,b,val\nx3.png,c,test\n")
        class_rows(read_index(csv))
    # no --classes was given: the message does not talk of it
    with pytest.raises(ValueError, match=r"a classifier needs at least 2 labelled classes. Received: classes \['a'\]"):
        csv.write_text("filename,label\nx0.png,a\nx1.png,a\n")
        class_rows(read_index(csv))


def test_image_batches_stream_and_drop_unreadable_images(csv_index):
    index = read_index(csv_index)
    paths = index.paths + [Path(csv_index)]  # the CSV is not an image
    data = image_batches(paths, 8, batch_size=3, channels=1, workers=1)
    try:
        assert len(data) == 3 and [data.batch_length(i) for i in range(3)] == [3, 3, 3]
        x, y = data[0]
        assert x.shape == (3, 8, 8, 3) and x.dtype == np.float32 and y.shape == (3, 8, 8, 1) and y.max() <= 1.0
        x, y = data[2]
        assert x.shape == (2, 8, 8, 3)  # the CSV is dropped
    finally:
        data.close()
    codes = np.arange(8)
    data = image_batches(index.paths, 8, codes, batch_size=5, shuffle=True, seed=0, workers=1)
    try:
        seen = np.concatenate([data[i][1] for i in range(len(data))])
        assert sorted(seen) == list(range(8)) and seen.tolist() != list(range(8))
    finally:
        data.close()


@pytest.mark.parametrize("config", [CAEConfig(filters=(6, 3, 2), epochs=3), CNNConfig(optimizer="adadelta")])
def test_config_round_trip(config):
    assert type(config).from_dict(config.to_dict()) == config


def test_pretrain_cnn_accuracy_codes_labels_by_the_order_of_classes(image_folder, tmp_path):
    """Codes follow `classes` as given (b=0, a=1): the reported accuracy is the saved model's on those codes."""
    import keras

    from extract import read_batch
    from pipelines.workflows.pretrain import run_pretrain_cnn

    rows = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.*"))
    # 3 'a' and 1 'b' in val: the accuracy under the other coding would differ, whatever the model predicts
    val_names = ("a/0", "a/1", "a/2", "b/0")
    lines = [f"{r},{r.split('/')[0]},{'val' if r.split('.')[0] in val_names else 'train'}" for r in rows]
    csv = image_folder / "split.csv"
    csv.write_text("filename,label,split\n" + "\n".join(lines) + "\n")
    index = read_index(csv)
    result = run_pretrain_cnn(index, tmp_path / "cnn.keras", CNNConfig(input_size=16, epochs=2, batch_size=4),
                              classes=["b", "a"], workers=1)
    val = [i for i, s in enumerate(index.split) if s == "val"]
    images, ok, _ = read_batch([index.paths[i] for i in val], 16)
    proba = keras.saving.load_model(result.model).predict(images.astype(np.float32), verbose=0)
    expected = np.mean(np.argmax(proba, axis=1) == [["b", "a"].index(index.labels[i]) for i in val])
    assert result.classes == ["b", "a"] and ok.all()
    np.testing.assert_allclose(result.accuracy["val"], expected, rtol=1e-5)
    # the val rows are scored after every epoch too: the loss plot's val curves, the last the model's own
    assert len(result.history["val_loss"]) == len(result.history["val_accuracy"]) == 2
    np.testing.assert_allclose(result.history["val_accuracy"][-1], expected, rtol=1e-5)


def test_an_unreadable_image_is_named_once_not_every_epoch(csv_index, tmp_path, caplog):
    from pipelines.workflows.pretrain import run_pretrain_cae

    (csv_index.parent / "broken.png").write_bytes(b"not a png")
    csv_index.write_text(csv_index.read_text() + "broken.png,a\n")
    with caplog.at_level("WARNING", logger="pipelines.workflows.pretrain"):
        run_pretrain_cae(read_index(csv_index), tmp_path / "cae.keras",
                         CAEConfig(input_size=16, filters=(4, 2), epochs=3, batch_size=3), workers=1)
    warned = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert warned == [f"skipping 1 unreadable image: {csv_index.parent / 'broken.png'}: not an image file"]


def test_cli_pretrain_cae_on_images_it_cannot_read_is_one_line(csv_index, tmp_path, capsys):
    """A wrong --images-root: every image of the first batch fails. The error was preceded by a warning line that
    listed every one of them."""
    from pipelines.cli import main

    code = main(["-q", "pretrain-cae", str(csv_index), "--images-root", str(tmp_path), "--out",
                 str(tmp_path / "cae.keras"), "--input-size", "16", "--epochs", "1", "--batch-size", "4"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "none of the images of batch 0 could be read" in err and "file not found" in err
    assert not (tmp_path / "cae.keras").exists()


def test_pretrain_cnn_on_a_base_cut_at_a_feature_map_flattens_it(csv_index, tmp_path, capsys):
    """A CAE's `bottleneck` (a 4x4x2 map at 16 px) as --feature-layer: the new head's Dense went over the map's last
    axis and the run stopped at the first batch with Keras's rank error, exit 2."""
    import keras

    import extract.layers  # noqa: F401  (registers the CAE's layers for loading)

    cae = tmp_path / "cae.keras"
    build_autoencoder(input_size=16, filters=(4, 2)).save(cae)
    out = tmp_path / "transfer.keras"
    code = main(["-q", "pretrain-cnn", str(csv_index), "--base", str(cae), "--feature-layer", "bottleneck",
                 "--epochs", "1", "--batch-size", "4", "--workers", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert last_line(capsys) == str(out)
    model = keras.saving.load_model(out)
    assert model.get_layer("transfer_flatten").output.shape[1:] == (4 * 4 * 2,)
    assert model.predict(np.zeros((3, 16, 16, 3), np.float32), verbose=0).shape == (3, 2)


def test_pretrain_cnn_on_a_base_of_any_input_size_cut_at_a_feature_map_builds_at_input_size(csv_index, tmp_path,
                                                                                             capsys):
    """A base whose input is (None, None, 3) gave a Flatten of unknown width, and Keras's error at the Dense."""
    import keras

    inputs = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(2, 3, strides=4, padding="same", name="map")(inputs)
    base = tmp_path / "any_size.keras"
    keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(conv)).save(base)
    out = tmp_path / "transfer.keras"
    code = main(["-q", "pretrain-cnn", str(csv_index), "--base", str(base), "--feature-layer", "map", "--input-size",
                 "16", "--epochs", "1", "--batch-size", "4", "--workers", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    model = keras.saving.load_model(out)
    assert model.get_layer("transfer_flatten").output.shape[1:] == (4 * 4 * 2,)
    code = main(["-q", "pretrain-cnn", str(csv_index), "--base", str(base), "--feature-layer", "map", "--input-size",
                 "0", "--out", str(tmp_path / "zero.keras")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "`--input-size` must be a positive integer for a base of any input size" in err, err
