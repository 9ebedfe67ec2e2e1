"""The bundle's files: their names, the manifest (read and checked; written last, as the commit point), atomic
writes and sha256 checks, and the versions a manifest records."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import secrets
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from classify.errors import (
    BundleBusyError,
    BundleExistsError,
    BundleFormatError,
    BundleIntegrityError,
    BundleNotFoundError,
)

FORMAT_VERSION = 2  # 1: head.joblib only (a pickle), read only with trust_pickle=True
MANIFEST = "manifest.json"
MODEL_FILE = "head.skops"
NETWORK_FILE = "mlp.keras"  # the Keras network of an MLP head, beside its skops file
PICKLE_FILE = "head.joblib"  # only with model_format="joblib"
FULL_MODEL_FILE = "model.keras"  # kind "full": a whole Keras model, images in -> probabilities out
AUX_FILES = ("history.png",)  # written beside the model files, not listed by the manifest
LOCK_FILE = ".lock"  # saves into one folder take turns
LOCK_TIMEOUT_S = 120
# the lock, and the temporary files of a save (`write_files`; before 2026-12 `tempfile.mkstemp`'s) that was killed
_TRANSIENT = re.compile(r"\.lock|\..+\.[a-z0-9_]{8}\.tmp")
# model files: content-named (`content_name`), or the fixed names that bundles saved before 2026-12 use
_MODEL_FILE_NAME = re.compile(r"(?:head|mlp|model)(?:-[0-9a-f]{12})?\.(?:skops|keras|joblib)")
_CONTENT_NAMED = re.compile(r"(?:head|mlp|model)-[0-9a-f]{12}\.(?:skops|keras|joblib)")
KINDS = ("sklearn", "full")
MODEL_FORMATS = ("skops", "joblib")


def check_target(out_dir: Path) -> None:
    """Refuse to save a bundle into a directory that holds anything but a bundle (a feature store has a
    `manifest.json` too: saving over it would replace the store's manifest), or that a read-only or forbidden
    folder would refuse (an OSError: `train` and `finetune` call this before their fit, not only at the save). The
    lock file, and what a first save that was killed left (temporary files, content-named model files), count as
    nothing: the next save removes them."""
    from features_store.durable import check_writable

    _check_contents(out_dir)
    check_writable(out_dir)


def _check_contents(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise BundleExistsError(f"{out_dir} is a file; a head bundle is a folder: choose another --out")
    if not out_dir.is_dir() or all(_TRANSIENT.fullmatch(p.name) or _CONTENT_NAMED.fullmatch(p.name)
                                   for p in out_dir.iterdir()):
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


def content_name(name: str, data) -> str:
    """The name a model file is saved under: `name` with the first 12 hex digits of its sha256 before the
    extension (``head.skops`` -> ``head-0123456789ab.skops``), so that a new bundle's files never replace the
    files of the bundle it replaces before its manifest does."""
    stem, _, ext = name.partition(".")
    return f"{stem}-{sha256_of(data)[:12]}.{ext}"


def write_bundle(out_dir: Path, manifest: dict, files: dict, aux: dict | None = None) -> None:
    """Write a bundle, with one commit point: the rename of its manifest.

    `files` are the model files the manifest lists (with their sha256, `sha256_of`), under their content names
    (`content_name`): they are written in full beside the files of a bundle being replaced, which its manifest
    still names; the old bundle's plots (`AUX_FILES`) go; the manifest is renamed into place; the old bundle's
    model files go; then `aux` (plots, e.g. ``history.png``) is written. A save killed or stopped by a full disk
    at any moment leaves the old bundle or the new one, whole, and never a plot of the other beside it; what it
    leaves over (temporary files, unlisted model files) the next save into the folder removes. A plot that cannot
    be written after the commit is an OSError that says the bundle itself was saved. Saves into one folder take
    turns (`LOCK_FILE`), so two at once leave one of the two bundles, not a mix.
    """
    from features_store.durable import fsync_dir

    text = json.dumps(manifest, indent=2, default=_jsonable)
    aux = dict(aux or {})
    with _bundle_lock(out_dir):
        for leftover in out_dir.iterdir():  # the lock is ours: a temporary file is a killed save's
            if _TRANSIENT.fullmatch(leftover.name) and leftover.name != LOCK_FILE:
                leftover.unlink(missing_ok=True)
        write_files(out_dir, files)
        for name in AUX_FILES:  # the old head's curves are never left beside the new head
            (out_dir / name).unlink(missing_ok=True)
        write_files(out_dir, {MANIFEST: text.encode()})  # the commit point
        for old in out_dir.iterdir():
            if _MODEL_FILE_NAME.fullmatch(old.name) and old.name not in files:
                old.unlink(missing_ok=True)
        fsync_dir(out_dir)
        try:
            write_files(out_dir, aux)
        except OSError as err:
            raise OSError(err.errno, f"{err.strerror}; the bundle itself was saved, without this plot",
                          err.filename) from err


def _bundle_lock(out_dir: Path):
    from features_store.lock import folder_lock

    return folder_lock(out_dir, LOCK_FILE, timeout=LOCK_TIMEOUT_S, busy=BundleBusyError(
        f"{out_dir} has been saved into by another process for {LOCK_TIMEOUT_S} s (a `featurehead train` or "
        "`finetune` with the same --out?); re-run when it has finished"))


def reordered(fitted_classes, classes) -> bool:
    """Whether `classes` names a head's own classes (`classes_`, as strings) in another order than its
    predict_proba columns: predict would then label every row with the wrong class."""
    own = [str(c) for c in fitted_classes]
    return sorted(own) == sorted(classes) and own != list(classes)


def sha256_of(data) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(path: Path) -> dict:
    if path.is_file() and (path.parent / MANIFEST).is_file():
        raise BundleNotFoundError(f"no head bundle at {path}: it is a file of the bundle {path.parent}; give that "
                                  "folder")
    if path.is_file():
        raise BundleNotFoundError(f"no head bundle at {path}: it is a file; a head bundle is a folder (what "
                                  "`featurehead train --out` writes)")
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
    are they all renamed into place, so a failure replaces none of them. An `OSError` is raised again naming the
    file it was writing, never its temporary name. Files get the mode that the umask leaves of 0o666.
    """
    from features_store.durable import fsync_dir

    staged, name = {}, None
    try:
        for name, data in files.items():
            staged[name] = out_dir / f".{name}.{secrets.token_hex(4)}.tmp"
            fd = os.open(staged[name], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        for name in list(staged):
            os.replace(staged[name], out_dir / name)
            del staged[name]  # renamed: no temporary file to remove any more
    except BaseException as err:
        for tmp in staged.values():
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno and name is not None:
            raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(out_dir / name)) from err
        raise
    if files:
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
