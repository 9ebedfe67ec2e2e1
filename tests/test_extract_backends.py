"""The same extraction under the torch (and jax, when installed) backend gives the same features as tensorflow.

The GPU machine has torch and jax but no tensorflow, so the model code must be backend-agnostic Keras 3.
"""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = r"""
import json, sys
import numpy as np
from extract import get_extractor
cfg = json.loads(sys.argv[1])
images = np.load(sys.argv[2])
import keras
out = get_extractor(cfg.pop("model"), **cfg)(images)
np.save(sys.argv[3], out)
print(keras.backend.backend())
"""


@pytest.fixture(scope="module")
def weights_and_images(tmp_path_factory):
    import keras

    tmp = tmp_path_factory.mktemp("backends")
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    base.save_weights(tmp / "vgg16.weights.h5")  # saved under tensorflow, loaded under the other backend
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.save(tmp / "images.npy", images)
    return tmp


def _run(backend, cfg, tmp):
    out = tmp / f"{backend}-{cfg['pooling']}.npy"
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cfg), str(tmp / "images.npy"), str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == backend
    return np.load(out)


_REFERENCES: dict = {}


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize("pooling, weights", [("flatten", "file"), ("avg", "none")])
def test_backend_gives_the_same_features_as_tensorflow(backend, pooling, weights, weights_and_images):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    tmp = weights_and_images
    cfg = {"model": "vgg16", "weights": str(tmp / "vgg16.weights.h5") if weights == "file" else "none",
           "input_size": 32, "pooling": pooling, "batch_size": 2}
    key = (pooling, weights)
    if key not in _REFERENCES:  # one tensorflow run per configuration, shared by both backends
        _REFERENCES[key] = _run("tensorflow", dict(cfg), tmp)
    reference = _REFERENCES[key]
    other = _run(backend, cfg, tmp)
    assert other.shape == reference.shape == (5, 512)
    np.testing.assert_allclose(other, reference, rtol=1e-3, atol=1e-3 * np.abs(reference).max())
