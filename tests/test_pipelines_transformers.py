"""ImageFeatureExtractor: inputs, the feature cache, multi-layer output, errors and scikit-learn conformance."""

import os
import pickle
import subprocess
import warnings

import joblib
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import SkipTestWarning
from sklearn.utils import estimator_checks, get_tags
from sklearn.utils.estimator_checks import estimator_checks_generator, parametrize_with_checks

from extract import ExtractorConfigError, ImageReadError, UnknownExtractorError, get_extractor
from pipelines import ImageFeatureExtractor

SMALL = dict(weights="none", input_size=32, pooling="avg", batch_size=4)


@pytest.fixture
def images(tmp_path):
    """12 32x32 PNGs in 2 classes (class b brighter); returns (paths, labels, uint8 array)."""
    paths, labels, arrays = [], [], []
    for c, label in enumerate("ab"):
        for i in range(6):
            arr = np.clip(np.random.default_rng(10 * c + i).integers(0, 120, (32, 32, 3)) + 110 * c, 0, 255)
            path = tmp_path / "imgs" / label / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr.astype(np.uint8)).save(path)
            paths.append(str(path)), labels.append(label), arrays.append(arr.astype(np.uint8))
    return paths, np.array(labels), np.stack(arrays)


def test_transform_extracts_each_image_once_then_reads_the_cache(images, tmp_path):
    paths, _, arrays = images
    t = ImageFeatureExtractor(**SMALL, cache_dir=tmp_path / "cache")
    first = t.fit_transform(paths)
    assert first.shape == (12, 512) and first.dtype == np.float32
    info = t.cache_info()
    assert (info.n_rows, info.n_extracted, info.n_hits) == (12, 12, 0)
    again = t.transform(paths[::-1] + paths[:2])  # reversed, with repeats: all hits
    np.testing.assert_array_equal(again[:12], first[::-1])
    assert t.cache_info().n_extracted == 12 and t.cache_info().n_hits == 14
    plain = ImageFeatureExtractor(**SMALL).fit_transform(pd.DataFrame({"path": paths}))
    np.testing.assert_allclose(plain, first, rtol=1e-5, atol=1e-6)
    from_arrays = ImageFeatureExtractor(**SMALL).fit_transform(arrays)
    np.testing.assert_allclose(from_arrays, first, rtol=1e-5, atol=1e-6)


def test_a_read_only_cache_serves_hits_and_extracts_the_misses_without_storing_them(images, tmp_path):
    paths, _, _ = images
    folder = tmp_path / "cache"
    expected = ImageFeatureExtractor(**SMALL, cache_dir=folder).fit_transform(paths[:8])
    for lock in folder.glob("*.lock"):
        lock.unlink()  # a shared cache as published: no lock file beside it
    before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    ro = folder
    if os.geteuid() == 0:  # root ignores permission bits: a read-only bind mount is read-only for root too
        ro = tmp_path / "ro"
        ro.mkdir()
        if subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(ro)], capture_output=True).returncode:
            pytest.skip("root, and cannot bind-mount read-only here")
    else:
        os.chmod(folder, 0o555)
    try:
        t = ImageFeatureExtractor(**SMALL, cache_dir=ro).fit(paths)
        out = t.transform(paths)
        info = t.cache_info()
    finally:
        if ro != folder:
            subprocess.run(["umount", str(ro)], check=True)
        else:
            os.chmod(folder, 0o755)
    np.testing.assert_array_equal(out[:8], expected)
    fresh = ImageFeatureExtractor(**SMALL).fit_transform(paths[8:])
    np.testing.assert_allclose(out[8:], fresh, rtol=1e-5, atol=1e-6)
    assert info.n_rows == 8 and info.n_hits >= 8
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == before


@pytest.fixture
def read_only_cache_file(images, tmp_path):
    """A writable folder whose cache file (of `SMALL`, 2 rows) this process cannot write: a read-only bind mount
    of the file over itself for root, a 0o444 file otherwise; skipped where root cannot mount."""
    folder = tmp_path / "cache"
    ImageFeatureExtractor(**SMALL, cache_dir=folder).fit_transform(images[0][-2:])
    (path,) = folder.glob("*.h5")
    if os.geteuid() != 0:
        os.chmod(path, 0o444)
        yield folder
        os.chmod(path, 0o644)
        return
    if subprocess.run(["mount", "--bind", "-o", "ro", str(path), str(path)], capture_output=True).returncode:
        pytest.skip("root, and cannot bind-mount read-only here")
    yield folder
    subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("where", ["read_only_folder", "read_only_cache_file", "small_disk"])
