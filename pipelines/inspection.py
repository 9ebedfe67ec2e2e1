"""A human-readable report of a feature store: schema, counts, extractor spec, completeness, failures."""

from __future__ import annotations

import json
from pathlib import Path

import h5py

import features_store


def describe_store(path, *, max_failures: int = 20) -> str:
    """Return the text `featurehead inspect` prints."""
    info = features_store.read_info(path)
    lines = [
        f"store:       {info.path}",
        f"schema:      featurehead v{info.schema_version}",
        f"status:      {'complete' if info.complete else f'INCOMPLETE ({info.n_done} of {info.n_rows} rows); re-run extract to resume'}",
        f"rows:        {info.n_rows} ({info.n_failed} failed)",
        f"features:    {info.n_features} x {info.dtype}, chunks {info.chunks}",
        f"classes:     {len(info.classes)}" + (f" ({', '.join(info.classes[:10])}{', ...' if len(info.classes) > 10 else ''})" if info.classes else ""),
        f"splits:      {', '.join(f'{k or (chr(39) * 2)}={v}' for k, v in sorted(info.split_counts.items()))}",
        f"fingerprint: {info.fingerprint}",
        f"extractor:   {json.dumps(info.extractor, sort_keys=True)}",
        f"created:     {info.created}",
        f"versions:    {json.dumps(info.versions, sort_keys=True)}",
        "datasets:",
    ]
    with h5py.File(path, "r") as f:
        for name, obj in f.items():
            if isinstance(obj, h5py.Dataset):
                lines.append(f"  {name:<10} {str(obj.shape):<16} {obj.dtype}")
    failures = features_store.read_errors(path)
    if failures:
        lines.append(f"failures ({len(failures)}):")
        lines += [f"  {i}: {reason}" for i, reason in failures[:max_failures]]
        if len(failures) > max_failures:
            lines.append(f"  ... and {len(failures) - max_failures} more (read the `errors` dataset)")
    return "\n".join(lines)


def write_failures_csv(store, path=None) -> Path | None:
    """Write the failed rows of a store as `id,reason` next to it; return the path, or None if none failed."""
    failures = features_store.read_errors(store)
    if not failures:
        return None
    path = Path(path) if path is not None else Path(str(store) + ".failed.csv")
    import csv

    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "reason"])
        writer.writerows(failures)
    return path
