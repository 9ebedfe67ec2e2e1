"""Frozen `keras.applications` backbones without their top, as registered extractors.

Each family is named by its function name in lower case (`resnet50`, `efficientnetv2s`, `convnexttiny`, ...;
`extract.backbones.BACKBONES` lists them) and gets its own preprocessing inside the graph and its own default input size.
ImageNet weights load through the real Keras code (its cache, then a download); offline that fails fast with one
error that names the cache folder and the alternatives.
"""

from __future__ import annotations

import collections
import functools
import io
import os
import re
import socket
import warnings
import zipfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from .backbones import BACKBONES, Backbone
from .errors import ExtractorConfigError, WeightsUnavailableError, not_a_file
from .extractor import MIN_INPUT_SIZE, Extractor
from .layers import cut_at_layer, dtype_policy, pooling_layer, preprocess_layer, seeded_init
from .registry import get_extractor_class, register_extractor

# Keras downloads every keras.applications weights file from here; a connection is tried first with this
# timeout (a socket of our own: the global default timeout is never touched), so offline fails in seconds
WEIGHTS_HOST = "https://storage.googleapis.com"
CONNECT_TIMEOUT_S = 10.0


@functools.lru_cache(maxsize=16)
def _imagenet_stem_of(path: str, *version) -> bool:
    """`KerasApplicationExtractor._imagenet_stem` of the weights file `path` (`version`: its stat, for the cache)."""
    import h5py

    try:
        if zipfile.is_zipfile(path):  # a .keras archive: its weights are model.weights.h5 inside
            with zipfile.ZipFile(path) as archive, archive.open("model.weights.h5") as inner:
                with h5py.File(io.BytesIO(inner.read()), "r") as f:
                    return _imagenet_stem_in(f)
        with h5py.File(path, "r") as f:
            return _imagenet_stem_in(f)
    except (OSError, KeyError, zipfile.BadZipFile):  # not a weights file: loading it says what is wrong
        return False


def _imagenet_stem_in(f) -> bool:
    """`_imagenet_stem` of an open HDF5 weights file (see there)."""
    if "layers" in f:  # Keras 3: one entry per layer, named by class
        return "rescaling_1" in f["layers"]
    if "layer_names" not in f.attrs and "model_weights" in f:  # a whole model saved as legacy HDF5 (model.save(
        f = f["model_weights"]  # "x.h5")): its weights are in this group, as Keras reads them (saving_api.load_weights)
    from keras.src.applications.efficientnet import IMAGENET_STDDEV_RGB

    for layer in f.attrs.get("layer_names", []):  # legacy: a group per layer, its weights named in an attribute
        layer = layer.decode() if isinstance(layer, bytes) else str(layer)
        if layer.startswith("normalization") and layer in f:
            for weight in f[layer].attrs.get("weight_names", []):
                weight = weight.decode() if isinstance(weight, bytes) else str(weight)
                if "variance" in weight:
                    variance = np.asarray(f[layer][weight]).ravel()
                    return variance.shape == (3,) and bool(np.allclose(variance, np.square(IMAGENET_STDDEV_RGB),
                                                                       rtol=1e-3))
    return False


def _fold_imagenet_stem(base) -> None:
    """Give an EfficientNet built without ImageNet weights the input scaling of one built with them: Keras's extra
    `Rescaling(1 / sqrt(stddev))` right after the `Normalization` ((x - mean) / sqrt(variance)) is the same as
    that normalization with `variance * stddev`, so the variance is scaled in place (same layers, same names)."""
    import keras
    from keras.src.applications.efficientnet import IMAGENET_STDDEV_RGB

    norm = next(layer for layer in base.layers if isinstance(layer, keras.layers.Normalization))
    variance = next(v for v in norm.non_trainable_variables if v.path.endswith("variance"))
    variance.assign(keras.ops.convert_to_numpy(variance) * np.asarray(IMAGENET_STDDEV_RGB, "float32"))
    norm.finalize_state()  # its call reads the tensors made from the variables here (as loading weights does)


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights: its home's `models` folder. Keras reads $KERAS_HOME once, when it is
    imported (else ~/.keras), so once it is imported its own answer is asked, not the environment's now."""
    try:
        from keras.src.backend.config import keras_home  # the folder `keras.utils.get_file` uses
    except ImportError:  # pragma: no cover - a Keras without it
        keras_home = None
    if keras_home is not None:
        return Path(keras_home()) / "models"
    base = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")  # pragma: no cover
    return Path(base) / "models"  # pragma: no cover


