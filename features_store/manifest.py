"""The manifest `STORE/manifest.json`: the store's identity and its complete shards; the one commit point.

It is replaced atomically (temporary file, fsync, rename, fsync of the folder), so a crash leaves either the
old list or the new one. Each shard's keys live in the shard itself (`keys`), which is never rewritten.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

from features_store import schema
from features_store.durable import atomic_write_bytes, h5_reading
from features_store.errors import StoreDamagedError, StoreMismatchError, StoreNotFoundError, StoreVersionError
from features_store.shard import shard_of


@dataclass(frozen=True)
class ShardRecord:
    """One complete shard: its file (under `shards/`), its rows, failed rows and who wrote it."""

    file: str
    rows: int
    failed: int
    versions: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"file": self.file, "rows": self.rows, "failed": self.failed, "versions": self.versions}


@dataclass(frozen=True)
class Manifest:
    """The store's identity (one extractor fingerprint, one feature shape) and its complete shards."""

    fingerprint: str
    extractor: dict
    n_features: int
    dtype: str
    created: str
    shards: tuple[ShardRecord, ...] = ()
    schema_version: int = schema.SCHEMA_VERSION
    # why the last extraction stopped where a re-run stops again (features this store cannot hold); "" otherwise
    stopped: str = ""

    @property
    def stored_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def with_shards(self, shards) -> Manifest:
        return replace(self, shards=tuple(shards))

    def to_json(self) -> bytes:
        body = {"schema_version": self.schema_version, "fingerprint": self.fingerprint, "extractor": self.extractor,
                "n_features": self.n_features, "dtype": self.dtype, "created": self.created,
                "shards": [s.to_dict() for s in self.shards]}
        if self.stopped:
            body["stopped"] = self.stopped
        return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode("utf-8")


def new_manifest(fingerprint: str, extractor: dict, n_features: int, dtype: str) -> Manifest:
    """An empty manifest for a new store."""
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return Manifest(str(fingerprint), dict(extractor), int(n_features), str(dtype), created)


def manifest_path(store: str | os.PathLike) -> str:
    return os.path.join(os.fspath(store), schema.MANIFEST_FILE)


def check_store_path(store: str | os.PathLike) -> str:
    """Refuse what is not a v2 store directory with one line: a missing path, or a v1 single-file store."""
    store = os.fspath(store)
    if os.path.isfile(store):
        kind = _single_file_kind(store)
        if kind == "exported":
            raise StoreNotFoundError(
                f"{store} is a file that `featurehead export` wrote (plain HDF5 for other tools: h5py, pandas); "
                "featurehead's commands read the store directory it was exported from."
            )
        if kind == "view":
            folder = os.path.dirname(store) or "."
            raise StoreNotFoundError(f"{store} is the view file of the store {folder}; featurehead's commands take the "
                                     f"store directory: {folder}")
        if kind != "v1":
            raise StoreNotFoundError(f"{store} is a file, not a feature store (a store is a directory).")
        raise StoreVersionError(
            f"{store} is a featurehead v1 single-file store; stores are now directories keyed by image content. "
            f"Re-extract into a directory: featurehead extract INDEX ... --out {_suggest(store)} "
            "(v1 stores are not migrated: they do not record the images' content)."
        )
    if not os.path.isdir(store):
        raise StoreNotFoundError(f"No feature store at {store}; run `featurehead extract ... --out {store}` to create it.")
    return store


def _single_file_kind(path: str) -> str:
    """"v1" (a single-file store of featurehead v1), "exported" (`export`'s file), "view" (a v2 store's view file,
    given in place of its directory) or "" (any other file)."""

    try:
        with h5_reading(path) as f:
            if "schema_version" not in f.attrs:
                return ""
            layout = f.attrs.get("features_layout", "")
            if (layout.decode() if isinstance(layout, bytes) else layout) == "exported":
                return "exported"
            in_a_store = os.path.basename(path) == schema.VIEW_FILE and os.path.isfile(
                manifest_path(os.path.dirname(path) or "."))
            return "view" if in_a_store and int(f.attrs["schema_version"]) >= schema.SCHEMA_VERSION else "v1"
    except OSError:
        return ""


def _suggest(path: str) -> str:
    root, ext = os.path.splitext(path)
    return root if ext in (".h5", ".hdf5") else f"{path}.store"


def read_manifest(store: str | os.PathLike) -> Manifest | None:
    """The store's manifest, or None when the directory holds none yet."""
    store = check_store_path(store)
    path = manifest_path(store)
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            body = json.loads(f.read().decode("utf-8"))
        if isinstance(body, dict) and "schema_version" not in body and "model_file" in body:
            raise StoreNotFoundError(f"{store} is a head bundle (what `featurehead train` writes), not a feature store "
                                     "(what `featurehead extract` writes); give a store, or extract into a new folder")
        if int(body["schema_version"]) != schema.SCHEMA_VERSION:
            raise StoreVersionError(
                f"{store} has schema version {body['schema_version']}, this featurehead reads "
                f"{schema.SCHEMA_VERSION}; re-extract it into a new directory."
            )
        shards = tuple(ShardRecord(str(s["file"]), int(s["rows"]), int(s["failed"]), dict(s.get("versions", {})))
                       for s in body["shards"])
        return Manifest(str(body["fingerprint"]), dict(body["extractor"]), int(body["n_features"]),
                        str(body["dtype"]), str(body["created"]), shards, stopped=str(body.get("stopped", "")))
    except (StoreVersionError, StoreNotFoundError):
        raise
    except OSError as err:  # permissions, I/O: the file itself may be fine
        damaged = StoreDamagedError(f"{path} cannot be read ({err.strerror or err}); check its permissions and the disk.")
        damaged.certain = False
        raise damaged from err
    except (ValueError, KeyError, TypeError) as err:
        why = f"it has no {err}" if isinstance(err, KeyError) else str(err)
        # the shards keep their rows, and their names are planned from the keys: a re-run finds them again
        raise StoreDamagedError(
            f"{path} is not a readable store manifest ({why}); delete it and re-run the same `featurehead extract` "
            "(its options as they were, --dtype among them): it lists again the complete shards on disk that it plans "
            "(all of them for a store extracted in one run) and extracts the rest."
        ) from err


