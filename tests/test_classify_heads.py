"""make_head, fit_out_of_core, evaluate/format_metrics and the plots."""

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from classify import (
    KerasMLPClassifier,
    evaluate,
    fit_out_of_core,
    format_metrics,
    make_head,
    plot_confusion_matrix,
    plot_history,
)


@pytest.fixture
def data():
    X, y = make_classification(n_samples=120, n_features=20, n_informative=5, n_classes=3, random_state=0)
    return X.astype(np.float32), y


def test_make_head_logreg_routes_params_and_keeps_float32(data):
    head = make_head("logreg", C=0.5, random_state=0)
    assert isinstance(head, Pipeline)
    clf = head[-1]
    assert isinstance(clf, LogisticRegression)
    assert (clf.C, clf.max_iter, clf.random_state) == (0.5, 1000, 0)
    head.fit(*data)
    assert head[:-1].transform(data[0]).dtype == np.float32
    assert clf.coef_.dtype == np.float32  # lbfgs ran on float32, no float64 copy of X
    assert head.score(*data) > 0.6


def test_make_head_mlp_and_sgd():
    mlp = make_head("mlp", epochs=3, hidden_layer_sizes=(8,))
    assert isinstance(mlp[0], StandardScaler)
    mlp = mlp[-1]
    assert isinstance(mlp, KerasMLPClassifier)
    assert (mlp.epochs, mlp.hidden_layer_sizes) == (3, (8,))
    sgd = make_head("sgd", alpha=1e-3)
    assert isinstance(sgd, SGDClassifier)
    assert (sgd.loss, sgd.alpha) == ("log_loss", 1e-3)


def test_make_head_unknown_name():
    with pytest.raises(ValueError, match=r"`head` must be one of 'logreg', 'mlp', 'sgd'. Received: head='x'"):
        make_head("x")


def test_fit_out_of_core(data):
    X, y = data

    def batches():
        return ((X[i : i + 25], y[i : i + 25]) for i in range(0, len(X), 25))

    sgd = make_head("sgd", random_state=0)
    pipe = fit_out_of_core(sgd, batches, classes=[0, 1, 2], epochs=5)
    assert [name for name, _ in pipe.steps] == ["scale", "clf"]
    np.testing.assert_allclose(pipe["scale"].mean_, X.mean(axis=0), rtol=1e-4, atol=1e-5)
    assert pipe.score(X, y) > 0.5
    assert not hasattr(sgd, "coef_")  # the given estimator is cloned, never fitted in place
    plain = fit_out_of_core(sgd, list(batches()), classes=[0, 1, 2], epochs=np.int64(2), scaler=False)  # a numpy grid's
    assert plain["scale"] == "passthrough"
    assert plain.predict(X).shape == (120,)


def test_fit_out_of_core_refuses_a_one_shot_iterator(data):
    with pytest.raises(ValueError, match="`batches` must be a zero-argument callable or a re-iterable"):
        fit_out_of_core(make_head("sgd"), iter([data]), classes=[0, 1, 2])


def test_evaluate_and_format(data):
    X, y = data
    names = np.array(["cat", "dog", "eel"])[y]
    head = make_head("logreg").fit(X, names)
    metrics = evaluate(head, X, names)
    assert set(metrics) == {"accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion_matrix", "classes",
                            "n_samples"}  # 3 classes: no top-5
    assert metrics["classes"] == ["cat", "dog", "eel"]
    assert metrics["n_samples"] == 120
    assert set(metrics["per_class"]["dog"]) == {"precision", "recall", "f1", "support"}
    assert sum(map(sum, metrics["confusion_matrix"])) == 120
    assert metrics["accuracy"] == pytest.approx(head.score(X, names))
    text = format_metrics(metrics)
    assert text.splitlines()[0].startswith("accuracy ")
    assert "macro-F1" in text and "precision" in text and "recall" in text
    assert len(text.splitlines()) == 2 + 3


def test_evaluate_balanced_and_top5_are_scikit_learn_s():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, f1_score, top_k_accuracy_score

    rng = np.random.default_rng(0)
    X = rng.normal(size=(140, 5))
    y = np.repeat(np.array(list("abcdefg")), 20)
    X[:, 0] += np.arange(140) // 20 * 0.5  # weak signal: top-5 sits between accuracy and 1
    head = LogisticRegression(max_iter=500).fit(X, y)
    metrics = evaluate(head, X, y)
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, head.predict(X)))
    assert metrics["top_5_accuracy"] == pytest.approx(top_k_accuracy_score(y, head.predict_proba(X), k=5,
                                                                           labels=head.classes_))
    assert metrics["accuracy"] <= metrics["top_5_accuracy"] < 1.0
    # a split where class "g" never occurs (and is never predicted) does not pull macro-F1 down
    sub = np.isin(y, list("ab"))
    part = evaluate(head, X[sub], y[sub])
    assert part["macro_f1"] == pytest.approx(f1_score(y[sub], head.predict(X[sub]), average="macro"))
    assert part["per_class"]["g"]["support"] == 0


