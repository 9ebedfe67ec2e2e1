"""KerasMLPClassifier: shapes, learning, dropout, clone, pickling in a fresh process, float32."""

import subprocess
import sys
import tracemalloc
import warnings

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.model_selection import GridSearchCV

from classify import KerasMLPClassifier

SMALL = dict(hidden_layer_sizes=(16,), epochs=5, learning_rate=0.01, random_state=0)


def _data():
    X, y = make_classification(
        n_samples=120, n_features=20, n_informative=5, n_classes=3, class_sep=2.0, random_state=0
    )
    return X.astype(np.float32), y


@pytest.fixture
def data():
    return _data()


@pytest.fixture(scope="module")
def fitted():
    """One fit shared by the tests that only read it (predict, inspect the model, pickle it as it is); a test that
    needs an estimator no test has touched fits its own."""
    return KerasMLPClassifier(**SMALL).fit(*_data())


def test_fit_predict_shapes(data, fitted):
    X, y = data
    assert fitted.n_features_in_ == 20
    np.testing.assert_array_equal(fitted.classes_, [0, 1, 2])
    proba = fitted.predict_proba(X)
    assert proba.shape == (120, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert fitted.predict(X).shape == (120,)
    assert set(fitted.history_) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(isinstance(v, float) for v in fitted.history_["loss"])


def test_learns_better_than_chance(data):
    X, y = data
    clf = KerasMLPClassifier((32,), dropout=0.1, epochs=10, learning_rate=0.01, random_state=0).fit(X, y)
    assert clf.score(X, y) > 0.8


def test_weights_nbytes_is_the_built_networks_before_any_fit(fitted):
    from classify.keras_state import weights_nbytes

    assert KerasMLPClassifier(**SMALL).weights_nbytes(20, 3) == weights_nbytes(fitted.model_)


def test_string_labels(data):
    X, y = data
    names = np.array(["cat", "dog", "eel"])[y]
    clf = KerasMLPClassifier(**SMALL).fit(X, names)
    np.testing.assert_array_equal(clf.classes_, ["cat", "dog", "eel"])
    assert set(clf.predict(X)) <= {"cat", "dog", "eel"}


def test_dropout_layers_in_model(data, fitted):
    X, _ = data
    clf = KerasMLPClassifier((16, 8), dropout=0.3, epochs=1, random_state=0).fit(*data)
    rates = [layer.rate for layer in clf.model_.layers if type(layer).__name__ == "Dropout"]
    assert rates == [0.3, 0.3]
    units = [layer.units for layer in clf.model_.layers if type(layer).__name__ == "Dense"]
    assert units == [16, 8, 3]
    # dropout is active in training mode only
    from keras import ops

    train = ops.convert_to_numpy(fitted.model_(X, training=True))
    infer = ops.convert_to_numpy(fitted.model_(X, training=False))
    assert not np.allclose(train, infer)


def test_same_random_state_same_predictions(data, fitted):
    X, y = data
    again = KerasMLPClassifier(**SMALL).fit(X, y)
    np.testing.assert_array_equal(again.predict_proba(X), fitted.predict_proba(X))


def test_clone_keeps_every_param():
    params = dict(
        hidden_layer_sizes=(7, 5),
        dropout=0.2,
        learning_rate=0.05,
        epochs=3,
        batch_size=8,
        early_stopping=False,
        validation_fraction=0.25,
        patience=2,
        class_weight="balanced",
        random_state=3,
        verbose=0,
    )
    assert clone(KerasMLPClassifier(**params)).get_params() == params


def test_grid_search_over_epochs_changes_fits(data):
    X, y = data
    base = KerasMLPClassifier((8,), early_stopping=False, random_state=0)
    grid = GridSearchCV(base, {"epochs": [1, 4]}, cv=2).fit(X, y)
    best = grid.best_estimator_
    assert len(best.history_["loss"]) == grid.best_params_["epochs"]
    assert base.get_params()["epochs"] == 50 and not hasattr(base, "model_")


def test_early_stopping_falls_back_with_a_warning(data, caplog):
    X, y = data
    y = y.copy()
    y[0] = 3  # a class with one sample cannot be split
    with caplog.at_level("WARNING", logger="classify.mlp"):
        clf = KerasMLPClassifier((8,), epochs=2, random_state=0).fit(X, y)
    assert "early stopping disabled" in caplog.text
    assert "val_loss" not in clf.history_


def test_class_weight_and_sample_weight(data):
    X, y = data
    clf = KerasMLPClassifier((8,), epochs=2, class_weight="balanced", random_state=0)
    clf.fit(X, y, sample_weight=np.full(len(y), 0.5))
    assert clf.predict(X).shape == (120,)
    with pytest.raises(ValueError, match="sample_weight.*non-zero weight"):
        clf.fit(X, y, sample_weight=np.zeros(len(y)))


@pytest.mark.parametrize(
    "param, value",
    [
        pytest.param("dropout", 1.0, id="dropout"),
        pytest.param("epochs", 0, id="epochs"),
        pytest.param("hidden_layer_sizes", (8, 0), id="hidden"),
        pytest.param("validation_fraction", 0.0, id="validation_fraction"),
        # a value of the wrong type is the same one line, never a TypeError from a comparison inside (review)
        pytest.param("dropout", "0.5", id="dropout-str"),
        pytest.param("learning_rate", None, id="learning_rate-none"),
        pytest.param("hidden_layer_sizes", None, id="hidden-none"),
        pytest.param("hidden_layer_sizes", "16", id="hidden-str"),
        pytest.param("validation_fraction", None, id="validation_fraction-none"),
        pytest.param("early_stopping", "no", id="early_stopping-str"),  # a truthy string turned it on
        pytest.param("class_weight", "balance", id="class_weight-typo"),
        pytest.param("class_weight", np.array([1.0, 2.0]), id="class_weight-array"),
    ],
)
def test_bad_params_raise_in_fit(data, param, value):
    clf = KerasMLPClassifier(**{param: value})  # __init__ never validates
    with pytest.raises(ValueError, match=f"`{param}` must be .* Received: {param}="):
        clf.fit(*data)


def test_one_class_is_refused(data):
    X, _ = data
    with pytest.raises(ValueError, match="at least 2 classes. Received: 1 class"):
        KerasMLPClassifier(**SMALL).fit(X, np.zeros(len(X)))


def test_joblib_round_trip_in_a_fresh_process(tmp_path, data, fitted):
    X, _ = data
    np.save(tmp_path / "X.npy", X)
    joblib.dump(fitted, tmp_path / "head.joblib")
    script = (
        "import sys, joblib, numpy as np; d = sys.argv[1]; "
        "clf = joblib.load(d + '/head.joblib'); "
        "np.save(d + '/proba.npy', clf.predict_proba(np.load(d + '/X.npy')))"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, capture_output=True)
    np.testing.assert_array_equal(np.load(tmp_path / "proba.npy"), fitted.predict_proba(X))


def test_pickle_leaves_the_fitted_estimator_intact(data):
    X, y = data
    fitted = KerasMLPClassifier(**SMALL).fit(X, y)  # its own: the shared one may have been pickled already
    before = fitted.predict_proba(X)
    joblib.hash(fitted)  # pickles it
    np.testing.assert_array_equal(fitted.predict_proba(X), before)


def test_float32_is_kept_without_a_float64_copy(fitted):
    X = np.random.default_rng(0).normal(size=(20000, 20)).astype(np.float32)
    assert fitted.model_.inputs[0].dtype == "float32"
    tracemalloc.start()
    try:
        fitted.predict_proba(X)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * X.nbytes  # a float64 copy alone would be 2 * X.nbytes


def test_validation_data_replaces_the_internal_hold_out(data):
    X, y = data
    names = np.array(["cat", "dog", "eel"])[y]
    clf = KerasMLPClassifier(**{**SMALL, "epochs": 1}).fit(X[:90], names[:90], validation_data=(X[90:], names[90:]))
    # the history's validation loss is the loss on exactly (X_val, y_val), with the weights after the epoch
    codes = np.searchsorted(clf.classes_, names[90:])
    loss = clf.model_.evaluate(X[90:], codes, verbose=0, return_dict=True)["loss"]
    assert clf.history_["val_loss"][0] == pytest.approx(loss, rel=1e-5)
    with pytest.raises(ValueError, match=r"labels must be among `classes` \['cat', 'dog', 'eel'\]. Received: 'fox'"):
        KerasMLPClassifier(**SMALL).fit(X[:90], names[:90], validation_data=(X[90:91], np.array(["fox"])))
    with pytest.raises(ValueError, match=r"`X_val` must have 20 features"):
        KerasMLPClassifier(**SMALL).fit(X[:90], names[:90], validation_data=(X[90:, :3], names[90:]))


def test_predictions_do_not_depend_on_row_order(data, fitted):
    # The rows run through the network in one canonical order, so a permutation gives the same bits.
    X, _ = data
    proba = fitted.predict_proba(X)
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(X))
        np.testing.assert_array_equal(fitted.predict_proba(X[order]), proba[order])


