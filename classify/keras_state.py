"""Keras training and evaluation that leave torch's global random generator as it was.

Under the torch backend Keras wraps a `PyDataset` in a `torch.utils.data.DataLoader`, which draws its base seed
from torch's process-global generator each epoch: a caller's `torch.manual_seed(...)` stream would move on with
every fit. Our batches are shuffled by seeded generators of their own, so nothing here needs that draw.

Also `weights_nbytes`: the size of a model's weights, which a training checks the free space against first.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def global_rng_kept():
    """Run the block with torch's CPU generator saved and restored under the torch backend (else: nothing)."""
    import keras

    if keras.backend.backend() != "torch":
        yield
        return
    import torch

    with torch.random.fork_rng(devices=[]):  # the DataLoader's draw is from the CPU generator, on any device
        yield


def weights_nbytes(model) -> int:
    """The bytes of `model`'s weights (trainable or not, optimizer state left out): a lower bound of its saved file."""
    import numpy as np

    return sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)
