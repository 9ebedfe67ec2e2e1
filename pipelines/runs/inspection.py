"""A human-readable report of a feature store (schema, counts, extractor, shards, failures), its JSON summary,
and compaction."""

from __future__ import annotations

import json
from pathlib import Path

import h5py

import features_store
from features_store.durable import atomic_write_bytes, h5_reading

MAX_FAILURES = 20  # failed rows that inspect lists (text and JSON); the errors dataset holds them all


def store_summary(store, *, max_failures: int = MAX_FAILURES) -> dict:
    """The `featurehead inspect --json` object: what `describe_store` says, as values (the first `max_failures`
    failed rows; `failed` counts them all)."""
    info = features_store.read_info(store)
    pending = info.n_rows - info.n_done
    unlisted = _unlisted_shards(info)
    return {
        "store": str(info.path), "schema_version": info.schema_version, "rows": info.n_rows,
        "stored_rows": info.stored_rows, "garbage_rows": info.garbage_rows, "shards": len(info.shards),
        "failed": info.n_failed, "complete": info.complete, "done": info.n_done, "pending_rows": pending,
        "resumable_rows": _resumable_rows(info, unlisted) if pending and not info.complete else 0,
        "unlisted_shards": unlisted, "unlisted_bytes": _size(info, unlisted),
        "fingerprint": info.fingerprint,
        "extractor": info.extractor, "n_features": info.n_features, "dtype": info.dtype,
        "classes": list(info.classes), "splits": info.split_counts, "features_layout": info.features_layout,
        "versions": info.versions, "shard_versions": [s["versions"] for s in info.shards],
        "created": info.created, "stopped": info.stopped,
        "datasets": {name: {"shape": list(shape), "dtype": dtype} for name, shape, dtype in _datasets(store)},
        "failures": [{"filename": i, "error": reason} for i, reason in features_store.read_errors(store)[:max_failures]],
    }


def _datasets(store) -> list[tuple[str, tuple, str]]:
    """(name, shape, dtype) of each dataset of the view file."""
    with h5_reading(Path(store) / "features.h5") as f:
        return [(name, obj.shape, str(obj.dtype)) for name, obj in f.items() if isinstance(obj, h5py.Dataset)]


def describe_store(store, *, max_failures: int = MAX_FAILURES) -> str:
    """Return the text `featurehead inspect` prints."""
    info = features_store.read_info(store)
    pending = info.n_rows - info.n_done
    writers = sorted({json.dumps(s["versions"], sort_keys=True) for s in info.shards})
    lines = [
        f"store:       {info.path}",
        f"schema:      featurehead v{info.schema_version} (a directory: features.h5, manifest.json, shards/)",
        f"status:      {_status(info, pending)}",
        f"rows:        {info.n_rows} in the view ({info.n_failed} failed)",
        f"stored:      {info.stored_rows} rows in {len(info.shards)} shard{'' if len(info.shards) == 1 else 's'}, "
        f"{info.garbage_rows} garbage"
        + (f" (`featurehead compact {info.path}` drops them)" if info.garbage_rows else ""),
        *_unlisted_line(info),
        f"features:    {info.n_features} x {info.dtype} ({info.features_layout} in features.h5)",
        f"classes:     {len(info.classes)}" + (f" ({', '.join(info.classes[:10])}{', ...' if len(info.classes) > 10 else ''})" if info.classes else ""),
        f"splits:      {', '.join(f'{k or (chr(39) * 2)}={v}' for k, v in sorted(info.split_counts.items()))}",
        f"fingerprint: {info.fingerprint}",
        f"extractor:   {json.dumps(info.extractor, sort_keys=True)}",
        f"created:     {info.created}",
        f"shards by:   {'; '.join(writers) if writers else '-'}",
        "datasets of features.h5:",
    ]
    lines += [f"  {name:<12} {str(shape):<16} {dtype}" for name, shape, dtype in _datasets(store)]
    failures = features_store.read_errors(store)
    if failures:
        lines.append(f"failures ({len(failures)}):")
        lines += [f"  {i}: {reason}" for i, reason in failures[:max_failures]]
        if len(failures) > max_failures:
            lines.append(f"  ... and {len(failures) - max_failures} more (read the `errors` dataset)")
    return "\n".join(lines)


