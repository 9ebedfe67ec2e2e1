"""Decoding images into uint8 RGB arrays: EXIF-oriented, converted to RGB, resized (squash or centre crop).

JPEGs decode through libjpeg-turbo (`simplejpeg`) with DCT-domain downscaling: the decoder itself shrinks the
image by the largest of 1/8, 1/4 and 1/2 that keeps it at least the size the resize needs (the target, or for a
crop the cover of the target; these are the scales with a SIMD inverse DCT, the other n/8 scales decode slower
than a full decode), so a 4000x3000 photo decodes at 500x375 for a 224 target.
Every other format, and the JPEGs that libjpeg-turbo's simple API does not take (CMYK), decode through Pillow.
The resize that follows is OpenCV's, antialiased as a pyramid: one bilinear pass that shrinks by at most 2x
(both taps of every output pixel land on neighbouring source pixels, so no source pixel is skipped), to the
target times a power of two, then exact 2x bilinear halvings (each output pixel the mean of its 2 or 2x2 source
pixels, rounded half up by OpenCV's fixed point: a box filter that brightens by up to half a grey level per
halving, +0.1 on average from 500x375 to 224, against area averaging). An axis that grows is resized last (so a
squash never builds an array larger than the source or the target along either axis). A crop whose cover would
pass 16.7 million pixels (a strip beyond ~330:1 at 224) resizes only the source window behind the centre, at the
cover's scale: the cover's own pixels where the two pixel grids meet within a few target lengths (checked to
+-1), else within half a pixel of them.
Without OpenCV (a platform without its wheel) Pillow's antialiased bilinear resize does it; the decoder name in
`DECODER` says which, and it is part of every extractor's fingerprint. The same file on the same machine always
takes the same path, so its pixels, and its features, are reproducible.

A file that cannot be decoded raises `ImageReadError`; batch readers turn it into a failed row. Nothing here
changes global state: Pillow's own `Image.MAX_IMAGE_PIXELS` (the user's setting) is the decompression-bomb limit
on both paths, and OpenCV's thread settings are left as they are.
"""

from __future__ import annotations

import io
import math
import numbers
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageReadError

try:  # a core dependency; the fallback keeps a platform without its wheel working (slower, same API)
    import simplejpeg
except ImportError:  # pragma: no cover - exercised only where the wheel is missing
    simplejpeg = None
try:  # a core dependency; without it Pillow resizes (slower, antialiased bilinear at every factor)
    import cv2
except ImportError:  # pragma: no cover - exercised only where the wheel is missing
    cv2 = None

RESIZES = ("squash", "crop")
DECODER = "+".join(("simplejpeg-dct" if simplejpeg is not None else "pillow-draft",
                    "opencv-pyramid" if cv2 is not None else "pillow-bilinear")) + "/3"
_JPEG_SOI = b"\xff\xd8\xff"
_MAX_COVER = 1 << 24  # crop: a cover of more pixels (and more than 16 target areas) is not built (see _fit)
_RESIZE_ERRORS = (cv2.error,) if cv2 is not None else ()  # e.g. a crop whose cover would be wider than INT_MAX


def decoder_versions() -> dict:
    """The versions of the libraries that decide the pixels ("none" for one that is missing)."""
    import PIL

    return {"pillow": PIL.__version__, "simplejpeg": getattr(simplejpeg, "__version__", "none"),
            "opencv": getattr(cv2, "__version__", "none")}


def _height_width(size) -> tuple[int, int]:
    """`size` (an int, or (height, width); numpy's integers too) as a (height, width) of Python ints."""
    if isinstance(size, np.ndarray) and size.ndim == 0:  # np.array(16)
        size = size.item()
    hw = (size, size) if isinstance(size, numbers.Integral) else tuple(size) if isinstance(size, (tuple, list, np.ndarray)) else ()
    if len(hw) != 2 or any(isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v < 1 for v in hw):
        raise ValueError(f"`size` must be a positive integer or a (height, width) of them. Received: size={size!r}")
    return int(hw[0]), int(hw[1])