STORE_NAMES = frozenset({schema.VIEW_FILE, schema.MANIFEST_FILE, schema.SHARDS_DIR})


def foreign_files(path: str | os.PathLike, ours=STORE_NAMES) -> list[str]:
    """The names in the folder `path` other than `ours` (by default, what a store holds): images, a project's
    files; sorted. Hidden names (a `.DS_Store`, the temporary files of a killed write) do not count; [] for a
    folder that cannot be listed."""
    try:
        names = os.listdir(path)
    except OSError:
        return []
    return sorted(n for n in names if n not in ours and not n.startswith("."))


def store_foreign_files(path: str | os.PathLike) -> list[str]:
    """`foreign_files(path)`, and the names in its `shards/` folder other than a store's shard files (a shard, its
    lock file, its temporary file), as "shards/NAME": a folder of the user's own `shards/` (a WebDataset's tar files)
    is not a store's, and a store written there would delete them as unlisted shard files."""
    foreign = foreign_files(path)
    shards = os.path.join(os.fspath(path), schema.SHARDS_DIR)
    if os.path.lexists(shards) and not os.path.isdir(shards):
        return sorted([*foreign, schema.SHARDS_DIR])
    inner = foreign_files(shards, ours=frozenset())
    return sorted([*foreign, *(f"{schema.SHARDS_DIR}/{n}" for n in inner if not _a_shard_file(n))])


def _a_shard_file(name: str) -> bool:
    shard = shard_of(name)
    return shard.startswith("shard-") and shard.endswith(".h5")


def some(names: list[str], most: int = 3) -> str:
    """A few of `names` for a message: "a.jpg, b.jpg, c.jpg and 4 more"."""
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def is_store(path: str | os.PathLike) -> bool:
    """Whether `path` is a store directory: one whose `manifest.json` is a store's (of any schema version, readable
    or not as one), or a new store's before its first commit (a first run killed, or still running): shard files in
    its `shards/` folder, and nothing that is not a store's (`store_foreign_files`), which `extract` resumes. Writers
    of other outputs (head bundles, reports, the feature cache) refuse such a directory."""
    target = os.path.join(os.fspath(path), schema.MANIFEST_FILE)
    try:
        with open(target, "rb") as f:
            body = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        shards = os.path.join(os.fspath(path), schema.SHARDS_DIR)
        try:
            holds_shards = any(_a_shard_file(n) for n in os.listdir(shards))
        except OSError:
            return False
        return holds_shards and not store_foreign_files(path)
    return isinstance(body, dict) and "schema_version" in body


def commit_manifest(store: str | os.PathLike, manifest: Manifest) -> None:
    """Replace the manifest atomically; after this returns, the listed shards are the store's."""
    atomic_write_bytes(manifest_path(store), manifest.to_json())


def spec_differences(stored: dict, asked: dict, most: int = 4) -> str:
    """What differs between two extractor specs, as "layer None -> 'x', input_size 96 -> 128" (their config first,
    then the rest: the model, the decoder, a weights file's hash); "" when nothing shown differs."""
    def flat(spec):
        spec = dict(spec or {})
        out = {k: v for k, v in dict(spec.pop("config", {}) or {}).items()}
        out.update({k: v for k, v in spec.items() if k not in out})
        return out

    a, b = flat(stored), flat(asked)
    changes = [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]
    shown = ", ".join(changes[:most]) + (f" and {len(changes) - most} more" if len(changes) > most else "")
    return f"stored -> asked: {shown}" if changes else ""


def check_identity(store: str, manifest: Manifest, fingerprint: str, n_features: int | None, dtype: str,
                   extractor: dict | None = None) -> None:
    """Refuse, with one line, a writer of another extractor (`extractor`: the spec asked for), feature width or
    dtype."""
    if manifest.fingerprint != fingerprint:
        asked = (extractor or {}).get("name")
        differs = spec_differences(manifest.extractor, extractor) if extractor else ""
        raise StoreMismatchError(
            f"{store} holds features of another extractor ({manifest.extractor.get('name', '?')}, fingerprint "
            f"{manifest.fingerprint[:12]}), not of the one asked for ({asked + ', ' if asked else ''}fingerprint "
            f"{fingerprint[:12]}{'; ' + differs if differs else ''}); use another --out for this extractor."
        )
    if n_features is not None and manifest.n_features != n_features:
        raise StoreMismatchError(f"{store} holds {manifest.n_features} features per row, not {n_features}.")
    if manifest.dtype != dtype:
        raise StoreMismatchError(f"{store} stores {manifest.dtype} features, not {dtype}; use another --out.")
