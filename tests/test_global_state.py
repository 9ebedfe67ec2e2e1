"""Using the library changes no process-global state: RNGs, Keras's dtype policy, matplotlib, Pillow, sockets."""

import random
import socket

import matplotlib
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.datasets import make_classification


def _tf_global_seed():
    try:
        from tensorflow.python.eager import context
    except ImportError:  # another backend without tensorflow installed
        return None
    return context.global_seed()


def snapshot() -> dict:
    """Every global that a library could change, read without changing it (numpy's state as plain values)."""
    import keras
    from keras.src.backend.common import global_state
    from matplotlib._pylab_helpers import Gcf  # pyplot's figure registry (importing keras imports pyplot)

    name, keys, pos, gauss, cached = np.random.get_state()
    return {
        "PIL.Image.MAX_IMAGE_PIXELS": Image.MAX_IMAGE_PIXELS,
        "socket timeout": socket.getdefaulttimeout(),
        "matplotlib backend (raw)": matplotlib.rcParams._get("backend"),
        "matplotlib.rcParams identity": id(matplotlib.rcParams),
        "matplotlib.rcParams": {k: repr(v) for k, v in matplotlib.rcParams.copy().items() if k != "backend"},
        "pyplot figures": Gcf.get_num_fig_managers(),
        "keras dtype policy": keras.config.dtype_policy().name,
        "keras floatx": keras.config.floatx(),
        "random.getstate()": random.getstate(),
        "np.random.get_state()": (name, keys.tobytes(), pos, gauss, cached),
        "keras global seed": global_state.get_global_attribute("global_random_seed"),
        "keras global SeedGenerator": id(global_state.get_global_attribute("global_seed_generator")),
        "tensorflow global seed": _tf_global_seed(),
    }


def assert_unchanged(before: dict) -> None:
    after = snapshot()
    changed = [key for key in before if before[key] != after[key]]
    assert not changed, f"global state changed: {changed}"


@pytest.fixture
def data():
    X, y = make_classification(n_samples=60, n_features=8, n_informative=4, n_classes=3, random_state=0)
    return X.astype(np.float32), y


def test_fitting_heads_changes_no_global_state(data):
    import classify

    X, y = data
    classify.make_head("logreg").fit(X, y)  # warm up the imports: a first import may set things once
    before = snapshot()
    classify.make_head("logreg").fit(X, y)
    classify.make_head("mlp", hidden_layer_sizes=(8,), epochs=2, random_state=0).fit(X, y)
    classify.KerasMLPClassifier((8,), epochs=2, early_stopping=False, random_state=1).fit(X, y)
    assert_unchanged(before)


def test_out_of_core_mlp_and_seeded_cnn_change_no_global_state(data):
    from classify import KerasMLPClassifier
    from classify.cnn import build_cnn, build_transfer, train_cnn

    X, y = data

    def batches():
        return ((X[i : i + 20], y[i : i + 20]) for i in range(0, 60, 20))

    KerasMLPClassifier((4,), epochs=1, random_state=0).fit_batches(batches, np.unique(y), 8, n_batches=3)
    before = snapshot()
    KerasMLPClassifier((4,), epochs=2, random_state=0).fit_batches(batches, np.unique(y), 8, n_batches=3,
                                                                    validation=batches, n_validation_batches=3)
    images = np.random.default_rng(0).uniform(0, 1, (12, 10, 10, 1)).astype(np.float32)
    labels = np.arange(12) % 2
    base = build_cnn((10, 10, 1), 2, filters=2, dense_units=4, seed=0)
    train_cnn(base, images, labels, epochs=2, batch_size=4)
    train_cnn(build_transfer(base, 2, dense_units=4, seed=1), images, labels, epochs=1, batch_size=4)
    assert_unchanged(before)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_extract_changes_no_global_state(csv_index, tmp_path, precision):
    from extract import get_extractor, read_index
    from pipelines.runs.extraction import run_extract

    index = read_index(csv_index)
    get_extractor("vgg16", weights="none", input_size=32).model  # noqa: B018  (imports and first build)
    before = snapshot()
    extractor = get_extractor("vgg16", weights="none", input_size=32, precision=precision, batch_size=4)
    result = run_extract(index, extractor, tmp_path / "store", workers=1)
    assert result.n_extracted == len(index.ids)
    assert_unchanged(before)


