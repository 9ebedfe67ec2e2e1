import numpy as np
import pytest
from PIL import Image

from extract import ImageReadError, load_image, read_batch


def _rgb(size=(40, 30)):
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[..., 0] = 200  # red
    arr[: size[1] // 2, :, 2] = 100  # the top half has some blue
    return arr


@pytest.mark.parametrize(
    "name, fmt, mode",
    [
        pytest.param("x.jpg", "JPEG", "RGB", id="jpeg"),
        pytest.param("x.png", "PNG", "RGB", id="png"),
        pytest.param("x.bmp", "BMP", "RGB", id="bmp"),
        pytest.param("x.tif", "TIFF", "RGB", id="tiff"),
        pytest.param("g.png", "PNG", "L", id="grayscale"),
        pytest.param("p.png", "PNG", "P", id="palette"),
        pytest.param("a.png", "PNG", "RGBA", id="rgba"),
        pytest.param("c.jpg", "JPEG", "CMYK", id="cmyk"),
        pytest.param("i16.png", "PNG", "I;16", id="16-bit"),
    ],
)
def test_every_kind_decodes_to_rgb_uint8(tmp_path, name, fmt, mode):
    img = Image.fromarray(_rgb())
    img = img.convert("L").convert("I;16") if mode == "I;16" else img.convert(mode)
    img.save(tmp_path / name, format=fmt)
    arr = load_image(tmp_path / name, 32)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
    if mode in ("RGB", "RGBA", "P", "CMYK"):
        assert arr[..., 0].mean() > 150  # still red
    if mode in ("L", "I;16"):
        assert (arr[..., 0] == arr[..., 1]).all()


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    arr = load_image(tmp_path / "anim.gif")
    assert arr[..., 0].mean() > 200 and arr[..., 2].mean() < 50


def test_rgba_transparent_pixels_become_white(tmp_path):
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "t.png")
    assert (load_image(tmp_path / "t.png") == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(np.zeros((10, 20, 3), np.uint8))  # 20 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "o.jpg", exif=exif)
    assert load_image(tmp_path / "o.jpg").shape == (20, 10, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_displayed_as_pillow_shows_it(tmp_path, orientation):
    """The libjpeg-turbo path turns the array itself; it must match Pillow's `exif_transpose` for all 8 tags."""
    from PIL import ImageOps

    arr = np.zeros((32, 48, 3), np.uint8)  # four flat quadrants, distinct colours, non-square
    arr[:16, :24] = (250, 10, 10)
    arr[:16, 24:] = (10, 250, 10)
    arr[16:, :24] = (10, 10, 250)
    arr[16:, 24:] = (250, 250, 10)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(tmp_path / "o.jpg", exif=exif, quality=100)
    with Image.open(tmp_path / "o.jpg") as im:
        shown = np.asarray(ImageOps.exif_transpose(im).convert("RGB")).astype(int)
    ours = load_image(tmp_path / "o.jpg").astype(int)
    assert ours.shape == shown.shape and np.abs(ours - shown).mean() < 2


def test_orientation_is_found_behind_other_header_segments(tmp_path):
    """The EXIF block is looked for among all the segments before the scan (here a 70 kB ICC profile, split
    over two APP2 segments); a JPEG without one is read without Pillow's header parser, upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / "icc.jpg", exif=exif,
                                                          icc_profile=b"x" * 70000)
    assert load_image(tmp_path / "icc.jpg").shape == (20, 10, 3)
    Image.fromarray(np.zeros((10, 20, 3), np.uint8)).save(tmp_path / "plain.jpg", icc_profile=b"x" * 70000)
    assert load_image(tmp_path / "plain.jpg").shape == (10, 20, 3)


def test_an_orientation_stored_only_in_xmp_is_applied_as_pillow_does(tmp_path):
    from PIL import ImageOps

    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF>'
           b'</x:xmpmeta>')
    Image.fromarray(np.zeros((40, 80, 3), np.uint8)).save(tmp_path / "xmp.jpg", xmp=xmp)
    with Image.open(tmp_path / "xmp.jpg") as im:
        shown = ImageOps.exif_transpose(im).size  # (width, height) as Pillow displays it
    assert shown == (40, 80)
    assert load_image(tmp_path / "xmp.jpg").shape == (80, 40, 3)


def test_resize_image_takes_rgb_uint8_only():
    from extract.images import resize_image

    assert resize_image(np.zeros((10, 20, 3), np.uint8), 8, "crop").shape == (8, 8, 3)
    for bad in (np.zeros((10, 20), np.uint8), np.zeros((10, 20, 4), np.uint8), np.zeros((10, 20, 3), np.float32)):
        with pytest.raises(ValueError, match="must be a uint8 array of shape"):
            resize_image(bad, 8)


@pytest.mark.parametrize("shape, size", [((300, 300), 64), ((375, 500), 224)])
def test_a_shrink_beyond_2x_is_antialiased(tmp_path, shape, size):
    """One-pixel stripes shrunk 4.7x, or 2.2x along one axis only (500x375 to 224), come out near their average
    grey, not as aliased stripes (measured: the pyramid std 14 at 2.2x; one bilinear pass 73)."""
    arr = np.zeros((*shape, 3), np.uint8)
    arr[:, ::2] = 255
    Image.fromarray(arr).save(tmp_path / "stripes.png")
    out = load_image(tmp_path / "stripes.png", size).astype(float)
    assert abs(out.mean() - 127.5) < 3 and out.std() < 20


@pytest.mark.parametrize("resize", ["squash", "crop"])
def test_a_one_pixel_strip_resizes_in_little_memory(tmp_path, resize):
    """A 1 x 10,000,000 banner at 224: squashed, the axis that grows keeps its size until the last pass (one
    bilinear pass to 224 x 10^7 would take 6.7 GB); cropped, the source window of the centre is cut before any
    resize (the cover would be 2.24 billion pixels wide). numpy's allocations are traced."""
    import tracemalloc

    strip = np.zeros((1, 10_000_000, 3), np.uint8)
    strip[:, 5_000_000:] = 200
    Image.fromarray(strip).save(tmp_path / "strip.png")
    del strip
    tracemalloc.start()
    try:
        out = load_image(tmp_path / "strip.png", 224, resize=resize)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (224, 224, 3) and peak < 200 << 20, peak
    if resize == "squash":  # the left half dark, the right half light
        assert out[:, :100].max() == 0 and out[:, 124:].min() == 200
    else:  # the centre column of a strip is where its two halves meet
        assert out.min() == 0 and out.max() == 200


def test_a_strip_crop_cut_from_the_source_matches_the_cover():
    """A 5 x 50,000 strip cropped at 224 (its cover would be 224 x 2,240,000): the source window behind the centre,
    resized at the cover's scale, gives the cover's centre, checked against bilinear interpolation written out
    here (OpenCV's half-pixel centres; both axes enlarge, so no pyramid). Cutting a whole-pixel window and
    stretching it to 224 would scale the content by 6/5 here."""
    from extract.images import resize_image

    rng = np.random.default_rng(0)
    strip = rng.integers(0, 256, (5, 50_000, 3), dtype=np.uint8)
    ours = resize_image(strip, 224, "crop").astype(float)
    cover_h, cover_w = 224, 2_240_000
    top, left = 0, round((cover_w - 224) / 2)

    def taps(start, n_out, n_src, n_cover):
        pos = np.clip((np.arange(start, start + n_out) + 0.5) * n_src / n_cover - 0.5, 0, n_src - 1)
        lo = np.floor(pos).astype(int)
        return lo, np.minimum(lo + 1, n_src - 1), pos - lo

    y0, y1, fy = taps(top, 224, 5, cover_h)
    x0, x1, fx = taps(left, 224, 50_000, cover_w)
    a = strip.astype(float)
    rows = a[y0] * (1 - fy)[:, None, None] + a[y1] * fy[:, None, None]
    reference = rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    assert ours.shape == (224, 224, 3) and np.abs(ours - reference).max() <= 1.5


def test_a_resize_opencv_refuses_is_one_line(tmp_path):
    """An OpenCV refusal (here a width past its int sizes) is an ImageReadError like any unreadable image."""
    Image.fromarray(_rgb((32, 24))).save(tmp_path / "s.png")
    with pytest.raises(ImageReadError, match=r"cannot resize to \(1, 3000000000\)"):
        load_image(tmp_path / "s.png", (1, 3_000_000_000))


def test_jpegs_decode_at_a_scale_with_a_simd_idct():
    """libjpeg-turbo's 1/8, 1/4 and 1/2 scales (and the full decode) have SIMD code, its other n/8 scales do not
    and cost more than a full decode: the DCT-domain downscale only uses those four, the largest that keeps the
    image at least the target size."""
    from extract.images import _dct_scaled

    assert _dct_scaled((500, 375), (224, 224)) == (500, 375)  # 5/8 would fit; the full decode is cheaper
    assert _dct_scaled((1000, 750), (224, 224)) == (500, 375)
    assert _dct_scaled((4000, 3000), (224, 224)) == (500, 375)
    assert _dct_scaled((4001, 3001), (224, 224)) == (501, 376)  # libjpeg-turbo rounds up
    assert _dct_scaled((4000, 3000), (600, 224)) == (1000, 750)  # the wider target binds
    assert _dct_scaled((100, 80), (224, 224)) == (100, 80)  # an enlargement: full decode, OpenCV enlarges


def test_without_opencv_pillow_resizes_to_the_same_picture(tmp_path, monkeypatch):
    """The fallback for a platform without OpenCV's wheel (its own DECODER name, so never mixed in a store)."""
    import extract.images as images

    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (6, 8, 3)), np.ones((40, 40, 1))).astype(np.uint8)  # 240 x 320
    Image.fromarray(smooth).save(tmp_path / "s.png")
    with_cv2 = {mode: load_image(tmp_path / "s.png", 64, resize=mode).astype(int) for mode in ("squash", "crop")}
    monkeypatch.setattr(images, "cv2", None)
    for mode in ("squash", "crop"):
        pillow = load_image(tmp_path / "s.png", 64, resize=mode).astype(int)
        assert pillow.shape == (64, 64, 3) and np.abs(pillow - with_cv2[mode]).mean() < 4, mode


