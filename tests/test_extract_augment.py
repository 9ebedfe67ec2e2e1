import numpy as np
import pytest

from extract import ExtractorConfigError
from extract.augment import Augmentation, augment, grid_image, row_views, view_layout, view_seed

ALL = Augmentation(rotation=0.1, zoom=0.1, contrast=0.3, flip=True, translate=0.1, fill_mode="constant")


def images(n=3, size=32):
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_config_round_trip():
    assert Augmentation.from_dict(ALL.to_dict()) == ALL
    assert Augmentation().to_dict() == {"rotation": 0.1, "zoom": 0.1, "contrast": 0.0, "flip": False,
                                        "translate": 0.0, "fill_mode": "reflect"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param({"rotation": 1.5}, r"`rotation` must be a number in \[0, 1\). Received: rotation=1.5", id="rot"),
        pytest.param({"zoom": -0.1}, r"`zoom` must be a number in \[0, 1\)", id="zoom"),
        pytest.param({"translate": True}, r"`translate` must be a number", id="bool-translate"),
        pytest.param({"flip": 1}, r"`flip` must be a bool. Received: flip=1", id="flip"),
        pytest.param({"fill_mode": "mirror"}, r"`fill_mode` must be one of .* Received: fill_mode='mirror'", id="fill"),
    ],
)
def test_validation_errors(kwargs, match):
    with pytest.raises(ExtractorConfigError, match=match):
        Augmentation(**kwargs).validate()


def test_augment_is_seeded_and_changes_images():
    x = images()
    a, b = augment(x, ALL, seed=1), augment(x, ALL, seed=1)
    assert a.shape == x.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, augment(x, ALL, seed=2))
    assert not np.array_equal(a, x)


def test_identity_augmentation_keeps_images():
    none = Augmentation(rotation=0, zoom=0)
    assert none.is_identity
    np.testing.assert_array_equal(augment(images(), none, seed=0), images())


def test_augment_rejects_a_single_image():
    with pytest.raises(ExtractorConfigError, match=r"`images` must have shape \(n, height, width, channels\)"):
        augment(images()[0], ALL, seed=0)


def test_row_views_depend_only_on_seed_and_row():
    img = images(1)[0]
    views = row_views(img, ALL, 3, seed=0, row=7)
    assert views.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(views, row_views(img, ALL, 3, seed=0, row=7))  # a resume recomputes them
    assert not np.array_equal(views[0], views[1])  # the k views differ from each other
    assert not np.array_equal(views, row_views(img, ALL, 3, seed=0, row=8))
    assert view_seed(0, 7) != view_seed(1, 7) and view_seed(0, 7) != view_seed(0, 8)  # seed and row both count


@pytest.mark.parametrize(
    "split, k, source, view",
    [
        pytest.param(["train", "val", "train", "test"], 2, [0, 1, 2, 3, 0, 0, 2, 2], [0, 0, 0, 0, 1, 2, 1, 2], id="k2"),
        pytest.param(["train", "val"], 0, [0, 1], [0, 0], id="k0"),
        pytest.param(["", "val", "test"], 3, [0, 1, 2], [0, 0, 0], id="no-train-rows"),
        pytest.param(["val", "train"], 1, [0, 1, 1], [0, 0, 1], id="k1"),
    ],
)
def test_view_layout(split, k, source, view):
    s, v = view_layout(split, k)
    assert s.tolist() == source and v.tolist() == view


@pytest.mark.parametrize("k", [-1, 32768, 65536])
def test_view_layout_rejects_k_outside_the_view_column(k):
    """Past int16, the store's `view` column, view numbers wrapped: k=65536 stored its last view as 0, an original."""
    with pytest.raises(ExtractorConfigError, match=rf"`k` must be a non-negative integer of at most 32767 \(the "
                       rf"store's `view` column is int16\)\. Received: k={k}"):
        view_layout(["train"], k)
    assert view_layout(["train"], 32767)[1][-1] == 32767


def test_grid_image_tiles_rows():
    grid = grid_image([images(3), images(2)], pad=2)
    assert grid.shape == (2 * 34 + 2, 3 * 34 + 2, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[2:34, 2:34], images(1)[0])
    wide = grid_image([images(3), images(2)], pad=2, first_gap=10)  # the first column set apart
    assert wide.shape == (2 * 34 + 2, 3 * 34 + 2 + 8, 3)
    assert (wide[:, 34:44] == 255).all()
    np.testing.assert_array_equal(wide[2:34, 44:76], images(3)[1])
