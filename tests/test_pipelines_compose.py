"""ImageFeatureExtractor composed in scikit-learn: grid searches, ColumnTransformer, parallel CV, persistence,
and the out-of-core heads (MLP over store batches, `featurehead train --head sgd`)."""

import math
import subprocess
import sys

import joblib
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import features_store
from classify import KerasMLPClassifier, load_bundle
from extract import get_extractor, read_index
from pipelines import ImageFeatureExtractor, run_extract
from pipelines.cli import main

SMALL = dict(weights="none", input_size=32, pooling="avg", batch_size=4)


@pytest.fixture
def images(tmp_path):
    """12 32x32 PNGs in 2 classes (class b brighter); returns (paths, labels)."""
    paths, labels = [], []
    for c, label in enumerate("ab"):
        for i in range(6):
            arr = np.clip(np.random.default_rng(10 * c + i).integers(0, 120, (32, 32, 3)) + 110 * c, 0, 255)
            path = tmp_path / "imgs" / label / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr.astype(np.uint8)).save(path)
            paths.append(str(path)), labels.append(label)
    return paths, np.array(labels)


def _pipeline(cache_dir, clf=None):
    return Pipeline([
        ("features", ImageFeatureExtractor(**SMALL, cache_dir=cache_dir)),
        ("scale", StandardScaler()),
        ("pca", PCA(n_components=2)),
        ("clf", clf if clf is not None else LogisticRegression()),
    ])


def test_grid_search_over_the_head_extracts_each_image_once(images, tmp_path):
    paths, y = images
    search = GridSearchCV(_pipeline(tmp_path / "cache"), {"clf__C": [0.1, 1.0], "pca__n_components": [2, 3]}, cv=3)
    search.fit(paths, y)
    info = search.best_estimator_.named_steps["features"].cache_info()
    assert info.n_extracted == 12 and info.n_rows == 12 and info.n_hits > 12 * 4
    assert search.best_score_ > 0.8 and set(search.predict(paths[:2])) <= {"a", "b"}


def test_grid_search_with_the_keras_mlp_head(images, tmp_path):
    paths, y = images
    mlp = KerasMLPClassifier(hidden_layer_sizes=(4,), epochs=1, early_stopping=False, random_state=0)
    grid = {"clf__epochs": [1, 3], "clf__hidden_layer_sizes": [(4,), (8,)]}
    # two folds: 9 Keras fits in place of 13 (each is Keras's tracing, a second or so), every grid point still fitted
    search = GridSearchCV(_pipeline(tmp_path / "cache", mlp), grid, cv=2).fit(paths, y)
    assert search.best_params_["clf__epochs"] in (1, 3)
    assert search.best_estimator_.named_steps["features"].cache_info().n_extracted == 12
    assert search.predict_proba(paths[:3]).shape == (3, 2)


def test_column_transformer_joins_image_features_and_tabular_columns(images, tmp_path):
    paths, y = images
    frame = pd.DataFrame({"path": paths, "size_cm": np.arange(12.0), "weight": np.linspace(0, 1, 12)})
    columns = ColumnTransformer([
        ("image", ImageFeatureExtractor(**SMALL, cache_dir=tmp_path / "cache"), ["path"]),
        ("tabular", StandardScaler(), ["size_cm", "weight"]),
    ])
    model = Pipeline([("columns", columns), ("clf", LogisticRegression())]).fit(frame, y)
    assert columns.transform(frame).shape == (12, 512 + 2)
    names = model.named_steps["columns"].get_feature_names_out()
    assert names[0] == "image__vgg16_features_0" and names[-1] == "tabular__weight"
    assert model.score(frame, y) > 0.8


def test_parallel_cross_validation_shares_the_cache(images, tmp_path):
    paths, y = images
    cache_dir = tmp_path / "cache"
    parallel = cross_val_score(_pipeline(cache_dir), paths, y, cv=3, n_jobs=2)
    serial = cross_val_score(_pipeline(cache_dir), paths, y, cv=3)
    np.testing.assert_allclose(parallel, serial)
    info = ImageFeatureExtractor(**SMALL, cache_dir=cache_dir).fit(paths).cache_info()
    assert info.n_rows == 12  # two writer processes, one file, no duplicate rows


def test_the_fitted_pipeline_predicts_the_same_in_a_fresh_process(images, tmp_path):
    paths, y = images
    model = _pipeline(None).fit(paths[::2], y[::2])
    joblib.dump(model, tmp_path / "model.joblib")
    expected = model.predict_proba(paths[1::2])
    code = (
        "import sys, joblib, numpy as np; m = joblib.load(sys.argv[1]); "
        "np.save(sys.argv[2], m.predict_proba(sys.argv[3:]))"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "model.joblib"), str(tmp_path / "p.npy"),
                    *paths[1::2]], check=True, capture_output=True)
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), expected, rtol=1e-5, atol=1e-6)


@pytest.fixture
def store(csv_index, tmp_path):
    return run_extract(read_index(csv_index), get_extractor("vgg16", **SMALL), tmp_path / "feats").store


