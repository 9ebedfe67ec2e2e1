"""The cache key of an extractor: the sha256 of its spec's canonical JSON."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def canonical_json(obj) -> str:
    """JSON with sorted keys and no whitespace, so equal specs give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def fingerprint(spec: dict) -> str:
    """Return the 64-hex-digit sha256 of `spec`'s canonical JSON."""
    return hashlib.sha256(canonical_json(spec).encode("utf-8")).hexdigest()


def file_sha256(path, chunk_size: int = 1 << 20) -> str:
    """The sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()
