"""The same extraction under the torch (and jax, when installed) backend gives the same features as tensorflow.

The GPU machine has torch and jax but no tensorflow, so the model code must be backend-agnostic Keras 3.

Each backend's whole share runs in one subprocess (importing torch or jax and Keras on it takes most of a run);
tensorflow's reference runs in the test process when its backend is tensorflow (a subprocess when not).
"""

import importlib.util
import inspect
import os
import subprocess
import sys

import numpy as np
import pytest

CONFIGS = [("flatten", "file"), ("avg", "none")]  # (pooling, weights) of the plain feature comparison


def extract_everything(tmp, folder, out=None):
    """One backend's work: features of 5 images per configuration in CONFIGS, a run_extract of a folder with a bad
    file into a store, and a reused buffer refilled for each chunk fed through a stream. Runs under tensorflow in
    the test process, and as the script of a subprocess (its source is sent) under torch and jax."""
    import os

    import keras
    import numpy as np

    import features_store
    from extract import get_extractor, read_index
    from pipelines import run_extract

    weights = os.path.join(tmp, "vgg16.weights.h5")  # saved under tensorflow, loaded under the other backends
    images = np.load(os.path.join(tmp, "images.npy"))
    backend = keras.backend.backend()
    said = {"backend": backend}
    for pooling, source in CONFIGS:
        e = get_extractor("vgg16", weights=weights if source == "file" else "none", input_size=32, pooling=pooling,
                          batch_size=2)
        said[f"{pooling}-{source}"] = e(images)
    extractor = get_extractor("vgg16", weights=weights, input_size=32, pooling="avg", batch_size=2)
    store = os.path.join(tmp, f"store-{backend}")
    said["n_failed"] = run_extract(read_index(folder), extractor, store).n_failed
    said["X"], _, ids = features_store.load(store, ok_only=False)
    said["ids"] = ids.astype(str)
    # --strict stops at the bad file's batch; the batches before it are written (under jax and torch the last of them
    # was still in flight when the bad batch came out of the decoder)
    strict = os.path.join(tmp, f"strict-{backend}")
    try:
        run_extract(read_index(folder), extractor, strict, strict=True)
    except Exception as err:  # noqa: BLE001 (the class is checked below, by name: the script has no pytest)
        said["strict error"] = f"{type(err).__name__}: {err}"
    said["strict durable"] = sum(features_store.durable_rows(strict, name)
                                 for name in os.listdir(features_store.shards_dir(strict)))
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
    said["wrong chunks"] = np.array([i for i, (g, c) in enumerate(zip(got, chunks))
                                     if not np.allclose(g, e(c), rtol=1e-5, atol=1e-6)], dtype=int)
    if out is not None:
        np.savez(out, **said)
    return said


def _in_a_subprocess(backend, tmp, folder):
    out = tmp / f"{backend}.npz"
    script = (f"CONFIGS = {CONFIGS!r}\n{inspect.getsource(extract_everything)}\n"
              "import sys\nextract_everything(*sys.argv[1:])\n")
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp), str(folder), str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with np.load(out) as saved:
        return {key: saved[key] for key in saved.files}


@pytest.fixture(scope="module")
def weights_and_images(tmp_path_factory):
    import keras

    tmp = tmp_path_factory.mktemp("backends")
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    base.save_weights(tmp / "vgg16.weights.h5")  # saved under tensorflow, loaded under the other backend
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.save(tmp / "images.npy", images)
    return tmp


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


@pytest.fixture(scope="module")
def tensorflow_reference(weights_and_images, folder_with_a_bad_file):
    """Tensorflow's run, shared by both backends' tests (in the test process when it runs tensorflow)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        return extract_everything(str(weights_and_images), str(folder_with_a_bad_file))
    return _in_a_subprocess("tensorflow", weights_and_images, folder_with_a_bad_file)


@pytest.mark.parametrize("backend", [  # skipped before tensorflow's reference is made
    pytest.param(name, marks=pytest.mark.skipif(importlib.util.find_spec(name) is None,
                                                reason=f"{name} is not installed")) for name in ("torch", "jax")])
def test_backend_extracts_what_tensorflow_extracts(backend, weights_and_images, folder_with_a_bad_file,
                                                   tensorflow_reference):
    """Both configurations of CONFIGS give tensorflow's features. run_extract feeds its decoded batches through the
    extractor's stream (two batches in flight under jax and torch): every row lands in its place, a failed row
    among them, as under tensorflow. And a caller's buffer refilled for each chunk gives each chunk its own
    features (under jax, with two in flight, every chunk but the last came out with a later chunk's: jax read the
    buffer in place after it was refilled)."""
    ref = tensorflow_reference
    other = _in_a_subprocess(backend, weights_and_images, folder_with_a_bad_file)
    assert str(ref["backend"]) == "tensorflow" and str(other["backend"]) == backend
    for pooling, source in CONFIGS:
        key = f"{pooling}-{source}"
        assert other[key].shape == ref[key].shape == (5, 512), key
        np.testing.assert_allclose(other[key], ref[key], rtol=1e-3, atol=1e-3 * np.abs(ref[key]).max(),
                                   err_msg=f"{backend} against tensorflow, pooling={pooling}, weights={source}")
    # run_extract: the same rows in the same places, the failed one included
    assert int(ref["n_failed"]) == 1 and int(other["n_failed"]) == 1, (ref["n_failed"], other["n_failed"])
    np.testing.assert_array_equal(other["ids"], ref["ids"])
    assert len(ref["ids"]) == 9 and np.isnan(ref["X"]).all(axis=1).sum() == 1
    np.testing.assert_array_equal(np.isnan(other["X"]), np.isnan(ref["X"]))
    ok = ~np.isnan(ref["X"]).any(axis=1)
    np.testing.assert_allclose(other["X"][ok], ref["X"][ok], rtol=1e-3, atol=1e-3 * np.abs(ref["X"][ok]).max(),
                               err_msg=f"run_extract's rows under {backend} against tensorflow's")
    # --strict: the rows before the bad file's batch of 2 are on disk, as many as under tensorflow
    bad = int(np.flatnonzero(np.isnan(ref["X"]).any(axis=1))[0])
    assert bad >= 4, "the bad file must come after two whole batches"
    for said in (ref, other):
        assert str(said["strict error"]).startswith("ImageReadError: ") and "9.jpg" in str(said["strict error"])
    assert int(ref["strict durable"]) == int(other["strict durable"]) == bad // 2 * 2, (
        ref["strict durable"], other["strict durable"])
    # the refilled buffer: each chunk its own features
    assert ref["wrong chunks"].tolist() == [], "tensorflow: refilled buffer: wrong chunks"
    assert other["wrong chunks"].tolist() == [], f"{backend}: refilled buffer: wrong chunks"
