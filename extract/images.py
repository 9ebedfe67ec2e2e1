"""Decoding images into uint8 RGB arrays: EXIF-oriented, converted to RGB, resized.

A file that cannot be decoded raises `ImageReadError`; batch readers turn it into a failed row.
"""

from __future__ import annotations

from concurrent.futures import Executor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageReadError

Image.MAX_IMAGE_PIXELS = 20_000 * 20_000  # large scans are fine; decompression bombs still are not


def load_image(path, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Read one image as RGB uint8.

    Parameters
    ----------
    path : str or Path
    size : int or (height, width), optional
        Resize (bilinear) to this size; None keeps the original size.

    Returns
    -------
    ndarray of shape (height, width, 3), dtype uint8

    Raises
    ------
    ImageReadError
        The file is missing, empty, truncated or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.seek(0)  # GIF / multi-page TIFF: the first frame
            im = ImageOps.exif_transpose(im)
            im = _to_rgb(im)
            if size is not None:
                h, w = (size, size) if isinstance(size, int) else size
                if im.size != (w, h):
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except FileNotFoundError as err:
        raise _failure(path, "file not found") from err
    except IsADirectoryError as err:
        raise _failure(path, "is a directory, not an image file") from err
    except UnidentifiedImageError as err:
        raise _failure(path, "empty file" if path.stat().st_size == 0 else "not an image file") from err
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise _failure(path, f"cannot decode ({err})") from err
    return arr


def _failure(path: Path, reason: str) -> ImageReadError:
    err = ImageReadError(f"{path}: {reason}")
    err.reason = reason
    return err


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit and float grayscale: stretch to 0..255 rather than clip
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        return Image.fromarray(a.astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # composite transparent pixels on white, as a viewer shows them
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def read_batch(
    paths, size: int | tuple[int, int], executor: Executor | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode a batch of images; failures become rows of zeros with `ok=False`.

    Returns
    -------
    images : ndarray of shape (n, height, width, 3), uint8
    ok : ndarray of shape (n,), bool
    errors : list of str
        The failure reason per row, "" for ok rows.
    """
    h, w = (size, size) if isinstance(size, int) else size
    out = np.zeros((len(paths), h, w, 3), dtype=np.uint8)
    ok = np.ones(len(paths), dtype=bool)
    errors = [""] * len(paths)
    results = executor.map(_try_load, paths, [size] * len(paths)) if executor else map(_try_load, paths, [size] * len(paths))
    for i, (arr, err) in enumerate(results):
        if err is None:
            out[i] = arr
        else:
            ok[i], errors[i] = False, err
    return out, ok, errors


def _try_load(path, size):
    try:
        return load_image(path, size), None
    except ImageReadError as err:
        return None, err.reason