def test_resize_keeps_size_when_none(tmp_path):
    Image.fromarray(_rgb((17, 9))).save(tmp_path / "s.png")
    assert load_image(tmp_path / "s.png").shape == (9, 17, 3)
    assert load_image(tmp_path / "s.png", (12, 16)).shape == (12, 16, 3)


def test_a_size_is_a_positive_integer_or_two_numpy_integers_too(tmp_path):
    """`size=np.int64(16)` (a size from a numpy grid) failed with "'numpy.int64' object is not iterable"; a size of
    0, a bool or a float is refused in one line naming `size`, before the file is read."""
    Image.fromarray(_rgb((17, 9))).save(tmp_path / "s.png")
    assert load_image(tmp_path / "s.png", np.int64(16)).shape == (16, 16, 3)
    assert load_image(tmp_path / "s.png", np.array([12, 16])).shape == (12, 16, 3)
    assert load_image(tmp_path / "s.png", np.array(16)).shape == (16, 16, 3)
    for bad in (0, True, 2.5, (12,), (12, 0), "ab"):
        with pytest.raises(ValueError, match=r"`size` must be a positive integer or a \(height, width\) of them"):
            load_image(tmp_path / "s.png", bad)


def _truncated(p):
    Image.fromarray(_rgb((64, 64))).save(p, format="JPEG")
    p.write_bytes(p.read_bytes()[:200])


