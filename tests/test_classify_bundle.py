"""Head bundles: round trip, and the refusals (integrity, fingerprint, n_features, overwrite, missing)."""

import json

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from classify import (
    BundleExistsError,
    BundleIntegrityError,
    BundleMismatchError,
    BundleNotFoundError,
    ClassifyError,
    KerasMLPClassifier,
    evaluate,
    load_bundle,
    make_head,
    save_bundle,
)

FINGERPRINT = "a1b2c3d4e5f6" + "0" * 52
EXTRACTOR = {"name": "vgg16", "weights": "imagenet", "layer": "block5_pool", "pooling": "flatten"}
CLASSES = ["cat", "dog", "eel"]


@pytest.fixture
def data():
    X, y = make_classification(n_samples=60, n_features=20, n_informative=5, n_classes=3, random_state=0)
    return X.astype(np.float32), y


@pytest.fixture
def head(data):
    return make_head("logreg").fit(*data)


def _save(head, out_dir, **kw):
    return save_bundle(
        head, out_dir, extractor=EXTRACTOR, fingerprint=FINGERPRINT, classes=CLASSES, n_features=20, **kw
    )


def test_round_trip(tmp_path, data, head):
    X, y = data
    metrics = evaluate(head, X, y)
    path = _save(head, tmp_path / "bundle", metrics=metrics, params={"C": 1.0}, extra={"note": "hi"})
    assert sorted(p.name for p in path.iterdir()) == ["head.joblib", "manifest.json"]
    bundle = load_bundle(path)
    manifest = bundle.manifest
    assert manifest["format_version"] == 1 and manifest["kind"] == "sklearn"
    assert manifest["model_file"] == "head.joblib" and len(manifest["model_sha256"]) == 64
    assert manifest["extractor"] == EXTRACTOR and manifest["fingerprint"] == FINGERPRINT
    assert manifest["classes"] == CLASSES and manifest["n_features"] == 20
    assert manifest["metrics"] == metrics and manifest["params"] == {"C": 1.0} and manifest["note"] == "hi"
    assert {"python", "numpy", "scikit-learn", "keras"} <= set(manifest["versions"])
    assert manifest["created"].endswith("+00:00")
    np.testing.assert_array_equal(bundle.predict_proba(X), head.predict_proba(X))
    np.testing.assert_array_equal(bundle.predict(X), np.array(CLASSES)[head.predict(X)])
    bundle.check_fingerprint(FINGERPRINT)
    _save(head, path)  # an existing bundle is replaced


def test_round_trip_pipeline_with_keras_mlp(tmp_path, data):
    X, y = data
    head = make_pipeline(StandardScaler(), KerasMLPClassifier((8,), epochs=2, random_state=0)).fit(X, y)
    bundle = load_bundle(_save(head, tmp_path / "mlp"))
    np.testing.assert_array_equal(bundle.predict_proba(X), head.predict_proba(X))


def test_integrity_refusal(tmp_path, head):
    path = _save(head, tmp_path / "bundle")
    model = path / "head.joblib"
    raw = bytearray(model.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    model.write_bytes(bytes(raw))
    with pytest.raises(BundleIntegrityError, match=r"head.joblib has sha256 [0-9a-f]{64} but the manifest records"):
        load_bundle(path)


def test_fingerprint_refusal(tmp_path, head):
    bundle = load_bundle(_save(head, tmp_path / "bundle"))
    with pytest.raises(
        BundleMismatchError,
        match=r"features come from extractor ffffffffffff but the head bundle was trained on a1b2c3d4e5f6 "
        r"\(vgg16\); re-extract with the bundle's extractor",
    ):
        bundle.check_fingerprint("f" * 64)


def test_n_features_refusal(tmp_path, head):
    bundle = load_bundle(_save(head, tmp_path / "bundle"))
    with pytest.raises(ValueError, match=r"must have shape \(n_samples, 20\).*Received: X.shape=\(4, 19\)"):
        bundle.predict_proba(np.zeros((4, 19), dtype=np.float32))


def test_overwrite_refusal(tmp_path, head):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(BundleExistsError, match="is not empty and holds no manifest.json") as err:
        _save(head, out)
    assert isinstance(err.value, FileExistsError) and isinstance(err.value, ClassifyError)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_inconsistent_save_is_refused(tmp_path, head):
    with pytest.raises(ValueError, match="`n_features` must be the estimator's n_features_in_=20"):
        save_bundle(head, tmp_path / "b", extractor=EXTRACTOR, fingerprint=FINGERPRINT, classes=CLASSES, n_features=3)


def test_missing_pieces(tmp_path, head):
    with pytest.raises(BundleNotFoundError, match="the directory does not exist"):
        load_bundle(tmp_path / "nope")
    path = _save(head, tmp_path / "bundle")
    (path / "head.joblib").unlink()
    with pytest.raises(BundleNotFoundError, match="head.joblib is missing"):
        load_bundle(path)
    (path / "manifest.json").unlink()
    with pytest.raises(BundleNotFoundError, match="manifest.json is missing"):
        load_bundle(path)


def test_manifest_is_plain_json(tmp_path, head):
    path = _save(head, tmp_path / "bundle", metrics={"accuracy": np.float32(0.5)})
    assert json.loads((path / "manifest.json").read_text())["metrics"] == {"accuracy": 0.5}