def test_a_true_label_the_head_never_learned_is_scored_as_misses_and_named():
    """Rows of a class absent from training count in macro-F1, per-class scores and the confusion matrix (they
    were left out of all three, which inflated macro-F1), and the text says so."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    X = rng.normal(size=(160, 4))
    y = np.repeat(np.array(list("abcdefgh")), 20)
    X[:, 0] += np.arange(160) // 20
    seen = ~np.isin(y, ["h"])
    head = LogisticRegression(max_iter=500).fit(X[seen], y[seen])
    metrics = evaluate(head, X, y)
    y_pred = head.predict(X)
    assert metrics["macro_f1"] == pytest.approx(f1_score(y, y_pred, average="macro"))
    assert metrics["classes"] == list("abcdefgh") and metrics["per_class"]["h"]["support"] == 20
    assert metrics["per_class"]["h"]["recall"] == 0 and metrics["unknown_labels"] == {"h": 20}
    assert np.asarray(metrics["confusion_matrix"]).sum() == 160
    assert metrics["top_5_accuracy"] <= 140 / 160  # the head's 7 classes: an "h" row is a miss
    assert "always wrong: 20 rows labelled h (20)" in format_metrics(metrics)
    assert "unknown_labels" not in evaluate(head, X[seen], y[seen])
    one = np.r_[seen.nonzero()[0], 140]  # a single row of the unknown class: '1 row', not '1 rows'
    assert "always wrong: 1 row labelled h (1) (it was trained without it)" in format_metrics(evaluate(head, X[one], y[one]))


def test_plots_write_pngs(tmp_path, data):
    X, y = data
    metrics = evaluate(make_head("logreg").fit(X, y), X, y)
    path = plot_confusion_matrix(metrics, tmp_path / "plots" / "confusion.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "accuracy": [0.4, 0.8], "val_accuracy": [0.3, 0.7]}
    assert plot_history(history, tmp_path / "history.png").read_bytes()[:4] == b"\x89PNG"
    import matplotlib.pyplot as plt  # no figure leaked into pyplot's global state

    assert plt.get_fignums() == []


def test_confusion_plot_takes_class_names_literally(tmp_path):
    # a pair of `$` was read as mathematics: "coins_$1_and_$2" stopped evaluate and report with a parse error
    metrics = {"confusion_matrix": [[3, 1], [0, 4]], "classes": ["coins_$1_and_$2", "a $b$ <c>"],
               "evaluated_on": "split 'test'", "accuracy": 0.875}
    path = plot_confusion_matrix(metrics, tmp_path / "confusion.png", note="random-init weights: NOT pretrained")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_a_confusion_plot_of_many_classes_stays_bounded(tmp_path):
    """Past 60 classes the counts leave the cells and the figure stops growing with the classes (1000 classes
    took gigabytes to draw)."""
    from PIL import Image

    k = 400
    matrix = np.diag(np.full(k, 12345))
    path = plot_confusion_matrix({"confusion_matrix": matrix.tolist(), "classes": [f"class {i}" for i in range(k)]},
                                 tmp_path / "confusion.png")
    with Image.open(path) as im:
        assert max(im.size) < 100 * 60  # 48 in of cells and the labels, at 100 dpi


def test_slab_scaler_matches_standard_scaler():
    from classify.scaling import SlabStandardScaler

    slabs = []

    class Counted(SlabStandardScaler):
        slab_bytes = 8 * 20 * 64  # 64 rows of 20 features per slab

        def partial_fit(self, X, y=None, sample_weight=None):
            slabs.append(len(X))
            return super().partial_fit(X, y, sample_weight)

    X = np.random.default_rng(0).normal(3, 2, (300, 20)).astype(np.float32)
    ours, theirs = Counted().fit(X), StandardScaler().fit(X)
    assert slabs == [64, 64, 64, 64, 44]
    np.testing.assert_allclose(ours.mean_, theirs.mean_, rtol=1e-6)
    np.testing.assert_allclose(ours.var_, theirs.var_, rtol=1e-5)
    assert ours.n_samples_seen_ == 300 and ours.transform(X).dtype == np.float32
    assert clone(ours).get_params() == ours.get_params()