@pytest.mark.parametrize(
    "name, make, match",
    [
        pytest.param("missing.png", lambda p: None, "file not found", id="missing"),
        pytest.param("empty.png", lambda p: p.write_bytes(b""), "empty file", id="empty"),
        pytest.param("notes.txt", lambda p: p.write_text("hello"), "not an image file", id="not-image"),
        pytest.param("trunc.jpg", _truncated, "cannot decode", id="truncated"),
        pytest.param("dir.png", lambda p: p.mkdir(), "directory", id="directory"),
    ],
)
def test_bad_inputs_raise_image_read_error(tmp_path, name, make, match):
    make(tmp_path / name)
    with pytest.raises(ImageReadError, match=match):
        load_image(tmp_path / name, 32)


def test_read_batch_marks_failed_rows(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"junk")
    images, ok, errors = read_batch([tmp_path / "ok.png", tmp_path / "bad.png", tmp_path / "gone.png"], 32)
    assert images.shape == (3, 32, 32, 3)
    assert ok.tolist() == [True, False, False]
    assert errors[0] == "" and "not an image" in errors[1] and "not found" in errors[2]
    assert (images[1] == 0).all()


def _margins(tmp_path, name="m.png", fmt=None):
    """A 90 x 30 image: red left third, green centre, blue right third."""
    arr = np.zeros((30, 90, 3), np.uint8)
    arr[:, :30, 0] = 255
    arr[:, 30:60, 1] = 255
    arr[:, 60:, 2] = 255
    Image.fromarray(arr).save(tmp_path / name, format=fmt)
    return tmp_path / name


