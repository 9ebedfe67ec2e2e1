"""The forward pass of a frozen extractor model, compiled once per backend, on uint8 batches.

- tensorflow: the model's own compiled predict function (`predict_on_batch`).
- jax: a jitted stateless call (`model.stateless_call` under `jax.jit`, the variables passed in, nothing traced
  twice); jax dispatches asynchronously, so `stream` keeps two batches in flight: the next is on the device while
  the previous one's features are copied back, also across the arrays it is fed (`run_extract` feeds it one
  decoded batch at a time).
- torch: `torch.inference_mode`, the batch pinned in host memory and copied without blocking when the device is
  a GPU, and `torch.compile` when asked (`compile=True`; it helps on a GPU, costs a long warm-up on a CPU).
  Channels-last needs nothing of ours: the batch is NHWC, and Keras's torch backend hands every convolution its
  input and kernel in `torch.channels_last` memory format itself (`keras/src/backend/torch/nn.py`, `conv` ->
  `_maybe_convert_to_channels_last`, Keras 3.15), so cuDNN gets the NHWC layout it is fastest on.

Every batch has the same shape (the last one is padded), so nothing recompiles.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np

from .errors import ExtractorConfigError


def as_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 as is; any other dtype rounded and clipped to 0..255."""
    if images.dtype == np.uint8:
        return images
    return np.clip(np.rint(images), 0, 255).astype(np.uint8)


class Forward:
    """`run(images) -> float32 (n, d)` in fixed-size uint8 batches; `submit`/`fetch` are the backend's part."""

    in_flight = 1

    def __init__(self, model, batch_size: int, input_shape: tuple[int, int, int]):
        self.model, self.batch_size, self.input_shape = model, batch_size, tuple(input_shape)
        self.output_dim = int(np.prod(model.output_shape[1:]))

    def submit(self, batch: np.ndarray):
        raise NotImplementedError

    def fetch(self, handle) -> np.ndarray:
        raise NotImplementedError

    def run(self, images: np.ndarray) -> np.ndarray:
        return next(iter(self.stream((images,))))

    def stream(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """The features of each array of images that `chunks` yields, in order: `in_flight` batches stay on the
        device across the chunks' boundaries too (the next chunk's first batch is submitted before the previous
        chunk's last one is fetched), so that a caller feeding chunks one batch long still keeps two in flight."""
        bs = self.batch_size
        pending: deque = deque()  # (out, start, n, handle, the last batch of its chunk)
        for images in chunks:
            if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
                h, w, c = self.input_shape
                raise ExtractorConfigError(f"images must have shape (n, {h}, {w}, {c}). Received: {images.shape}")
            images = as_uint8(images)
            out = np.empty((len(images), self.output_dim), dtype=np.float32)
            if not len(images):
                pending.append((out, 0, 0, None, True))
            for start in range(0, len(images), bs):
                chunk = images[start : start + bs]
                n = len(chunk)
                if n < bs:  # pad so the compiled function always sees one shape and never retraces
                    chunk = np.concatenate([chunk, np.zeros((bs - n, *chunk.shape[1:]), np.uint8)])
                pending.append((out, start, n, self.submit(np.ascontiguousarray(chunk)), start + bs >= len(images)))
                while len(pending) > self.in_flight - 1:
                    yield from self._collect(pending.popleft())
            while pending and pending[0][3] is None:  # an empty chunk with nothing before it on the device
                yield from self._collect(pending.popleft())
        while pending:
            yield from self._collect(pending.popleft())

    def _collect(self, item):
        out, start, n, handle, last = item
        if handle is not None:
            out[start : start + n] = np.asarray(self.fetch(handle), dtype=np.float32).reshape(self.batch_size, -1)[:n]
        if last:
            yield out


class TensorflowForward(Forward):
    def submit(self, batch):
        return self.model.predict_on_batch(batch)  # reuses the model's one compiled predict function

    def fetch(self, handle):
        return handle


class JaxForward(Forward):
    in_flight = 2

    def __init__(self, model, batch_size, input_shape):
        super().__init__(model, batch_size, input_shape)
        import jax

        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        def call(trainable, non_trainable, x):
            y, _ = model.stateless_call(trainable, non_trainable, x, training=False)
            return y

        self._state = (trainable, non_trainable)
        self._call = jax.jit(call)

    def submit(self, batch):
        # returns at once: jax dispatches asynchronously, and on a CPU it may read `batch` in place later, after
        # the caller has refilled it (a data loader's reused buffer): the copy is the device's from now on
        return self._call(*self._state, np.array(batch))

    def fetch(self, handle):
        return np.asarray(handle)


class TorchForward(Forward):
    in_flight = 2

    def __init__(self, model, batch_size, input_shape, compile: bool = False):
        super().__init__(model, batch_size, input_shape)
        import torch
        from keras.src.backend.torch.core import get_device

        self._torch = torch
        self._device = torch.device(get_device())
        self._call = model
        if compile:
            self._call = torch.compile(lambda x: model(x, training=False))

    def submit(self, batch):
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch)
            if self._device.type == "cuda":
                x = x.pin_memory().to(self._device, non_blocking=True)
            y = self._call(x) if self._call is not self.model else self.model(x, training=False)
            if self._device.type == "cuda":
                y = y.to("cpu", non_blocking=True)
            elif self._device.type != "cpu":  # mps, xpu: a plain copy back
                y = y.cpu()
            return y

    def fetch(self, handle):
        if self._device.type == "cuda":
            self._torch.cuda.current_stream().synchronize()
        return handle.float().numpy()


def make_forward(model, batch_size: int, input_shape, *, compile: bool = False) -> Forward:
    """The forward pass of `model` for the active Keras backend."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        return JaxForward(model, batch_size, input_shape)
    if backend == "torch":
        return TorchForward(model, batch_size, input_shape, compile=compile)
    return TensorflowForward(model, batch_size, input_shape)