def _status(info, pending: int) -> str:
    if info.complete:
        return "complete"
    if pending == 0:  # a run stopped after its last shard, before rewriting the view
        return "INCOMPLETE (every row is extracted; re-run extract to rewrite the view)"
    if info.stopped:  # "re-run extract to resume" would stop the same way
        return (f"INCOMPLETE ({pending} of {info.n_rows} rows not extracted yet): the last extract stopped, and a "
                f"re-run stops again: {info.stopped}")
    resumable = _resumable_rows(info, _unlisted_shards(info))
    on_disk = (f", {resumable} of them on disk in the shards of an unfinished run (running now, or interrupted: a "
               "re-run resumes them)" if resumable else "")
    return f"INCOMPLETE ({pending} of {info.n_rows} rows not extracted yet{on_disk}); re-run extract to resume"


def _resumable_rows(info, unlisted: list[str]) -> int:
    """The durable rows in the shard files of an unfinished run (`unlisted`: `_unlisted_shards(info)`), which a re-run
    resumes."""
    return sum(features_store.durable_rows(info.path, name) for name in unlisted)


def _unlisted_shards(info) -> list[str]:
    """Shard files the manifest does not list: an unfinished run's (running, or interrupted: the next run resumes
    them), or old shards a killed compaction had not deleted yet (the next extract or compact deletes them)."""
    return features_store.unlisted_shards(info.path, (s["file"] for s in info.shards))


def _unlisted_line(info) -> list[str]:
    """The `unlisted:` line of a complete store that holds shard files its manifest does not list (no line when
    it holds none; an incomplete store's are in its `status:` line)."""
    names = _unlisted_shards(info) if info.complete else []
    if not names:
        return []
    size = _size(info, names)
    return [f"unlisted:    {len(names)} shard file{'' if len(names) == 1 else 's'} ({size / 2**20:.1f} MiB) that the "
            "manifest does not list: a compaction's, running now, or old shards that an interrupted one left "
            f"(`featurehead compact {info.path}` deletes those)"]


def _size(info, names: list[str]) -> int:
    """The bytes of the store's shard files `names` (one deleted meanwhile counts 0)."""
    folder = Path(features_store.shards_dir(info.path))
    size = 0
    for name in names:
        try:
            size += (folder / name).stat().st_size
        except OSError:
            pass
    return size


def compact_store(store, *, shard_rows: int | None = None, failed: bool = False) -> dict:
    """Drop the stored rows that the store's view does not use (and with `failed`, the rows of images that could
    not be read, which the next extraction tries again); return the counts before and after."""
    manifest = features_store.read_manifest(store)
    if manifest is None:
        raise features_store.StoreNotFoundError(f"{store} holds no features yet; nothing to compact.")
    with features_store.StoreSession.open(store, fingerprint=manifest.fingerprint, extractor=manifest.extractor,
                                          dtype=manifest.dtype) as session:
        return session.compact(shard_rows, failed=failed)


def failures_csv_path(store) -> Path:
    """Where `write_failures_csv` puts a store's list of failed rows: next to it, `STORE.failed.csv`."""
    return Path(str(Path(store)) + ".failed.csv")


def write_failures_csv(store, path=None) -> Path | None:
    """Write the failed rows of a store as `id,reason` next to it; return the path, or None if none failed (a
    list left by an earlier run is then removed: it would list rows that no longer fail)."""
    import csv
    import io

    failures = features_store.read_errors(store)
    path = Path(path) if path is not None else failures_csv_path(store)
    if not failures:
        path.unlink(missing_ok=True)
        return None
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["id", "reason"])
    writer.writerows(failures)
    atomic_write_bytes(path, text.getvalue().encode())
    return path
