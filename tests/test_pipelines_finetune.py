import shutil

import numpy as np
import pytest
from PIL import Image
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import classify
import features_store
from classify import KerasMLPClassifier
from extract import get_extractor, read_index
from pipelines.cli import main
from pipelines.runs.extraction import run_extract
from pipelines.runs.prediction import load_any_bundle
from pipelines.runs.training import run_train
from pipelines.workflows.finetune import leaf_layers, plan_unfrozen, run_finetune, transplant

MLP = {"hidden_layer_sizes": (8,), "epochs": 2, "early_stopping": False, "random_state": 0}


def small_vgg():
    return get_extractor("vgg16", weights="none", input_size=32, batch_size=4)


def save_scaled_bundle(store, out):
    """A StandardScaler + MLP head, saved with the store it was trained on."""
    X, y, _ = features_store.load(store)
    head = make_pipeline(StandardScaler(), KerasMLPClassifier(**MLP)).fit(X, y)
    info = features_store.read_info(store)
    return classify.save_bundle(head, out, extractor=info.extractor, fingerprint=info.fingerprint,
                                classes=head.classes_, n_features=info.n_features,
                                params={"validation_fraction": 0.25, "random_state": 0},
                                extra={"trained_on": str(store)})


# The tests that change the store or the bundle (or whose bug would: `--out HEAD`) get their own; the others share
# one per test process (`shared_*`): each is an extraction, or a Keras fit, of a second or two.
@pytest.fixture
def store(csv_index, tmp_path):
    return run_extract(read_index(csv_index), small_vgg(), tmp_path / "s").store


@pytest.fixture
def scaled_bundle(store, tmp_path):
    return save_scaled_bundle(store, tmp_path / "head")


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory):
    return tmp_path_factory.mktemp("finetune_shared")


@pytest.fixture(scope="module")
def shared_index(shared_root):
    """csv_index's images and index.csv, once per test process."""
    from conftest import write_csv_index, write_image_folder

    return write_csv_index(write_image_folder(shared_root / "imgs"))


@pytest.fixture(scope="module")
def shared_store(shared_index, shared_root):
    return run_extract(read_index(shared_index), small_vgg(), shared_root / "s").store


@pytest.fixture(scope="module")
def shared_bundle(shared_store, shared_root):
    return save_scaled_bundle(shared_store, shared_root / "head")


def images_of(index):
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in index.paths]).astype(np.float32)


def test_a_read_only_out_is_refused_before_any_epoch(read_only_folder, shared_bundle, shared_store):
    """A read-only --out folder (one that exists: the bundle folder) was found when the bundle was saved, after every
    epoch of train's mlp and of finetune."""
    started = []

    def progress(total, **kwargs):  # the CLI's progress bar: made when the epochs begin
        started.append(total)
        return __import__("tqdm").tqdm(total=total, disable=True)

    with pytest.raises(OSError) as err:
        run_finetune(shared_bundle, read_only_folder, unfreeze=1, epochs=1, batch_size=4, progress=progress)
    assert err.value.filename == str(read_only_folder) and started == []
    with pytest.raises(OSError) as err:
        run_train(shared_store, read_only_folder, head="mlp", params={"epochs": 2, "hidden_layer_sizes": (4,)}, progress=progress)
    assert err.value.filename == str(read_only_folder) and started == []
    assert list(read_only_folder.iterdir()) == []


def test_a_disk_that_cannot_hold_the_weights_is_refused_before_any_epoch(small_disk, shared_bundle):
    """A full disk was found when the fine-tuned model was saved, after every epoch."""
    started = []

    def progress(total, **kwargs):
        started.append(total)
        return __import__("tqdm").tqdm(total=total, disable=True)

    out = small_disk.path / "tuned"
    with pytest.raises(features_store.StoreWriteError, match=r"not enough free space for the fine-tuned model: its weights alone "
                       r"take [\d.]+ MiB, \d+ KiB is free\. Free some space and re-run the same command \(nothing was "
                       r"trained yet\)\.$"):
        run_finetune(shared_bundle, out, unfreeze=1, epochs=1, batch_size=4, progress=progress)
    assert started == [] and not out.exists()


