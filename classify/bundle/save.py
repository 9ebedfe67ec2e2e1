"""Saving a bundle: a scikit-learn head as `head-<sha>.skops` (its MLP's network beside it as `mlp-<sha>.keras`)
or, on request, a pickle; a whole Keras model as `model-<sha>.keras`; the model files written beside the old
bundle's under their content names, then the manifest renamed into place: the one commit point."""

from __future__ import annotations

import copy
import io
import os
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from classify.bundle.manifest import (
    FORMAT_VERSION,
    FULL_MODEL_FILE,
    MODEL_FILE,
    MODEL_FORMATS,
    NETWORK_FILE,
    PICKLE_FILE,
    check_target,
    content_name,
    reordered,
    sha256_of,
    versions,
    write_bundle,
)
from classify.bundle.trust import PICKLE_RISK, check_head_types
from classify.errors import PickleBundleWarning
from classify.mlp import KerasMLPClassifier
from classify.mlp_network import model_to_bytes


def save_bundle(
    estimator: Any,
    out_dir: str | os.PathLike,
    *,
    extractor: dict,
    fingerprint: str,
    classes: Any,
    n_features: int,
    metrics: dict | None = None,
    params: dict | None = None,
    extra: dict | None = None,
    model_format: str = "skops",
    aux: dict | None = None,
) -> Path:
    """Write a fitted scikit-learn head and its manifest to a bundle directory.

    The model files are written in full under their content names (``head-<first 12 hex of sha256>.skops``)
    beside those of an existing bundle, then the manifest (with their sha256) is renamed into place: the one
    commit point. A full disk or a kill at any moment leaves the previous bundle or the new one, whole and
    loadable; what a stopped save leaves over, the next save into the folder removes (`write_bundle`). An
    existing bundle is replaced; two saves into one folder at once take turns.

    Parameters
    ----------
    estimator : fitted scikit-learn estimator
        The head: one that `make_head` or `fit_out_of_core` builds (a Pipeline holding a KerasMLPClassifier
        works too).
    out_dir : str or PathLike
        The bundle directory; created if missing.
    extractor : dict
        The extractor spec (JSON-able) the features came from.
    fingerprint : str
        The extractor's fingerprint.
    classes : array-like of shape (n_classes,)
        Class names, in the order of the estimator's ``predict_proba`` columns.
    n_features : int
        Feature dimension.
    metrics, params, extra : dict, default=None
        Evaluation results, training parameters, and extra top-level manifest keys.
    aux : dict of str to bytes, default=None
        Files that go with this head but are not part of it, by name: ``{"history.png": ...}`` (an aux file of a
        replaced bundle that `aux` does not name is removed).
    model_format : {"skops", "joblib"}, default="skops"
        "skops": `head.skops` (and the MLP's network as `mlp.keras`), which load without running code from the
        bundle. "joblib": a pickle, `head.joblib`, for code that wants one; **loading it is code execution**, so
        `load_bundle` refuses it unless given ``trust_pickle=True``, and saving one warns
        (`PickleBundleWarning`).

    Returns
    -------
    path : Path
        The bundle directory.
    """
    if model_format not in MODEL_FORMATS:
        raise ValueError(f"`model_format` must be one of 'skops', 'joblib'. Received: model_format={model_format!r}")
    out_dir = Path(out_dir)
    classes = [str(c) for c in classes]
    _check_consistent(estimator, classes, n_features)
    check_target(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    network_file = None
    if model_format == "joblib":
        buffer = io.BytesIO()
        joblib.dump(estimator, buffer)
        data = bytes(buffer.getbuffer())
        model_file = content_name(PICKLE_FILE, data)
        files = {model_file: data}
        warnings.warn(f"{out_dir / model_file} is a pickle: {PICKLE_RISK}", PickleBundleWarning, stacklevel=2)
    else:
        import skops.io

        check_head_types(out_dir, estimator)  # what `load_bundle` refuses is never saved
        stripped, network = _without_network(estimator)
        data = skops.io.dumps(stripped)
        model_file = content_name(MODEL_FILE, data)
        files = {model_file: data}
        if network is not None:
            data = model_to_bytes(network)
            network_file = content_name(NETWORK_FILE, data)
            files[network_file] = data
    manifest = {
        **(extra or {}),
        "format_version": FORMAT_VERSION,
        "kind": "sklearn",
        "model_format": model_format,
        "model_file": model_file,
        "model_sha256": sha256_of(files[model_file]),
        **({"network_file": network_file, "network_sha256": sha256_of(files[network_file])} if network_file else {}),
        "extractor": extractor,
        "fingerprint": fingerprint,
        "classes": classes,
        "n_features": int(n_features),
        "metrics": metrics,
        "params": params,
        "versions": versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_bundle(out_dir, manifest, files, aux)  # the old bundle or the new one, never a mix
    return out_dir


def _check_consistent(estimator: Any, classes: list[str], n_features: int) -> None:
    fitted_classes = getattr(estimator, "classes_", None)
    if fitted_classes is not None and len(fitted_classes) != len(classes):
        raise ValueError(
            f"`classes` must name the estimator's {len(fitted_classes)} classes. Received: classes={classes!r}"
        )
    if fitted_classes is not None and reordered(fitted_classes, classes):  # `load_bundle` refuses it
        raise ValueError(f"`classes` must be in the order of the estimator's classes_ "
                         f"{[str(c) for c in fitted_classes]}, the columns of its predict_proba. "
                         f"Received: classes={classes!r}")
    fitted_features = getattr(estimator, "n_features_in_", None)
    if fitted_features is not None and fitted_features != n_features:
        raise ValueError(
            f"`n_features` must be the estimator's n_features_in_={fitted_features}. Received: n_features={n_features}"
        )


def networks(estimator: Any) -> list[tuple[int | None, Any]]:
    """The KerasMLPClassifier steps of a head: (position in the pipeline, or None for the head itself, step)."""
    if isinstance(estimator, KerasMLPClassifier):
        return [(None, estimator)]
    steps = getattr(estimator, "steps", [])
    return [(i, step) for i, (_, step) in enumerate(steps) if isinstance(step, KerasMLPClassifier)]


def _without_network(estimator: Any) -> tuple[Any, Any]:
    """(a shallow copy of the head whose MLP has no `model_`, that network), or (the head, None)."""
    found = networks(estimator)
    if len(found) > 1:
        raise ValueError(f"a head bundle holds at most one KerasMLPClassifier. Received: {len(found)}")
    if not found or not hasattr(found[0][1], "model_"):
        return estimator, None
    position, mlp = found[0]
    bare = object.__new__(type(mlp))  # not copy.copy: that would pickle the network through __getstate__
    bare.__dict__.update({k: v for k, v in vars(mlp).items() if k != "model_"})
    if position is None:
        return bare, mlp.model_
    head = copy.copy(estimator)
    head.steps = [(name, bare if i == position else step) for i, (name, step) in enumerate(estimator.steps)]
    return head, mlp.model_


def save_model_bundle(
    model: Any,
    out_dir: str | os.PathLike,
    *,
    extractor: dict,
    fingerprint: str,
    classes: Any,
    metrics: dict | None = None,
    params: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a whole Keras model (images in, class probabilities out) as a bundle of kind "full".

    Parameters
    ----------
    model : keras.Model
        Maps ``(n, height, width, 3)`` raw RGB in 0..255 to ``(n, n_classes)`` probabilities.
    out_dir : str or PathLike
        The bundle directory; created if missing, replaced if it holds a bundle.
    extractor, fingerprint : dict, str
        Spec and fingerprint of the base the model was built from (for the record; a full model needs no store).
    classes : array-like of shape (n_classes,)
        Class names, in the order of the model's output columns.
    metrics, params, extra : dict, default=None
        As in `save_bundle`.

    Returns
    -------
    path : Path
        The bundle directory.
    """
    out_dir = Path(out_dir)
    classes = [str(c) for c in classes]
    if int(model.output_shape[-1]) != len(classes):
        raise ValueError(f"`classes` must name the model's {model.output_shape[-1]} outputs. Received: {classes!r}")
    check_target(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = model_to_bytes(model)
    input_shape = [int(d) for d in model.input_shape[1:]]
    model_file = content_name(FULL_MODEL_FILE, data)
    manifest = {**(extra or {}), "format_version": FORMAT_VERSION, "kind": "full", "model_file": model_file,
                "model_sha256": sha256_of(data),
                "extractor": extractor, "fingerprint": fingerprint, "classes": classes,
                "n_features": int(np.prod(input_shape)), "input_shape": input_shape, "metrics": metrics,
                "params": params, "versions": versions(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_bundle(out_dir, manifest, {model_file: data})
    return out_dir
