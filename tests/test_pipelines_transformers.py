"""ImageFeatureExtractor: inputs, the feature cache, multi-layer output, errors and scikit-learn conformance."""

import os
import subprocess

import joblib
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.utils.estimator_checks import parametrize_with_checks

from extract import ImageReadError, UnknownExtractorError, get_extractor
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


# Most generic checks feed numeric 2-D X; an image transformer refuses it, by design.
_NUMERIC = "feeds numeric 2-D X; this transformer takes image paths or uint8 images and refuses numeric X"
_WORDING = "expects scikit-learn's error wording for numeric X; ours refuses any numeric X with the Keras wording"
EXPECTED_FAILED_CHECKS = {
    **{name: _NUMERIC for name in (
        "check_fit_score_takes_y", "check_estimators_overwrite_params", "check_dont_overwrite_parameters",
        "check_estimators_fit_returns_self", "check_readonly_memmap_input", "check_n_features_in_after_fitting",
        "check_positive_only_tag_during_fit", "check_estimators_dtypes", "check_pipeline_consistency",
        "check_estimators_pickle", "check_estimators_pickle(readonly_memmap=True)",
        "check_f_contiguous_array_estimator", "check_transformer_data_not_an_array", "check_transformer_general",
        "check_transformer_general(readonly_memmap=True)", "check_methods_sample_order_invariance",
        "check_methods_subset_invariance", "check_fit2d_1sample", "check_fit2d_1feature", "check_dict_unchanged",
        "check_fit_idempotent", "check_fit_check_is_fitted", "check_n_features_in",
    )},
    **{name: _WORDING for name in (
        "check_complex_data", "check_dtype_object", "check_estimators_empty_data_messages",
        "check_estimators_nan_inf", "check_fit2d_predict1d",
    )},
}


@parametrize_with_checks([ImageFeatureExtractor(**SMALL)], expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_compatible(estimator, check):
    check(estimator)
