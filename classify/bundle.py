"""Head bundles: a directory with the fitted head (`head.joblib`) and its `manifest.json`.

The manifest records the extractor spec and fingerprint the head needs, the classes, the feature dimension,
metrics, parameters, versions and the sha256 of the model file, which is verified before unpickling.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from classify.errors import (
    BundleExistsError,
    BundleFormatError,
    BundleIntegrityError,
    BundleMismatchError,
    BundleNotFoundError,
)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODEL_FILE = "head.joblib"
FULL_MODEL_FILE = "model.keras"  # kind "full": a whole Keras model, images in -> probabilities out
KINDS = ("sklearn", "full")


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A loaded head bundle.

    Parameters
    ----------
    estimator : fitted classifier
        The head.
    manifest : dict
        The parsed `manifest.json`.
    path : Path
        The bundle directory.
    """

    estimator: Any
    manifest: dict
    path: Path

    @property
    def classes(self) -> list[str]:
        """Class names, in the order of the estimator's ``predict_proba`` columns."""
        return list(self.manifest["classes"])

    @property
    def kind(self) -> str:
        """"sklearn" (a head on features) or "full" (a Keras model on images)."""
        return str(self.manifest["kind"])

    @property
    def n_features(self) -> int:
        """Feature dimension the head was trained on."""
        return int(self.manifest["n_features"])

    @property
    def fingerprint(self) -> str:
        """Fingerprint of the extractor the head was trained on."""
        return str(self.manifest["fingerprint"])

    def check_fingerprint(self, fingerprint: str) -> None:
        """Refuse features from another extractor than the bundle's.

        Parameters
        ----------
        fingerprint : str
            Fingerprint of the extractor that produced the features.

        Raises
        ------
        BundleMismatchError
            If `fingerprint` differs from the manifest's.
        """
        if fingerprint != self.fingerprint:
            model = self.manifest.get("extractor", {}).get("name", "unknown model")
            raise BundleMismatchError(
                f"features come from extractor {fingerprint[:12]} but the head {self.path.name} was trained on "
                f"{self.fingerprint[:12]} ({model}); re-extract with the bundle's extractor"
            )

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, after checking the feature dimension.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features from the bundle's extractor.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Columns in the order of `classes`.
        """
        X = np.asarray(X)  # no copy: only the shape is checked here
        if self.kind == "full":
            return _full_predict_proba(self.estimator, X, tuple(self.manifest["input_shape"]))
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(
                f"`X` must have shape (n_samples, {self.n_features}), the head's n_features. "
                f"Received: X.shape={X.shape}"
            )
        return self.estimator.predict_proba(X)

    def predict(self, X: Any) -> np.ndarray:
        """Most probable class names.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features from the bundle's extractor.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Class names from `classes`.
        """
        return np.asarray(self.classes)[np.argmax(self.predict_proba(X), axis=1)]


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
) -> Path:
    """Write a fitted scikit-learn head and its manifest to a bundle directory.

    Each file is written to a temporary name and moved into place with `os.replace`, the manifest last, so an
    interrupted save never leaves a bundle that loads with the wrong model. An existing bundle is replaced.

    Parameters
    ----------
    estimator : fitted scikit-learn estimator
        The head (a Pipeline holding a KerasMLPClassifier works too); saved with joblib.
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

    Returns
    -------
    path : Path
        The bundle directory.
    """
    out_dir = Path(out_dir)
    classes = [str(c) for c in classes]
    _check_consistent(estimator, classes, n_features)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise BundleExistsError(
            f"{out_dir} is not empty and holds no {MANIFEST}; refusing to overwrite it with a head bundle"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = _write_atomic(out_dir / MODEL_FILE, lambda f: joblib.dump(estimator, f))
    manifest = {
        **(extra or {}),
        "format_version": FORMAT_VERSION,
        "kind": "sklearn",
        "model_file": MODEL_FILE,
        "model_sha256": digest,
        "extractor": extractor,
        "fingerprint": fingerprint,
        "classes": classes,
        "n_features": int(n_features),
        "metrics": metrics,
        "params": params,
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps(manifest, indent=2, default=_jsonable)
    _write_atomic(out_dir / MANIFEST, lambda f: f.write(text.encode()))
    return out_dir


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
    from classify.mlp import _model_to_bytes

    out_dir = Path(out_dir)
    classes = [str(c) for c in classes]
    if int(model.output_shape[-1]) != len(classes):
        raise ValueError(f"`classes` must name the model's {model.output_shape[-1]} outputs. Received: {classes!r}")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise BundleExistsError(f"{out_dir} is not empty and holds no {MANIFEST}; refusing to overwrite it")
    out_dir.mkdir(parents=True, exist_ok=True)
    data = _model_to_bytes(model)
    input_shape = [int(d) for d in model.input_shape[1:]]
    manifest = {**(extra or {}), "format_version": FORMAT_VERSION, "kind": "full", "model_file": FULL_MODEL_FILE,
                "model_sha256": _write_atomic(out_dir / FULL_MODEL_FILE, lambda f: f.write(data)),
                "extractor": extractor, "fingerprint": fingerprint, "classes": classes,
                "n_features": int(np.prod(input_shape)), "input_shape": input_shape, "metrics": metrics,
                "params": params, "versions": _versions(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    text = json.dumps(manifest, indent=2, default=_jsonable)
    _write_atomic(out_dir / MANIFEST, lambda f: f.write(text.encode()))
    return out_dir


def _full_predict_proba(model: Any, X: np.ndarray, input_shape: tuple) -> np.ndarray:
    if X.ndim != 4 or X.shape[1:] != input_shape:
        raise ValueError(f"`X` must be images of shape (n, {', '.join(map(str, input_shape))}), the model's input. "
                         f"Received: X.shape={X.shape}")
    from keras import ops

    chunks = [ops.convert_to_numpy(model(X[i : i + 32].astype(np.float32), training=False))
              for i in range(0, len(X), 32)]
    proba = np.concatenate(chunks).astype(np.float64) if chunks else np.empty((0, model.output_shape[-1]))
    return proba / proba.sum(axis=1, keepdims=True)


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Load a head bundle, verifying the model file's sha256 before unpickling it.

    Parameters
    ----------
    path : str or PathLike
        The bundle directory.

    Returns
    -------
    bundle : Bundle
        The estimator, the manifest and the path.

    Raises
    ------
    BundleNotFoundError
        If the directory, the manifest or the model file is missing.
    BundleIntegrityError
        If the model file's sha256 differs from the manifest's.
    BundleFormatError
        If the manifest is unreadable or of an unknown format.
    """
    path = Path(path)
    manifest = _read_manifest(path)
    model_file = path / manifest["model_file"]
    if not model_file.is_file():
        raise BundleNotFoundError(f"{model_file} is missing; the bundle {path} is incomplete")
    actual = _sha256(model_file)
    if actual != manifest["model_sha256"]:
        raise BundleIntegrityError(
            f"{model_file} has sha256 {actual} but the manifest records {manifest['model_sha256']}; "
            "the file is corrupt or was replaced, and it is not unpickled"
        )
    if manifest["kind"] == "full":  # custom layers of the model must be registered by the caller
        from classify.mlp import _model_from_bytes

        return Bundle(estimator=_model_from_bytes(model_file.read_bytes()), manifest=manifest, path=path)
    return Bundle(estimator=joblib.load(model_file), manifest=manifest, path=path)


