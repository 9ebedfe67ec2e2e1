"""The layer sweep: one multi-output forward pass, one store per layer with the single-layer fingerprint."""


import json

import numpy as np
import pandas as pd
import pytest

import features_store
from extract import get_extractor, read_index
from pipelines.cli import main
from pipelines.workflows.sweep import layer_extractors, run_sweep

SMALL = dict(weights="none", input_size=32, batch_size=3)
LAYERS = ["block3_pool", "block4_pool", "block5_pool"]


def test_sweep_cli_writes_one_store_per_layer_and_the_table(csv_index, tmp_path, capsys):
    argv = ["-q", "sweep", str(csv_index), "--weights", "none", "--input-size", "32", "--batch-size", "3",
            "--layers", ",".join(LAYERS), "--cv", "2", "--out", str(tmp_path / "sweep")]
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == str(tmp_path / "sweep" / "sweep.csv") and "one forward pass over 3 of the 3 layers;" in out[-2]
    assert "NOTE: random-init weights: these are NOT pretrained results" in out  # --weights none
    table = pd.read_csv(out[-1])
    assert table["layer"].tolist() == LAYERS and table["dimension"].tolist() == [4096, 2048, 512]
    assert set(table.columns) == {"layer", "dimension", "accuracy", "accuracy_std", "fit_seconds"}
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 0
    index = read_index(csv_index)
    for layer in LAYERS:  # each store is the single-layer extractor's own: `extract --layer` finds it
        single = get_extractor("vgg16", **SMALL, layer=layer)
        store = next(csv_index.parent.glob(f"index.vgg16-{single.fingerprint()[:10]}"))
        assert features_store.read_info(store).fingerprint == single.fingerprint()
        X, _, _ = features_store.load(store)
        np.testing.assert_allclose(X, single(np.stack([_load(p) for p in index.paths])), rtol=1e-5, atol=1e-6)
    assert main(argv) == 0  # again: nothing to extract, and it says so
    assert capsys.readouterr().out.strip().splitlines()[-2].startswith("every layer's store was up to date")
    assert main(argv[:-2] + ["--layer", "block3_pool"]) == 2
    assert "`sweep` takes `--layers`, not `--layer`" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    assert "--layer LAYER" not in capsys.readouterr().out  # its help lists only what it takes
    assert main(["-q", "extract", str(csv_index), "--weights", "none", "--input-size", "32", "--layer", "block4_pool"]) == 0
    assert capsys.readouterr().out.startswith("up to date")


def test_sweep_onto_a_full_disk_keeps_the_previous_table(small_disk, csv_index, tmp_path, capsys):
    mnt = small_disk.path
    (mnt / "sweep").mkdir()
    (mnt / "sweep" / "sweep.csv").write_text("the previous table\n")
    small_disk.fill()  # the disk is full
    argv = ["-q", "sweep", str(csv_index), "--weights", "none", "--input-size", "32", "--batch-size", "3",
            "--layers", "block4_pool,block5_pool", "--cv", "2", "--out", str(mnt / "sweep")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "No space left" in err and str(mnt / "sweep" / "sweep.csv") in err
    assert (mnt / "sweep" / "sweep.csv").read_text() == "the previous table\n"
    assert sorted(p.name for p in (mnt / "sweep").iterdir()) == [".featurehead.lock", "sweep.csv"]


def test_a_read_only_out_is_one_line_before_any_store_is_made(read_only_folder, csv_index, tmp_path, capsys):
    """A read-only --out was found after every layer was extracted and probed."""
    out = read_only_folder / "sweep"
    argv = ["-q", "sweep", str(csv_index), "--weights", "none", "--input-size", "32", "--layers", "block1_pool",
            "--store-dir", str(tmp_path / "stores"), "--out", str(out)]
    assert main(argv) == 2
    assert not (tmp_path / "stores").exists() and list(read_only_folder.iterdir()) == []
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"featurehead sweep: error: {out}: ")


def test_a_second_sweep_into_the_same_folder_is_one_line_before_any_store_is_made(csv_index, tmp_path, capsys):
    """Two sweeps at once into one --out (two models over one index, without --out: the same index.sweep/) could
    leave one's sweep.csv beside the other's sweep.png, both exit 0."""
    import filelock

    out = tmp_path / "sweep"
    out.mkdir()
    argv = ["-q", "sweep", str(csv_index), "--weights", "none", "--input-size", "32", "--layers", "block1_pool",
            "--store-dir", str(tmp_path / "stores"), "--out", str(out)]
    with filelock.FileLock(out / ".featurehead.lock"):  # another sweep, running
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.strip().endswith(
        "is being written by another featurehead sweep (one with the same --out, or over the same index without "
        "--out?); give this one another --out, or re-run when it has finished"), err
    assert not (tmp_path / "stores").exists() and [p.name for p in out.iterdir()] == [".featurehead.lock"]


