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


def test_resize_keeps_size_when_none(tmp_path):
    Image.fromarray(_rgb((17, 9))).save(tmp_path / "s.png")
    assert load_image(tmp_path / "s.png").shape == (9, 17, 3)
    assert load_image(tmp_path / "s.png", (12, 16)).shape == (12, 16, 3)


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
