"""Where training validates: the store's "val", else a seeded hold-out of "train" (or none), never "test"; and the
out-of-core SGD head reads the store's metadata once."""

import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest

import classify
import features_store
from features_store import reader
from pipelines.cli import main
from pipelines.runs.prediction import run_evaluate
from pipelines.runs.training import run_train, split_rows, validation_source

MLP = {"hidden_layer_sizes": (8,), "epochs": 1, "learning_rate": 0.01}


def make_store(path, split, *, n_features=6, seed=0, index_sha256="", labels=None, key_salt=""):
    """A real store of synthetic features: two classes (class b shifted; or `labels`, codes of "abc..."), the
    given split column."""
    n = len(split)
    labels = np.arange(n) % 2 if labels is None else np.asarray(labels)
    X = np.random.default_rng(seed).normal(size=(n, n_features)).astype(np.float32) + 2.0 * labels[:, None]
    keys = [hashlib.sha256(f"{key_salt}{i}".encode()).hexdigest() if key_salt else f"{i:064x}" for i in range(n)]
    with features_store.StoreSession.open(path, fingerprint="f" * 64, extractor={"name": "synthetic"}) as session:
        with session.shard_writer(keys, n_features=n_features) as writer:
            writer.write(X, np.ones(n, bool))
            session.commit(writer)
        session.write_view(ids=[f"{i}.png" for i in range(n)], keys=keys, labels=labels, classes=list("abcdefgh"[: labels.max() + 1]),
                           split=list(split), index_sha256=index_sha256)
    return path


def meta_of(split, *, views=0):
    """A store's metadata as plain arrays: originals in two classes, each followed by `views` augmented views."""
    n = len(split)
    originals = np.arange(n)
    source = np.repeat(originals * (views + 1), views + 1)
    return SimpleNamespace(
        ok=np.ones(n * (views + 1), bool),
        codes=np.repeat(originals % 2, views + 1),
        split=np.repeat(np.asarray(split), views + 1),
        view=np.tile(np.arange(views + 1), n).astype(np.int16),
        source=source,
    )


TRAIN_TEST = ["train"] * 16 + ["test"] * 4
TRAIN_VAL_TEST = ["train"] * 12 + ["val"] * 4 + ["test"] * 4


@pytest.mark.parametrize("head", ["logreg", "sgd", "mlp"])
def test_the_val_split_is_used_whenever_there_is_one(head):
    meta = meta_of(TRAIN_VAL_TEST)
    train, val = split_rows(meta, head=head)
    np.testing.assert_array_equal(train, np.arange(12))
    np.testing.assert_array_equal(val, np.arange(12, 16))
    assert validation_source(meta, val) == "val"


@pytest.mark.parametrize("head", ["logreg", "sgd"])
def test_without_val_a_head_that_needs_no_validation_gets_none_and_every_train_row(head):
    meta = meta_of(TRAIN_TEST)
    train, val = split_rows(meta, head=head)
    np.testing.assert_array_equal(train, np.arange(16))
    assert len(val) == 0 and validation_source(meta, val) == "none"


def test_without_val_the_mlp_holds_out_a_seeded_stratified_part_of_train_never_test():
    meta = meta_of(TRAIN_TEST, views=2)  # 20 images, each with 2 augmented views
    train, val = split_rows(meta, head="mlp", validation_fraction=0.25, random_state=0)
    assert validation_source(meta, val) == "train-holdout"
    assert (meta.split[val] == "train").all() and (meta.split[train] == "train").all()
    assert len(val) == 4 and (meta.view[val] == 0).all() and sorted(set(meta.codes[val])) == [0, 1]
    assert not np.isin(meta.source[train], meta.source[val]).any()  # no view of a validated image is trained on
    assert len(train) == (16 - 4) * 3
    again = split_rows(meta, head="mlp", validation_fraction=0.25, random_state=0)
    np.testing.assert_array_equal(again[1], val)


