"""Augmented views in the store: which rows get views, where they go, and the views' identity.

Only training rows get views; the views of an image are drawn from a seed of (seed, its content), so a resumed
run, a relabel or a reordered index gives the same views. `pipelines.runs.filling` streams them; this module plans and draws them.
"""

from __future__ import annotations

import hashlib
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from extract import ImageIndex, ImageReadError, canonical_json, read_batch
from extract.augment import MAX_VIEWS, Augmentation, grid_image, row_views


@dataclass(frozen=True)
class AugmentedViews:
    """`k` augmented views of every training row, stored after the originals (see `extract.augment.view_layout`).

    Only rows whose split is "train" get views. When the index has no split column at all, a seeded train/val split
    of the labelled rows, drawn per image from its content (`assign_split`: `validation_fraction`, `seed`), is
    assigned and stored instead.
    The views of an image are drawn from `view_seed(seed, content_seed(its key))`, so they follow the image.
    """

    k: int
    augmentation: Augmentation = field(default_factory=Augmentation)
    seed: int = 0
    validation_fraction: float = 0.2

    def to_dict(self) -> dict:
        # numpy's numbers as Python's (the JSON of the store's identity): np.int64(3) is k=3, the same store
        return {"k": _plain(self.k), "augmentation": self.augmentation.to_dict(), "seed": _plain(self.seed),
                "validation_fraction": _plain(self.validation_fraction)}

    @classmethod
    def from_dict(cls, config: dict) -> AugmentedViews:
        return cls(**{**config, "augmentation": Augmentation.from_dict(config["augmentation"])})

    def validate(self) -> None:
        # any integral number, numpy's too (a parameter grid built with numpy hands them out), as scikit-learn's
        # parameter validation takes them; never a bool
        if not _integral(self.k) or not 1 <= self.k <= MAX_VIEWS:
            raise ValueError(f"`k` (--augment) must be a positive integer of at most {MAX_VIEWS} (the store's `view` "
                             f"column is int16). Received: k={self.k!r}")
        if not _integral(self.seed):
            raise ValueError(f"`seed` (--augment-seed) must be an integer. Received: seed={self.seed!r}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(
                f"`validation_fraction` must be in (0, 1). Received: validation_fraction={self.validation_fraction!r}"
            )
        self.augmentation.validate()


