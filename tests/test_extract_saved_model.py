import numpy as np
import pytest

import extract
import features_store
from extract import ExtractorConfigError, WeightsUnavailableError, extractor_from_spec, get_extractor
from extract.autoencoder import preprocessing_layers
from pipelines.runs.extraction import run_extract


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)


@pytest.fixture
def cnn_file(tmp_path):
    from classify.cnn import build_cnn

    path = tmp_path / "base.keras"
    build_cnn((16, 16, 3), 3, filters=4, dense_units=8, preprocessing=preprocessing_layers(1), seed=0).save(path)
    return path


def test_a_saved_cnn_cut_at_its_feature_block(cnn_file, batch):
    import keras

    e = get_extractor("keras", weights=str(cnn_file), layer="features_flatten", batch_size=2)
    out = e(batch)  # the input size comes from the model
    assert e.input_shape == (16, 16, 3) and out.shape == (3, 6 * 6 * 4) and e.output_dim == 144
    model = keras.saving.load_model(cnn_file)
    reference = keras.Model(model.inputs, model.get_layer("features_flatten").output).predict_on_batch(
        batch.astype("float32")
    )
    np.testing.assert_allclose(out, np.asarray(reference), rtol=1e-5, atol=1e-6)
    assert "features_flatten" in e.weights_source()


def test_no_layer_keeps_the_model_output(cnn_file, batch):
    e = get_extractor("keras", weights=str(cnn_file))
    out = e(batch)
    assert out.shape == (3, 3) and e.weights_source().endswith(", its output")  # not "layer None"
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)  # the softmax


def test_global_pooling_of_a_feature_map(cnn_file, batch):
    assert get_extractor("keras", weights=str(cnn_file), layer="features_pool", pooling="avg")(batch).shape == (3, 4)


def test_through_run_extract_into_a_store(cnn_file, csv_index, tmp_path):
    index = extract.read_index(csv_index)
    e = get_extractor("keras", weights=str(cnn_file), layer="features_flatten", input_size=16)
    result = run_extract(index, e, tmp_path / "base", workers=1)
    X, y, _ = features_store.load(result.store)
    assert X.shape == (8, 144) and result.n_failed == 0
    assert features_store.read_info(result.store).fingerprint == e.fingerprint()


def test_config_round_trip_and_fingerprint(cnn_file, tmp_path):
    from classify.cnn import build_cnn

    e = get_extractor("keras", weights=str(cnn_file), layer="features_flatten", seed=5, batch_size=8)
    assert type(e).from_config(e.get_config()).get_config() == e.get_config()
    assert extractor_from_spec(e.spec()).fingerprint() == e.fingerprint()
    assert get_extractor("keras", weights=str(cnn_file), layer="features_flatten").fingerprint() == e.fingerprint()
    assert get_extractor("keras", weights=str(cnn_file), layer="features_pool").fingerprint() != e.fingerprint()
    before = e.fingerprint()
    build_cnn((16, 16, 3), 3, filters=4, dense_units=8, preprocessing=preprocessing_layers(1), seed=1).save(cnn_file)
    assert get_extractor("keras", weights=str(cnn_file), layer="features_flatten").fingerprint() != before
    assert e.fingerprint() != before  # the live extractor follows the rewritten file too


def test_a_relative_weights_path_is_recorded_absolute(cnn_file, batch, tmp_path, monkeypatch):
    """A store or a bundle made with `--weights model.keras` works from any other working directory."""
    monkeypatch.chdir(cnn_file.parent)
    e = get_extractor("keras", weights=cnn_file.name, layer="features_flatten")
    assert e.spec()["config"]["weights"] == str(cnn_file)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = extractor_from_spec(e.spec())
    assert again.fingerprint() == e.fingerprint()
    np.testing.assert_allclose(again(batch), e(batch), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        pytest.param({"layer": "features_flaten"}, ExtractorConfigError,
                     r"`layer` must be one of the model's layers .*'features_flatten'.*Received: layer='features_flaten'", id="layer"),
        pytest.param({"input_size": 32}, ExtractorConfigError,
                     r"`input_size` must match the input size of the model in .* \(16\) or be omitted\. Received: input_size=32", id="size"),
        pytest.param({"precision": "bfloat16"}, ExtractorConfigError,
                     r"`precision` must be 'float32' for model 'keras' .*Received: precision='bfloat16'", id="precision"),
    ],
)
def test_errors_on_a_real_model(cnn_file, batch, kwargs, error, match):
    with pytest.raises(error, match=match):
        get_extractor("keras", weights=str(cnn_file), **kwargs)(batch)


def test_cae_given_a_model_that_is_not_an_autoencoder_says_so(cnn_file, batch):
    # it said "`layer` must be one of the model's layers ... Received: layer='bottleneck'", though none was given
    with pytest.raises(ExtractorConfigError, match=r"base.keras has no layer 'bottleneck', the one --model cae cuts "
                                                   r"at: it is not a model that --model cae takes"):
        get_extractor("cae", weights=str(cnn_file))(batch)