def test_without_a_split_column_every_head_holds_out_the_fraction_or_none():
    meta = meta_of([""] * 10)
    train, val = split_rows(meta, head="logreg", validation_fraction=0.2)
    assert len(val) == 2 and len(train) == 8 and validation_source(meta, val) == "train-holdout"
    train, val = split_rows(meta, head="mlp", validation_fraction=0.0)
    assert len(val) == 0 and len(train) == 10
    with pytest.raises(ValueError, match=r"`validation_fraction` must be in \[0, 1\). Received: validation_fraction=1"):
        split_rows(meta, validation_fraction=1)


def manifest_of(bundle):
    return json.loads((bundle / "manifest.json").read_text())


def test_logreg_without_val_records_none_and_evaluate_asks_for_a_split(tmp_path):
    store = make_store(tmp_path / "store", TRAIN_TEST)
    result = run_train(store, tmp_path / "head")
    manifest = manifest_of(result.bundle)
    assert manifest["validation"] == {"source": "none", "rows": 0, "single_image_classes": "train"}
    assert result.n_train == 16 and "validation" not in manifest["metrics"]
    with pytest.raises(ValueError, match="holds none out .*evaluate with --split test"):
        run_evaluate(result.bundle, store, tmp_path / "report")
    assert run_evaluate(result.bundle, store, tmp_path / "report", split="test")["n_samples"] == 4


def mlp_validation_loss(bundle, store, rows):
    """The loss of a bundle's MLP on store rows, scaled by the bundle's own scaler."""
    head = classify.load_bundle(bundle).estimator
    meta = features_store.read_meta(store)
    X = head[0].transform(features_store.read_features(store, rows))
    codes = classify.encode_labels(meta.labels[rows], head.classes_)
    model = head[-1].model_
    model.compile(loss="sparse_categorical_crossentropy")  # a loaded head is not compiled
    return model.evaluate(X, codes, verbose=0, return_dict=True)["loss"]


def test_the_mlp_early_stops_on_the_stores_val_rows(tmp_path):
    store = make_store(tmp_path / "store", TRAIN_VAL_TEST)
    result = run_train(store, tmp_path / "head", head="mlp", params=MLP)
    manifest = manifest_of(result.bundle)
    assert manifest["validation"] == {"source": "val", "rows": 4, "single_image_classes": "train"}
    assert result.n_train == 12
    history_loss = classify.load_bundle(result.bundle).estimator[-1].history_["val_loss"][0]
    assert history_loss == pytest.approx(mlp_validation_loss(result.bundle, store, np.arange(12, 16)), rel=1e-5)
    assert manifest["metrics"]["validation"]["n_samples"] == 4


def test_the_mlp_without_val_early_stops_on_a_train_holdout_not_on_test(tmp_path, capsys):
    store = make_store(tmp_path / "store", TRAIN_TEST)
    assert main(["-q", "train", str(store), "--head", "mlp", "--hidden", "8", "--epochs", "1",
                 "--out", str(tmp_path / "head")]) == 0
    bundle = tmp_path / "head"
    manifest = manifest_of(bundle)
    train, val = split_rows(features_store.read_meta(store), head="mlp", validation_fraction=0.2, random_state=0)
    assert manifest["validation"] == {"source": "train-holdout", "rows": len(val), "single_image_classes": "train"}
    assert len(val) == 3
    assert (val < 16).all() and len(train) == 13
    history_loss = classify.load_bundle(bundle).estimator[-1].history_["val_loss"][0]
    assert history_loss == pytest.approx(mlp_validation_loss(bundle, store, val), rel=1e-5)
    assert history_loss != pytest.approx(mlp_validation_loss(bundle, store, np.arange(16, 20)), rel=1e-3)
    report = run_evaluate(bundle, store, tmp_path / "report")
    assert report["evaluated_on"] == "held-out validation rows" and report["n_samples"] == 3


