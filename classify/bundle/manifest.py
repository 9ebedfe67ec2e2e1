"""The bundle's files: their names, the manifest (read and checked; written last, as the commit point), atomic
writes and sha256 checks, and the versions a manifest records."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from classify.errors import BundleExistsError, BundleFormatError, BundleIntegrityError, BundleNotFoundError

FORMAT_VERSION = 2  # 1: head.joblib only (a pickle), read only with trust_pickle=True
MANIFEST = "manifest.json"
MODEL_FILE = "head.skops"
NETWORK_FILE = "mlp.keras"  # the Keras network of an MLP head, beside its skops file
PICKLE_FILE = "head.joblib"  # only with model_format="joblib"
FULL_MODEL_FILE = "model.keras"  # kind "full": a whole Keras model, images in -> probabilities out
KINDS = ("sklearn", "full")
MODEL_FORMATS = ("skops", "joblib")


def check_target(out_dir: Path) -> None:
    """Refuse to save a bundle into a directory that holds anything but a bundle (a feature store has a
    `manifest.json` too: saving over it would replace the store's manifest)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise BundleExistsError(f"{out_dir} is a file; a head bundle is a folder: choose another --out")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not (out_dir / MANIFEST).is_file():
        raise BundleExistsError(
            f"{out_dir} is not empty and holds no {MANIFEST}; refusing to overwrite it with a head bundle"
        )
    try:
        read_manifest(out_dir)
    except BundleFormatError as err:
        raise BundleExistsError(
            f"{out_dir} holds a {MANIFEST} that is not a head bundle's (a feature store?); refusing to overwrite "
            "it with a head bundle: choose another --out"
        ) from err


def write_bundle(out_dir: Path, manifest: dict, files: dict) -> None:
    """Write a bundle's model files and its manifest (listing their sha256, `sha256_of`) all or none, the manifest
    renamed into place last (the commit point), then remove the model files of a bundle it replaced."""
    text = json.dumps(manifest, indent=2, default=_jsonable)
    write_files(out_dir, {**files, MANIFEST: text.encode()})
    kept = {manifest["model_file"], manifest.get("network_file")}
    for name in {MODEL_FILE, NETWORK_FILE, PICKLE_FILE, FULL_MODEL_FILE} - kept:
        (out_dir / name).unlink(missing_ok=True)


def sha256_of(data) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(path: Path) -> dict:
    if not path.is_dir():
        raise BundleNotFoundError(f"no head bundle at {path}: the directory does not exist")
    if not (path / MANIFEST).is_file():
        raise BundleNotFoundError(f"no head bundle at {path}: {MANIFEST} is missing")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleFormatError(f"{path / MANIFEST} is not valid JSON: {err}") from err
    if not isinstance(manifest, dict):
        raise BundleFormatError(f"{path / MANIFEST} must hold a JSON object. Received: {type(manifest).__name__}")
    if "schema_version" in manifest and "kind" not in manifest:
        raise BundleFormatError(f"{path} is a feature store, not a head bundle (`featurehead train` makes one); "
                                "a command that takes both wants the head first: HEAD STORE")
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
    required = {"model_sha256": str, "fingerprint": str, "classes": list,
                **({"n_features": int} if kind == "sklearn" else {"input_shape": list})}
    for key, kind_of in required.items():
        if not isinstance(manifest.get(key), kind_of) or isinstance(manifest.get(key), bool):
            raise BundleFormatError(f"{path / MANIFEST} must have `{key}` ({kind_of.__name__}). "
                                    f"Received: {key}={manifest.get(key)!r}")
    if not all(isinstance(c, str) for c in manifest["classes"]):
        raise BundleFormatError(f"{path / MANIFEST} must list `classes` as strings. Received: {manifest['classes']!r}")
    return manifest


def verified(path: Path, name: str, expected: Any) -> bytes:
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


def write_files(out_dir: Path, files: dict) -> None:
    """Write the named files (bytes) into `out_dir`, all or none, renamed into place in the order given.

    Each is first written in full to a temporary name beside its own (where a full disk strikes), and only then
    are they all renamed into place, so a failure replaces none of them: a bundle is never left with the new
    network beside the old head. An `OSError` that names no file (a full disk) is raised again naming it.
    """
    from features_store.durable import fsync_dir

    staged = {}
    try:
        for name, data in files.items():
            fd, staged[name] = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for name in list(staged):
            os.replace(staged.pop(name), out_dir / name)
    except BaseException as err:
        for tmp in staged.values():
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename is None and err.errno:
            raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(out_dir / name)) from err
        raise
    fsync_dir(out_dir)


def versions() -> dict:
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
