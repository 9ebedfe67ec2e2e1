"""Decoding many images at once: the decode pool of threads (one per core) that `read_batch` and the streaming
`decoded_batches` use. One image is `extract.images.load_image`; a file that cannot be decoded becomes a failed row
(zeros, `ok=False`, its reason), never an exception.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np

from .errors import ImageChangedError, ImageReadError
from .images import load_image


def default_workers() -> int:
    """Decoding threads: every core this process may run on (`--workers` overrides).

    Threads, not processes: libjpeg-turbo, OpenCV and Pillow's resize release the GIL, and threads hand their
    arrays over without pickling (measured in benchmarks/input_pipeline.py).
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _load_into(out: np.ndarray, i: int, path, size, resize: str, expected=None) -> str | None:
    """Decode `path` into `out[i]`; return None, or the failure reason (the row is set to zeros).

    `expected`, the file's (size, mtime_ns) when it was hashed, is checked once the file has been read: a file
    that changed or vanished at any moment since raises `ImageChangedError` (its features would be stored under
    the key of content it no longer has), never a failed row."""
    try:
        out[i] = load_image(path, size, resize)
        reason = None
    except ImageReadError as err:
        out[i] = 0
        reason = err.reason
    if expected is not None:
        _check_unchanged(path, expected)
    return reason


def _check_unchanged(path, expected) -> None:
    try:
        st = os.stat(path)
        now = (st.st_size, st.st_mtime_ns)
    except OSError as err:
        now = err.strerror or type(err).__name__
    if now != tuple(expected):
        how = "vanished" if isinstance(now, str) else "changed"
        raise ImageChangedError(f"{path} {how} after it was hashed, while it was being extracted; re-run the same "
                                "command (what is stored is kept, the rest is extracted)")


def read_batch(
    paths, size: int | tuple[int, int], executor: Executor | None = None, resize: str = "squash"
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode a batch of images; failures become rows of zeros with `ok=False`.

    Returns
    -------
    images : ndarray of shape (n, height, width, 3), uint8
    ok : ndarray of shape (n,), bool
    errors : list of str
        The failure reason per row, "" for ok rows.
    """
    h, w = (size, size) if isinstance(size, int) else size
    out = np.empty((len(paths), h, w, 3), dtype=np.uint8)
    n = len(paths)
    if executor is not None:
        reasons = list(executor.map(_load_into, [out] * n, range(n), paths, [(h, w)] * n, [resize] * n))
    else:
        reasons = [_load_into(out, i, p, (h, w), resize) for i, p in enumerate(paths)]
    ok = np.array([r is None for r in reasons], dtype=bool)
    return out, ok, [r or "" for r in reasons]


def decoded_batches(paths, size, plan, workers: int | None = None, resize: str = "squash", ahead: int = 2,
                    stats=None):
    """Yield `(lo, hi, images, ok, errors)` for each `(lo, hi)` of `plan`, in order.

    `stats`, when given, holds each path's (size, mtime_ns) when it was hashed: a file changed or removed since
    stops the run with `ImageChangedError` (see `_load_into`).

    Each batch is split into one task per thread of one pool (`workers` threads, default every core), and up to
    `ahead` batches beyond the one being consumed are decoding while the caller runs the model on it: the queue
    is bounded, so memory stays flat however long the run.
    """
    if not len(plan):
        return
    h, w = (size, size) if isinstance(size, int) else size
    workers = workers or default_workers()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="featurehead-decode")
    pending: deque = deque()
    batches = iter(plan)

    def decode(out, lo, start, stop):
        return [_load_into(out, i, paths[lo + i], (h, w), resize, None if stats is None else stats[lo + i])
                for i in range(start, stop)]

    def submit():
        lohi = next(batches, None)
        if lohi is not None:
            lo, hi = lohi
            out = np.empty((hi - lo, h, w, 3), dtype=np.uint8)  # not zeros: 4% of a cheap model's run (session 11)
            # one task per worker, each a contiguous part of the batch: a task per image cost 3-7% of a cheap
            # model's run in futures and thread wake-ups (benchmarks/README.md, session 11)
            step = -(-(hi - lo) // workers)
            futures = [pool.submit(decode, out, lo, s, min(s + step, hi - lo)) for s in range(0, hi - lo, step)]
            pending.append((lo, hi, out, futures))

    try:
        for _ in range(ahead + 1):
            submit()
        while pending:
            lo, hi, out, futures = pending.popleft()
            reasons = [r for f in futures for r in f.result()]
            submit()
            ok = np.array([r is None for r in reasons], dtype=bool)
            yield lo, hi, out, ok, [r or "" for r in reasons]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
