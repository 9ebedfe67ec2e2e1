"""Head bundles: round trip, and the refusals (integrity, fingerprint, n_features, overwrite, missing), and no code
from a bundle runs when it is loaded (tampered pickle, skops and Keras files)."""

import hashlib
import json
import os
import pickle
import re
import resource
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from classify import (
    BundleBusyError,
    BundleExistsError,
    BundleFormatError,
    BundleIntegrityError,
    BundleMismatchError,
    BundleNotFoundError,
    BundleUnsafeError,
    ClassifyError,
    KerasMLPClassifier,
    PickleBundleWarning,
    evaluate,
    fit_out_of_core,
    load_bundle,
    make_head,
    save_bundle,
    trusted_types,
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


def _names(path):
    """A bundle's files, content names shown as `head-*.skops`, its lock file left out."""
    return sorted(re.sub(r"-[0-9a-f]{12}\.", "-*.", p.name) for p in path.iterdir() if p.name != ".lock")


def _file(path, key="model_file"):
    return path / json.loads((path / "manifest.json").read_text())[key]


def test_round_trip(tmp_path, data, head):
    X, y = data
    metrics = evaluate(head, X, y)
    path = _save(head, tmp_path / "bundle", metrics=metrics, params={"C": 1.0}, extra={"note": "hi"})
    assert _names(path) == ["head-*.skops", "manifest.json"]
    bundle = load_bundle(path)
    manifest = bundle.manifest
    assert manifest["format_version"] == 2 and manifest["kind"] == "sklearn" and manifest["model_format"] == "skops"
    assert re.fullmatch(r"head-[0-9a-f]{12}\.skops", manifest["model_file"])
    assert manifest["model_sha256"] == hashlib.sha256(_file(path).read_bytes()).hexdigest()
    assert manifest["model_file"][5:17] == manifest["model_sha256"][:12]
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
    path = _save(head, tmp_path / "mlp")
    assert _names(path) == ["head-*.skops", "manifest.json", "mlp-*.keras"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert re.fullmatch(r"mlp-[0-9a-f]{12}\.keras", manifest["network_file"])
    assert manifest["network_sha256"] == hashlib.sha256(_file(path, "network_file").read_bytes()).hexdigest()
    assert head[-1].model_ is not None  # saving does not strip the caller's head
    bundle = load_bundle(path)
    np.testing.assert_allclose(bundle.predict_proba(X), head.predict_proba(X), rtol=1e-5)
    np.testing.assert_array_equal(bundle.estimator.classes_, head.classes_)
    # replaced by a logistic-regression bundle: the network file goes with the old bundle
    _save(make_head("logreg").fit(X, y), path)
    assert _names(path) == ["head-*.skops", "manifest.json"]


def test_every_head_round_trips_through_skops(tmp_path, data):
    X, y = data
    names = np.array(CLASSES)[y]
    heads = {
        "logreg": make_head("logreg").fit(X, names),
        "mlp": make_head("mlp", hidden_layer_sizes=(4,), epochs=1, random_state=0).fit(X, names),
        "sgd": fit_out_of_core(make_head("sgd", random_state=0), [(X, names)], CLASSES),
        "sgd-unscaled": fit_out_of_core(make_head("sgd", random_state=0), [(X, names)], CLASSES, scaler=False),
    }
    for name, head in heads.items():
        bundle = load_bundle(_save(head, tmp_path / name))
        np.testing.assert_allclose(bundle.predict_proba(X), head.predict_proba(X), rtol=1e-5, err_msg=name)


def test_trusted_types_are_our_head_types_only():
    assert trusted_types() == [
        "classify.mlp.KerasMLPClassifier",
        "classify.scaling.SlabStandardScaler",
        "sklearn.linear_model._logistic.LogisticRegression",
        "sklearn.linear_model._stochastic_gradient.SGDClassifier",
        "sklearn.pipeline.Pipeline",
        "sklearn.preprocessing._data.StandardScaler",
    ]


def test_integrity_refusal(tmp_path, data, head):
    path = _save(head, tmp_path / "bundle")
    model = _file(path)
    raw = bytearray(model.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    model.write_bytes(bytes(raw))
    with pytest.raises(BundleIntegrityError, match=r"head-[0-9a-f]{12}\.skops has sha256 [0-9a-f]{64} but the manifest records"):
        load_bundle(path)
    X, y = data
    mlp = _save(make_pipeline(StandardScaler(), KerasMLPClassifier((4,), epochs=1)).fit(X, y), tmp_path / "mlp")
    _file(mlp, "network_file").write_bytes(_file(mlp, "network_file").read_bytes() + b"x")
    with pytest.raises(BundleIntegrityError, match=r"mlp-[0-9a-f]{12}\.keras has sha256 [0-9a-f]{64} but the manifest records"):
        load_bundle(mlp)


class _Payload:
    """Unpickling or unpacking it creates a folder at `marker`: stands for any code a tampered file would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))

    def __setstate__(self, state):
        os.makedirs(state["marker"])


def _tamper(path, name, data, **manifest_changes):
    """Replace a bundle file and record the new file's sha256 in the manifest, as an attacker would."""
    (path / name).write_bytes(data)
    manifest = json.loads((path / "manifest.json").read_text())
    key = "network_sha256" if manifest.get("network_file") == name else "model_sha256"
    manifest.update({key: hashlib.sha256(data).hexdigest(), **manifest_changes})
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_a_malicious_pickle_in_place_of_the_model_is_refused_and_never_run(tmp_path, head):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    pickle.loads(payload)  # the payload is live: unpickling it runs its code
    assert marker.exists()
    marker.rmdir()
    path = _save(head, tmp_path / "bundle")
    _tamper(path, _file(path).name, payload)
    with pytest.raises(BundleFormatError, match=r"head-[0-9a-f]{12}\.skops is not a readable skops head file"):
        load_bundle(path)
    _tamper(path, _file(path).name, payload, model_format="joblib")  # the manifest says "a pickle"
    with pytest.raises(BundleUnsafeError, match=r"head-[0-9a-f]{12}\.skops is a pickle, and loading a pickle runs any code"):
        load_bundle(path)
    _tamper(path, _file(path).name, payload, format_version=1)  # format 1 bundles were pickles
    with pytest.raises(BundleUnsafeError, match="is a pickle"):
        load_bundle(path)
    assert not marker.exists()


def test_a_skops_file_of_another_type_is_refused_and_never_run(tmp_path, head):
    import skops.io

    marker = tmp_path / "pwned"
    payload = skops.io.dumps(_Payload(marker))
    skops.io.loads(payload, trusted=[f"{__name__}._Payload"])  # the payload is live when its type is trusted
    assert marker.exists()
    marker.rmdir()
    path = _save(head, tmp_path / "bundle")
    _tamper(path, _file(path).name, payload)
    with pytest.raises(BundleUnsafeError, match=r"holds types that are not featurehead head types.*_Payload"):
        load_bundle(path)
    assert not marker.exists()


@pytest.mark.parametrize("foreign", ["svc", "array"])
def test_a_skops_file_of_scikit_learns_other_types_is_refused(tmp_path, head, data, foreign):
    """skops trusts scikit-learn's own estimators by default: a pipeline with an SVC loaded, and `predict` then
    failed as an internal error (exit 3) on its missing predict_proba."""
    import skops.io
    from sklearn.svm import SVC

    X, y = data
    other = make_pipeline(StandardScaler(), SVC()).fit(X, y) if foreign == "svc" else np.zeros(3)
    path = _save(head, tmp_path / "bundle")
    _tamper(path, _file(path).name, skops.io.dumps(other))
    match = "sklearn.svm._classes.SVC" if foreign == "svc" else "numpy.ndarray"
    with pytest.raises(BundleUnsafeError, match=rf"holds types that are not featurehead head types, so it is not "
                                                rf"loaded: {match}$"):
        load_bundle(path)


def test_a_head_of_other_types_is_refused_when_saved_not_only_when_loaded(tmp_path, data):
    """save_bundle wrote a PCA pipeline that load_bundle then refused: the bundle was lost work."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    X, y = data
    other = make_pipeline(StandardScaler(), PCA(4), LogisticRegression()).fit(X, y)
    with pytest.raises(BundleUnsafeError, match=r"holds types that are not featurehead head types, so it is not "
                                                r"loaded: sklearn.decomposition._pca.PCA$"):
        save_bundle(other, tmp_path / "b", extractor={}, fingerprint="f" * 12, classes=other.classes_,
                    n_features=X.shape[1])
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())
    with pytest.warns(PickleBundleWarning):  # a pickle holds any type (loading one is opt-in)
        save_bundle(other, tmp_path / "p", extractor={}, fingerprint="f" * 12, classes=other.classes_,
                    n_features=X.shape[1], model_format="joblib")


def test_a_keras_network_with_code_is_refused_and_never_run(tmp_path, data):
    import keras

    from classify.mlp_network import model_to_bytes

    X, y = data
    marker = tmp_path / "pwned"
    path = _save(make_pipeline(StandardScaler(), KerasMLPClassifier((4,), epochs=1)).fit(X, y), tmp_path / "mlp")
    code = eval(f"lambda x: (__import__('os').makedirs({str(marker)!r}, exist_ok=True), x)[1]")  # noqa: S307
    inputs = keras.Input((20,))
    evil = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.Lambda(code)(inputs)))
    data_bytes = model_to_bytes(evil)
    marker.rmdir()  # building the model ran the lambda once
    _tamper(path, _file(path, "network_file").name, data_bytes)
    unsafe = tmp_path / "unsafe.keras"
    unsafe.write_bytes(data_bytes)
    keras.saving.load_model(unsafe, safe_mode=False)  # the payload is live when loaded unsafely
    assert marker.exists()
    marker.rmdir()
    with pytest.raises(BundleUnsafeError, match=r"mlp-[0-9a-f]{12}\.keras is not a Keras model that loads with safe_mode=True"):
        load_bundle(path)
    assert not marker.exists()


def test_a_pickled_estimator_that_is_not_a_linear_head_predicts_its_most_probable_class(tmp_path, data):
    """Only logreg and sgd heads predict by their own decision (their probabilities tie where sgd's saturate); an
    SVC's `predict` disagrees with its Platt-scaled `predict_proba` on many rows, and a bundle of one predicted its
    most probable class before that change, as `predictions.csv`'s `probability` column assumes."""
    from sklearn.svm import SVC

    X, y = data
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated in scikit-learn 1.9, removed in 1.11
            svc = SVC(probability=True, random_state=0).fit(X, y)
    except TypeError:
        pytest.skip("this scikit-learn has no SVC(probability=True)")
    with pytest.warns(PickleBundleWarning):
        path = _save(svc, tmp_path / "svc", model_format="joblib")
    with pytest.warns(PickleBundleWarning):
        bundle = load_bundle(path, trust_pickle=True)
    X = np.random.default_rng(0).normal(size=(200, X.shape[1])).astype(np.float32)  # new points, off the fit's
    proba = svc.predict_proba(X)
    most_probable = np.asarray(CLASSES)[proba.argmax(axis=1)]
    assert (most_probable != np.asarray(CLASSES)[svc.predict(X)]).any()  # the two disagree here
    pred, p = bundle.predict_with_proba(X)
    np.testing.assert_array_equal(bundle.predict(X), most_probable)
    np.testing.assert_array_equal(pred, most_probable)
    np.testing.assert_allclose(p, proba, rtol=1e-5)


def test_a_pickle_bundle_is_an_explicit_opt_in_with_warnings(tmp_path, data, head):
    X, _ = data
    with pytest.warns(PickleBundleWarning, match=r"head-[0-9a-f]{12}\.joblib is a pickle: loading a pickle runs any code"):
        path = _save(head, tmp_path / "bundle", model_format="joblib")
    assert _names(path) == ["head-*.joblib", "manifest.json"]
    with pytest.raises(BundleUnsafeError, match=r"trust_pickle=True"):
        load_bundle(path)
    with pytest.warns(PickleBundleWarning, match=r"loading .*head-[0-9a-f]{12}\.joblib: loading a pickle runs any code"):
        bundle = load_bundle(path, trust_pickle=True)
    np.testing.assert_array_equal(bundle.predict_proba(X), head.predict_proba(X))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _save(head, path)  # the default format: no warning, and the pickle is gone
    assert _names(path) == ["head-*.skops", "manifest.json"]
    with pytest.raises(ValueError, match="`model_format` must be one of 'skops', 'joblib'"):
        _save(head, path, model_format="pickle")


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
    (out / "manifest.json").write_text("[1, 2]")  # JSON, but no bundle's (nor a store's) manifest
    with pytest.raises(BundleExistsError, match="not a head bundle's"):
        _save(head, out)


def test_inconsistent_save_is_refused(tmp_path, head):
    with pytest.raises(ValueError, match="`n_features` must be the estimator's n_features_in_=20"):
        save_bundle(head, tmp_path / "b", extractor=EXTRACTOR, fingerprint=FINGERPRINT, classes=CLASSES, n_features=3)


def test_missing_pieces(tmp_path, head):
    with pytest.raises(BundleNotFoundError, match="the directory does not exist"):
        load_bundle(tmp_path / "nope")
    path = _save(head, tmp_path / "bundle")
    (tmp_path / "model.keras").write_bytes(b"a file")  # both were "the directory does not exist"
    with pytest.raises(BundleNotFoundError, match=r"model\.keras: it is a file; a head bundle is a folder \(what "):
        load_bundle(tmp_path / "model.keras")
    with pytest.raises(BundleNotFoundError, match=r"manifest\.json: it is a file of the bundle .*bundle; give that "
                                                  "folder"):
        load_bundle(path / "manifest.json")
    _file(path).unlink()
    with pytest.raises(BundleNotFoundError, match=r"head-[0-9a-f]{12}\.skops is missing"):
        load_bundle(path)
    (path / "manifest.json").unlink()
    with pytest.raises(BundleNotFoundError, match="manifest.json is missing"):
        load_bundle(path)


@pytest.mark.parametrize(
    "edit, error, match",
    [
        pytest.param(lambda m: m.update(classes=m["classes"][::-1]), BundleIntegrityError, "another order",
                     id="classes-reversed"),
        pytest.param(lambda m: m.update(classes=m["classes"][:2]), BundleIntegrityError, "names 2 classes",
                     id="classes-dropped"),
        pytest.param(lambda m: m.update(n_features=21), BundleIntegrityError, "fitted on 20", id="n-features"),
        pytest.param(lambda m: m.pop("model_sha256"), BundleFormatError, "must have `model_sha256`", id="no-sha"),
        pytest.param(lambda m: m.update(classes="cat"), BundleFormatError, "`classes` \\(list\\)", id="classes-str"),
        pytest.param(lambda m: [m.pop("network_file"), m.pop("network_sha256")], BundleFormatError,
                     "names no network file", id="no-network"),
        # it called the skops file "a pickle" (and with trust_pickle=True, unpickled it: an UnpicklingError)
        pytest.param(lambda m: m.update(model_format="joblib"), BundleFormatError,
                     r"says model_format 'joblib' \(a pickle\), but .*head-[0-9a-f]{12}\.skops is a skops file \(a "
                     r"zip archive\), as saved with model_format 'skops': the manifest was edited", id="format-joblib"),
    ],
)
def test_an_edited_manifest_is_refused_in_one_line(tmp_path, data, edit, error, match):
    """The manifest is not hashed: what it says of the head must agree with the head (a reversed `classes` made
    predict name every column wrongly; a missing key or network was an internal error)."""
    X, y = data
    names = np.array(CLASSES)[y]
    head = make_pipeline(StandardScaler(), KerasMLPClassifier((4,), epochs=1, random_state=0)).fit(X, names)
    path = _save(head, tmp_path / "bundle")
    load_bundle(path)
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(error, match=match) as caught:
        load_bundle(path)
    assert "\n" not in str(caught.value)
    with pytest.raises(error, match=match):
        load_bundle(path, trust_pickle=True)


def test_a_head_whose_classes_the_caller_named_still_loads(tmp_path, data, head):
    assert load_bundle(_save(head, tmp_path / "bundle")).classes == CLASSES  # fitted on codes 0, 1, 2
    X, y = data
    named = make_head("logreg").fit(X, np.array(CLASSES)[y])
    with pytest.raises(ValueError, match=r"`classes` must be in the order of the estimator's classes_"):
        save_bundle(named, tmp_path / "reordered", extractor=EXTRACTOR, fingerprint=FINGERPRINT,
                    classes=CLASSES[::-1], n_features=20)  # saved, it was then refused as "edited" at load
    assert not (tmp_path / "reordered").exists()


def test_manifest_is_plain_json(tmp_path, head):
    path = _save(head, tmp_path / "bundle", metrics={"accuracy": np.float32(0.5)})
    assert json.loads((path / "manifest.json").read_text())["metrics"] == {"accuracy": 0.5}


RESAVE = """
import sys, joblib
from classify import save_bundle
head = joblib.load(sys.argv[2])
save_bundle(head, sys.argv[1], extractor={"name": "x"}, fingerprint="f" * 64, classes=["a", "b"], n_features=4096)
"""


def test_a_bundle_that_cannot_be_written_in_full_keeps_the_previous_bundle_whole(tmp_path):
    import joblib

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 4096)).astype(np.float32), np.repeat([0, 1], 20)
    heads = [make_pipeline(StandardScaler(), KerasMLPClassifier((1,), epochs=1, random_state=seed)).fit(X, y)
             for seed in (0, 1)]
    path = save_bundle(heads[0], tmp_path / "b", extractor={"name": "x"}, fingerprint="f" * 64,
                       classes=["a", "b"], n_features=4096)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    joblib.dump(heads[1], tmp_path / "new.joblib")
    # a file-size limit that the network file fits under and the head file (the scaler's 3 x 4096 floats) does not
    network, model = _file(path, "network_file").name, _file(path).name
    small, large = sorted((len(before[network]), len(before[model])))
    assert small == len(before[network]) and large > small + 4096

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, ((small + large) // 2,) * 2)

    proc = subprocess.run([sys.executable, "-c", RESAVE, str(path), str(tmp_path / "new.joblib")],
                          capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert proc.returncode != 0 and "File too large" in proc.stderr
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before  # no new network beside the old head
    np.testing.assert_allclose(load_bundle(path).predict_proba(X), heads[0].predict_proba(X), rtol=1e-5)


WRITE_FILES = """
import sys
from pathlib import Path
from classify.bundle.manifest import write_files
write_files(Path(sys.argv[1]), {"small": b"s" * 1000, "large": b"l" * 100_000})
"""


def test_write_files_is_all_or_none_whichever_file_fails(tmp_path):
    (tmp_path / "small").write_bytes(b"old small")
    (tmp_path / "large").write_bytes(b"old large")

    def limit():  # the first file fits, the second does not
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))

    proc = subprocess.run([sys.executable, "-c", WRITE_FILES, str(tmp_path)], capture_output=True, text=True,
                          preexec_fn=limit, timeout=120)
    assert proc.returncode != 0 and f"File too large: '{tmp_path / 'large'}'" in proc.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {"small": b"old small", "large": b"old large"}


KILLED_SAVES = """
import os, signal, sys, traceback
import joblib
import skops.io  # what the save imports, imported once for the three
from classify import save_bundle
head = joblib.load(sys.argv[1])
assert len(os.listdir("/proc/self/task")) == 1, "a thread before the fork"  # OPENBLAS_NUM_THREADS=1: none
for path, at in zip(sys.argv[2::2], sys.argv[3::2]):  # a save into PATH killed at its AT-th rename, each in a child
    pid = os.fork()  # a process of its own, killed for real, that need not import scikit-learn again
    if pid == 0:
        real, calls = os.replace, [0]
        def replace(src, dst):
            calls[0] += 1
            if calls[0] == int(at):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst)
        os.replace = replace
        try:
            save_bundle(head, path, extractor={"name": "x"}, fingerprint="f" * 64, classes=["cat", "dog", "eel"],
                        n_features=20, aux={"history.png": b"new curves"})
        except BaseException:
            traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)  # not killed: the test fails on this status
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


@pytest.mark.parametrize("first", [True, False], ids=["first-save", "replacing"])
def test_a_save_killed_at_any_rename_leaves_a_whole_bundle_and_the_next_save_works(tmp_path, data, first):
    """A kill between the renames of a save left the new head beside the old manifest (the old bundle lost), and a
    first save killed so left its temporary files, for which every later save refused the folder."""
    import joblib

    X, y = data
    old, new = make_head("logreg", C=0.01).fit(X, y), make_head("logreg", C=100.0).fit(X, y)
    joblib.dump(new, tmp_path / "new.joblib")
    paths = {at: tmp_path / f"b{at}" for at in (1, 2, 3)}  # killed at the model file, the manifest, history.png
    if not first:
        for path in paths.values():
            _save(old, path, aux={"history.png": b"old curves"})
    # one process forks the three saves; single-threaded (no OpenBLAS threads), so that forking it is safe
    proc = subprocess.run([sys.executable, "-c", KILLED_SAVES, str(tmp_path / "new.joblib"),
                           *(str(arg) for at, path in paths.items() for arg in (path, at))],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert proc.returncode == 0 and proc.stdout.split() == [str(-signal.SIGKILL)] * 3, (proc.stdout, proc.stderr)
    for at, path in paths.items():
        committed = at > 2
        if committed or not first:
            expected = new if committed else old
            np.testing.assert_allclose(load_bundle(path).predict_proba(X), expected.predict_proba(X), rtol=1e-5)
        else:
            with pytest.raises(BundleNotFoundError, match="manifest.json is missing"):
                load_bundle(path)
        # a bundle's curves are its own or none: the old ones went before the commit
        history = path / "history.png"
        assert (history.read_bytes() == b"old curves") if at == 1 and not first else not history.exists(), at
        _save(new, path)  # the re-run: works, and leaves the new bundle alone
        assert _names(path) == ["head-*.skops", "manifest.json"], at
        np.testing.assert_allclose(load_bundle(path).predict_proba(X), new.predict_proba(X), rtol=1e-5)


def test_bundle_files_are_readable_by_others_as_the_umask_allows(tmp_path, head):
    """mkstemp made them 0600: a bundle shared on a team's disk did not load for anyone else."""
    old = os.umask(0o022)
    try:
        path = _save(head, tmp_path / "b", aux={"history.png": b"curves"})
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in path.iterdir() if p.name != ".lock"} == {
        _file(path).name: 0o644, "manifest.json": 0o644, "history.png": 0o644}


def test_saves_into_one_folder_take_turns(tmp_path, head, monkeypatch):
    import filelock

    from classify.bundle import manifest

    path = _save(head, tmp_path / "b")
    monkeypatch.setattr(manifest, "LOCK_TIMEOUT_S", 0.2)
    with filelock.FileLock(path / ".lock"):  # another save, in the middle of its writes
        with pytest.raises(BundleBusyError, match=r"b has been saved into by another process for 0.2 s"):
            _save(make_head("logreg", C=5.0).fit(*_data()), path)
    _save(head, path)  # once it is done


def _data():
    X, y = make_classification(n_samples=60, n_features=20, n_informative=5, n_classes=3, random_state=0)
    return X.astype(np.float32), y


SAVE_WITH_A_LARGE_PLOT = """
import sys
import joblib
from classify import save_bundle
save_bundle(joblib.load(sys.argv[2]), sys.argv[1], extractor={"name": "x"}, fingerprint="f" * 64,
            classes=["cat", "dog", "eel"], n_features=20, aux={"history.png": b"p" * 200_000})
"""


def test_a_plot_that_cannot_be_written_after_the_commit_says_the_bundle_was_saved(tmp_path, data, head):
    """It failed as if the save had, with the new head already in place (and the old curves beside it)."""
    import joblib

    joblib.dump(head, tmp_path / "head.joblib")
    path = _save(make_head("logreg", C=0.01).fit(*data), tmp_path / "b", aux={"history.png": b"old curves"})

    def limit():  # the head and its manifest fit under it, the plot does not
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    proc = subprocess.run([sys.executable, "-c", SAVE_WITH_A_LARGE_PLOT, str(path), str(tmp_path / "head.joblib")],
                          capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert proc.returncode != 0
    assert f"File too large; the bundle itself was saved, without this plot: '{path / 'history.png'}'" in proc.stderr
    np.testing.assert_allclose(load_bundle(path).predict_proba(data[0]), head.predict_proba(data[0]), rtol=1e-5)
    assert _names(path) == ["head-*.skops", "manifest.json"]  # no old curves, no old head


def test_a_load_that_a_save_overtakes_reads_the_new_bundle(tmp_path, data, head, monkeypatch):
    """A reader that read the manifest just before a save's commit found the files it names removed: "X is
    missing; the bundle is incomplete", for a whole bundle."""
    from classify.bundle import load as load_module
    from classify.bundle.manifest import read_manifest

    path = _save(make_head("logreg", C=0.01).fit(*data), tmp_path / "b")
    before = read_manifest(path)  # what the reader read ...
    _save(head, path)  # ... when a save committed and removed the old head's file
    reads = iter([before])
    monkeypatch.setattr(load_module, "read_manifest", lambda p: next(reads, None) or read_manifest(p))
    np.testing.assert_allclose(load_bundle(path).predict_proba(data[0]), head.predict_proba(data[0]), rtol=1e-5)