def test_predictions_hold_across_batch_compositions_at_float32_tolerance(data, fitted):
    # Another batch composition may move the last float32 bits, never more than float32 round-off.
    X, _ = data
    proba = fitted.predict_proba(X)
    one_by_one = np.concatenate([fitted.predict_proba(X[i : i + 1]) for i in range(0, len(X), 7)])
    np.testing.assert_allclose(one_by_one, proba[::7], rtol=1e-5, atol=1e-7)
    halves = np.concatenate([fitted.predict_proba(X[:50]), fitted.predict_proba(X[50:])])
    np.testing.assert_allclose(halves, proba, rtol=1e-5, atol=1e-7)


def test_numpy_integers_are_integers(data):
    """A parameter grid built with numpy hands out np.int64 (GridSearchCV passes values as they are)."""
    clf = KerasMLPClassifier(hidden_layer_sizes=(np.int64(8),), epochs=np.int64(1), batch_size=np.int64(16),
                             random_state=0)
    assert clf.fit(*data).predict(data[0]).shape == (120,)


def test_groups_of_another_length_are_refused(data):
    """Not a silent fit without early stopping (the hold-out's fallback is for classes too small to split)."""
    X, y = data
    with pytest.raises(ValueError, match=r"inconsistent numbers of samples: \[120, 5\]"):
        KerasMLPClassifier(**SMALL).fit(X, y, groups=np.arange(5))