@pytest.mark.parametrize("model", ["vgg16", "keras"])
def test_a_callers_mixed_policy_never_reaches_a_float32_extractor(tmp_path, model):
    """A float32 extractor built under the caller's `mixed_float16` policy computed in float16 (features ~1e-3 off)
    under its float32 fingerprint, to be mixed in one store with true float32 rows."""
    import keras

    from extract import get_extractor

    if model == "keras":
        inputs = keras.Input((16, 16, 3))
        keras.Model(inputs, keras.layers.Conv2D(4, 3, name="conv")(inputs)).save(tmp_path / "m.keras")
        config = dict(weights=str(tmp_path / "m.keras"), pooling="avg")
    else:
        config = dict(weights="none", input_size=32)
    images = np.random.default_rng(0).integers(0, 256, (4, 32 if model == "vgg16" else 16, 16 if model == "keras"
                                                        else 32, 3)).astype(np.uint8)
    expected = get_extractor(model, **config)(images)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        extractor = get_extractor(model, **config)
        features = extractor(images)
        policies = {layer.dtype_policy.name for layer in extractor.model._flatten_layers() if layer.weights}
        assert keras.config.dtype_policy().name == "mixed_float16"  # the caller's, given back
    finally:
        keras.config.set_dtype_policy(previous)
    assert policies == {"float32"}
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)


def test_plots_change_no_global_state_and_need_no_pyplot(tmp_path):
    import classify
    from pipelines.workflows.sweep import plot_sweep

    metrics = {"classes": ["a", "b"], "confusion_matrix": [[3, 1], [0, 4]], "accuracy": 0.875}
    classify.plot_confusion_matrix(metrics, tmp_path / "warm.png")
    before = snapshot()
    classify.plot_confusion_matrix(metrics, tmp_path / "cm.png")
    classify.plot_history({"loss": [1.0, 0.5], "accuracy": [0.5, 0.7]}, tmp_path / "history.png")
    table = pd.DataFrame({"layer": ["block1_pool", "block2_pool"], "accuracy": [0.6, 0.8],
                          "accuracy_std": [0.05, 0.02], "dimension": [64, 128]})
    path = plot_sweep(table, tmp_path / "sweep.png")
    assert_unchanged(before)
    with Image.open(path) as image:
        assert image.size[0] > 100


def test_a_seeded_cae_build_changes_no_global_state():
    from extract.autoencoder import build_autoencoder

    build_autoencoder(input_size=8, filters=(2,), seed=0)  # imports and first build
    before = snapshot()
    first = build_autoencoder(input_size=8, filters=(2,), seed=0)
    assert_unchanged(before)  # Keras's unseeded initializers draw from Python's `random`; a seeded build gives it back
    again = build_autoencoder(input_size=8, filters=(2,), seed=0)
    for a, b in zip(first.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


TORCH_TRAINING = r"""
import numpy as np, torch
from classify import KerasMLPClassifier, model_accuracy
from classify.cnn import build_cnn, train_cnn
from classify.keras_dataset import array_batches

torch.manual_seed(1)
before = torch.random.get_rng_state().clone()
rng = np.random.default_rng(0)
X, y = rng.random((40, 5)).astype("float32"), np.arange(40) % 2
KerasMLPClassifier((4,), epochs=2, random_state=0).fit(X, y)
KerasMLPClassifier((4,), epochs=2, random_state=0).fit_batches(lambda: [(X, y)], [0, 1], 5, n_batches=1)
images = rng.integers(0, 256, (8, 16, 16, 3)).astype("uint8")
model = build_cnn((16, 16, 3), 2, filters=2, dense_units=4, seed=0)
train_cnn(model, images, np.arange(8) % 2, epochs=1, batch_size=4, seed=0)
model_accuracy(model, array_batches(images, np.arange(8) % 2, batch_size=4, seed=0))
print("kept" if torch.equal(torch.random.get_rng_state(), before) else "moved")
"""


def test_training_under_torch_leaves_its_global_generator_as_it_was():
    """Keras's torch trainer wraps a PyDataset in a DataLoader, which drew its base seed from torch's global
    generator every epoch: a caller's `torch.manual_seed` stream moved on with each fit."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    env = dict(os.environ, KERAS_BACKEND="torch", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", TORCH_TRAINING], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "kept"