def load_image(path, size: int | tuple[int, int] | None = None, resize: str = "squash") -> np.ndarray:
    """Read one image as RGB uint8.

    Parameters
    ----------
    path : str or Path
    size : int or (height, width), optional
        The output size; None keeps the original size.
    resize : {"squash", "crop"}
        "squash" resizes the whole image to `size` (the aspect ratio may change); "crop" resizes the shorter
        side to fit and crops the centre (the torchvision/timm convention for ImageNet backbones).

    Returns
    -------
    ndarray of shape (height, width, 3), dtype uint8

    Raises
    ------
    ImageReadError
        The file is missing, empty, truncated, too large or not an image.
    """
    if resize not in RESIZES:
        raise ValueError(f"`resize` must be one of 'squash', 'crop'. Received: resize={resize!r}")
    path = Path(path)
    hw = None if size is None else _height_width(size)
    try:
        data = _read(path)
        if not data:
            raise _failure(path, "empty file")
        arr = None
        if simplejpeg is not None and data.startswith(_JPEG_SOI):
            arr = _decode_jpeg(data, hw, resize)
        if arr is None:
            arr = _decode_pillow(data, hw, resize)
    except ImageReadError:
        raise
    except FileNotFoundError as err:
        raise _failure(path, "file not found") from err
    except IsADirectoryError as err:
        raise _failure(path, "is a directory, not an image file") from err
    except UnidentifiedImageError as err:
        raise _failure(path, "not an image file") from err
    except Image.DecompressionBombError as err:
        raise _failure(path, f"too large ({err})") from err
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise _failure(path, f"cannot decode ({err})") from err
    except _RESIZE_ERRORS as err:
        raise _failure(path, f"cannot resize to {hw} ({' '.join(str(err).split())[:160]})") from err
    return arr


def _read(path: Path) -> bytes:
    """The file's bytes; a file there that cannot be read (EIO, EACCES) says so, not "cannot decode" (a missing
    file or a folder keeps its own reason in `load_image`)."""
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise
    except OSError as err:
        raise _failure(path, f"cannot read the file ({err.strerror or err})") from err


def _failure(path: Path, reason: str) -> ImageReadError:
    err = ImageReadError(f"{path}: {reason}")
    err.reason = reason
    return err


def _check_pixels(width: int, height: int) -> None:
    """Pillow's decompression-bomb limit (its global, read, never written), applied to the simplejpeg path too."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > 2 * limit:
        raise Image.DecompressionBombError(
            f"{width * height} pixels is more than twice PIL.Image.MAX_IMAGE_PIXELS ({limit})")


def _decode_jpeg(data: bytes, hw, resize: str) -> np.ndarray | None:
    """libjpeg-turbo with DCT-domain downscaling; None for what its simple API does not take (CMYK)."""
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None  # let Pillow say what is wrong with it
    if colorspace not in ("YCbCr", "Gray", "RGB"):
        return None
    _check_pixels(width, height)
    orientation = 1
    if _may_hold_orientation(data):
        with Image.open(io.BytesIO(data)) as header:  # reads the header only: the EXIF orientation
            orientation = header.getexif().get(0x0112, 1)
    min_w, min_h = (0, 0) if hw is None else _dct_scaled((width, height),
                                                         _needed((width, height), hw, resize, orientation))
    try:
        arr = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=min_h, min_width=min_w, strict=True)
    except ValueError:
        return None  # libjpeg-turbo's warnings (a corrupt segment): Pillow decodes what it can, or says why not
    return _fit(_orient(arr, orientation), hw, resize)


def _may_hold_orientation(data: bytes) -> bool:
    """False only when the JPEG's segments before the scan hold no APP1 block (EXIF, or XMP, where Pillow also
    reads an orientation), so that Pillow's header parser (Python, holding the GIL) is spared; anything
    unexpected says True."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return True
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers: no length follows
            i += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan, end of image: every header segment has been seen
            return False
        if marker == 0xE1:  # APP1: EXIF or XMP
            return True
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return True