class KerasApplicationExtractor(Extractor):
    """A `keras.applications` model without its top, cut at `layer`, with its own preprocessing inside.

    Parameters
    ----------
    weights : {"imagenet", "none"} or path
        ImageNet weights (the Keras cache, else a download), a random init seeded by `seed` (NOT pretrained:
        for tests), or a weights file saved from the same `include_top=False` model (`model.save_weights`).
    layer : str or list of str, optional
        Cut at this named layer (several: one forward pass, each pooled, concatenated); None is the last.
    pooling : {"flatten", "avg", "max"}, optional
        Default: the family's (flatten for VGG, the seed's 25088 features; avg for the others).
    input_size : int, optional
        Default: the family's (224 for most, 299 for Inception and Xception, up to 600 for EfficientNetB7).
    resize : {"squash", "crop"}
        How an image is fitted to the input (see `extract.load_image`).
    precision : {"float32", "bfloat16", "float16"}
        The compute dtype (Keras mixed precision); features are stored as float32 whatever it is.
    """

    backbone: Backbone | None = None  # set on each registered subclass
    application = ""  # the keras.applications constructor name

    def __init__(
        self,
        *,
        weights="imagenet",
        layer=None,
        pooling=None,
        input_size=None,
        resize="squash",
        precision="float32",
        seed=0,
        batch_size=32,
    ):
        backbone = self.backbone
        layer = list(layer) if isinstance(layer, tuple) else layer
        if isinstance(layer, str) and backbone is not None and layer == backbone.last_layer:
            layer = None  # the default layer by name: the same model, the same fingerprint
        super().__init__(
            weights="none" if weights is None else str(weights),
            layer=layer,
            pooling=pooling if pooling is not None else (backbone.pooling if backbone else "flatten"),
            input_size=input_size if input_size is not None else (backbone.input_size if backbone else 224),
            resize=resize,
            precision=precision,
            seed=seed,
            batch_size=batch_size,
        )

    def validate(self) -> None:
        super().validate()
        layer = self._config["layer"]
        names = layer if isinstance(layer, list) else [layer]
        if layer is not None and (not names or not all(isinstance(n, str) and n for n in names)
                                  or len(set(names)) != len(names)):
            raise ExtractorConfigError(
                f"`layer` must be None, a layer name or a non-empty list of distinct layer names. Received: layer={layer!r}"
            )
        size = self._config["input_size"]
        least = self.backbone.min_size if self.backbone else MIN_INPUT_SIZE
        if isinstance(size, bool) or not isinstance(size, int) or size < least:
            raise ExtractorConfigError(
                f"`input_size` must be an integer >= {least} for {self.name}. Received: input_size={size!r}"
            )
        path = self.weights_file()
        if path is not None and not Path(path).is_file():
            raise WeightsUnavailableError(
                f"`weights` must be 'imagenet', 'none' or a path to a weights file; {path} {not_a_file(path)}"
            )

    def weights_source(self) -> str:
        """A human-readable statement of which weights are in use (the demo and the CLI print it)."""
        weights = self._config["weights"]
        if weights == "imagenet":
            return f"ImageNet-pretrained weights (keras.applications.{self.application}, include_top=False)"
        if weights == "none":
            return f"random-init weights (seed {self._config['seed']}): NOT pretrained, for testing only"
        return f"weights from {weights} (sha256 {self.weights_sha256()[:12]})"

    def base_model(self, weights=None):
        """The keras.applications model without its top at this input size (`weights=None`: nothing loaded)."""
        from keras import applications

        size = self._config["input_size"]
        constructor = getattr(applications, self.application)
        with fresh_layer_names():
            return constructor(include_top=False, weights=weights, input_shape=(size, size, 3))

    def _build(self):
        import keras

        size = self._config["input_size"]
        weights = self._config["weights"]
        mode = self.backbone.preprocess if self.backbone else "caffe"
        with dtype_policy(self._config["precision"]):
            if weights == "imagenet":
                base = self._load_imagenet()
            else:
                base = self.base_model()
                if weights == "none":
                    seeded_init(base, self._config["seed"])
                else:
                    self._load_weights_file(base, weights)
                    if self._imagenet_stem():
                        _fold_imagenet_stem(base)
            layer = self._config["layer"]
            base = cut_at_layer(base, layer, listed_by=f"featurehead models {self.name} --layers")
            inputs = keras.Input((size, size, 3), dtype="uint8", name="image")
            pixels = preprocess_layer(mode)(inputs)
            pooling, default_of = self._config["pooling"], self._default_pooling_of()
            if self._pools_before_norm():  # as keras.applications.ConvNeXt*(pooling=...): pooled, then normalised
                norm = base.layers[-1]
                x = keras.Model(base.inputs, norm.input)(pixels)
                x = norm(pooling_layer(pooling, len(x.shape), default_of=default_of)(x))
            elif isinstance(layer, list):  # one forward pass, each layer pooled, concatenated in the order given
                pooled = [pooling_layer(pooling, len(out.shape), name=f"features_{name}", layer=name,
                                        default_of=default_of)(t)
                          for name, out, t in zip(layer, base.outputs, base(pixels))]
                x = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(name="features")(pooled)
            else:
                x = pooling_layer(pooling, len(base.output.shape), layer=layer, default_of=default_of)(base(pixels))
            x = keras.layers.Activation("linear", dtype="float32", name="features_float32")(x)
        return keras.Model(inputs, x, name=f"{self.name}_extractor")

    def _default_pooling_of(self) -> str | None:
        """This model's name when its pooling is the model's default pooling (said in a pooling error: the user
        may not have chosen it)."""
        default = self.backbone.pooling if self.backbone else "flatten"
        return self.name if self._config["pooling"] == default else None

    def spec(self) -> dict:
        spec = super().spec()
        if self._imagenet_stem():  # features of such a file before this was known came without it: another store
            spec["efficientnet_stem"] = "imagenet"
        if self._pools_before_norm():  # made before December 2026, they were normalised, then pooled: another store
            spec["convnext_head"] = "pool_then_norm"
        return spec

    def _pools_before_norm(self) -> bool:
        """Whether this is ConvNeXt's default layer under avg or max pooling, which `keras.applications` (and
        ConvNeXt's own head) pools before its final LayerNormalization: the features it gives with `pooling=`.
        Normalised at every position first, then pooled, they came out other features (half the spread)."""
        return (self.application.startswith("ConvNeXt") and self._config["layer"] is None
                and self._config["pooling"] in ("avg", "max"))

    def _imagenet_stem(self) -> bool:
        """Whether the model that this EfficientNet (B0-B7) weights file was saved from had the input scaling that
        `keras.applications` adds only when it loads ImageNet weights (a `Rescaling` by 1/sqrt(ImageNet's stddev)
        after the `Normalization`, `keras/src/applications/efficientnet.py`). A Keras 3 file (`.weights.h5`, or
        the weights inside a `.keras` archive) then lists a second `rescaling`; a legacy `.h5` file (Keras's own
        ImageNet download is one) holds ImageNet's stddev squared as the Normalization's variance, which Keras's
        comment there gives as the reason for the extra scaling (a model trained from scratch has its own)."""
        path = self.weights_file()
        if path is None or not self.application.startswith("EfficientNetB") or not Path(path).is_file():
            return False
        st = os.stat(path)  # read once per version of the file (spec() is asked for often)
        return _imagenet_stem_of(str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def layer_dims(self) -> list[int]:
        """Width of each layer's pooled block in the output, in the order of `layer` (builds the model)."""
        layer = self._config["layer"]
        if not isinstance(layer, list):
            return [self.output_dim]
        return [int(np.prod(self.model.get_layer(f"features_{name}").output.shape[1:])) for name in layer]

    def _load_weights_file(self, base, path) -> None:
        """`base.load_weights(path)`, where a file that does not fit is one short line naming it, not Keras's
        list of every layer it could not load after a warning per layer."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                base.load_weights(path)
            except (ValueError, OSError, KeyError, zipfile.BadZipFile) as err:  # BadZipFile: a cut-off .keras
                raise WeightsUnavailableError(f"{path}: {_weights_file_problem(err)}; --weights FILE takes a "
                                              f"weights file saved from keras.applications.{self.application}("
                                              f"include_top=False).save_weights(...)") from err
        for message in dict.fromkeys((w.category, str(w.message)) for w in caught):  # a fitting file warns of nothing
            warnings.warn(message[1], message[0], stacklevel=2)

    def _load_imagenet(self):
        cache = keras_cache_dir()
        before = set(cache.iterdir()) if cache.is_dir() else set()
        try:
            if not _weights_cached(cache, self.name, self._config["input_size"]):
                _reachable(WEIGHTS_HOST)
            return self.base_model(weights="imagenet")
        except Exception as err:  # Keras raises a bare Exception on a failed download
            wanted = _wanted_file(err, cache)
            if wanted is not None and (wanted.is_file() or wanted in before):
                # there, but it failed Keras's hash check (cut off, corrupt) and could not be downloaded again;
                # Keras then deletes it (keras/src/utils/file_utils.py, get_file)
                gone = "; Keras has removed it" if not wanted.is_file() else ""
                todo = "re-run" if gone else "delete it and re-run"
                raise WeightsUnavailableError(
                    f"ImageNet weights for {self.name} were in the Keras cache ({wanted}) but failed Keras's check "
                    f"and could not be downloaded again ({_short_reason(err)}): a cut-off or corrupt download{gone}. "
                    f"Copy a good file there, or {todo} where it can be downloaded; or use --weights PATH or "
                    f"--weights none (random init, not pretrained)"
                ) from err
            file = keras_weights_file(self.name, self._config["input_size"])
            # Keras found it and could not read it (MobileNetV2's has no hash check): what h5py and Keras's loading
            # raise for a cut-off or foreign file, not any failure of the build (memory) that would say to delete it
            if (cache / file).is_file() and isinstance(err, (OSError, ValueError, KeyError)):
                raise WeightsUnavailableError(
                    f"ImageNet weights for {self.name} are in the Keras cache ({cache / file}) but cannot be read "
                    f"({_short_reason(err)}): a cut-off or corrupt download. Copy a good file there, or delete it and "
                    "re-run where it can be downloaded; or use --weights PATH or --weights none (random init, not "
                    "pretrained)"
                ) from err
            copy = (f"Keras's {self.application} no-top weights file"
                    + (" for this input size" if self.name.startswith("mobilenet") else "") + f", {file},")
            raise WeightsUnavailableError(
                f"ImageNet weights for {self.name} are not in the Keras cache ({cache}) and could not be "
                f"downloaded ({_short_reason(err)}); copy {copy} into {cache}, "
                "or use --weights PATH (a .weights.h5, .keras or Keras's own .h5 file of the same include_top=False "
                "model) or --weights none (random init, not pretrained)"
            ) from err


@contextmanager
def fresh_layer_names():
    """Build as in a fresh process: Keras names a layer built without a name by a counter of its thread
    (MobileNetV3's `activation_17`, ConvNeXt's `layer_normalization`), so the second MobileNetV3 built in a process
    would have other layer names than the first, and a `--layer` listed by `featurehead models NAME --layers`
    would not be found. Inside, the counter starts from zero; the caller's is restored after, so the names of
    the caller's own layers are not affected. (Weights files do not depend on these names: Keras keys them by
    class and order.)"""
    try:
        from keras.src.backend.common import global_state  # Keras 3's own module (private)
    except ImportError:  # a Keras that moved it: names as it gives them (tests/test_extract_backbones.py would say)
        yield
        return
    saved = global_state.get_global_attribute("object_name_uids")
    global_state.set_global_attribute("object_name_uids", collections.defaultdict(int))
    try:
        yield
    finally:
        global_state.set_global_attribute("object_name_uids", saved)


def _wanted_file(err: Exception, cache: Path) -> Path | None:
    """The cache file that Keras was downloading when `err` came (None: `err` names no download)."""
    url = re.search(r"https?://\S+", str(err))
    if url is None:
        return None
    return cache / url.group(0).rstrip(":,;").rsplit("/", 1)[-1]


def _weights_file_problem(err: Exception) -> str:
    """What is wrong with a weights file, in a few words, from Keras's or h5py's error."""
    text = str(err)
    counted = re.match(r"A total of (\d+) objects could not be loaded", text)
    if counted:
        first = re.search(r"for object <\w+ name=([^,>]+)", text)
        return (f"it does not fit this model: {counted.group(1)} of the model's layers could not be loaded from it"
                + (f" (the first: {first.group(1)})" if first else ""))
    if "File format not supported" in text:  # Keras picks the format by the name's suffix
        return "its name must end in .weights.h5, .h5 or .keras (Keras reads the format from it)"
    if isinstance(err, zipfile.BadZipFile):
        return f"cannot be read as a .keras file ({text[:160]})"
    if isinstance(err, OSError):
        return f"cannot be read as an HDF5 weights file ({text.splitlines()[0][:160] if text else type(err).__name__})"
    return f"it does not fit this model ({text.splitlines()[0][:160] if text else type(err).__name__})"


# MobileNetV2's ImageNet weights come in one file per input size (keras/src/applications/mobilenet_v2.py: its
# `..._{alpha}_{rows}_no_top.h5`), the 224 one for any other size
MOBILENET_V2_SIZES = (96, 128, 160, 192, 224)


def keras_weights_file(name: str, input_size: int | None = None) -> str:
    """The exact name of the no-top ImageNet weights file that Keras loads for backbone `name` at `input_size`, as
    keras/src/applications names them: `{name}_weights_tf_dim_ordering_tf_kernels_notop.h5` for VGG, ResNet,
    DenseNet, Inception and Xception, the model's own Keras name + `_notop.h5` for EfficientNet(V2) and ConvNeXt
    (`efficientnetv2-s_notop.h5`, `convnext_tiny_notop.h5`), and one file per width for a MobileNet (featurehead
    builds alpha 1.0): MobileNetV2's also per input size (the 224 one for any other size), MobileNetV3's the 224
    one at every size. `tests/test_extract_models.py` checks every name against the file Keras asks for."""
    if name == "mobilenetv2":
        rows = input_size if input_size in MOBILENET_V2_SIZES else 224
        return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"
    if name.startswith("mobilenetv3"):
        return f"weights_mobilenet_v3_{name[len('mobilenetv3'):]}_224_1.0_float_no_top_v2.h5"
    if name.startswith("efficientnetv2"):
        return f"efficientnetv2-{name[len('efficientnetv2'):]}_notop.h5"
    if name.startswith("efficientnet"):
        return f"{name}_notop.h5"
    if name.startswith("convnext"):
        return f"convnext_{name[len('convnext'):]}_notop.h5"
    stem = "inception_v3" if name == "inceptionv3" else name
    return f"{stem}_weights_tf_dim_ordering_tf_kernels_notop.h5"


def _weights_cached(cache: Path, name: str, input_size: int | None = None) -> bool:
    """Whether the Keras cache holds the no-top weights file Keras loads for this model at `input_size`
    (`keras_weights_file`): a MobileNet's file of another width, size or MobileNetV3's minimalistic variant is not
    this model's."""
    return (cache / keras_weights_file(name, input_size)).is_file()