def test_the_training_store_is_known_from_another_directory_and_as_a_copy(tmp_path, monkeypatch):
    """Evaluated without --split from another working directory, or on a copy of its store, a head is scored on
    its held-out rows, never on the rows it was fitted on (a relative `trained_on` once made both "all rows")."""
    import shutil

    monkeypatch.chdir(tmp_path)
    make_store(tmp_path / "store", [""] * 20, index_sha256="ab" * 32)  # as `extract` records its index's
    result = run_train("store", tmp_path / "head")  # a relative store path, as typed on the command line
    assert result.n_val == 4
    shutil.copytree(tmp_path / "store", tmp_path / "copy")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for store in (tmp_path / "store", tmp_path / "copy"):
        report = run_evaluate(result.bundle, store, tmp_path / "report")
        assert (report["evaluated_on"], report["n_samples"]) == ("held-out validation rows", 4)
    # the same CSV over other images (another --images-root): not the training store, every row is scored
    make_store(tmp_path / "other", [""] * 20, index_sha256="ab" * 32, key_salt="other", seed=1)
    assert run_evaluate(result.bundle, tmp_path / "other", tmp_path / "report")["evaluated_on"] == "all rows"
    old = manifest_of(result.bundle)  # a bundle saved before the path was recorded whole: the index still tells
    old["trained_on"] = "store"
    del old["trained_keys_sha256"]
    (result.bundle / "manifest.json").write_text(json.dumps(old))
    assert run_evaluate(result.bundle, tmp_path / "copy", tmp_path / "report")["n_samples"] == 4


def test_a_class_with_one_training_image_is_trained_on_whatever_the_seed(tmp_path):
    """The hold-out never takes a class's only image (it made the mlp fail, by seed, with a class it had never
    seen, and logreg train without that class); a bundle saved before keeps its own hold-out when evaluated."""
    labels = [0, 1] * 8 + [2]
    store = make_store(tmp_path / "store", [""] * 17, labels=labels)
    meta = features_store.read_meta(store)
    for seed in range(6):
        result = run_train(store, tmp_path / f"mlp-{seed}", head="mlp", params=MLP, random_state=seed)
        assert classify.load_bundle(result.bundle).estimator.classes_.tolist() == ["a", "b", "c"]
        _, val = split_rows(meta, head="mlp", random_state=seed)
        assert 16 not in val and len(val) == 3
    old = manifest_of(result.bundle)
    del old["validation"]["single_image_classes"]
    from pipelines.runs.prediction import trained_rows

    _, old_val = trained_rows(old, meta)
    held = classify.holdout(meta.codes, 0.2, groups=meta.source, random_state=5, fallback=True)[1]
    np.testing.assert_array_equal(old_val, held)


def test_the_mlp_refuses_a_val_class_it_would_not_learn_and_any_head_one_class(tmp_path, capsys):
    store = make_store(tmp_path / "store", ["train"] * 8 + ["val"] * 3, labels=[0, 1] * 4 + [0, 1, 2])
    assert main(["-q", "train", str(store), "--head", "mlp", "--hidden", "8", "--epochs", "1",
                 "--out", str(tmp_path / "head")]) == 2
    err = capsys.readouterr().err.strip()
    assert "'val' split has labels that no 'train' row has ('c')" in err and len(err.splitlines()) == 1
    assert run_train(store, tmp_path / "lr").validation_source == "val"  # logreg: scored, "c" a miss
    one = make_store(tmp_path / "one", ["train"] * 4 + ["test"] * 2, labels=[0, 0, 0, 0, 1, 0])
    with pytest.raises(ValueError, match=r"the train rows have one class \('a'\)"):
        run_train(one, tmp_path / "one-head")


