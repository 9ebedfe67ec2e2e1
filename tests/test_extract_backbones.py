"""Every keras.applications family: our extractor equals Keras's own model on its own `preprocess_input`, and
the feature width of each pooling matches the table that `featurehead models` prints.

Weights are a seeded random init saved by the test (`--weights FILE`): no ImageNet download. Small inputs keep
it fast; the table's default-size numbers are checked by `featurehead models --check` (minutes, not in CI).
"""

import shutil

import numpy as np
import pytest

from extract import get_extractor
from extract.backbones import BACKBONES
from extract.layers import seeded_init

# one model per family, at the smallest input Keras accepts, with the module holding its preprocess_input
FAMILIES = [
    ("vgg16", "vgg16", 32),
    ("resnet50", "resnet", 32),
    ("resnet50v2", "resnet_v2", 32),
    ("inceptionv3", "inception_v3", 75),
    ("xception", "xception", 71),
    ("mobilenetv2", "mobilenet_v2", 32),
    ("mobilenetv3small", "mobilenet_v3", 32),
    ("densenet121", "densenet", 32),
    ("efficientnetb0", "efficientnet", 32),
    ("efficientnetv2b0", "efficientnet_v2", 32),
    ("convnexttiny", "convnext", 32),
]

POOLED = {"resnet50", "mobilenetv3small", "convnexttiny"}