def test_a_cache_that_cannot_store_the_rows_returns_them_and_says_why(images, request, caplog, where):
    """A full disk raised StoreWriteError, losing the features just extracted: it now returns them and logs a warning
    that says why they are not cached; a read-only folder or cache file (a shared cache's usual setup) says so at
    INFO (a read-only file in a writable folder warned on every transform)."""
    paths, _, _ = images
    folder = request.getfixturevalue(where)
    if where == "small_disk":
        folder.fill()
        folder = folder.path
    caplog.set_level("INFO", logger="pipelines")
    t = ImageFeatureExtractor(**SMALL, cache_dir=folder).fit(paths)
    out = t.transform(paths[:4])
    np.testing.assert_allclose(out, ImageFeatureExtractor(**SMALL).fit_transform(paths[:4]), rtol=1e-5, atol=1e-6)
    level = "WARNING" if where == "small_disk" else "INFO"  # a failed write; a shared cache's usual setup
    (said,) = [r.getMessage() for r in caplog.records if r.levelname == level and "not cached" in r.getMessage()]
    assert said.startswith("feature cache: 4 extracted rows are not cached, only returned"), said
    why = {"read_only_folder": "the folder is read-only", "read_only_cache_file": ".h5 is read-only",
           "small_disk": "No space left on device"}[where]
    assert why in said
    assert t.cache_info().n_rows == (2 if where == "read_only_cache_file" else 0)
    if where != "small_disk":
        t.transform(paths[:4])
        assert not [r for r in caplog.records if r.levelno >= 30 and "not cached" in r.getMessage()]