def test_missing_and_unloadable_files(tmp_path):
    with pytest.raises(WeightsUnavailableError, match=r"the saved model .*nope\.keras does not exist"):
        get_extractor("keras", weights=str(tmp_path / "nope.keras")).validate()
    with pytest.raises(WeightsUnavailableError, match=r"the weights file .*nope\.keras does not exist"):
        get_extractor("keras", weights=str(tmp_path / "nope.keras")).fingerprint()
    for call in ("validate", "fingerprint"):  # a folder was "does not exist", or a bare IsADirectoryError
        with pytest.raises(WeightsUnavailableError, match=r"the (saved model|weights file) .* is a folder, not a file"):
            getattr(get_extractor("keras", weights=str(tmp_path)), call)()
    (tmp_path / "link.keras").symlink_to(tmp_path / "gone.keras")
    with pytest.raises(WeightsUnavailableError, match=r"link\.keras is a symbolic link that leads to no file \(.*gone\.keras\)"):
        get_extractor("keras", weights=str(tmp_path / "link.keras")).validate()
    junk = tmp_path / "junk.keras"
    junk.write_bytes(b"not a zip")
    with pytest.raises(WeightsUnavailableError, match=r"junk\.keras is not a loadable Keras model"):
        get_extractor("keras", weights=str(junk)).model  # noqa: B018


def test_a_model_without_rgb_input_is_refused(tmp_path):
    import keras

    inputs = keras.Input((16, 16, 1))
    path = tmp_path / "gray.keras"
    keras.Model(inputs, keras.layers.Flatten(name="flat")(inputs)).save(path)
    with pytest.raises(ExtractorConfigError, match=r"input must be square raw RGB, shape \(size, size, 3\)\. Received: input shape \(16, 16, 1\)"):
        get_extractor("keras", weights=str(path)).model  # noqa: B018


def test_a_fully_convolutional_model_needs_input_size(tmp_path, batch):
    import keras

    inputs = keras.Input((None, None, 3))
    path = tmp_path / "fcn.keras"
    keras.Model(inputs, keras.layers.Conv2D(2, 3, name="conv")(inputs)).save(path)
    with pytest.raises(ExtractorConfigError, match=r"`input_size` must be given: .* has no fixed input size\. Received: input_size=None"):
        get_extractor("keras", weights=str(path)).model  # noqa: B018
    assert get_extractor("keras", weights=str(path), input_size=16, pooling="max")(batch).shape == (3, 2)


def test_a_model_of_several_outputs_needs_a_layer(tmp_path, image_folder, capsys):
    """Without --layer, a saved model of two outputs was an internal error (exit 3: "'SavedModelExtractor' object
    has no attribute 'output_dim'"); it is one line naming its outputs, and --layer picks one."""
    import keras

    from pipelines.cli import main

    inputs = keras.Input((16, 16, 3))
    first = keras.layers.Conv2D(4, 3, name="first")(inputs)
    second = keras.layers.Conv2D(2, 3, name="second")(first)
    path = tmp_path / "two.keras"
    keras.Model(inputs, [first, second]).save(path)
    with pytest.raises(ExtractorConfigError, match=r"`layer` must name one layer for the model in .*two\.keras, which "
                                                   r"has 2 outputs \('first', 'second'\)\. Received: layer=None"):
        get_extractor("keras", weights=str(path)).model  # noqa: B018
    assert main(["-q", "extract", str(image_folder), "--model", "keras", "--weights", str(path),
                 "--out", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert "has 2 outputs ('first', 'second')" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    batch = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    out = get_extractor("keras", weights=str(path), layer="second", pooling="avg", batch_size=2)(batch)
    expected = keras.ops.convert_to_numpy(keras.Model(inputs, second)(batch.astype("float32"))).mean(axis=(1, 2))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_an_input_size_a_model_cannot_run_at_is_one_plain_line(tmp_path, image_folder, capsys):
    """A model without a fixed size, at an --input-size its poolings shrink to nothing: Keras's error came through
    whole, with its terminal colour codes, its arguments dump and, after "Received:", its "dtype=float32" rewritten
    as "--dtype float32", an option that has nothing to do with it."""
    import keras

    from pipelines.cli import main

    inputs = keras.Input((None, None, 3))
    x = keras.layers.MaxPooling2D(2, name="pool1")(keras.layers.Conv2D(2, 3, padding="same", name="conv")(inputs))
    path = tmp_path / "fcn.keras"
    keras.Model(inputs, keras.layers.MaxPooling2D(2, name="pool2")(x)).save(path)
    with pytest.raises(ExtractorConfigError, match=r"`input_size` must be a size the model in .*fcn\.keras can run at "
                                                   r"\(.*\)\. Received: input_size=2$"):
        get_extractor("keras", weights=str(path), input_size=2).model  # noqa: B018
    assert main(["-q", "extract", str(image_folder), "--model", "keras", "--weights", str(path), "--input-size", "2",
                 "--out", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert err.strip().endswith("Received: --input-size 2") and len(err.strip().splitlines()) == 1
    assert "\x1b" not in err and "--dtype" not in err and "Traceback" not in err
    assert get_extractor("keras", weights=str(path), input_size=4, batch_size=2)(
        np.zeros((2, 4, 4, 3), np.uint8)).shape == (2, 2)