def test_crop_keeps_the_centre_and_squash_keeps_everything(tmp_path):
    path = _margins(tmp_path)
    crop = load_image(path, 16, resize="crop")
    squash = load_image(path, 16, resize="squash")
    assert crop.shape == squash.shape == (16, 16, 3)
    # only the centre (the filter's support reaches half a source pixel past the crop: a trace at the edges)
    assert crop[..., 1].min() > 200 and crop[..., 0].max() < 40 and crop[..., 2].max() < 40
    assert (crop[:, 1:-1, 0] == 0).all() and (crop[:, 1:-1, 2] == 0).all()
    assert squash[:, 0, 0].min() > 200 and squash[:, -1, 2].min() > 200  # both margins are in


def test_crop_of_a_rotated_jpeg_is_its_displayed_centre(tmp_path):
    arr = np.zeros((30, 90, 3), np.uint8)  # stored 90 wide; EXIF 6 displays it 30 wide, 90 high
    arr[:, 30:60, 1] = 255  # the stored centre (displayed: the middle rows)
    arr[:15, :, 0] = 255  # the stored top half: displayed, after a 90-degree turn, the right half
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = load_image(tmp_path / "r.jpg", 16, resize="crop").astype(int)
    assert out.shape == (16, 16, 3) and out[..., 1].mean() > 200  # the displayed centre is the green band
    assert out[:, 12:, 0].mean() > 200 and out[:, :4, 0].mean() < 40  # red on the displayed right only


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_crop_works_for_every_size(tmp_path, fmt):
    """Float rounding in the crop box never puts it outside the image (340x191 at 224 once failed)."""
    sizes = [(340, 191), (191, 340), (55, 73), (74, 55), (95, 126), (401, 300), (1280, 720), (301, 301)]
    for w, h in sizes:
        path = tmp_path / f"{w}x{h}.{fmt.lower()}"
        Image.new("RGB", (w, h), (10, 200, 30)).save(path, format=fmt)
        for size in (224, 64, 32):
            out = load_image(path, size, resize="crop")
            assert out.shape == (size, size, 3) and abs(int(out[..., 1].mean()) - 200) <= 3, (w, h, size)


def test_a_jpeg_libjpeg_warns_about_still_decodes(tmp_path):
    """A corrupt segment (a libjpeg-turbo warning, which simplejpeg's strict mode raises) decodes through
    Pillow, as it did before the libjpeg-turbo path."""
    import simplejpeg

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        tmp_path / "w.jpg", quality=90)
    data = (tmp_path / "w.jpg").read_bytes()
    broken = data[: len(data) - 300] + b"\xff\xd9"  # premature end of the data segment, then an end marker
    (tmp_path / "w2.jpg").write_bytes(broken)
    with pytest.raises(ValueError, match="Corrupt JPEG"):
        simplejpeg.decode_jpeg(broken, strict=True)
    with Image.open(tmp_path / "w2.jpg") as im:
        im.load()  # Pillow decodes it
    assert load_image(tmp_path / "w2.jpg", 32).shape == (32, 32, 3)


def test_large_jpeg_dct_downscale_matches_full_decode_and_resize(tmp_path):
    """libjpeg-turbo's DCT-domain downscale, then the resize, stays close to a full decode and the same resize
    from full size."""
    from extract.images import _resize

    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (15, 20, 3)), np.ones((64, 64, 1))).astype(np.uint8)  # 960 x 1280
    Image.fromarray(smooth).save(tmp_path / "big.jpg", quality=95)
    ours = load_image(tmp_path / "big.jpg", 64).astype(int)
    with Image.open(tmp_path / "big.jpg") as im:
        full = _resize(np.asarray(im.convert("RGB")), 64, 64).astype(int)
    assert np.abs(ours - full).mean() < 3


