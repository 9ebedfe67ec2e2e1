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


EXTRACT_SCRIPT = r"""
import sys
import numpy as np
import features_store
from extract import get_extractor, read_index
from pipelines import run_extract
import keras
extractor = get_extractor("vgg16", weights=sys.argv[2], input_size=32, pooling="avg", batch_size=2)
result = run_extract(read_index(sys.argv[1]), extractor, sys.argv[3])
X, y, ids = features_store.load(sys.argv[3], ok_only=False)
np.savez(sys.argv[4], X=X, ids=ids.astype(str))
# a data loader's reused buffer, 64-byte aligned (what jax's CPU client reads in place), refilled for each chunk
e = get_extractor("vgg16", weights="none", input_size=32, pooling="avg", batch_size=4)
chunks = [np.random.default_rng(i).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8) for i in range(5)]
raw = np.empty(chunks[0].nbytes + 64, np.uint8)
start = -raw.ctypes.data % 64
buffer = raw[start:start + chunks[0].nbytes].reshape(chunks[0].shape)
def refill():
    for chunk in chunks:
        buffer[...] = chunk
        yield buffer
got = list(e.stream(refill()))
wrong = [i for i, (g, c) in enumerate(zip(got, chunks)) if not np.allclose(g, e(c), rtol=1e-5, atol=1e-6)]
print(result.n_failed, keras.backend.backend(), "refilled buffer: wrong chunks", wrong)
"""


@pytest.fixture(scope="module")
def folder_with_a_bad_file(tmp_path_factory):
    """9 files, one not a JPEG: with batches of 2, several chunks, one with a failure, a padded tail."""
    from PIL import Image

    root = tmp_path_factory.mktemp("stream") / "imgs"
    for i in range(8):
        path = root / "ab"[i % 2] / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    (root / "a" / "9.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    return root


_EXTRACTED: dict = {}


def _extract(backend, folder, weights, tmp):
    if backend not in _EXTRACTED:  # tensorflow's run is shared by both backends' tests
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
        out = tmp / f"{backend}.npz"
        proc = subprocess.run([sys.executable, "-c", EXTRACT_SCRIPT, str(folder), weights,
                               str(tmp / f"store-{backend}"), str(out)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        _EXTRACTED[backend] = proc.stdout.strip().splitlines()[-1], dict(np.load(out))
    return _EXTRACTED[backend]


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_run_extract_under_backend_writes_the_rows_tensorflow_writes(backend, weights_and_images,
                                                                      folder_with_a_bad_file):
    """run_extract feeds its decoded batches through the extractor's stream (two batches in flight under jax and
    torch): every row lands in its place, a failed row among them, as under tensorflow. And a caller's buffer
    refilled for each chunk gives each chunk its own features (under jax, with two in flight, every chunk but
    the last came out with a later chunk's: jax read the buffer in place after it was refilled)."""
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    weights, tmp = str(weights_and_images / "vgg16.weights.h5"), weights_and_images
    said_ref, ref = _extract("tensorflow", folder_with_a_bad_file, weights, tmp)
    said, other = _extract(backend, folder_with_a_bad_file, weights, tmp)
    assert said_ref == "1 tensorflow refilled buffer: wrong chunks []"
    assert said == f"1 {backend} refilled buffer: wrong chunks []"
    np.testing.assert_array_equal(other["ids"], ref["ids"])
    assert len(ref["ids"]) == 9 and np.isnan(ref["X"]).all(axis=1).sum() == 1
    np.testing.assert_array_equal(np.isnan(other["X"]), np.isnan(ref["X"]))
    ok = ~np.isnan(ref["X"]).any(axis=1)
    np.testing.assert_allclose(other["X"][ok], ref["X"][ok], rtol=1e-3, atol=1e-3 * np.abs(ref["X"][ok]).max())