SEED = 7  # of every reference's seeded init (the random-init test's `--weights none --seed` too)
SHARED = {"efficientnetb0", "resnet50"}  # references that later tests use again (kept, on the worker that made them)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """reference(name, size, where) -> (Keras's include_top=False model seeded by SEED, its saved weights file in
    `where`, the test's tmp_path, removed when it passes): built once per test process for the names in SHARED (a
    build, an init and a save of ~100 MB is seconds each), whose files are kept for the session."""
    from keras import applications

    kept = {}

    def build(name, size, where):
        if (name, size) in kept:
            return kept[name, size]
        ref = getattr(applications, BACKBONES[name].constructor)(include_top=False, weights=None,
                                                                input_shape=(size, size, 3))
        seeded_init(ref, SEED)
        path = (tmp_path_factory.mktemp("reference") if name in SHARED else where) / f"{name}.weights.h5"
        ref.save_weights(path)
        if name in SHARED:
            kept[name, size] = ref, path
        return ref, path

    return build


def _close(ours, expected):
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("name, module, size", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_family_equals_keras_on_its_own_preprocessing(name, module, size, reference, tmp_path):
    from keras import applications

    ref, path = reference(name, size, tmp_path)
    images = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    one_batch = dict(batch_size=len(images))  # not padded to 32 images: a tenth of the forward pass
    preprocess = getattr(applications, module).preprocess_input
    import keras

    def keras_own(x):
        return keras.ops.convert_to_numpy(ref(x, training=False))

    expected = keras_own(preprocess(images.astype("float32")))
    channels = expected.shape[-1]

    flat = get_extractor(name, weights=str(path), input_size=size, pooling="flatten", **one_batch)
    ours = flat(images)
    _close(ours, expected.reshape(len(images), -1))
    assert flat.output_dim == expected[0].size
    assert channels == BACKBONES[name].channels  # the avg and max width `featurehead models` prints
    if name in POOLED:  # the pooling layer is shared by every family: a few of them build it (suite time)
        # against Keras's own pooled model (ConvNeXt normalises after its pooling; max pools as avg elsewhere)
        for pooling in ("avg", "max") if name.startswith("convnext") else ("avg",):
            own = getattr(applications, BACKBONES[name].constructor)(include_top=False, weights=None,
                                                                    input_shape=(size, size, 3), pooling=pooling)
            own.set_weights(ref.get_weights())  # the file's weights (pooling adds none), without reading it again
            pooled = get_extractor(name, weights=str(path), input_size=size, pooling=pooling, **one_batch)
            _close(pooled(images), keras.ops.convert_to_numpy(own(preprocess(images.astype("float32")))))
            assert pooled.output_dim == channels

    if BACKBONES[name].preprocess != "none":  # the check can fail: raw pixels are not this family's input
        raw = keras_own(images.astype("float32")).reshape(len(images), -1)
        assert not np.allclose(ours, raw, rtol=1e-3, atol=1e-4 * float(np.abs(raw).max()))


def test_random_init_is_the_seeded_reference_and_not_all_zero(reference, tmp_path):
    """`--weights none` on a normalised family: batch-norm statistics stay at their constants (not zeroed)."""
    import keras

    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    features = get_extractor("resnet50", weights="none", input_size=32, seed=SEED, batch_size=2)(images)
    assert np.abs(features).max() > 1e-3
    ref, _ = reference("resnet50", 32, tmp_path)  # Keras's ResNet50 after seeded_init(ref, SEED)
    expected = keras.ops.convert_to_numpy(ref(keras.applications.resnet.preprocess_input(images.astype("float32")),
                                              training=False)).mean(axis=(1, 2))
    _close(features, expected)
    other = get_extractor("resnet50", weights="none", input_size=32, seed=SEED + 1, batch_size=2)(images)
    assert not np.allclose(features, other, rtol=1e-3)


def test_defaults_come_from_the_family():
    e = get_extractor("inceptionv3", weights="none")
    assert e.input_size == 299 and e.pooling == "avg" and e.resize == "squash"
    assert get_extractor("vgg19", weights="none").pooling == "flatten"
    with pytest.raises(Exception, match="input_size.*>= 75"):
        get_extractor("inceptionv3", weights="none", input_size=64).validate()


def test_default_layer_by_name_is_the_same_extractor():
    a = get_extractor("resnet50", weights="none", input_size=32)
    b = get_extractor("resnet50", weights="none", input_size=32, layer="conv5_block3_out")
    c = get_extractor("resnet50", weights="none", input_size=32, layer="conv4_block6_out")
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


@pytest.mark.parametrize("name", ["mobilenetv3small", "convnexttiny"])
def test_layer_names_keras_numbers_are_the_same_in_every_build(name):
    """MobileNetV3 and ConvNeXt have layers Keras names by a counter ('activation_17'): a second build in one
    process (a clone in a grid search, say) must list, and cut at, the same names; and the caller's own counter
    goes on as if no backbone had been built."""
    import keras

    from extract.backbones import backbone_layers

    def number(layer_name):  # activation -> 0, activation_3 -> 3
        tail = layer_name.rsplit("_", 1)[-1]
        return int(tail) if "_" in layer_name and tail.isdigit() else 0

    before = keras.layers.Activation("relu").name
    first = [n for n, _ in backbone_layers(name, 32)]
    keras.layers.Activation("relu")  # a layer of the caller's own, built in between
    assert [n for n, _ in backbone_layers(name, 32)] == first
    numbered = [n for n in first if number(n) > 0]
    assert numbered  # the names this test is about
    layer = numbered[len(numbered) // 2]
    dims = [get_extractor(name, weights="none", input_size=32, layer=layer).output_dim for _ in range(2)]
    assert dims[0] == dims[1] > 0
    # the last layer by its numbered name: the default's features (another fingerprint, as stores made with it have)
    batch = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(get_extractor(name, weights="none", input_size=32, layer=first[-1], batch_size=2)(batch),
                               get_extractor(name, weights="none", input_size=32, batch_size=2)(batch),
                               rtol=1e-5, atol=1e-6)
    assert number(keras.layers.Activation("relu").name) == number(before) + 2


def test_global_pooling_of_a_vector_layer_names_the_layer():
    """A sweep over several layers said only that some layer's output is already a vector."""
    from extract import ExtractorConfigError

    e = get_extractor("efficientnetb0", weights="none", input_size=32, pooling="max",
                      layer=["top_activation", "block2a_se_squeeze"])
    with pytest.raises(ExtractorConfigError, match=r"already a vector \('block2a_se_squeeze' is one\)"):
        e.model  # noqa: B018