def _read_manifest(path: Path) -> dict:
    if not path.is_dir():
        raise BundleNotFoundError(f"no head bundle at {path}: the directory does not exist")
    if not (path / MANIFEST).is_file():
        raise BundleNotFoundError(f"no head bundle at {path}: {MANIFEST} is missing")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleFormatError(f"{path / MANIFEST} is not valid JSON: {err}") from err
    version, kind = manifest.get("format_version"), manifest.get("kind")
    if version != FORMAT_VERSION or kind not in KINDS:
        raise BundleFormatError(
            f"{path / MANIFEST} must have format_version={FORMAT_VERSION} and kind 'sklearn' or 'full'. "
            f"Received: format_version={version!r}, kind={kind!r}"
        )
    model_file = manifest.get("model_file")
    if not isinstance(model_file, str) or Path(model_file).name != model_file:
        raise BundleFormatError(f"`model_file` must be a file name. Received: model_file={model_file!r}")
    return manifest


def _check_consistent(estimator: Any, classes: list[str], n_features: int) -> None:
    fitted_classes = getattr(estimator, "classes_", None)
    if fitted_classes is not None and len(fitted_classes) != len(classes):
        raise ValueError(
            f"`classes` must name the estimator's {len(fitted_classes)} classes. Received: classes={classes!r}"
        )
    fitted_features = getattr(estimator, "n_features_in_", None)
    if fitted_features is not None and fitted_features != n_features:
        raise ValueError(
            f"`n_features` must be the estimator's n_features_in_={fitted_features}. Received: n_features={n_features}"
        )


def _write_atomic(target: Path, write) -> str:
    """Write `target` through a temporary file in its directory and `os.replace`; return the sha256."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        digest = _sha256(Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _versions() -> dict:
    versions = {"python": platform.python_version()}
    for dist in ("numpy", "scikit-learn", "keras", "featurehead"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
