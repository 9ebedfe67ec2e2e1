"""Head bundles: a directory with the fitted head and its `manifest.json`; loading one runs no code from it.

A scikit-learn head is saved with `skops.io` (`head.skops`), its Keras network, if any, as `mlp.keras`; loading
trusts only our own head types and loads Keras files with ``safe_mode=True``. The manifest records the extractor
spec and fingerprint the head needs, the classes, the feature dimension, metrics, parameters, versions and the
sha256 of each model file, verified before the file is read. A pickle (`head.joblib`) is written and read only on
explicit request, because loading a pickle runs whatever code it names.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import platform
import tempfile
import warnings
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
    BundleUnsafeError,
    PickleBundleWarning,
)

FORMAT_VERSION = 2  # 1: head.joblib only (a pickle), read only with trust_pickle=True
MANIFEST = "manifest.json"
MODEL_FILE = "head.skops"
NETWORK_FILE = "mlp.keras"  # the Keras network of an MLP head, beside its skops file
PICKLE_FILE = "head.joblib"  # only with model_format="joblib"
FULL_MODEL_FILE = "model.keras"  # kind "full": a whole Keras model, images in -> probabilities out
KINDS = ("sklearn", "full")
MODEL_FORMATS = ("skops", "joblib")
_PICKLE_RISK = "loading a pickle runs any code it holds: load only a file you wrote yourself"


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
    model_format: str = "skops",
) -> Path:
    """Write a fitted scikit-learn head and its manifest to a bundle directory.

    Each file is written to a temporary name and moved into place with `os.replace`, the manifest last, so an
    interrupted save never leaves a bundle that loads with the wrong model. An existing bundle is replaced.

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
    _check_target(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    if model_format == "joblib":
        warnings.warn(f"{out_dir / PICKLE_FILE} is a pickle: {_PICKLE_RISK}", PickleBundleWarning, stacklevel=2)
        files["model"] = (PICKLE_FILE, _write_atomic(out_dir / PICKLE_FILE, lambda f: joblib.dump(estimator, f)))
    else:
        import skops.io

        stripped, network = _without_network(estimator)
        if network is not None:
            from classify.mlp_network import model_to_bytes

            data = model_to_bytes(network)
            files["network"] = (NETWORK_FILE, _write_atomic(out_dir / NETWORK_FILE, lambda f: f.write(data)))
        state = skops.io.dumps(stripped)
        files["model"] = (MODEL_FILE, _write_atomic(out_dir / MODEL_FILE, lambda f: f.write(state)))
    manifest = {
        **(extra or {}),
        "format_version": FORMAT_VERSION,
        "kind": "sklearn",
        "model_format": model_format,
        "model_file": files["model"][0],
        "model_sha256": files["model"][1],
        **({"network_file": files["network"][0], "network_sha256": files["network"][1]} if "network" in files else {}),
        "extractor": extractor,
        "fingerprint": fingerprint,
        "classes": classes,
        "n_features": int(n_features),
        "metrics": metrics,
        "params": params,
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _write_manifest(out_dir, manifest)
    return out_dir


def _check_target(out_dir: Path) -> None:
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
        raise BundleExistsError(
            f"{out_dir} is not empty and holds no {MANIFEST}; refusing to overwrite it with a head bundle"
        )


def _write_manifest(out_dir: Path, manifest: dict) -> None:
    """Write the manifest (the commit point), then remove the model files of a bundle it replaced."""
    text = json.dumps(manifest, indent=2, default=_jsonable)
    _write_atomic(out_dir / MANIFEST, lambda f: f.write(text.encode()))
    kept = {manifest["model_file"], manifest.get("network_file")}
    for name in {MODEL_FILE, NETWORK_FILE, PICKLE_FILE, FULL_MODEL_FILE} - kept:
        (out_dir / name).unlink(missing_ok=True)


def _networks(estimator: Any) -> list[tuple[int | None, Any]]:
    """The KerasMLPClassifier steps of a head: (position in the pipeline, or None for the head itself, step)."""
    from classify.mlp import KerasMLPClassifier

    if isinstance(estimator, KerasMLPClassifier):
        return [(None, estimator)]
    steps = getattr(estimator, "steps", [])
    return [(i, step) for i, (_, step) in enumerate(steps) if isinstance(step, KerasMLPClassifier)]


def _without_network(estimator: Any) -> tuple[Any, Any]:
    """(a shallow copy of the head whose MLP has no `model_`, that network), or (the head, None)."""
    found = _networks(estimator)
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
    from classify.mlp_network import model_to_bytes

    out_dir = Path(out_dir)
    classes = [str(c) for c in classes]
    if int(model.output_shape[-1]) != len(classes):
        raise ValueError(f"`classes` must name the model's {model.output_shape[-1]} outputs. Received: {classes!r}")
    _check_target(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = model_to_bytes(model)
    input_shape = [int(d) for d in model.input_shape[1:]]
    manifest = {**(extra or {}), "format_version": FORMAT_VERSION, "kind": "full", "model_file": FULL_MODEL_FILE,
                "model_sha256": _write_atomic(out_dir / FULL_MODEL_FILE, lambda f: f.write(data)),
                "extractor": extractor, "fingerprint": fingerprint, "classes": classes,
                "n_features": int(np.prod(input_shape)), "input_shape": input_shape, "metrics": metrics,
                "params": params, "versions": _versions(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    _write_manifest(out_dir, manifest)
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


def load_bundle(path: str | os.PathLike, *, trust_pickle: bool = False) -> Bundle:
    """Load a head bundle, verifying each model file's sha256 before reading it; no code from the bundle runs.

    The skops file is loaded trusting only our own head types (`trusted_types`), Keras files with
    ``safe_mode=True`` (no Lambda-layer code).

    Parameters
    ----------
    path : str or PathLike
        The bundle directory.
    trust_pickle : bool, default=False
        Load a pickled head (a bundle saved with ``model_format="joblib"``, or of format version 1). Loading a
        pickle runs any code it holds: pass True only for a bundle you wrote yourself.

    Returns
    -------
    bundle : Bundle
        The estimator, the manifest and the path.

    Raises
    ------
    BundleNotFoundError
        If the directory, the manifest or a model file is missing.
    BundleIntegrityError
        If a model file's sha256 differs from the manifest's.
    BundleUnsafeError
        If the head is a pickle (and `trust_pickle` is False), or holds types that are not ours.
    BundleFormatError
        If the manifest or a model file is unreadable or of an unknown format.
    """
    path = Path(path)
    manifest = _read_manifest(path)
    data = _verified(path, manifest["model_file"], manifest["model_sha256"])
    if manifest["kind"] == "full":  # custom layers of the model must be registered by the caller
        from classify.mlp_network import model_from_bytes

        return Bundle(estimator=_load_keras(path / manifest["model_file"], data, model_from_bytes),
                      manifest=manifest, path=path)
    if manifest["model_format"] == "joblib":
        return Bundle(estimator=_load_pickle(path / manifest["model_file"], data, trust_pickle),
                      manifest=manifest, path=path)
    estimator = _load_skops(path / manifest["model_file"], data)
    if manifest.get("network_file"):
        from classify.mlp_network import model_from_bytes

        network = _verified(path, manifest["network_file"], manifest.get("network_sha256"))
        found = _networks(estimator)
        if len(found) != 1:
            raise BundleFormatError(f"{path / manifest['network_file']} has no KerasMLPClassifier to belong to in "
                                    f"{path / manifest['model_file']}")
        found[0][1].model_ = _load_keras(path / manifest["network_file"], network, model_from_bytes)
    return Bundle(estimator=estimator, manifest=manifest, path=path)


def trusted_types() -> list[str]:
    """The types a skops head file may hold beyond skops's own defaults: the classes our heads are made of.

    Computed from `classify.heads.head_types` (what `make_head` and `fit_out_of_core` build), never from what a
    file reports.
    """
    from classify.heads import head_types

    return sorted(f"{t.__module__}.{t.__qualname__}" for t in head_types())


def _verified(path: Path, name: str, expected: Any) -> bytes:
    """The bytes of a bundle file, read once, after checking them against the manifest's sha256."""
    if not isinstance(name, str) or Path(name).name != name:
        raise BundleFormatError(f"model files must be file names. Received: {name!r}")
    target = path / name
    if not target.is_file():
        raise BundleNotFoundError(f"{target} is missing; the bundle {path} is incomplete")
    data = target.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise BundleIntegrityError(
            f"{target} has sha256 {actual} but the manifest records {expected}; "
            "the file is corrupt or was replaced, and it is not loaded"
        )
    return data


def _load_skops(target: Path, data: bytes) -> Any:
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    try:
        return skops.io.loads(data, trusted=trusted_types())
    except UntrustedTypesFoundException as err:
        raise BundleUnsafeError(f"{target} holds types that are not featurehead head types, so it is not loaded: "
                                f"{err}") from err
    except Exception as err:  # a damaged or foreign file: skops raises zip, JSON and type errors alike
        raise BundleFormatError(f"{target} is not a readable skops head file ({type(err).__name__}: {err})") from err


def _load_keras(target: Path, data: bytes, loader) -> Any:
    try:
        return loader(data)
    except Exception as err:  # Keras raises ValueError, TypeError and zip errors alike; safe_mode's refusal too
        raise BundleUnsafeError(f"{target} is not a Keras model that loads with safe_mode=True (no code) "
                                f"({type(err).__name__}: {err})") from err


def _load_pickle(target: Path, data: bytes, trust_pickle: bool) -> Any:
    if not trust_pickle:
        raise BundleUnsafeError(
            f"{target} is a pickle, and {_PICKLE_RISK}; it is not loaded. Retrain the head (`featurehead train`) "
            "for a skops bundle, or, for a bundle you wrote yourself, load_bundle(path, trust_pickle=True)"
        )
    warnings.warn(f"loading {target}: {_PICKLE_RISK}", PickleBundleWarning, stacklevel=3)
    import io

    return joblib.load(io.BytesIO(data))


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
    if version not in (1, FORMAT_VERSION) or kind not in KINDS:
        raise BundleFormatError(
            f"{path / MANIFEST} must have format_version 1 or {FORMAT_VERSION} and kind 'sklearn' or 'full'. "
            f"Received: format_version={version!r}, kind={kind!r}"
        )
    if version == 1 and kind == "sklearn":
        manifest = {**manifest, "model_format": "joblib"}  # format 1 pickled every head
    if kind == "sklearn" and manifest.get("model_format") not in MODEL_FORMATS:
        raise BundleFormatError(f"`model_format` must be one of 'skops', 'joblib'. "
                                f"Received: model_format={manifest.get('model_format')!r}")
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