def _load(path):
    from extract import load_image

    return load_image(path, 32)


def test_a_second_sweep_reuses_complete_stores(csv_index, tmp_path):
    index = read_index(csv_index)
    base = get_extractor("vgg16", **SMALL)
    first = run_sweep(index, base, LAYERS[1:], tmp_path / "a", store_dir=tmp_path, cv=2)
    assert first.n_extracted == len(index.ids) and first.extracted_layers == LAYERS[1:]
    second = run_sweep(index, base, LAYERS, tmp_path / "b", store_dir=tmp_path, cv=2)
    assert second.n_extracted == len(index.ids)  # only block3_pool was missing
    assert second.extracted_layers == ["block3_pool"]  # the CLI said "over 3 layers"
    assert features_store.read_info(second.stores["block3_pool"]).attrs["sweep_layers"] == "block3_pool"
    third = run_sweep(index, base, LAYERS, tmp_path / "c", store_dir=tmp_path, cv=2)
    assert third.n_extracted == 0 and third.extracted_layers == []
    pd.testing.assert_frame_equal(second.table[["layer", "dimension"]], third.table[["layer", "dimension"]])


def test_layers_must_be_distinct_and_known(csv_index, tmp_path):
    base = get_extractor("vgg16", **SMALL)
    with pytest.raises(ValueError, match="`layers` must be a non-empty list of distinct layer names"):
        layer_extractors(base, ["block3_pool", "block3_pool"])
    with pytest.raises(ValueError, match=r"`layers` must be layers of vgg16; 'nope' is not \(`featurehead models "
                                         r"vgg16 --layers` lists them\)"):
        run_sweep(read_index(csv_index), base, ["block1_pool", "nope"], tmp_path, store_dir=tmp_path / "stores")
    assert not (tmp_path / "stores").exists()  # refused before any store was made


def test_an_index_the_probe_cannot_use_is_refused_before_any_forward_pass(csv_index, tmp_path):
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text("filename\n" + "".join(f"{p}\n" for p in pd.read_csv(csv_index)["filename"]))
    base = get_extractor("vgg16", **SMALL)
    with pytest.raises(ValueError, match=r"the probe needs 2 classes .* Received: counts \[\]"):
        run_sweep(read_index(unlabelled, csv_index.parent), base, LAYERS[:1], tmp_path / "out", store_dir=tmp_path)
    assert not list(tmp_path.glob("unlabelled.vgg16*"))  # no store: nothing was extracted


def test_the_test_split_never_chooses_a_layer(csv_index, tmp_path):
    """An index whose split column names only 'test' (the rest blank) had every row probed, the test images among
    them, where `train` refuses the same store; the probe reads train + val whenever any row names a split."""
    table = pd.read_csv(csv_index)
    table["split"] = ["test" if name.split("/")[1].startswith("0.") else "" for name in table["filename"]]
    test_only = tmp_path / "test_only.csv"
    table.to_csv(test_only, index=False)
    base = get_extractor("vgg16", **SMALL)
    with pytest.raises(ValueError, match=r"the probe needs 2 classes with at least 2 images each among its train and "
                                         r"val rows \(the test rows never choose a layer\)\. Received: counts \[\]"):
        run_sweep(read_index(test_only, csv_index.parent), base, LAYERS[:1], tmp_path / "out", store_dir=tmp_path)
    table["split"] = ["test" if s == "test" else "train" for s in table["split"]]
    table.to_csv(test_only, index=False)
    result = run_sweep(read_index(test_only, csv_index.parent), base, LAYERS[:1], tmp_path / "out", store_dir=tmp_path,
                       cv=2)
    assert result.table["layer"].tolist() == LAYERS[:1]


