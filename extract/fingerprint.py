"""The cache key of an extractor: the sha256 of its spec's canonical JSON."""

from __future__ import annotations

import hashlib
import json
import os


def canonical_json(obj) -> str:
    """JSON with sorted keys and no whitespace, so equal specs give equal strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def fingerprint(spec: dict) -> str:
    """Return the 64-hex-digit sha256 of `spec`'s canonical JSON."""
    return hashlib.sha256(canonical_json(spec).encode("utf-8")).hexdigest()


def file_sha256(path, chunk_size: int = 1 << 20) -> str:
    """The sha256 of a file's bytes, read in chunks (plain `os.read`: a 40 kB JPEG hashes in ~0.04 ms, and the
    less Python per file, the better hashing threads share the GIL; benchmarks/README.md, "Input pipeline")."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        while block := os.read(fd, chunk_size):
            h.update(block)
    finally:
        os.close(fd)
    return h.hexdigest()
