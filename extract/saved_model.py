"""Any saved Keras model (a `.keras` file) cut at a named layer, as a frozen extractor registered as "keras".

The model receives raw RGB in 0..255, shape (input_size, input_size, 3): its own preprocessing must be inside it
(models trained by `featurehead pretrain-cae` / `pretrain-cnn` have theirs).
"""

from __future__ import annotations

from pathlib import Path

from .errors import ExtractorConfigError, WeightsUnavailableError, not_a_file
from .extractor import Extractor
from .layers import cut_at_layer, pooling_layer, register_layers
from .registry import register_extractor


def load_saved_model(path):
    """Load a `.keras` (or legacy `.h5`) model without its optimizer, with featurehead's custom layers known.

    Raises
    ------
    WeightsUnavailableError
        The file does not exist or is not a loadable Keras model.
    """
    import keras

    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"the saved model {path} {not_a_file(path)}")
    register_layers()
    try:
        return keras.saving.load_model(path, compile=False)
    except (ValueError, OSError, TypeError, KeyError) as err:
        raise WeightsUnavailableError(f"{path} is not a loadable Keras model: {str(err).splitlines()[0][:200]}") from err


def model_input_size(model) -> int | None:
    """The square input side of a one-input RGB model (None when its spatial size is not fixed)."""
    if len(model.inputs) != 1:
        raise ExtractorConfigError(f"the saved model must have one input. Received: {len(model.inputs)} inputs")
    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3 or shape[-1] != 3 or shape[0] != shape[1]:
        raise ExtractorConfigError(
            f"the saved model's input must be square raw RGB, shape (size, size, 3). Received: input shape {shape}"
        )
    return shape[0]


def _keras_reason(err: Exception) -> str:
    """The sentence of a Keras error that says what is wrong: the bold part of "Exception encountered when calling
    ..." (its ANSI codes and the arguments dump left out), else its first line."""
    import re

    text = str(err)
    bold = re.search(r"\x1b\[1m(.*?)\x1b\[0m", text, re.S)
    reason = bold.group(1) if bold else next((line for line in text.splitlines() if line.strip()), type(err).__name__)
    reason = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(reason.split()))
    return reason.replace("Received: ", "")[:200].rstrip(".")


@register_extractor("keras")
class SavedModelExtractor(Extractor):
    """A saved Keras model (`weights` = the `.keras` file) cut at the layer named `layer`, frozen.

    Parameters
    ----------
    weights : str
        Path of the saved model; its sha256 is part of the fingerprint.
    layer : str, optional
        Cut the model at this layer (by name, never by index); None keeps the model's output.
    pooling : {"flatten", "avg", "max"}, optional
        None is "flatten".
    input_size : int, optional
        None derives it from the model; a value must match the model's fixed input size.
    resize : {"squash", "crop"}
        How an image is fitted to the input (see `extract.load_image`).
    precision : {"float32"}
        A saved model keeps the dtypes it was saved with.
    seed : int
        Accepted for a uniform CLI; unused (nothing is randomly initialised) and not part of the fingerprint.
    batch_size : int
    """

    VERSION = 2  # 2: libjpeg-turbo DCT-domain downscaling before the resize (extract.images.DECODER)
    NON_IDENTITY_KEYS = ("batch_size", "seed")
    default_layer = None

    def __init__(self, *, weights=None, layer=None, pooling=None, input_size=None, resize="squash",
                 precision="float32", seed=0, batch_size=32):
        super().__init__(
            weights="none" if weights is None else str(weights),
            layer=self.default_layer if layer is None else layer,
            pooling="flatten" if pooling is None else pooling,
            input_size=input_size,
            resize=resize,
            precision=precision,
            seed=seed,
            batch_size=batch_size,
        )

    def validate(self) -> None:
        super().validate()
        weights = self._config["weights"]
        if self.weights_file() is None:
            raise ExtractorConfigError(
                f"`weights` must be the path of a saved Keras model (.keras) for model {self.name!r}. "
                f"Received: weights={weights!r}"
            )
        if not Path(weights).is_file():
            raise WeightsUnavailableError(f"the saved model {weights} {not_a_file(weights)}")
        if self._config["precision"] != "float32":
            raise ExtractorConfigError(
                f"`precision` must be 'float32' for model {self.name!r} (a saved model keeps its own dtypes). "
                f"Received: precision={self._config['precision']!r}"
            )
        size = self._config["input_size"]
        if size is not None and (not isinstance(size, int) or size < 1):
            raise ExtractorConfigError(f"`input_size` must be a positive integer or None. Received: input_size={size!r}")

    def weights_source(self) -> str:
        layer = self._config["layer"]
        cut = f"layer {layer!r}" if layer is not None else "its output"
        return f"saved model {self._config['weights']} (sha256 {self.weights_sha256()[:12]}), {cut}"

    @property
    def input_shape(self) -> tuple[int, int, int]:
        size = self._config["input_size"]
        if size is None:
            size = self.model.inputs[0].shape[1]
        return (size, size, 3)

    def _build(self):
        import keras

        loaded = load_saved_model(self._config["weights"])
        size = self._resolve_input_size(model_input_size(loaded))
        layer = self._config["layer"]
        if layer is not None and layer == self.default_layer and layer not in [lay.name for lay in loaded.layers]:
            raise ExtractorConfigError(
                f"{self._config['weights']} has no layer {layer!r}, the one --model {self.name} cuts at: it is not "
                f"a model that --model {self.name} takes (for any saved model: --model keras --layer NAME)"
            )
        base = cut_at_layer(loaded, layer)
        if len(base.outputs) != 1:  # its output would be a list: which one is the features is the user's choice
            names = [t._keras_history.operation.name for t in base.outputs]
            raise ExtractorConfigError(
                f"`layer` must name one layer for the model in {self._config['weights']}, which has "
                f"{len(names)} outputs ({', '.join(map(repr, names))}). Received: layer={layer!r}"
            )
        inputs = keras.Input((size, size, 3), dtype="uint8", name="image")
        try:
            x = base(keras.ops.cast(inputs, "float32"))
        except ValueError as err:  # a model without a fixed size, at a size it cannot take (a pooling to nothing)
            if self._config["input_size"] is None:
                raise
            raise ExtractorConfigError(
                f"`input_size` must be a size the model in {self._config['weights']} can run at ({_keras_reason(err)}). "
                f"Received: input_size={size}"
            ) from err
        x = pooling_layer(self._config["pooling"], len(base.output.shape))(x)
        x = keras.layers.Activation("linear", dtype="float32", name="features_float32")(x)
        return keras.Model(inputs, x, name=f"{self.name}_extractor")

    def _resolve_input_size(self, model_size: int | None) -> int:
        asked = self._config["input_size"]
        if model_size is None and asked is None:
            raise ExtractorConfigError(
                f"`input_size` must be given: the model in {self._config['weights']} has no fixed input size. "
                "Received: input_size=None"
            )
        if model_size is not None and asked is not None and asked != model_size:
            raise ExtractorConfigError(
                f"`input_size` must match the input size of the model in {self._config['weights']} ({model_size}) "
                f"or be omitted. Received: input_size={asked}"
            )
        return model_size if model_size is not None else asked