def test_what_sweep_cannot_do_is_one_line_before_any_forward_pass(csv_index, tmp_path, capsys):
    """--model keras/cae crashed (exit 3, no `layer_dims`) after making the store folder; --cv 1 was scikit-learn's
    error after the forward pass; --out FILE was refused after extracting and probing."""
    import keras

    inputs = keras.Input((16, 16, 3))
    keras.Model(inputs, keras.layers.Conv2D(2, 3, name="conv")(inputs)).save(tmp_path / "m.keras")
    base = ["-q", "sweep", str(csv_index), "--store-dir", str(tmp_path / "stores")]
    assert main([*base, "--model", "keras", "--weights", str(tmp_path / "m.keras"), "--layers", "conv"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "not of --model keras; run `featurehead extract --model keras" in err
    (tmp_path / "taken").write_text("x")
    assert main([*base, "--weights", "none", "--input-size", "32", "--layers", "block1_pool", "--out",
                 str(tmp_path / "taken")]) == 2
    assert "is a file; --out is the folder" in capsys.readouterr().err
    assert main([*base, "--weights", "none", "--input-size", "8", "--layers", "block1_pool"]) == 2  # not Keras's words
    assert capsys.readouterr().err.strip().endswith("`--input-size` must be an integer >= 32 for vgg16. "
                                                    "Received: --input-size 8")
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--weights", "none", "--layers", "block1_pool", "--cv", "1"])
    assert exit_.value.code == 2 and "argument --cv: must be an integer >= 2" in capsys.readouterr().err
    assert not (tmp_path / "stores").exists()


def test_sweep_says_which_images_it_could_not_read_and_exits_1(csv_index, tmp_path, capsys):
    """It printed "extracted N rows" and exited 0, the unreadable images silently left out of the probe; then it
    counted the unreadable one among the rows extracted (as `extract` says: N new rows, K failed), but not a file it
    could not read at all (missing: no content key). A class of one image stopped the sweep, where `train` trains on
    it: the probe now trains on it in every fold, and says so."""
    from PIL import Image

    (csv_index.parent / "broken.png").write_bytes(b"not a png")
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(csv_index.parent / "c.png")
    csv_index.write_text(csv_index.read_text() + "broken.png,a\nmissing.png,b\nc.png,c\n")
    argv = ["-q", "sweep", str(csv_index), "--weights", "none", "--input-size", "32", "--layers", "block1_pool",
            "--cv", "2", "--store-dir", str(tmp_path / "stores"), "--out", str(tmp_path / "sweep")]
    assert main(argv) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == str(tmp_path / "sweep" / "sweep.csv")
    assert out[-4].startswith("extracted 9 rows, 2 failed, in one forward pass over 1 of the 1 layers"), out[-4]
    assert out[-3] == ("class 'c' has one image: the probe trains on it in every fold and never tests it (the "
                       "accuracy is of the other classes' images)"), out[-3]
    assert out[-2].startswith("2 images could not be read and are left out of every layer's probe")


def test_the_probe_trains_on_a_class_of_one_image_in_every_fold_and_never_tests_it():
    from sklearn.model_selection import StratifiedKFold

    from pipelines.workflows.sweep import probe_counts, probe_folds

    y = np.array(list("aabcabbab"))  # row 3: the one 'c'
    folds = probe_folds(y, 3, 0)
    assert len(folds) == 3 and all(3 in train and 3 not in test for train, test in folds)
    assert sorted(np.concatenate([test for _, test in folds]).tolist()) == [0, 1, 2, 4, 5, 6, 7, 8]
    assert all(sorted(set(y[test])) == ["a", "b"] for _, test in folds)  # stratified
    plain = y[y != "c"]  # without a class of one: scikit-learn's own folds
    expected = list(StratifiedKFold(3, shuffle=True, random_state=0).split(np.zeros(len(plain)), plain))
    got = probe_folds(plain, 3, 0)
    assert [(a.tolist(), b.tolist()) for a, b in got] == [(a.tolist(), b.tolist()) for a, b in expected]
    assert probe_counts(y, where="x").tolist() == [4, 4, 1]
    with pytest.raises(ValueError, match=r"x: the probe needs 2 classes with at least 2 images each\. Received: "
                                         r"counts \[4, 1\]"):
        probe_counts(np.array(list("aaaac")), where="x")


def test_a_layer_store_stopped_by_inf_out_of_the_model_says_a_re_run_stops_again(csv_index, tmp_path, capsys):
    """As extract's: a store stopped by features it cannot hold (here inf out of the network) said to resume."""
    import keras

    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    for layer in base.layers:  # positive kernels x 1e3: finite at block3 (7 convolutions), past float32's at block5
        if layer.weights:
            layer.kernel.assign(keras.ops.abs(layer.kernel) * 1e3)
            layer.bias.assign(keras.ops.ones_like(layer.bias))
    weights = tmp_path / "huge.weights.h5"
    base.save_weights(weights)
    argv = ["-q", "sweep", str(csv_index), "--weights", str(weights), "--input-size", "32", "--batch-size", "3",
            "--layers", "block3_pool,block5_pool", "--cv", "2", "--out", str(tmp_path / "sweep")]
    assert main(argv) == 2
    assert "inf or NaN" in capsys.readouterr().err

    def summary(layer):
        single = get_extractor("vgg16", weights=str(weights), input_size=32, batch_size=3, layer=layer)
        (store,) = csv_index.parent.glob(f"index.vgg16-{single.fingerprint()[:10]}*")
        assert main(["inspect", str(store), "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    stopped = summary("block5_pool")  # the store whose features were inf
    assert not stopped["complete"] and stopped["stopped"].startswith("the model gave"), stopped["stopped"]
    fine = summary("block3_pool")  # stopped by block5's error, but its own features fit: a re-run resumes it
    assert not fine["complete"] and fine["stopped"] == ""