def _decode_pillow(data: bytes, hw, resize: str) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        _check_pixels(*im.size)
        im.seek(0)  # GIF / multi-page TIFF: the first frame
        if hw is not None and im.format == "JPEG" and im.mode in ("RGB", "L"):
            im.draft(im.mode, _needed(im.size, hw, resize, im.getexif().get(0x0112, 1)))
        im = ImageOps.exif_transpose(im)
        return _fit(np.asarray(_to_rgb(im), dtype=np.uint8), hw, resize)


def _needed(stored_wh, hw, resize: str, orientation: int) -> tuple[int, int]:
    """The smallest (width, height), in the file's stored orientation, that the final resize only shrinks."""
    rotated = orientation in (5, 6, 7, 8)  # displayed rotated by 90 degrees
    dw, dh = stored_wh[::-1] if rotated else stored_wh
    h, w = hw
    if resize == "crop":  # the image scaled to cover the target, before its centre is cut
        scale = max(h / dh, w / dw)
        h, w = int(np.ceil(dh * scale)), int(np.ceil(dw * scale))
    return (h, w) if rotated else (w, h)


def _dct_scaled(stored_wh, needed_wh) -> tuple[int, int]:
    """The (width, height) that libjpeg-turbo decodes at 1/8, 1/4, 1/2 or full scale: the smallest of them that
    is at least `needed_wh` (simplejpeg picks the scale that gives exactly these minimums)."""
    (w, h), (need_w, need_h) = stored_wh, needed_wh
    for k in (8, 4, 2):  # measured in benchmarks/input_pipeline.py --only stages: 5/8 costs more than 8/8
        if -(-w // k) >= need_w and -(-h // k) >= need_h:
            return -(-w // k), -(-h // k)
    return w, h


def resize_image(image: np.ndarray, size: int | tuple[int, int], resize: str = "squash") -> np.ndarray:
    """Resize one uint8 RGB array (h, w, 3) to `size` exactly as `load_image` resizes a decoded file."""
    if resize not in RESIZES:
        raise ValueError(f"`resize` must be one of 'squash', 'crop'. Received: resize={resize!r}")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"`image` must be a uint8 array of shape (height, width, 3). Received: shape {image.shape}, "
                         f"dtype {image.dtype}")
    hw = (size, size) if isinstance(size, int) else tuple(size)
    return _fit(image, hw, resize)


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """The EXIF orientation applied to an (h, w, 3) array: Pillow's `Image.transpose` for each tag, as views."""
    if orientation in (5, 6, 7, 8):  # displayed turned by 90 degrees: transpose, then flip
        arr = arr.transpose(1, 0, 2)
    if orientation in (2, 3, 6, 7):
        arr = arr[:, ::-1]
    if orientation in (3, 4, 7, 8):
        arr = arr[::-1]
    return arr


def _fit(arr: np.ndarray, hw, resize: str) -> np.ndarray:
    """Resize to (height, width): the whole image ("squash"), or ("crop") the image scaled so that it covers the
    target, its shorter side at the target, and the centre cut (torchvision's `Resize` + `CenterCrop`)."""
    if hw is None:
        return np.ascontiguousarray(arr)
    h, w = hw
    if resize == "crop":
        src_h, src_w = arr.shape[:2]
        if w / src_w >= h / src_h:  # the width binds: it becomes exactly w (torchvision: int(size * long / short))
            cover_h, cover_w = max(h, int(w * src_h / src_w)), w
        else:
            cover_h, cover_w = h, max(w, int(h * src_w / src_h))
        top, left = int(round((cover_h - h) / 2)), int(round((cover_w - w) / 2))
        if cover_h * cover_w > max(_MAX_COVER, 16 * h * w):
            # a strip (beyond ~330:1 at 224): the cover (up to gigapixels for a 1-pixel-high banner) is never
            # built; the source window behind its centre is resized at the cover's scale and the centre cut
            y0, y1, win_h, top = _window(top, h, src_h, cover_h)
            x0, x1, win_w, left = _window(left, w, src_w, cover_w)
            window = _resize(arr[y0:y1, x0:x1], win_h, win_w)
            top, left = min(max(0, top), win_h - h), min(max(0, left), win_w - w)
            return np.ascontiguousarray(window[top:top + h, left:left + w])
        arr = _resize(arr, cover_h, cover_w)
        return np.ascontiguousarray(arr[top:top + h, left:left + w])
    return _resize(arr, h, w)


def _window(start: int, length: int, src: int, cover: int) -> tuple[int, int, int, int]:
    """Along one axis of a crop, the source pixels [lo, hi) behind cover pixels [start, start + length), with the
    margin the resize reads around them, the size of that window at the cover's scale, and where the centre starts
    in it. The window starts and ends where a source pixel boundary is also a cover pixel boundary when the two
    grids meet within 4 lengths, so that it is resized exactly as the cover would be; else the cut may be off by up
    to half a pixel."""
    period = src // math.gcd(src, cover)  # in source pixels; period * cover / src cover pixels
    period = period if period * cover <= 4 * length * src else 1
    margin = -(-2 * src // cover) + 2  # the pyramid reads about two cover pixels' worth of source around each one
    lo = max(0, (start * src // cover - margin) // period * period)
    hi = min(src, -(-((start + length) * src) // cover) + margin)
    hi = min(src, lo + -(-(hi - lo) // period) * period)
    size = max(length, round((hi - lo) * cover / src))
    return lo, hi, size, round(start - lo * cover / src)


def _resize(arr: np.ndarray, h: int, w: int) -> np.ndarray:
    """OpenCV's bilinear when shrinking by at most 2x (or enlarging); beyond, a pyramid (see the module's
    docstring) that averages every source pixel into the output. Pillow's antialiased bilinear without OpenCV."""
    src_h, src_w = arr.shape[:2]
    arr = np.ascontiguousarray(arr)
    if (src_h, src_w) == (h, w):
        return arr
    if cv2 is None:
        im = Image.fromarray(arr)
        gap = 3.0 if min(src_h / h, src_w / w) >= 6 else None  # Pillow's reduce-then-resample: large factors only
        return np.asarray(im.resize((w, h), Image.Resampling.BILINEAR, reducing_gap=gap), dtype=np.uint8)
    my, mx = _halvings(src_h, h), _halvings(src_w, w)
    # measured in benchmarks/input_pipeline.py --only stages: ~0.25 ms from 500x375 to 224x224, where area
    # averaging (cv2.INTER_AREA) takes ~1 ms and Pillow's antialiased bilinear 1.2-1.5 ms.
    # An axis that grows keeps its source size until the last pass, so no intermediate is larger than the source
    # or the target along either axis (a 1 x 10^7 strip squashed to 224 never becomes 224 x 10^7).
    def size(m, src, dst):
        return dst * m if src > dst else src

    step = (size(mx, src_w, w), size(my, src_h, h))
    if step != (src_w, src_h):
        arr = cv2.resize(arr, step, interpolation=cv2.INTER_LINEAR)
    while mx > 1 or my > 1:
        mx, my = max(1, mx // 2), max(1, my // 2)
        arr = cv2.resize(arr, (size(mx, src_w, w), size(my, src_h, h)), interpolation=cv2.INTER_LINEAR)
    if arr.shape[:2] != (h, w):  # the axes that grow
        arr = cv2.resize(arr, (w, h), interpolation=cv2.INTER_LINEAR)
    return arr


def _halvings(src: int, dst: int) -> int:
    """The power of two m with src / (dst * m) in (1, 2]: the exact 2x halvings after a bilinear pass to dst * m
    (1 when src shrinks by at most 2x, or grows)."""
    m = 1
    while src > 2 * dst * m:
        m *= 2
    return m


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit: scale by the bit depth (65535 -> 255), so a pixel value gives the same feature in every image
        a = np.asarray(im).astype(np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":  # float grayscale: taken as 0..255, clipped (Pillow's own convert)
        a = np.asarray(im, dtype=np.float64)
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        # composite transparent pixels on white, as a viewer shows them
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")
