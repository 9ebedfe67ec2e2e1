"""The extraction runner: index -> decoded batches -> extractor -> feature store, resumable and cached.

Decoding runs in a thread pool one batch ahead of the forward pass, so the two overlap.
"""

from __future__ import annotations

import logging
import platform
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import features_store
from extract import ImageIndex, ImageReadError, read_batch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractResult:
    """What an extraction run did (plain values)."""

    store: Path
    n_rows: int
    n_failed: int
    n_extracted: int  # rows computed by this run (0 on a cache hit)
    up_to_date: bool
    fingerprint: str


def default_store_path(index: ImageIndex, extractor) -> Path:
    """A store path next to the index, naming the model and a short fingerprint."""
    src = Path(index.source)
    stem, parent = (src.name, src.parent) if src.is_dir() else (src.stem, src.parent)
    return parent / features_store.default_store_name(stem, extractor.name, extractor.fingerprint())


def library_versions() -> dict:
    import h5py

    versions = {"python": platform.python_version(), "numpy": np.__version__, "h5py": h5py.__version__}
    try:
        from importlib.metadata import version

        versions["featurehead"] = version("featurehead")
    except Exception:  # not installed as a distribution (running from a checkout)
        versions["featurehead"] = "unknown"
    import keras

    versions["keras"] = keras.__version__
    versions["keras_backend"] = keras.backend.backend()
    return versions


def label_codes(labels, classes) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup.get(lab, -1) for lab in labels], dtype=np.int32)


def check_existing(path: Path, index: ImageIndex, fingerprint: str):
    """Return the stored StoreInfo when `path` holds a store for this index and extractor, None if absent.

    Raises StoreMismatchError before any model is built when the store belongs to something else.
    """
    if not path.exists():
        return None
    info = features_store.read_info(path)
    asked = {"fingerprint": fingerprint, "index_sha256": index.sha256()}
    for key, value in asked.items():
        stored = getattr(info, key)
        if stored != value:
            raise features_store.StoreMismatchError(
                f"{path} holds features with another {key} ({stored[:12]}, asked {value[:12]}): "
                f"it was written for {'another extractor' if key == 'fingerprint' else 'another index'}; "
                f"use another --out or delete it"
            )
    return info


def run_extract(
    index: ImageIndex,
    extractor,
    out=None,
    *,
    strict: bool = False,
    workers: int = 4,
    progress=None,
) -> ExtractResult:
    """Extract features for every row of `index` into one HDF5 store, resuming or reusing what is there.

    Parameters
    ----------
    index : ImageIndex
    extractor : extract.Extractor
    out : str or Path, optional
        The store file; defaults to `default_store_path(index, extractor)`.
    strict : bool
        Stop at the first image that fails instead of recording it as a failed row.
    workers : int
        Decoding threads.
    progress : callable, optional
        `progress(total=..., initial=...)` returning an object with `update(n)` and `close()` (tqdm fits).

    Returns
    -------
    ExtractResult
    """
    out = Path(out) if out is not None else default_store_path(index, extractor)
    fp = extractor.fingerprint()
    info = check_existing(out, index, fp)
    if info is not None and info.complete:
        logger.info("%s is up to date", out)
        return ExtractResult(out, info.n_rows, info.n_failed, 0, True, fp)
    extractor.validate()
    classes = index.classes
    with features_store.StoreWriter.open(
        out,
        fingerprint=fp,
        extractor=extractor.spec(),
        index_sha256=index.sha256(),
        n_features=extractor.output_dim,
        ids=index.ids,
        labels=label_codes(index.labels, classes),
        classes=classes,
        split=index.split,
        versions=library_versions(),
        attrs={"index_source": index.source, "images_root": str(index.root)},
    ) as writer:
        start = writer.n_done
        n_extracted = _stream(index, extractor, writer, start, strict=strict, workers=workers, progress=progress)
        writer.finish()
    info = features_store.read_info(out)
    return ExtractResult(out, info.n_rows, info.n_failed, n_extracted, False, fp)


def _stream(index, extractor, writer, start, *, strict, workers, progress) -> int:
    paths = index.paths
    size = extractor.input_shape[:2]
    plan = features_store.batch_plan(len(paths), extractor.batch_size, start)
    bar = progress(total=len(paths), initial=start) if progress else None
    done = 0
    with ThreadPoolExecutor(max_workers=workers) as decoders, ThreadPoolExecutor(max_workers=1) as ahead:
        future = ahead.submit(read_batch, paths[plan[0][0] : plan[0][1]], size, decoders) if plan else None
        for i, (lo, hi) in enumerate(plan):
            images, ok, errors = future.result()
            if i + 1 < len(plan):  # decode the next batch while the model runs on this one
                nlo, nhi = plan[i + 1]
                future = ahead.submit(read_batch, paths[nlo:nhi], size, decoders)
            if strict and not ok.all():
                bad = int(np.flatnonzero(~ok)[0])
                raise ImageReadError(f"{index.ids[lo + bad]}: {errors[bad]} (--strict stops at the first failure)")
            features = np.full((hi - lo, writer.n_features), np.nan, dtype=np.float32)
            if ok.any():
                features[ok] = extractor(images[ok])
            writer.write(lo, features, ok, errors)
            done += hi - lo
            if bar is not None:
                bar.update(hi - lo)
    if bar is not None:
        bar.close()
    return done