def _integral(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _plain(value):
    """A numpy scalar as the Python number it holds; anything else as it is."""
    return value.item() if isinstance(value, np.generic) else value


def store_identity(index: ImageIndex, views: AugmentedViews | None) -> str:
    """The store's `index_sha256`: the index's own hash, combined with the augmentation when there is one."""
    if views is None:
        return index.sha256()
    return hashlib.sha256((index.sha256() + canonical_json(views.to_dict())).encode()).hexdigest()


def assign_split(labels, *, validation_fraction: float = 0.2, random_state: int = 0, keys=None) -> list[str]:
    """A seeded "train"/"val" split of the labelled rows, drawn per image from its content; unlabelled rows get ""
    (pure).

    Each image draws a number u in [0, 1) from (random_state, its key): `keys`, the images' content keys, or the
    labels' positions when None. An image is "val" when u < `validation_fraction`, so its split follows its content:
    reordering or moving the index changes no image's split (and so re-extracts no augmented view). Each class gets
    about `validation_fraction` of its images, and within a class of 2 readable images or more at least one "val"
    (the smallest u, when no u fell below the fraction) and one "train" (the largest u, when every u did): in such a
    small class an appended or relabelled image can move that one image. The only image of a class stays in
    "train" (held out, it would be a class no head learns); an unreadable row (key "") is "train" and does not
    count. Rows with the same key and label (one image listed twice) share their split.
    """
    labels = np.asarray(labels, dtype=str)
    labelled = np.flatnonzero(labels != "")
    if len(labelled) < 2:
        raise ValueError(f"`--augment` needs at least 2 labelled rows to split. Received: {len(labelled)}")
    keys = [str(i) for i in range(len(labels))] if keys is None else list(keys)
    if len(keys) != len(labels):
        raise ValueError(f"`keys` must have one key per label. Received: {len(keys)} keys, {len(labels)} labels")

    def draw(key: str) -> float:
        digest = hashlib.sha256(f"{random_state}:{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2.0**64

    split = np.where(labels != "", "train", "").astype(object)
    classes: dict[str, dict[str, list[int]]] = {}  # label -> key -> its rows (one pass: many classes stay cheap)
    for row in labelled.tolist():
        if not keys[row]:  # unreadable (key ""): never trained or validated on, so it neither counts nor is drawn
            continue
        classes.setdefault(labels[row], {}).setdefault(keys[row], []).append(row)
    for by_key in classes.values():
        if len(by_key) < 2:
            continue  # the only image of its class: trained on
        u = {key: draw(key) for key in by_key}
        val = {key for key, x in u.items() if x < validation_fraction}
        if not val:
            val = {min(u, key=u.get)}
        elif len(val) == len(u):
            val.discard(max(u, key=u.get))
        for key in val:
            split[by_key[key]] = "val"
    return split.tolist()


def training_split(index: ImageIndex, views: AugmentedViews, keys=None) -> list[str]:
    """The split column of an augmented store: the index's, or, when the index has none, one drawn from the images'
    content `keys` (see `assign_split`)."""
    split = index.split
    if not any(split):
        return assign_split(index.labels, validation_fraction=views.validation_fraction, random_state=views.seed,
                            keys=keys)
    if "train" not in split:
        raise ValueError(
            "`--augment` augments only rows whose split is 'train', and the index's `split` column has none. "
            f"Received: splits {sorted(set(split))}"
        )
    return split


def apply_views(images: np.ndarray, ok: np.ndarray, source: np.ndarray, view: np.ndarray, views: AugmentedViews):
    """Replace the decoded originals of the view rows of one batch by their augmented views.

    `source` identifies each row's image and seeds its views: the extraction passes the image's content seed
    (`extract.content.content_seed`), so views follow the image, whatever its row or label.
    """
    out = images.copy()
    for r in np.unique(source[(view > 0) & ok]):
        rows = np.flatnonzero((source == r) & (view > 0))
        every = row_views(images[rows[0]], views.augmentation, views.k, seed=views.seed, row=int(r))
        out[rows] = every[view[rows] - 1]
    return out


# What augment-preview writes, by the extension of its `out` (Pillow lists more, some of them read-only)
GRID_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF",
                ".bmp": "BMP", ".gif": "GIF"}


PREVIEW_GAP = 12  # pixels between each original and its views (2 between views)


@dataclass(frozen=True)
class AugmentPreview:
    """What `run_augment_preview` wrote: the grid's `path`, and the (path, reason) of each of the first images that
    could not be read, so has no row in it."""

    path: Path
    failed: list[tuple[str, str]]


def run_augment_preview(index_source, out, augmentation: Augmentation, *, images_root=None, n_images: int = 4,
                        k: int = 4, size: int = 96, seed: int = 0) -> AugmentPreview:
    """Write a grid image (PNG, or the format `out`'s extension names): one row per image (the first `n_images` of
    the index) that can be read, the original, a wider gap (`PREVIEW_GAP` pixels), then `k` views."""
    from PIL import Image

    from extract import read_index

    from .prediction import write_output  # (it imports this module)

    out = Path(out)
    image_format = GRID_FORMATS.get(out.suffix.lower())
    if image_format is None:
        raise ValueError(f"`out` must end in one of {', '.join(GRID_FORMATS)}. Received: out={str(out)!r}")
    augmentation.validate()
    for name, value in (("n_images", n_images), ("k", k), ("size", size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    index = read_index(index_source, images_root)
    if out.exists() and any(os.path.exists(p) and os.path.samefile(out, p) for p in index.paths):  # links too
        raise ValueError(f"{out} is an image of the index; refusing to write the preview over it: give --out "
                         "another file name")
    rows = list(range(min(n_images, len(index))))
    images, ok, errors = read_batch([index.paths[r] for r in rows], size)
    if not ok.any():
        which = "the first image" if len(rows) == 1 else f"none of the first {len(rows)} images"
        raise ImageReadError(f"{which} could {'not ' if len(rows) == 1 else ''}be read ({index.paths[rows[0]]}: "
                             f"{errors[0]}); is --images-root {index.root} right?")
    grid = [np.concatenate([images[r][None], row_views(images[r], augmentation, k, seed=seed, row=r)])
            for r in rows if ok[r]]
    out.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(grid_image(grid, first_gap=PREVIEW_GAP))  # the originals set apart
    write_output(out, lambda tmp: image.save(tmp, format=image_format))  # a full disk keeps the previous grid
    return AugmentPreview(out, [(index.paths[r], errors[r]) for r in rows if not ok[r]])
