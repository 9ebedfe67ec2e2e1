"""Seeded image augmentation with Keras 3 preprocessing layers, and the row layout of augmented views.

Views are a pure function of (image, augmentation, seed, row): each row draws from its own seed, so a resumed
extraction recomputes exactly the views a crashed one would have written.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from .errors import ExtractorConfigError

FILL_MODES = ("reflect", "wrap", "constant", "nearest")
_SEED_MODULUS = 2**31 - 1
MAX_VIEWS = int(np.iinfo(np.int16).max)  # views per image: a store's `view` column is int16


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Random rotation, zoom, contrast, horizontal flip and translation (Keras layer factors).

    Parameters
    ----------
    rotation : float, default=0.1
        `keras.layers.RandomRotation` factor: a fraction of a full turn (0.1 is up to +-36 degrees).
    zoom : float, default=0.1
        `keras.layers.RandomZoom` height factor (aspect ratio kept): zoom in or out by up to this fraction.
    contrast : float, default=0.0
        `keras.layers.RandomContrast` factor.
    flip : bool, default=False
        Random horizontal flip (`keras.layers.RandomFlip("horizontal")`).
    translate : float, default=0.0
        `keras.layers.RandomTranslation` factor, the same for height and width.
    fill_mode : {"reflect", "wrap", "constant", "nearest"}, default="reflect"
        How geometric transforms fill the pixels outside the image ("constant" fills black).
    """

    rotation: float = 0.1
    zoom: float = 0.1
    contrast: float = 0.0
    flip: bool = False
    translate: float = 0.0
    fill_mode: str = "reflect"

    def to_dict(self) -> dict:
        """The JSON-able config."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, config: dict) -> Augmentation:
        """Inverse of `to_dict`."""
        return cls(**config)

    def validate(self) -> None:
        """Raise ExtractorConfigError naming the first bad parameter."""
        for name in ("rotation", "zoom", "contrast", "translate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ExtractorConfigError(f"`{name}` must be a number in [0, 1). Received: {name}={value!r}")
        if not isinstance(self.flip, bool):
            raise ExtractorConfigError(f"`flip` must be a bool. Received: flip={self.flip!r}")
        if self.fill_mode not in FILL_MODES:
            raise ExtractorConfigError(
                f"`fill_mode` must be one of {', '.join(map(repr, FILL_MODES))}. Received: fill_mode={self.fill_mode!r}"
            )

    @property
    def is_identity(self) -> bool:
        """True when no transform is enabled (every view would equal its original)."""
        return not (self.rotation or self.zoom or self.contrast or self.flip or self.translate)


@functools.lru_cache(maxsize=8)
def augmentation_layers(augmentation: Augmentation) -> tuple:
    """The Keras preprocessing layers of `augmentation`, in the order they are applied (built once, cached)."""
    import keras

    augmentation.validate()
    a, fill = augmentation, {"fill_mode": augmentation.fill_mode, "fill_value": 0.0}
    layers = []
    if a.flip:
        layers.append(keras.layers.RandomFlip("horizontal"))
    if a.rotation:
        layers.append(keras.layers.RandomRotation(a.rotation, **fill))
    if a.zoom:
        layers.append(keras.layers.RandomZoom((-a.zoom, a.zoom), **fill))
    if a.translate:
        layers.append(keras.layers.RandomTranslation(a.translate, a.translate, **fill))
    if a.contrast:
        layers.append(keras.layers.RandomContrast(a.contrast, value_range=(0, 255)))
    return tuple(layers)


def augment(images: np.ndarray, augmentation: Augmentation, seed: int) -> np.ndarray:
    """Augment a batch, each image with its own random draw, all drawn from one `seed`.

    Parameters
    ----------
    images : ndarray of shape (n, height, width, channels), uint8 (or float in 0..255)
    augmentation : Augmentation
    seed : int
        The same seed and images give the same output (on one Keras backend).

    Returns
    -------
    ndarray of shape (n, height, width, channels), uint8
    """
    import keras

    images = np.asarray(images)
    if images.ndim != 4:
        raise ExtractorConfigError(f"`images` must have shape (n, height, width, channels). Received: {images.shape}")
    generator = keras.random.SeedGenerator(int(seed) % _SEED_MODULUS)
    x = keras.ops.convert_to_tensor(images.astype(np.float32))
    for layer in augmentation_layers(augmentation):
        transformation = layer.get_random_transformation(x, training=True, seed=generator)
        x = layer.transform_images(x, transformation, training=True)
    return np.clip(np.round(keras.ops.convert_to_numpy(x)), 0, 255).astype(np.uint8)


def view_seed(seed: int, row: int) -> int:
    """The seed of one row's views: depends only on the run's `seed` and the row, never on batch boundaries."""
    return (int(seed) * 1_000_003 + int(row)) % _SEED_MODULUS


def row_views(image: np.ndarray, augmentation: Augmentation, k: int, *, seed: int, row: int) -> np.ndarray:
    """The `k` augmented views of one image (row `row` of the index).

    Returns
    -------
    ndarray of shape (k, height, width, channels), uint8
    """
    return augment(np.repeat(np.asarray(image)[None], k, axis=0), augmentation, view_seed(seed, row))


def view_layout(split: Sequence[str], k: int, *, splits: Sequence[str] = ("train",)) -> tuple[np.ndarray, np.ndarray]:
    """Plan the rows of a store with `k` views of each row whose split is in `splits` (pure).

    Layout: the n originals first, in index order (row i is index row i, as without augmentation), then, for
    each augmented original in index order, its `k` views one after the other.

    Parameters
    ----------
    split : sequence of str of length n
        The split of each index row.
    k : int
        Views per augmented row (0: no views).
    splits : sequence of str, default=("train",)
        Only rows of these splits get views; validation and test rows never do.

    Returns
    -------
    source : ndarray of shape (n_rows,), int64
        The index row each store row shows.
    view : ndarray of shape (n_rows,), int16
        0 for originals, 1..k for views.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= MAX_VIEWS:
        # past int16's range a view number wrapped: view 65536 was stored as 0, an original
        raise ExtractorConfigError(f"`k` must be a non-negative integer of at most {MAX_VIEWS} (the store's `view` "
                                   f"column is int16). Received: k={k!r}")
    n = len(split)
    augmented = np.flatnonzero(np.isin(np.asarray(split, dtype=str), list(splits))) if k else np.array([], int)
    source = np.concatenate([np.arange(n), np.repeat(augmented, k)]).astype(np.int64)
    view = np.concatenate([np.zeros(n), np.tile(np.arange(1, k + 1), len(augmented))]).astype(np.int16)
    return source, view


def grid_image(rows: Sequence[np.ndarray], pad: int = 2, first_gap: int | None = None) -> np.ndarray:
    """Tile images into one RGB picture: one grid row per entry of `rows`, each of shape (m, h, w, 3).

    `first_gap` (default `pad`) is the padding after the first column: wider, it sets the originals apart from
    their views.

    Returns
    -------
    ndarray of shape (H, W, 3), uint8
        White padding between tiles.
    """
    first_gap = pad if first_gap is None else first_gap
    n_cols = max(len(r) for r in rows)
    h, w = rows[0].shape[1:3]
    extra = first_gap - pad if n_cols > 1 else 0
    out = np.full((len(rows) * (h + pad) + pad, n_cols * (w + pad) + pad + extra, 3), 255, np.uint8)
    for i, tiles in enumerate(rows):
        for j, tile in enumerate(tiles):
            y, x = pad + i * (h + pad), pad + j * (w + pad) + (extra if j else 0)
            out[y : y + h, x : x + w] = tile
    return out