def test_a_cache_dir_that_is_a_file_or_a_store_is_refused_at_fit(images, tmp_path):
    """A file gave a raw FileExistsError at the first transform; a feature store took the cache's files among its
    own."""
    import features_store

    paths = images[0][:2]
    (tmp_path / "a.txt").write_text("mine")
    keys = ["a" * 64, "b" * 64]
    with features_store.StoreSession.open(tmp_path / "store", fingerprint="f" * 64, extractor={"name": "t"}) as session:
        with session.shard_writer(keys, n_features=2) as w:
            w.write(np.ones((2, 2), np.float32), np.ones(2, bool))
            session.commit(w)
    assert features_store.is_store(tmp_path / "store")
    before = sorted(p.name for p in (tmp_path / "store").iterdir())
    for folder, words in ((tmp_path / "a.txt", "must be a folder"), (tmp_path / "store", "must not be a feature store")):
        with pytest.raises(ValueError, match=f"`cache_dir` {words}.*Received: cache_dir="):
            ImageFeatureExtractor(**SMALL, cache_dir=folder).fit(paths)
    assert (tmp_path / "a.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == before


def test_a_list_of_layers_concatenates_them_in_one_model(images):
    paths = images[0][:3]
    layers = ["block4_pool", "block3_pool"]
    t = ImageFeatureExtractor(**SMALL, layer=layers).fit(paths)
    both = t.transform(paths)
    singles = [get_extractor("vgg16", **{**SMALL, "layer": name}) for name in layers]
    expected = np.concatenate([e(images[2][:3]) for e in singles], axis=1)
    np.testing.assert_allclose(both, expected, rtol=1e-5, atol=1e-6)
    names = t.get_feature_names_out()
    assert len(names) == both.shape[1] and names[0] == "vgg16_block4_pool_0" and names[-1] == "vgg16_block3_pool_255"


def test_feature_names_and_the_pickle_without_model(images, tmp_path):
    paths = images[0][:2]
    t = ImageFeatureExtractor(**SMALL).fit(paths)
    before = t.transform(paths)
    assert t.get_feature_names_out()[1] == "vgg16_features_1"
    joblib.dump(t, tmp_path / "t.joblib")
    assert (tmp_path / "t.joblib").stat().st_size < 10_000  # no Keras weights inside
    loaded = joblib.load(tmp_path / "t.joblib")
    assert loaded.extractor_._model is None
    np.testing.assert_allclose(loaded.transform(paths), before, rtol=1e-5, atol=1e-6)


def test_on_error_nan_gives_nan_rows_and_caches_only_good_ones(images, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    paths = images[0][:2] + [str(bad)]
    t = ImageFeatureExtractor(**SMALL, cache_dir=tmp_path / "cache", on_error="nan").fit(paths)
    out = t.transform(paths)
    assert np.isfinite(out[:2]).all() and np.isnan(out[2]).all()
    assert t.cache_info().n_rows == 2
    strict = ImageFeatureExtractor(**SMALL).fit(paths)
    with pytest.raises(ImageReadError, match="not an image file"):
        strict.transform(paths)


@pytest.mark.parametrize(
    "X, match",
    [
        pytest.param(np.zeros((3, 4)), "`X` must be a non-empty sequence of image paths", id="numeric-2d"),
        pytest.param([], "`X` must be a non-empty sequence of image paths", id="empty"),
        pytest.param(np.zeros((2, 8, 8), np.uint8), r"image array must have shape \(n, height, width, 3\)", id="gray"),
        pytest.param(pd.DataFrame({"a": ["x"], "b": ["y"]}), "one column of image paths", id="two-columns"),
    ],
)
def test_bad_inputs_are_refused(X, match):
    with pytest.raises(ValueError, match=match):
        ImageFeatureExtractor(**SMALL).fit(X)


def test_bad_parameters_and_unfitted_use_are_refused(images):
    paths = images[0][:1]
    with pytest.raises(ValueError, match="`on_error` must be one of 'raise', 'nan'. Received: on_error='skip'"):
        ImageFeatureExtractor(**SMALL, on_error="skip").fit(paths)
    with pytest.raises(ValueError, match="`cache_dir` must be None or a path"):
        ImageFeatureExtractor(**SMALL, cache_dir=3).fit(paths)
    with pytest.raises(ValueError, match=r"`cache_info\(\)` needs a `cache_dir`"):
        ImageFeatureExtractor(**SMALL).fit(paths).cache_info()
    with pytest.raises(UnknownExtractorError, match="`model` must be one of"):
        ImageFeatureExtractor("nope", **SMALL).fit(paths)
    with pytest.raises(TypeError, match="sparse input is not supported"):
        import scipy.sparse

        ImageFeatureExtractor(**SMALL).fit(scipy.sparse.csr_matrix(np.eye(2)))
    t = ImageFeatureExtractor(**SMALL).fit(pd.DataFrame({"path": paths}))
    with pytest.raises(ValueError, match="`X` must have the column seen in fit, 'path'"):
        t.transform(pd.DataFrame({"file": paths}))
    with pytest.raises(ValueError, match="input_features is not equal to feature_names_in_"):
        t.get_feature_names_out(["file"])
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        t.transform(paths)
    with pytest.raises(ExtractorConfigError, match="`seed` must be a non-negative integer. Received: seed='a'"):
        ImageFeatureExtractor(**SMALL, seed="a").fit(paths)


def test_numpy_integer_parameters_as_a_numpy_grid_hands_them_out(images, tmp_path):
    """GridSearchCV passes a grid's values as they are: np.int64 from np.array/np.arange. They were refused
    (`input_size`, `batch_size`) or broke the cache's JSON (`seed`)."""
    paths = images[0][:2]
    plain = ImageFeatureExtractor(**SMALL).fit(paths)
    numpy = ImageFeatureExtractor(**{**SMALL, "input_size": np.int64(32), "batch_size": np.int64(4)},
                                  seed=np.int64(0), cache_dir=tmp_path / "cache").fit(paths)
    assert numpy.extractor_.fingerprint() == plain.extractor_.fingerprint()
    np.testing.assert_allclose(numpy.transform(paths), plain.transform(paths), rtol=1e-5, atol=1e-6)


# The transformer takes image paths (strings) or a 4-D uint8 array, never a 2-D array of numbers, and its tags say
# so (two_d_array=False, string=True). scikit-learn then skips every generic check that feeds numeric 2-D X (it
# warns that it does) and `parametrize_with_checks` runs what applies to any input: the clone check. These
# scikit-learn checks need no data, or only check a refusal, and apply as they are:
APPLICABLE_SKLEARN_CHECKS = [
    estimator_checks.check_estimator_cloneable,
    estimator_checks.check_estimator_tags_renamed,
    estimator_checks.check_valid_tag_types,
    estimator_checks.check_estimator_repr,
    estimator_checks.check_no_attributes_set_in_init,
    estimator_checks.check_do_not_raise_errors_in_init_or_set_params,
    estimator_checks.check_mixin_order,
    estimator_checks.check_parameters_default_constructible,
    estimator_checks.check_get_params_invariance,
    estimator_checks.check_set_params,
    estimator_checks.check_transformers_unfitted,
    estimator_checks.check_estimator_sparse_tag,
    estimator_checks.check_estimator_sparse_array,
    estimator_checks.check_estimator_sparse_matrix,
]
# The checks on data are below on images: fit returns self, clone, pickling, fitting twice, subset and order
# invariance, set_output(transform="pandas").

with warnings.catch_warnings():
    warnings.simplefilter("ignore", SkipTestWarning)  # asserted in test_generic_2d_checks_are_skipped_by_the_tags
    _sklearn_checks = parametrize_with_checks([ImageFeatureExtractor(**SMALL)])


@_sklearn_checks
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_generic_2d_checks_are_skipped_by_the_tags():
    tags = get_tags(ImageFeatureExtractor())
    assert (tags.input_tags.two_d_array, tags.input_tags.string) == (False, True)
    with pytest.warns(SkipTestWarning, match="Can't test estimator ImageFeatureExtractor which requires input"):
        checks = [check for _, check in estimator_checks_generator(ImageFeatureExtractor(**SMALL))]
    assert [check.func.__name__ for check in checks] == ["check_estimator_cloneable"]


@pytest.mark.parametrize("check", APPLICABLE_SKLEARN_CHECKS, ids=lambda check: check.__name__)
def test_applicable_sklearn_checks(check):
    check("ImageFeatureExtractor", ImageFeatureExtractor(**SMALL))


@pytest.fixture(params=["paths", "frame", "arrays"])
def inputs(request, images):
    """The same 12 images as a list of paths, a one-column DataFrame of paths, or a uint8 array."""
    paths, _, arrays = images
    X = {"paths": paths, "frame": pd.DataFrame({"path": paths}), "arrays": arrays}[request.param]
    return X, (lambda rows: [paths[i] for i in rows]) if request.param == "paths" else (
        lambda rows: X.iloc[rows] if request.param == "frame" else X[rows])


def test_fit_returns_self_and_leaves_the_parameters(inputs):
    X, _ = inputs
    t = ImageFeatureExtractor(**SMALL)
    params = joblib.hash(t.get_params())
    assert t.fit(X) is t
    assert joblib.hash(t.get_params()) == params
    assert t.n_features_in_ == 1


def test_clone_keeps_every_parameter_and_drops_the_fitted_state(images, tmp_path):
    params = dict(SMALL, model="vgg16", layer=["block3_pool", "block4_pool"], precision="float32", seed=3,
                  cache_dir=str(tmp_path), on_error="nan")
    t = ImageFeatureExtractor(**params).fit(images[0][:2])
    copy = clone(t)
    assert copy.get_params() == t.get_params() and copy.get_params()["layer"] is not params["layer"]
    assert not hasattr(copy, "extractor_")


def test_fitted_pickle_transforms_the_same(inputs):
    X, _ = inputs
    t = ImageFeatureExtractor(**SMALL).fit(X)
    before = t.transform(X)
    loaded = pickle.loads(pickle.dumps(t))
    np.testing.assert_allclose(loaded.transform(X), before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", ["resnet50", "mobilenetv3small"])
def test_a_fitted_backbone_transformer_pickles(images, model):
    """Every backbone's extractor class is found by pickle (only VGG16's and VGG19's were)."""
    paths = images[0][:2]
    t = ImageFeatureExtractor(**{**SMALL, "model": model}).fit(paths)
    loaded = pickle.loads(pickle.dumps(t))
    np.testing.assert_allclose(loaded.transform(paths), t.transform(paths), rtol=1e-5, atol=1e-6)


def test_fitting_twice_transforms_the_same(images):
    paths = images[0]
    t = ImageFeatureExtractor(**SMALL)
    first = t.fit(paths).transform(paths)
    second = t.fit(paths[:3]).transform(paths)
    np.testing.assert_allclose(second, first, rtol=1e-5, atol=1e-6)


def test_subset_and_order_invariance(inputs):
    X, take = inputs
    t = ImageFeatureExtractor(**SMALL).fit(X)
    full = t.transform(X)
    order = np.random.default_rng(0).permutation(12)
    np.testing.assert_allclose(t.transform(take(order)), full[order], rtol=1e-5, atol=1e-6)
    for subset in (np.arange(5), np.array([11, 0, 7])):
        np.testing.assert_allclose(t.transform(take(subset)), full[subset], rtol=1e-5, atol=1e-6)


def test_set_output_pandas(images):
    paths = images[0]
    frame = pd.DataFrame({"path": paths[:4]}, index=[10, 11, 12, 13])
    t = ImageFeatureExtractor(**SMALL).set_output(transform="pandas").fit(frame)
    out = t.transform(frame)
    assert isinstance(out, pd.DataFrame) and out.shape == (4, 512)
    assert list(out.columns) == list(t.get_feature_names_out()) and out.columns[0] == "vgg16_features_0"
    assert list(out.index) == [10, 11, 12, 13]
    plain = ImageFeatureExtractor(**SMALL).fit(frame).transform(frame)
    np.testing.assert_allclose(out.to_numpy(), plain, rtol=1e-5, atol=1e-6)
    fitted = ImageFeatureExtractor(**SMALL).set_output(transform="pandas").fit_transform(paths[:2])
    assert isinstance(fitted, pd.DataFrame) and fitted.shape == (2, 512)


def test_transform_changes_no_attribute_and_a_read_only_array_works(images):
    arrays = images[2].copy()
    arrays.setflags(write=False)
    t = ImageFeatureExtractor(**SMALL).fit(arrays)
    before = dict(vars(t))
    t.transform(arrays)
    assert vars(t) == before


@pytest.mark.parametrize("model, pooling, size", [("vgg16", "flatten", 224), ("resnet50", "avg", 224),
                                                  ("inceptionv3", "avg", 299)])
def test_defaults_are_the_models_own_as_on_the_command_line(images, model, pooling, size):
    """No pooling or input size given: the model's own defaults, the very extractor `featurehead extract` makes
    (same fingerprint, so the same cache and store rows)."""
    paths, _, _ = images
    t = ImageFeatureExtractor(model, weights="none").fit(paths)
    config = t.extractor_.spec()["config"]
    assert (config["pooling"], config["input_size"]) == (pooling, size)
    assert t.extractor_.fingerprint() == get_extractor(model, weights="none").fingerprint()


def test_resize_crop_treats_arrays_and_files_alike(tmp_path):
    arr = np.zeros((24, 72, 3), np.uint8)  # wide: red | green | blue thirds
    arr[:, :24, 0], arr[:, 24:48, 1], arr[:, 48:, 2] = 255, 255, 255
    Image.fromarray(arr).save(tmp_path / "wide.png")
    kw = dict(weights="none", input_size=32, pooling="avg", batch_size=2)
    crop = ImageFeatureExtractor(resize="crop", **kw)
    from_file = crop.fit_transform([str(tmp_path / "wide.png")])
    from_array = crop.fit_transform(arr[None])
    np.testing.assert_allclose(from_array, from_file, rtol=1e-5, atol=1e-6)
    squash = ImageFeatureExtractor(resize="squash", **kw).fit_transform(arr[None])
    assert not np.allclose(squash, from_array, rtol=1e-3)  # the crop dropped the red and blue thirds
    with pytest.raises(ValueError, match="`resize` must be one of"):
        ImageFeatureExtractor(resize="stretch", **kw).fit(arr[None])