def test_transplant_equals_the_bundle_before_training(shared_bundle, shared_store, shared_index):
    bundle = classify.load_bundle(shared_bundle)
    model = transplant(small_vgg().model, bundle.estimator, bundle.n_features)
    mlp = bundle.estimator[-1].model_
    head = model.layers[-1]
    assert len(head.get_weights()) == len(mlp.get_weights())
    for a, b in zip(head.get_weights(), mlp.get_weights()):
        np.testing.assert_array_equal(a, b)
    expected = bundle.predict_proba(features_store.read_features(shared_store))
    got = np.asarray(model.predict_on_batch(images_of(read_index(shared_index))))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_only_the_unfrozen_layers_change(shared_bundle, shared_index, tmp_path):
    result = run_finetune(shared_bundle, tmp_path / "ft", unfreeze=1, epochs=1, batch_size=4, learning_rate=1e-3)
    assert result.unfrozen == ("block5_conv3",) and result.n_train == 6 and result.n_val == 2
    tuned = load_any_bundle(result.bundle)
    assert tuned.kind == "full"
    fresh = {lay.name: lay.get_weights() for lay in leaf_layers(small_vgg().model) if lay.weights}
    changed = {lay.name for lay in leaf_layers(tuned.estimator.layers[1])
               if lay.weights and not all(np.array_equal(a, b) for a, b in zip(lay.get_weights(), fresh[lay.name]))}
    assert changed == {"block5_conv3"}
    old_head = classify.load_bundle(shared_bundle).estimator[-1].model_.get_weights()
    assert not np.array_equal(tuned.estimator.layers[-1].get_weights()[0], old_head[0])  # the head trains too
    scaler = tuned.estimator.get_layer("head_scaler")
    np.testing.assert_allclose(np.asarray(scaler.mean).ravel(),
                               classify.load_bundle(shared_bundle).estimator[0].mean_, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        pytest.param({"unfreeze": 0}, [], id="head-only"),
        pytest.param({"unfreeze": 2}, ["c3", "d"], id="top-2-weighted"),
        pytest.param({"unfreeze": "all"}, ["c1", "c2", "c3", "d"], id="all"),
        pytest.param({"unfreeze_from": "pool1"}, ["c3", "d"], id="from-a-pool"),
        pytest.param({"unfreeze_from": "c2"}, ["c2", "c3", "d"], id="from-c2"),
    ],
)
def test_plan_unfrozen(kwargs, expected):
    names = ["c1", "c2", "pool1", "c3", "flat", "d"]
    weighted = [True, True, False, True, False, True]
    assert plan_unfrozen(names, weighted, **kwargs) == expected


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param({}, "give exactly one of `--unfreeze` and `--unfreeze-from`", id="neither"),
        pytest.param({"unfreeze": 1, "unfreeze_from": "c1"}, "give exactly one of", id="both"),
        pytest.param({"unfreeze": 3}, r"`unfreeze` must be 'all' or an integer in \[0, 2\]", id="too-many"),
        pytest.param({"unfreeze_from": "x"}, r"`unfreeze_from` must be one of the base's layers", id="unknown"),
    ],
)
def test_plan_unfrozen_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_unfrozen(["c1", "p", "c2"], [True, False, True], **kwargs)