def test_sgd_reads_the_store_metadata_once_whatever_the_number_of_slabs(tmp_path, monkeypatch):
    store = make_store(tmp_path / "store", [""] * 400, n_features=8)
    calls = {"metadata": 0, "slabs": 0}
    view_columns, features = reader.view_columns, reader._View.features

    def counted_columns(*args, **kwargs):
        calls["metadata"] += 1
        return view_columns(*args, **kwargs)

    def counted_features(self, rows):
        calls["slabs"] += 1
        return features(self, rows)

    monkeypatch.setattr(reader, "view_columns", counted_columns)
    monkeypatch.setattr(reader._View, "features", counted_features)
    counts = {}
    for slab_rows in (80, 8):  # 320 train rows: 4 and 40 slabs per pass
        monkeypatch.setattr("pipelines.runs.training.SGD_SLAB_BYTES", 4 * 8 * slab_rows)
        calls.update(metadata=0, slabs=0)
        result = run_train(store, tmp_path / f"sgd-{slab_rows}", head="sgd", params={"max_iter": 3})
        counts[slab_rows] = dict(calls)
        assert result.validation_source == "train-holdout" and result.n_train == 320
    assert counts[80]["slabs"] >= 4 * 4 and counts[8]["slabs"] >= 40 * 4  # the scaler's pass and 3 epochs
    assert counts[80]["metadata"] == counts[8]["metadata"] == 1


def test_evaluate_on_another_store_of_the_training_images_says_the_head_was_fitted_on_them(tmp_path, capsys):
    """Another store of the same images (another index: no split column) is not the training store, so every row
    counts; the rows whose image the head was fitted on are counted and named, never passed off as held out."""
    store = make_store(tmp_path / "s", TRAIN_TEST, index_sha256="train-test")
    other = make_store(tmp_path / "other", [""] * 20, index_sha256="no-split")  # the same 20 images (keys)
    bundle = run_train(store, tmp_path / "head", head="logreg").bundle
    assert run_evaluate(bundle, store, tmp_path / "test", split="test").get("fitted_on") is None
    assert run_evaluate(bundle, store, tmp_path / "train", split="train")["fitted_on"] == 16
    assert main(["evaluate", str(bundle), str(other), "--out", str(tmp_path / "all")]) == 0
    out = capsys.readouterr().out
    assert "NOTE: the head was fitted on 16 of these 20 images" in out
    assert json.loads((tmp_path / "all" / "metrics.json").read_text())["fitted_on"] == 16


def test_evaluate_names_no_fitted_images_when_the_training_store_now_holds_other_images(tmp_path, capsys):
    """The training store re-extracted after its images were edited in place (the same index: ids, labels, split)
    holds other content keys than the head was fitted on: the rows fitted on are unknown, so none is counted (it
    counted the new images, which the head never saw, as fitted on)."""
    store = make_store(tmp_path / "s", TRAIN_TEST, index_sha256="train-test")
    bundle = run_train(store, tmp_path / "head", head="logreg").bundle
    make_store(store, TRAIN_TEST, index_sha256="train-test", key_salt="edited")  # the same index, new images
    other = make_store(tmp_path / "other", [""] * 20, index_sha256="no-split", key_salt="edited")
    assert run_evaluate(bundle, other, tmp_path / "all").get("fitted_on") is None
    assert main(["evaluate", str(bundle), str(other), "--out", str(tmp_path / "cli")]) == 0
    assert "fitted on" not in capsys.readouterr().out


def test_report_on_another_store_of_the_training_images_says_the_head_was_fitted_on_them(tmp_path, capsys):
    """`report` shows `evaluate`'s numbers: the images the head was fitted on are named on its page and in its
    output too, not only in metrics.json."""
    store = make_store(tmp_path / "s", TRAIN_TEST, index_sha256="train-test")
    other = make_store(tmp_path / "other", [""] * 20, index_sha256="no-split")  # the same 20 images (keys)
    bundle = run_train(store, tmp_path / "head", head="logreg").bundle
    assert main(["report", str(bundle), str(other), "--out", str(tmp_path / "rep"), "--mistakes", "0"]) == 0
    assert "NOTE: the head was fitted on 16 of these 20 images" in capsys.readouterr().out
    assert "the head was fitted on 16 of these 20 images" in (tmp_path / "rep" / "index.html").read_text()
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["fitted_on"] == 16