def test_validation_data_messages_name_what_is_wrong(data):
    X, y = data
    names = np.array(["cat", "dog", "fox"])[y]
    with pytest.raises(ValueError, match=r"\(X_val, y_val\) \(no validation sample weights\). Received: tuple of length 3"):
        KerasMLPClassifier(**SMALL).fit(X, names, validation_data=(X[:4], names[:4], np.ones(4)))
    with pytest.raises(ValueError, match="`y_val` labels must be among"):
        KerasMLPClassifier(**SMALL).fit(X, names, validation_data=(X[:2], np.array(["cat", "cow"])))


def test_fit_batches_forgets_the_column_names_of_an_earlier_fit(data):
    import pandas as pd

    X, y = data
    clf = KerasMLPClassifier(**{**SMALL, "epochs": 1}).fit(pd.DataFrame(X, columns=[f"c{i}" for i in range(20)]), y)
    clf.fit_batches(lambda: [(X, y)], classes=[0, 1, 2], n_features=20, n_batches=1)
    assert not hasattr(clf, "feature_names_in_")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "X does not have valid feature names" came from the stale names
        assert clf.predict(X).shape == (120,)


def test_fit_batches_reports_validation_batches_without_early_stopping_too(data):
    X, y = data
    batches, validation = (lambda: [(X[:80], y[:80])]), (lambda: [(X[80:], y[80:])])
    params = {**SMALL, "epochs": 2, "early_stopping": False}
    clf = KerasMLPClassifier(**params).fit_batches(batches, classes=[0, 1, 2], n_features=20, n_batches=1,
                                                   validation=validation, n_validation_batches=1)
    assert len(clf.history_["val_loss"]) == 2  # as `fit(..., validation_data=...)` reports them
    with pytest.raises(ValueError, match="`n_validation_batches` must be a positive integer when `validation` is "
                                         "given. Received: n_validation_batches=None"):
        KerasMLPClassifier(**params).fit_batches(batches, classes=[0, 1, 2], n_features=20, n_batches=1,
                                                 validation=validation)


def test_a_fit_refused_for_its_validation_data_leaves_an_unfitted_estimator(data):
    from sklearn.exceptions import NotFittedError

    X, y = data
    clf = KerasMLPClassifier(**SMALL)
    with pytest.raises(ValueError, match="`y_val` labels must be among"):
        clf.fit(X, y, validation_data=(X[:2], np.array([7, 8])))
    assert not hasattr(clf, "classes_")
    with pytest.raises(NotFittedError):
        clf.predict(X)