def test_cli_finetune_then_predict(shared_store, shared_index, tmp_path, capsys):
    assert main(["-q", "train", str(shared_store), "--head", "mlp", "--hidden", "8", "--epochs", "1",
                 "--out", str(tmp_path / "head")]) == 0
    # the accuracies of a random-init base say so, as evaluate's do
    assert "NOTE: random-init weights: these are NOT pretrained results" in capsys.readouterr().out
    code = main(["-q", "finetune", str(tmp_path / "head"), "--unfreeze-from", "block5_conv3", "--epochs", "1",
                 "--batch-size", "4", "--augment", "--out", str(tmp_path / "ft")])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and out[-1] == str(tmp_path / "ft") and "before" in out[-3] and "after" in out[-3]
    assert out[-2] == "NOTE: random-init weights: these are NOT pretrained results"
    code = main(["-q", "predict", str(tmp_path / "ft"), str(shared_index), "--out", str(tmp_path / "p.csv")])
    assert code == 0 and capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "p.csv")
    frame = np.genfromtxt(tmp_path / "p.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
    assert len(frame) == 8 and set(frame["predicted"]) <= {"a", "b"}
    # the commands that need a head on stored features say what the fine-tuned bundle is, in one line
    for argv in (["evaluate", tmp_path / "ft", shared_store, "--out", tmp_path / "ev"],
                 ["report", tmp_path / "ft", shared_store, "--out", tmp_path / "rep"],
                 ["finetune", tmp_path / "ft", "--unfreeze", "1", "--out", tmp_path / "ft2"]):
        assert main(["-q", *map(str, argv)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is a fine-tuned whole model" in err and "featurehead predict" in err
        assert not (tmp_path / "ev").exists() and not (tmp_path / "rep").exists()
    # it keeps no store and holds its weights: --store was ignored without a word
    for flag, value in (("--store", tmp_path / "s2"), ("--weights", shared_index)):
        argv = ["-q", "predict", tmp_path / "ft", shared_index, "--out", tmp_path / "p2.csv", flag, value]
        assert main(list(map(str, argv))) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is a fine-tuned whole model, which " in err and f"leave out {flag}" in err
        assert not (tmp_path / "p2.csv").exists() and not (tmp_path / "s2").exists()


def test_cli_finetune_refuses_a_logreg_head(shared_store, tmp_path, capsys):
    run_train(shared_store, tmp_path / "logreg")
    assert main(["finetune", str(tmp_path / "logreg"), "--unfreeze", "1", "--out", str(tmp_path / "ft")]) == 2
    assert "`finetune` needs an MLP head (`featurehead train --head mlp`)" in capsys.readouterr().err


def test_cli_finetune_refuses_its_own_head_or_a_taken_out_before_training(scaled_bundle, tmp_path, capsys):
    """--out HEAD replaced the MLP head it started from; a folder that is not a bundle was refused only after every
    epoch had run."""
    before = sorted(p.name for p in scaled_bundle.iterdir())
    assert main(["-q", "finetune", str(scaled_bundle), "--unfreeze", "1", "--out", str(scaled_bundle)]) == 2
    assert "`--out` must be another folder than the head bundle" in capsys.readouterr().err
    assert sorted(p.name for p in scaled_bundle.iterdir()) == before
    taken = tmp_path / "notes"
    taken.mkdir()
    (taken / "mine.txt").write_text("x")
    # checked first: before the index is read (a missing one would be named), so before any epoch
    assert main(["-q", "finetune", str(scaled_bundle), "--unfreeze", "1", "--index", str(tmp_path / "no.csv"),
                 "--out", str(taken)]) == 2
    assert "is not empty and holds no manifest.json" in capsys.readouterr().err


def test_cli_finetune_needs_the_images(scaled_bundle, store, tmp_path, capsys):
    shutil.rmtree(store)
    assert main(["finetune", str(scaled_bundle), "--unfreeze", "1", "--out", str(tmp_path / "ft")]) == 2
    assert "give --index" in capsys.readouterr().err


def test_cli_finetune_refuses_a_training_store_that_lists_another_index(store, csv_index, tmp_path, capsys):
    run_train(store, tmp_path / "head", head="mlp", params={"hidden_layer_sizes": (8,), "epochs": 1})
    subset = csv_index.parent / "subset.csv"
    subset.write_text("".join(csv_index.read_text().splitlines(keepends=True)[:5]))
    assert run_extract(read_index(subset), small_vgg(), store).n_extracted == 0  # the view is now the subset's
    argv = ["finetune", str(tmp_path / "head"), "--unfreeze", "1", "--out", str(tmp_path / "ft")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "now lists another index than the head was trained on; give --index" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "ft").exists()


def test_full_bundle_checks_the_image_shape(shared_bundle, tmp_path):
    bundle = classify.load_bundle(shared_bundle)
    model = transplant(small_vgg().model, bundle.estimator, bundle.n_features)
    info = features_store.read_info(bundle.manifest["trained_on"])
    path = classify.save_model_bundle(model, tmp_path / "full", extractor=info.extractor,
                                      fingerprint=info.fingerprint, classes=bundle.classes)
    full = load_any_bundle(path)
    assert full.predict_proba(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 2)
    with pytest.raises(ValueError, match=r"`X` must be images of shape \(n, 32, 32, 3\)"):
        full.predict_proba(np.zeros((2, 64, 64, 3)))
    with pytest.raises(ValueError, match=r"`classes` must name the model's 2 outputs"):
        classify.save_model_bundle(model, tmp_path / "bad", extractor={}, fingerprint="", classes=["a"])


def test_a_non_standard_scaler_is_refused(shared_store, tmp_path):
    from sklearn.preprocessing import MinMaxScaler

    X, y, _ = features_store.load(shared_store)
    head = make_pipeline(MinMaxScaler(), KerasMLPClassifier(**MLP)).fit(X, y)
    with pytest.raises(ValueError, match=r"`finetune` can fold only a StandardScaler into the model"):
        transplant(small_vgg().model, head, X.shape[1])


def split_index(image_folder, splits):
    """index.csv with a split column: image i of each class gets splits[i]."""
    rows = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.*") if p.suffix != ".csv")
    lines = ["filename,label,split"] + [f"{r},{r.split('/')[0]},{splits[int(r[2])]}" for r in rows]
    path = image_folder / "split.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_finetune_validates_on_the_stores_val_split(image_folder, tmp_path):
    index = read_index(split_index(image_folder, ["train", "train", "val", "test"]))
    store = run_extract(index, small_vgg(), tmp_path / "s").store
    head = run_train(store, tmp_path / "head", head="mlp", params={"hidden_layer_sizes": (8,), "epochs": 1})
    assert head.validation_source == "val" and head.n_val == 2
    result = run_finetune(head.bundle, tmp_path / "ft", unfreeze=0, epochs=1, batch_size=4)
    assert (result.n_train, result.n_val) == (4, 2)
    assert load_any_bundle(result.bundle).manifest["validation"] == {"source": "val", "rows": 2}


def test_finetune_without_val_holds_out_train_rows_never_test(image_folder, tmp_path):
    from pipelines.workflows.finetune import finetune_rows

    index = read_index(split_index(image_folder, ["train", "train", "train", "test"]))
    store = run_extract(index, small_vgg(), tmp_path / "s").store
    head = run_train(store, tmp_path / "head", head="mlp", params={"hidden_layer_sizes": (8,), "epochs": 1})
    assert head.validation_source == "train-holdout" and head.n_val == 2
    bundle = classify.load_bundle(head.bundle)
    for source_store in (store, None):  # rows read from the training store, or from the index alone
        train, val, _, source = finetune_rows(bundle, index, source_store)
        assert source == "train-holdout" and len(val) == 2 and len(train) == 4
        assert {index.split[i] for i in [*train, *val]} == {"train"}  # never a test row


def test_same_random_state_same_finetuned_model_and_no_global_state_changed(shared_bundle, tmp_path):
    from test_global_state import assert_unchanged, snapshot

    kwargs = dict(unfreeze=1, epochs=2, batch_size=4, learning_rate=1e-3, random_state=3)
    first = run_finetune(shared_bundle, tmp_path / "a", **kwargs)
    before = snapshot()
    second = run_finetune(shared_bundle, tmp_path / "b", **kwargs)
    assert_unchanged(before)
    a, b = (load_any_bundle(r.bundle).estimator.get_weights() for r in (first, second))
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_finetune_refuses_to_guess_the_heads_validation_rows_from_another_index(image_folder, csv_index, tmp_path):
    """Without its store, finetune reads the rows from the index: a hold-out drawn again over an index other than
    the one trained on (another split, other labels) would validate on images the head was fitted on."""
    from extract.augment import Augmentation
    from pipelines.runs.views import AugmentedViews
    from pipelines.workflows.finetune import finetune_rows

    index = read_index(csv_index)  # no split column: extract --augment draws the store's val by content
    store = run_extract(index, small_vgg(), tmp_path / "aug", views=AugmentedViews(1, Augmentation(flip=True))).store
    head = run_train(store, tmp_path / "head", head="mlp", params={"hidden_layer_sizes": (8,), "epochs": 1})
    assert head.validation_source == "val"
    bundle = classify.load_bundle(head.bundle)
    meta = features_store.read_meta(store)
    fitted_on = set(meta.ids[meta.split == "train"])
    train, val, _, _ = finetune_rows(bundle, index, store)  # from the store: the head's own rows
    assert not {index.ids[i] for i in val} & fitted_on
    with pytest.raises(ValueError, match=r"validation rows .* unknown"):
        finetune_rows(bundle, index, None)  # the index alone has no such split
    relabelled = csv_index.parent / "relabelled.csv"
    lines = csv_index.read_text().splitlines()
    relabelled.write_text("\n".join(lines[:5] + [line[:-1] + "a" for line in lines[5:7]] + lines[7:]) + "\n")
    plain = run_train(run_extract(index, small_vgg(), tmp_path / "plain").store, tmp_path / "plain-head", head="mlp",
                      params={"hidden_layer_sizes": (8,), "epochs": 1}, validation_fraction=0.5)
    plain_bundle = classify.load_bundle(plain.bundle)
    assert plain.validation_source == "train-holdout"
    finetune_rows(plain_bundle, index, None)  # the very index it was trained on: the same hold-out, drawn again
    with pytest.raises(ValueError, match=r"validation rows .* unknown"):
        finetune_rows(plain_bundle, read_index(relabelled), None)


def test_cli_finetune_of_a_head_without_validation_rows_says_so_and_writes_strict_json(csv_index, tmp_path, capsys):
    """A head trained with --validation-fraction 0 on a store without split: it printed 'validation accuracy on 0
    images: before nan, after nan' and wrote NaN into manifest.json, which strict JSON parsers refuse."""
    import json

    store = run_extract(read_index(csv_index), small_vgg(), tmp_path / "s").store
    assert main(["-q", "train", str(store), "--head", "mlp", "--hidden", "8", "--epochs", "1",
                 "--validation-fraction", "0", "--out", str(tmp_path / "head")]) == 0
    capsys.readouterr()
    code = main(["-q", "finetune", str(tmp_path / "head"), "--unfreeze", "0", "--epochs", "1", "--batch-size", "4",
                 "--out", str(tmp_path / "ft")])
    out = capsys.readouterr().out
    assert code == 0 and "nan" not in out
    assert ("no validation accuracy: the head held out no validation rows (a store without 'val' rows, and "
            "--validation-fraction 0 or no class with two images to hold one out)\n") in out

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    manifest = json.loads((tmp_path / "ft" / "manifest.json").read_text(), parse_constant=refuse)
    assert manifest["validation"] == {"source": "none", "rows": 0}
    assert manifest["metrics"]["validation_accuracy_before"] is None
    assert manifest["metrics"]["validation_accuracy_after"] is None
