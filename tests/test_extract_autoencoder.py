import numpy as np
import pytest

import extract
import features_store
from extract import ExtractorConfigError, WeightsUnavailableError, extractor_from_spec, get_extractor
from extract.autoencoder import build_autoencoder, encoder, preprocessing_layers, reconstruction_target
from pipelines.runs.extraction import run_extract


@pytest.fixture(scope="module")
def batch():
    return np.random.default_rng(0).integers(0, 256, (3, 28, 28, 3), dtype=np.uint8)


@pytest.fixture
def cae_file(tmp_path):
    path = tmp_path / "cae.keras"
    build_autoencoder(seed=1).save(path)
    return path


def test_layers_have_stable_names_and_the_encoder_is_cut_by_name():
    model = build_autoencoder()
    names = [layer.name for layer in model.layers]
    assert names[1:] == ["rescale", "grayscale", "encoder_conv1", "encoder_pool1", "encoder_conv2", "bottleneck",
                         "decoder_conv1", "decoder_upsample1", "decoder_conv2", "decoder_upsample2", "reconstruction"]
    assert tuple(encoder(model).output.shape) == (None, 7, 7, 4) == tuple(model.get_layer("bottleneck").output.shape)
    assert tuple(model.output.shape) == (None, 28, 28, 1)


@pytest.mark.parametrize(
    "kwargs, code_shape, out_channels",
    [
        pytest.param({"input_size": 16, "filters": (4, 2)}, (4, 4, 2), 1, id="16px-gray"),
        pytest.param({"input_size": 16, "channels": 3, "filters": (6, 5, 3)}, (2, 2, 3), 3, id="16px-rgb-3-levels"),
    ],
)
def test_options_change_the_code_shape(kwargs, code_shape, out_channels):
    model = build_autoencoder(**kwargs)
    assert tuple(encoder(model).output.shape[1:]) == code_shape
    assert model.output.shape[-1] == out_channels


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param({"input_size": 30}, r"`input_size` must be a positive integer divisible by 2 \*\* len\(filters\) = 4\. Received: input_size=30", id="size"),
        pytest.param({"filters": ()}, r"`filters` must be a non-empty sequence of positive integers\. Received: filters=\(\)", id="filters"),
        pytest.param({"channels": 2}, r"`channels` must be 1 \(grayscale\) or 3 \(RGB\)\. Received: channels=2", id="channels"),
    ],
)
def test_bad_architecture_arguments(kwargs, match):
    with pytest.raises(ExtractorConfigError, match=match):
        build_autoencoder(**kwargs)


@pytest.mark.parametrize("channels", [1, 3])
def test_in_model_preprocessing_matches_the_reconstruction_target(batch, channels):
    import keras

    x = keras.ops.convert_to_tensor(batch.astype("float32"))
    for layer in preprocessing_layers(channels):
        x = layer(x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(x), reconstruction_target(batch, channels), atol=1e-5)


def test_cae_extractor_is_the_flattened_bottleneck(cae_file, batch):
    import keras

    e = get_extractor("cae", weights=str(cae_file), batch_size=2)
    assert e.layer == "bottleneck" and e.input_shape == (28, 28, 3)
    out = e(batch)
    assert out.shape == (3, 196) and out.dtype == np.float32 and e.output_dim == 196
    reference = encoder(keras.saving.load_model(cae_file)).predict_on_batch(batch.astype("float32"))
    np.testing.assert_allclose(out, np.asarray(reference).reshape(3, -1), rtol=1e-5, atol=1e-6)


def test_cae_config_round_trip_and_fingerprint_follows_the_file_content(cae_file, tmp_path):
    e = get_extractor("cae", weights=str(cae_file), pooling="avg", batch_size=4)
    assert type(e).from_config(e.get_config()).get_config() == e.get_config()
    assert extractor_from_spec(e.spec()).fingerprint() == e.fingerprint()
    assert e.spec()["weights_sha256"] == extract.file_sha256(cae_file)
    copy = tmp_path / "copy" / "cae.keras"
    copy.parent.mkdir()
    copy.write_bytes(cae_file.read_bytes())
    assert get_extractor("cae", weights=str(copy), pooling="avg").fingerprint() == e.fingerprint()  # path-free
    assert get_extractor("cae", weights=str(cae_file), pooling="flatten").fingerprint() != e.fingerprint()
    build_autoencoder(seed=2).save(copy)
    assert get_extractor("cae", weights=str(copy), pooling="avg").fingerprint() != e.fingerprint()


def test_cae_through_run_extract_into_a_store(cae_file, csv_index, tmp_path):
    index = extract.read_index(csv_index)
    e = get_extractor("cae", weights=str(cae_file), input_size=28)
    result = run_extract(index, e, tmp_path / "cae", workers=1)
    assert result.n_rows == 8 and result.n_failed == 0
    X, y, _ = features_store.load(result.store)
    assert X.shape == (8, 196) and set(y) == {"a", "b"}
    assert features_store.read_info(result.store).fingerprint == e.fingerprint()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        pytest.param({"weights": "imagenet"}, ExtractorConfigError,
                     r"`weights` must be the path of a saved Keras model \(\.keras\) for model 'cae'\. Received: weights='imagenet'", id="imagenet"),
        pytest.param({"weights": "missing.keras"}, WeightsUnavailableError, r"the saved model /\S*/missing\.keras does not exist", id="missing"),
    ],
)
def test_cae_weights_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        get_extractor("cae", **kwargs).validate()


def test_cae_layer_and_input_size_errors(cae_file, batch):
    with pytest.raises(ExtractorConfigError, match=r"`layer` must be one of the model's layers .*Received: layer='block5_pool'"):
        get_extractor("cae", weights=str(cae_file), layer="block5_pool")(batch)
    with pytest.raises(ExtractorConfigError, match=r"`input_size` must match the input size of the model in .* \(28\) or be omitted\. Received: input_size=224"):
        get_extractor("cae", weights=str(cae_file), input_size=224)(batch)