def _reachable(url: str) -> None:
    """Raise OSError within CONNECT_TIMEOUT_S when `url`'s host (or the https proxy urllib would use) cannot be
    connected to."""
    from urllib.request import getproxies, proxy_bypass

    target = urlparse(url)
    proxy = getproxies().get("https")
    if proxy and not proxy_bypass(target.hostname):
        parsed = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        address = (parsed.hostname, parsed.port or 80)
    else:
        address = (target.hostname, target.port or 443)
    with socket.create_connection(address, timeout=CONNECT_TIMEOUT_S):
        pass


def _short_reason(err: Exception) -> str:
    """The useful tail of a download error ("URL fetch failure on URL: None -- [Errno -2] ...")."""
    text = str(err).splitlines()[-1] if str(err) else type(err).__name__
    return text.rsplit(" -- ", 1)[-1][:160]


def _register_backbones() -> None:
    for backbone in BACKBONES.values():
        name = f"{backbone.constructor}Extractor"
        cls = type(name, (KerasApplicationExtractor,), {
            "__doc__": f"keras.applications.{backbone.constructor} without its top ({backbone.preprocess} "
                       f"preprocessing in the graph, {backbone.input_size} px by default).",
            "__module__": __name__,
            "backbone": backbone,
            "application": backbone.constructor,
        })
        globals()[name] = cls  # pickle finds a class by its module and name (a fitted transformer holds one)
        register_extractor(backbone.name)(cls)


_register_backbones()
VGG16Extractor = get_extractor_class("vgg16")
VGG19Extractor = get_extractor_class("vgg19")