def test_global_pooling_of_a_vector_layer_says_when_it_is_the_default():
    """No --pooling given, the error said "Received: --pooling 'avg'" as if the user had chosen it."""
    from extract import ExtractorConfigError

    e = get_extractor("efficientnetb0", weights="none", input_size=32, layer="block2a_se_squeeze")
    with pytest.raises(ExtractorConfigError, match=r"\('block2a_se_squeeze' is one; 'avg' is efficientnetb0's "
                                                   r"default\)\. Received: pooling='avg'"):
        e.model  # noqa: B018


def test_resize_and_precision_are_part_of_the_fingerprint():
    base = get_extractor("mobilenetv2", weights="none", input_size=32)
    assert base.fingerprint() != get_extractor("mobilenetv2", weights="none", input_size=32, resize="crop").fingerprint()
    assert base.fingerprint() != get_extractor("mobilenetv2", weights="none", input_size=32,
                                               precision="bfloat16").fingerprint()


def test_models_command_lists_and_cuts(capsys):
    from pipelines.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("resnet50", "efficientnetv2s", "convnextxlarge", "mobilenetv3large", "densenet201", "xception"):
        assert name in out
    assert main(["models", "resnet50", "--layers", "--input-size", "32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("conv4_block6_out") for line in lines)
    # the input layer, which --layer takes, is listed too (it was left out; the error counted it: "all 175")
    assert [line.split()[0] for line in lines].count("input_layer") == 1
    assert len([line for line in lines if line.strip() and "(" in line]) == 175
    assert lines[-1].startswith("conv5_block3_out") and "(1, 1, 2048)" in lines[-1]
    assert main(["models", "resnet"]) == 2
    assert "backbones" in capsys.readouterr().err
    assert main(["models", "resnet50", "--input-size", "32"]) == 2  # was ignored: the table is at the default size
    assert "`--input-size` goes with NAME --layers" in capsys.readouterr().err
    assert main(["models", "resnet50", "--check", "--layers"]) == 2  # --check was ignored
    assert "`--check` and `--layers` are two runs" in capsys.readouterr().err


def test_cached_weights_are_found_by_keras_own_file_names(tmp_path):
    """Keras names its no-top files per family; each backbone must find its own (and not its v2 sibling's)."""
    from extract.applications import _weights_cached

    files = {
        "vgg16": "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "resnet50v2": "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "inceptionv3": "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "mobilenetv2": "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        "mobilenetv3small": "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        "efficientnetv2b0": "efficientnetv2-b0_notop.h5",
        "convnexttiny": "convnext_tiny_notop.h5",
        "densenet121": "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
    }
    for name, file in files.items():
        cache = tmp_path / name
        cache.mkdir()
        (cache / file).write_bytes(b"x")
        assert _weights_cached(cache, name), name
    only_v2 = tmp_path / "resnet50v2"
    assert not _weights_cached(only_v2, "resnet50") and not _weights_cached(tmp_path / "empty", "vgg16")


def test_cached_mobilenet_weights_are_those_of_the_size_and_width_built(tmp_path):
    """Keras keeps a MobileNetV2 file per input size (96, 128, 160, 192, 224; 224 for any other) and MobileNet
    files per width (alpha; featurehead builds 1.0) and variant: the 224 file counted as cached at 160, and a 0.35 or
    a minimalistic one as the model's, so the quick reachability check was skipped and an offline run went straight
    to Keras's download, which has no timeout (minutes behind a firewall that drops packets, not seconds)."""
    from extract.applications import _weights_cached

    other_width = tmp_path / "other_width"
    other_width.mkdir()
    (other_width / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5").write_bytes(b"x")
    (other_width / "weights_mobilenet_v3_small_224_0.75_float_no_top_v2.h5").write_bytes(b"x")
    (other_width / "weights_mobilenet_v3_small_minimalistic_224_1.0_float_no_top_v2.h5").write_bytes(b"x")
    assert not _weights_cached(other_width, "mobilenetv2", 224)
    assert not _weights_cached(other_width, "mobilenetv3small", 224)
    (tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5").write_bytes(b"x")
    assert _weights_cached(tmp_path, "mobilenetv2", 224) and _weights_cached(tmp_path, "mobilenetv2", 100)
    assert not _weights_cached(tmp_path, "mobilenetv2", 160)
    (tmp_path / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_160_no_top.h5").write_bytes(b"x")
    assert _weights_cached(tmp_path, "mobilenetv2", 160)
    (tmp_path / "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5").write_bytes(b"x")  # one file, any size
    assert _weights_cached(tmp_path, "mobilenetv3small", 160) and not _weights_cached(tmp_path, "mobilenetv3large")


def test_an_efficientnet_weights_file_of_the_imagenet_model_gets_its_input_scaling(tmp_path, reference):
    """Keras adds a Rescaling by 1/sqrt(ImageNet's stddev) to EfficientNet B0-B7 only when it loads ImageNet
    weights; a weights file saved from that model (the offline route) was run without it: features ~2x off."""
    import h5py
    import keras
    from keras.src.applications import efficientnet
    from keras.src.legacy.saving import legacy_h5_format

    size = 32
    plain, plain_file = reference("efficientnetb0", size, tmp_path)
    scratch = tmp_path / "from_scratch.h5"  # a legacy file of a model that is not ImageNet's: no extra scaling
    with h5py.File(scratch, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, plain)
    # a stand-in for Keras's own ImageNet download: its format (legacy .h5), and ImageNet's stddev squared as the
    # Normalization's variance (the random init's is 1): the same file with the Normalization's weights rewritten
    legacy = tmp_path / "efficientnetb0_notop.h5"
    shutil.copyfile(scratch, legacy)
    norm = next(layer for layer in plain.layers if isinstance(layer, keras.layers.Normalization))
    imagenet_norm = {"mean": np.array([0.485, 0.456, 0.406], np.float32),
                     "variance": np.square([0.229, 0.224, 0.225]).astype(np.float32), "count": np.array(0)}
    with h5py.File(legacy, "r+") as f:
        group = f[norm.name]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs["weight_names"]]
        assert sorted(n.rsplit("/", 1)[-1] for n in names) == sorted(imagenet_norm), names
        for weight_name in names:
            group[weight_name][...] = imagenet_norm[weight_name.rsplit("/", 1)[-1]]
    # Keras's ImageNet model, its download served from the file this test saved (no network here)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(efficientnet.file_utils, "get_file", lambda *a, **k: str(legacy))
        imagenet = keras.applications.EfficientNetB0(include_top=False, weights="imagenet",
                                                     input_shape=(size, size, 3))
    saved = tmp_path / "imagenet_model.weights.h5"
    imagenet.save_weights(saved)
    archive = tmp_path / "imagenet_model.keras"  # a whole saved model: its weights are read the same way
    imagenet.save(archive)
    whole_h5 = tmp_path / "imagenet_model.h5"  # a whole model as legacy HDF5: its weights are under model_weights/
    imagenet.save(whole_h5)
    images = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    layer = "stem_activation"  # right after the scaling (the random init's last layer is ~1e-17: no test there)

    def keras_own(model):
        cut = keras.Model(model.input, model.get_layer(layer).output)
        return keras.ops.convert_to_numpy(cut(images.astype("float32"), training=False)).mean(axis=(1, 2))

    expected = keras_own(imagenet)
    for path in (saved, archive, whole_h5, legacy):
        ours = get_extractor("efficientnetb0", weights=str(path), input_size=size, layer=layer, pooling="avg",
                             batch_size=len(images))
        _close(ours(images), expected)
        assert ours.spec()["efficientnet_stem"] == "imagenet"
    # files of the model without ImageNet weights: Keras's model as it is, and the fingerprint it always had
    for path in (plain_file, scratch):
        ours = get_extractor("efficientnetb0", weights=str(path), input_size=size, layer=layer, pooling="avg",
                             batch_size=len(images))
        _close(ours(images), keras_own(plain))
        assert "efficientnet_stem" not in ours.spec()
        assert not np.allclose(ours(images), expected, rtol=0.1)
