"""Compaction: drop the stored rows that a store's view no longer references (removed or edited images).

It works through the one writer (`StoreSession`), so it keeps the store's promises: new shards first, then the
manifest and the view, and only then are the old files deleted. A crash at any point loses nothing.
"""

from __future__ import annotations

import json
import os

import numpy as np

from features_store import durable, schema
from features_store.plan import default_shard_rows, plan_shards
from features_store.shard import read_shard, shard_path, unlisted_shards
from features_store.view import take_rows, view_columns


def compact(session, shard_rows: int | None = None, *, failed: bool = False) -> dict[str, int]:
    """Drop the stored rows that the view does not reference; return the rows and shards before and after.

    Shards whose every row is referenced are kept as they are; the live rows of the others are copied into
    new shards, the manifest and the view are committed, and only then are the old files deleted. `failed`: the
    rows of images that could not be read go too (a failure is stored under the content's key, so a file that
    was unreadable for a while, an I/O error, would stay failed); the view then lists them as not extracted yet,
    and the next extraction tries them again.
    """
    view_path = os.path.join(session.store, schema.VIEW_FILE)
    if session.manifest is None or not os.path.exists(view_path):
        return {"rows_before": 0, "rows_after": 0, "shards_before": 0, "shards_after": 0}
    cols = view_columns(view_path)
    # every key the view names is live, extracted or not yet (a crashed run's committed shards count)
    live = {k for k in cols["keys"].tolist() if k}
    before = session.manifest
    keep, rewrite = [], []
    seen: set[str] = set()
    dropped: set[str] = set()
    for record in before.shards:
        keys, ok, _ = read_shard(shard_path(session.store, record.file), record.rows)
        if failed:
            dropped.update(k for k, good in zip(keys, ok) if not good and k not in seen)
        wanted = [k for k in keys if k in live and k not in seen and k not in dropped]
        seen.update(wanted)
        (keep if len(wanted) == len(keys) else rewrite).append((record, keys, wanted))
    if not rewrite:
        # nothing to copy, but a compaction stopped while deleting (a kill, an I/O error) left the old shards it had
        # already unlisted: they are the disk space this command promises to free (not an unfinished extract's)
        session.remove_orphans(keep=_resumable(session, live - seen - dropped))
        return {"rows_before": before.stored_rows, "rows_after": before.stored_rows,
                "shards_before": len(before.shards), "shards_after": len(before.shards)}
    # the old shards stay listed until the new view no longer uses them: a crash here loses nothing
    moved = [(record, keys, wanted) for record, keys, wanted in rewrite if wanted]
    shard_rows = shard_rows or default_shard_rows(before.n_features, np.dtype(before.dtype).itemsize)
    pool = [(record, keys.index(k), k) for record, keys, wanted in moved for k in wanted]
    written = []
    for part in plan_shards([k for _, _, k in pool], shard_rows):
        picked = pool[: len(part)]
        pool = pool[len(part):]
        with session.shard_writer(part, n_features=before.n_features) as writer:
            if writer.n_done < len(part):
                x, ok, err = _gather(session.store, picked[writer.n_done:])
                writer.write(x, ok, err, finite=False)  # as stored (an older featurehead stored a model's inf)
            session.commit(writer, versions={"compacted": "true"})
            written.append(writer.name)
    # the shards this run planned, including those an interrupted compaction already wrote and listed (same
    # keys, same names): they hold the moved rows, whether or not `before` listed them
    records = {r.file: r for r in session.manifest.shards}
    new = [records[name] for name in written]  # never a kept shard: they hold no key of the pool
    session.adopt(before.with_shards([r for r, _, _ in keep] + new))  # the view is written against this
    attrs = {k: str(v) for k, v in cols["attrs"].items() if k not in schema.VIEW_ATTRS}
    session.write_view(ids=cols["ids"], keys=cols["keys"], labels=cols["labels"], classes=cols["classes"],
                       split=cols["split"], view=cols["view"], source=cols["source"],
                       stats={name: cols[name] for name in schema.STAT_COLUMNS}, reasons=cols["errors"], attrs=attrs,
                       index_sha256=str(cols["attrs"].get("index_sha256", "")),
                       versions=_json_attr(cols["attrs"].get("versions")))
    session.write_manifest()  # only now are the rewritten shards unlisted
    session.remove_orphans(keep=_resumable(session, live - seen - dropped))  # never a dropped failure's old shard
    return {"rows_before": before.stored_rows, "rows_after": session.manifest.stored_rows,
            "shards_before": len(before.shards), "shards_after": len(session.manifest.shards)}


def _resumable(session, pending: set[str]) -> list[str]:
    """The unlisted shard files that hold a live key no listed shard holds: an unfinished extract's, which its
    re-run resumes (a compaction's leftovers hold only moved or dead keys)."""
    if not pending:
        return []
    keep = []
    for name in unlisted_shards(session.store, (s.file for s in session.manifest.shards)):
        try:
            with durable.h5_reading(shard_path(session.store, name)) as f:
                if pending.intersection(f["keys"].asstr()[:].tolist()):
                    keep.append(name)
        except (OSError, KeyError, RuntimeError, ValueError):
            continue
    return keep


def _gather(store: str, picked) -> tuple[np.ndarray, np.ndarray, list[str]]:
    xs, oks, errs = [], [], []
    by_file: dict[str, list[int]] = {}
    for record, r, _ in picked:
        by_file.setdefault(record.file, []).append(r)
    order = []
    for file, rows in by_file.items():
        with durable.h5_reading(shard_path(store, file)) as f:
            rows_a = np.asarray(rows)
            xs.append(take_rows(f["features"], rows_a))
            oks.append(f["ok"][:][rows_a].astype(bool))
            errs += f["errors"].asstr()[:][rows_a].astype(str).tolist()
        order += [(file, r) for r in rows]
    position = {fr: i for i, fr in enumerate(order)}
    idx = [position[(record.file, r)] for record, r, _ in picked]
    x, ok = np.concatenate(xs)[idx], np.concatenate(oks)[idx]
    return x, ok, [errs[i] for i in idx]


def _json_attr(value) -> dict:
    try:
        return json.loads(value) if value else {}
    except (TypeError, ValueError):
        return {}