def test_the_mlp_trains_from_store_batches(store):
    n = features_store.read_info(store).n_rows
    X, y, _ = features_store.load(store)

    def batches():
        return ((Xb, yb) for Xb, yb, _ in features_store.iter_batches(store, 3))

    mlp = KerasMLPClassifier((8,), epochs=2, learning_rate=0.01, random_state=0)
    mlp.fit_batches(batches, ["a", "b"], X.shape[1], n_batches=math.ceil(n / 3))
    assert len(mlp.history_["loss"]) == 2 and mlp.n_features_in_ == X.shape[1]
    assert mlp.predict(X).shape == (n,) and set(mlp.classes_) == {"a", "b"}
    with pytest.raises(ValueError, match="`n_batches` must be a positive integer"):
        mlp.fit_batches(batches, ["a", "b"], X.shape[1], n_batches=0)
    with pytest.raises(ValueError, match="batch labels must be among `classes`"):
        KerasMLPClassifier((4,), epochs=1).fit_batches(batches, ["a", "z"], X.shape[1], n_batches=3)
    with pytest.raises(ValueError, match="`class_weight` as a dict"):
        KerasMLPClassifier((4,), epochs=1, class_weight="balanced").fit_batches(batches, ["a", "b"], 512, n_batches=3)


def test_train_sgd_head_out_of_core_from_the_cli(store, tmp_path, capsys):
    assert main(["-q", "train", str(store), "--head", "sgd", "--epochs", "3", "--out", str(tmp_path / "sgd")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == str(tmp_path / "sgd") and "trained sgd" in out[0]
    bundle = load_bundle(tmp_path / "sgd")
    X, _, _ = features_store.load(store)
    assert bundle.predict_proba(X).shape == (len(X), 2)


def test_an_sgd_head_is_scored_and_predicted_by_its_own_decision_where_its_probabilities_saturate(tmp_path, capsys):
    import json

    rng = np.random.default_rng(0)
    n, d, k = 160, 64, 4
    labels = np.repeat(np.arange(k), n // k)
    X = (rng.normal(size=(n, d)) + 0.5 * rng.normal(size=(k, d))[labels]).astype(np.float32)
    split = np.where(np.arange(n) % 4 == 0, "val", "train")
    path, keys = tmp_path / "feats", [f"{i:064x}" for i in range(n)]
    with features_store.StoreSession.open(path, fingerprint="f" * 64, extractor={"name": "t"}) as session:
        with session.shard_writer(keys, n_features=d) as w:
            w.write(X, np.ones(n, bool))
            session.commit(w)
        session.write_view(ids=[f"{i}.png" for i in range(n)], keys=keys, labels=labels, classes=list("abcd"),
                           split=split.tolist())
    assert main(["-q", "train", str(path), "--head", "sgd", "--out", str(tmp_path / "sgd")]) == 0
    assert main(["-q", "evaluate", str(tmp_path / "sgd"), str(path), "--out", str(tmp_path / "eval")]) == 0
    bundle, val = load_bundle(tmp_path / "sgd"), X[split == "val"]
    proba = bundle.predict_proba(val)
    assert ((proba == proba.max(axis=1, keepdims=True)).sum(axis=1) > 1).any()  # one-vs-rest ties at 1.0
    assert (bundle.predict(val) == bundle.estimator.predict(val)).all()  # the head's own decision
    trained = bundle.manifest["metrics"]["validation"]
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["confusion_matrix"] == trained["confusion_matrix"]
    assert evaluated["accuracy"] == pytest.approx(trained["accuracy"], rel=1e-5)


def test_sgd_out_of_core_mixes_classes_of_a_class_sorted_store(tmp_path):
    import classify
    from pipelines.runs.training import _fit_sgd_out_of_core

    rng = np.random.default_rng(0)
    n, d = 400, 8
    labels = np.repeat([0, 1], n // 2)  # sorted by class, as class folders give
    X = rng.normal(size=(n, d)).astype(np.float32) + labels[:, None] * 1.5
    path = tmp_path / "sorted"
    keys = [f"{i:064x}" for i in range(n)]
    with features_store.StoreSession.open(path, fingerprint="f" * 64, extractor={"name": "t"}) as session:
        with session.shard_writer(keys, n_features=d) as w:
            w.write(X, np.ones(n, bool))
            session.commit(w)
        session.write_view(ids=[f"{i}.png" for i in range(n)], keys=keys, labels=labels, classes=["a", "b"],
                           split=[""] * n)
    meta = features_store.read_meta(path)
    scores = [
        _fit_sgd_out_of_core(classify.make_head("sgd", random_state=seed), path, meta, np.arange(n), d,
                             {"max_iter": 1, "random_state": seed}, slab_bytes=4 * d * 20).score(X, meta.labels)
        for seed in range(3)
    ]  # one pass in 20-row slabs: class-ordered slabs leave SGD biased to the last class (mean 0.86 measured)
    assert np.mean(scores) > 0.93
