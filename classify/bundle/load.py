"""Loading a bundle: each model file's sha256 verified before it is read, then loaded without running code
from the bundle (`classify.bundle.trust`); `Bundle` is the loaded head with its manifest."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression, SGDClassifier

from classify.bundle.manifest import MANIFEST, read_manifest, reordered, verified
from classify.bundle.save import networks
from classify.bundle.trust import load_keras, load_pickle, load_skops
from classify.errors import BundleFormatError, BundleIntegrityError, BundleMismatchError, BundleNotFoundError
from classify.mlp_network import model_from_bytes


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
    def classes_(self) -> np.ndarray:
        """`classes` as an array, under scikit-learn's name: with `predict` and `predict_proba` it lets
        `classify.evaluate(bundle, X, y)` score what the bundle predicts, by the manifest's class names (a head
        fitted on codes 0..k-1 has those as its own ``classes_``)."""
        return np.asarray(self.classes)

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
        return self.estimator.predict_proba(self._features(X))

    def predict(self, X: Any) -> np.ndarray:
        """The head's predicted class names: `predict_with_proba(X)[0]` (its parameters; class names from
        `classes`)."""
        return self.predict_with_proba(X)[0]

    def predict_with_proba(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """`predict` and `predict_proba` of `X` at once (the MLP's network runs once).

        A linear head (logreg, sgd) predicts by its own decision function, not by the largest probability: the
        one-vs-rest probabilities of the sgd head saturate, several classes at 1.0, where its scores are large,
        and the first of the tied columns is not its prediction.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Features from the bundle's extractor.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Class names from `classes`.
        proba : ndarray of shape (n_samples, n_classes)
            Columns in the order of `classes`.
        """
        proba = self.predict_proba(X)
        if self._linear():
            return self._own_prediction(self._features(X)), proba
        return self.classes_[np.argmax(proba, axis=1)], proba

    def _features(self, X: Any) -> np.ndarray:
        X = np.asarray(X)  # no copy: only the shape is checked here
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(
                f"`X` must have shape (n_samples, {self.n_features}), the head's n_features. "
                f"Received: X.shape={X.shape}"
            )
        return X

    def _linear(self) -> bool:
        """Whether the head is a linear classifier (logreg, sgd; a pipeline's last step), whose own prediction is the
        largest probability's class but at ties. Another estimator (a user's pickled SVC, say) keeps the largest
        probability: its `predict` may disagree with its `predict_proba` on many rows, not only at ties."""
        if self.kind != "sklearn":
            return False
        final = self.estimator.steps[-1][1] if hasattr(self.estimator, "steps") else self.estimator
        return isinstance(final, (LogisticRegression, SGDClassifier))

    def _own_prediction(self, X: np.ndarray) -> np.ndarray:
        """The head's `predict`, named by the manifest (a head fitted on codes 0..k-1 has those as its classes_)."""
        position = {c: i for i, c in enumerate(np.asarray(self.estimator.classes_).tolist())}
        return self.classes_[np.array([position[c] for c in np.asarray(self.estimator.predict(X)).tolist()],
                                      dtype=np.intp)]


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
    manifest = read_manifest(path)
    try:
        return _load(path, manifest, trust_pickle)
    except BundleNotFoundError:
        # a save into the folder committed meanwhile and removed the files of the manifest read above: read again
        again = read_manifest(path)
        if again == manifest:
            raise
        return _load(path, again, trust_pickle)


_ZIP = b"PK\x03\x04"  # how a skops file begins (a zip archive); joblib writes a pickle stream


def _load(path: Path, manifest: dict, trust_pickle: bool) -> Bundle:
    data = verified(path, manifest["model_file"], manifest["model_sha256"])
    if manifest["kind"] == "full":  # custom layers of the model must be registered by the caller
        model = load_keras(path / manifest["model_file"], data, model_from_bytes)
        _check_outputs(path, manifest, int(model.output_shape[-1]))
        return Bundle(estimator=model, manifest=manifest, path=path)
    if manifest["model_format"] == "joblib":
        if data.startswith(_ZIP):  # a skops file: not a pickle, whatever the (edited) manifest says
            raise BundleFormatError(
                f"{path / MANIFEST} says model_format 'joblib' (a pickle), but {path / manifest['model_file']} is a "
                "skops file (a zip archive), as saved with model_format 'skops': the manifest was edited, and the "
                "bundle is not loaded"
            )
        estimator = load_pickle(path / manifest["model_file"], data, trust_pickle)
    else:
        estimator = load_skops(path / manifest["model_file"], data)
        found = networks(estimator)
        if manifest.get("network_file"):
            network = verified(path, manifest["network_file"], manifest.get("network_sha256"))
            if len(found) != 1:
                raise BundleFormatError(f"{path / manifest['network_file']} has no KerasMLPClassifier to belong to "
                                        f"in {path / manifest['model_file']}")
            found[0][1].model_ = load_keras(path / manifest["network_file"], network, model_from_bytes)
        elif found:
            raise BundleFormatError(f"{path / manifest['model_file']} holds an mlp head but {path / MANIFEST} names "
                                    "no network file for it (`network_file`); the bundle is incomplete")
    _check_head(path, manifest, estimator)
    return Bundle(estimator=estimator, manifest=manifest, path=path)


def _check_outputs(path: Path, manifest: dict, n_outputs: int) -> None:
    if len(manifest["classes"]) != n_outputs:
        raise BundleIntegrityError(f"{path / MANIFEST} names {len(manifest['classes'])} classes but its model has "
                                   f"{n_outputs} outputs; the manifest was edited, and the bundle is not loaded")


def _check_head(path: Path, manifest: dict, estimator: Any) -> None:
    """The manifest is not hashed: its `classes` (which name predict's columns) and `n_features` must agree with
    the head they describe. `save_bundle` lets a caller name a head's classes (codes 0..k-1 as names), so only the
    count, and the order of the head's very own names, are checked."""
    fitted = getattr(estimator, "classes_", None)
    if fitted is not None:
        _check_outputs(path, manifest, len(fitted))
        if reordered(fitted, manifest["classes"]):
            raise BundleIntegrityError(f"{path / MANIFEST} lists the head's classes in another order than the head "
                                       "predicts them; the manifest was edited, and the bundle is not loaded")
    fitted_features = getattr(estimator, "n_features_in_", None)
    if fitted_features is not None and fitted_features != manifest["n_features"]:
        raise BundleIntegrityError(f"{path / MANIFEST} says n_features={manifest['n_features']} but the head was "
                                   f"fitted on {fitted_features}; the manifest was edited, and the bundle is not loaded")