def test_16_bit_is_scaled_by_bit_depth_not_stretched_per_image(tmp_path):
    """The same 16-bit value gives the same 8-bit value whatever else is in the image."""
    a = np.full((8, 8), 257 * 100, np.uint16)
    b = a.copy()
    b[0, 0] = 65535  # another range: a per-image stretch would change every other pixel
    for name, arr in (("a.png", a), ("b.png", b)):
        Image.fromarray(arr).save(tmp_path / name)
    out_a, out_b = load_image(tmp_path / "a.png"), load_image(tmp_path / "b.png")
    assert (out_a == 100).all()
    assert (out_b[1:, 1:] == 100).all() and (out_b[0, 0] == 255).all()


def test_too_large_is_a_failed_row_by_pillows_own_limit(tmp_path, monkeypatch):
    for name in ("big.jpg", "big.png"):
        Image.new("RGB", (100, 100)).save(tmp_path / name)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the user's own setting; featurehead only reads it
    for name in ("big.jpg", "big.png"):
        with pytest.raises(ImageReadError, match="too large"):
            load_image(tmp_path / name, 32)


def test_importing_and_decoding_leave_pillows_limit_alone(tmp_path):
    import importlib

    import extract.images

    before = Image.MAX_IMAGE_PIXELS
    importlib.reload(extract.images)
    Image.fromarray(_rgb()).save(tmp_path / "x.jpg")
    extract.images.load_image(tmp_path / "x.jpg", 16)
    assert Image.MAX_IMAGE_PIXELS == before


@pytest.mark.parametrize("plan, workers", [([(0, 3), (3, 6), (6, 7)], 3), ([(0, 7)], 2), ([(0, 5), (5, 7)], 4)],
                         ids=["task-per-image", "two-parts", "uneven-parts"])
def test_decoded_batches_are_in_order_with_failures_in_place(tmp_path, plan, workers):
    """Each batch is split into one task per worker: the rows come back in order whatever the split."""
    from extract.batches import decoded_batches

    paths = []
    for i in range(7):
        arr = np.full((10, 12, 3), i * 30, np.uint8)
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    (tmp_path / "3.png").write_bytes(b"junk")
    seen = []
    for lo, hi, images, ok, errors in decoded_batches(paths, 8, plan, workers=workers, ahead=1):
        for i in range(hi - lo):
            row = lo + i
            assert ok[i] == (row != 3)
            if ok[i]:
                assert (images[i] == row * 30).all()
            else:
                assert "not an image" in errors[i] and (images[i] == 0).all()
        seen.append((lo, hi))
    assert seen == plan


def test_a_failed_row_is_zeros_whatever_its_buffer_held(tmp_path):
    """Batches are allocated uninitialised (np.empty): a failure must zero its row itself."""
    from extract.batches import _load_into

    (tmp_path / "bad.png").write_bytes(b"junk")
    Image.fromarray(np.full((10, 12, 3), 7, np.uint8)).save(tmp_path / "ok.png")
    out = np.full((2, 8, 8, 3), 255, np.uint8)
    assert "not an image" in _load_into(out, 0, tmp_path / "bad.png", (8, 8), "squash")
    assert _load_into(out, 1, tmp_path / "ok.png", (8, 8), "squash") is None
    assert (out[0] == 0).all() and (out[1] == 7).all()


def test_decoding_and_hashing_threads_are_named_for_profilers(tmp_path, monkeypatch):
    """benchmarks/where_time_goes.py --only cpu tells the pools apart by these names."""
    import threading

    import extract.batches
    import extract.content

    names = {"decode": set(), "hash": set()}

    def recording(kind, f):
        def call(*args, **kwargs):
            names[kind].add(threading.current_thread().name)
            return f(*args, **kwargs)
        return call

    monkeypatch.setattr(extract.batches, "load_image", recording("decode", extract.batches.load_image))
    monkeypatch.setattr(extract.content, "_stat_key", recording("hash", extract.content._stat_key))
    paths = []
    for i in range(4):
        Image.fromarray(np.full((10, 12, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    extract.content.content_keys(tmp_path, [p.name for p in paths], workers=2)
    list(extract.batches.decoded_batches(paths, 8, [(0, 2), (2, 4)], workers=2))
    assert names["decode"] and all(n.startswith("featurehead-decode") for n in names["decode"])
    assert names["hash"] and all(n.startswith("featurehead-hash") for n in names["hash"])
