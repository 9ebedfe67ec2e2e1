"""The extraction runner: index -> content keys -> only the missing rows through the model -> store shards -> view.

A store (a directory, see `features_store`) keys its rows by image content. Each run hashes the index's files
(size and mtime spare unchanged ones), asks the store which keys it lacks, extracts only those into new shards,
and rewrites the view from the index. A relabel, a new split, a moved root or a removed image extracts nothing
and builds no model. Decoding (a thread pool a few batches ahead), the forward pass and the HDF5 writes (one
writer thread) overlap, each behind a bounded queue. The rows are planned in `planning`, the stores filled
in `filling`.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import features_store
from extract import ImageIndex, ImageReadError, PrecisionOverflowError
from features_store.plan import positive_int
from features_store.reader import open_view

from ..scale.distributed import fill_store_on_dask
from .filling import Target, fill_stores
from .planning import default_store_path, plan_rows, view_args
from .versions import base_versions
from .views import AugmentedViews, store_identity

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractResult:
    """What an extraction run did (plain values)."""

    store: Path
    n_rows: int
    n_failed: int
    n_extracted: int  # rows computed by this run (0 when everything was stored already), failed ones included
    up_to_date: bool
    fingerprint: str
    garbage_rows: int = 0
    n_repeated: int = 0  # rows whose image (its content) another row of the view also lists: stored once
    n_extracted_failed: int = 0  # of `n_extracted`, the rows whose image could not be decoded (stored as failed)
    # rows whose file could not be read at all when hashed (missing, unreadable, a folder): they have no content
    # key, so nothing is stored for them and every run tries them again; failed rows of the view like the above
    n_unreadable: int = 0


def run_extract(
    index: ImageIndex,
    extractor,
    out=None,
    *,
    strict: bool = False,
    workers: int | None = None,
    progress=None,
    views: AugmentedViews | None = None,
    shard_rows: int | None = None,
    dtype: str | None = None,
    client=None,
    overflow_advice: str | None = None,
) -> ExtractResult:
    """Bring the store `out` up to date with `index`: extract only the images it lacks, then rewrite its view.

    Parameters
    ----------
    index : ImageIndex
    extractor : extract.Extractor
    out : str or Path, optional
        The store directory; defaults to `default_store_path(index, extractor)`.
    strict : bool
        Stop at the first image that fails instead of recording it as a failed row.
    workers : int, optional
        Decoding threads; default `extract.batches.default_workers()`, every core (benchmarks/README.md,
        "Input pipeline", measures the choice).
    progress : callable, optional
        `progress(total=..., initial=...)` returning an object with `update(n)` and `close()` (tqdm fits).
    views : AugmentedViews, optional
        Also store `views.k` augmented views of each training row after the originals. Views are keyed by the
        image's content, the view number and the augmentation, so they survive a relabel.
    shard_rows : int, optional
        Rows per shard; default `features_store.default_shard_rows` (4096, or fewer past 1 GiB of features).
    dtype : {"float32", "float16"}, optional
        Storage type of the features; default the existing store's own, float32 for a new store.
    client : distributed.Client, optional
        Extract the shards as Dask tasks on this client's workers (see `pipelines.scale.distributed`); the workers must
        see `out` and the images at the same paths (a shared filesystem on a real cluster).
    overflow_advice : str, optional
        What the error and the store's note advise after an overflow inside the network under float16 precision,
        instead of extract's "extract with --precision bfloat16 (float32's range) or float32 into another --out"
        (`run_predict`'s: its head fixes the precision).

    Returns
    -------
    ExtractResult
    """
    if views is not None:
        views.validate()
    # checked before anything is hashed or written (a bad `workers` left a new store "incomplete"); numpy
    # integers are integers (a parameter grid built with numpy hands them out)
    shard_rows = None if shard_rows is None else positive_int("shard_rows", shard_rows, "--shard-rows")
    workers = None if workers is None else positive_int("workers", workers, "--workers")
    out = Path(out) if out is not None else default_store_path(index, extractor, views)
    fp = extractor.fingerprint()
    if out.is_file():
        features_store.read_manifest(out)  # a v1 single-file store: one line that says what to do
    if dtype is None:
        manifest = features_store.read_manifest(out) if out.is_dir() else None
        dtype = manifest.dtype if manifest is not None else "float32"
    plan = plan_rows(index, out, views, workers)
    if out.is_dir() and not features_store.is_writable(out):  # a published, read-only store: up to date, or refused
        done = _up_to_date_as_it_is(index, plan, out, views, fp, dtype)
        if done is not None:
            return done
    if strict and any(plan.reasons):
        bad = next(i for i, reason in enumerate(plan.reasons) if reason)
        raise ImageReadError(f"{index.ids[plan.source[bad]]}: {plan.reasons[bad]} (--strict stops at the first failure)")
    with (features_store.StoreSession.open(out, fingerprint=fp, extractor=extractor.spec(), dtype=dtype) as session,
          stop_recorded(session, overflow_advice=overflow_advice)):
        target = Target(session, session.missing(plan.keys), shard_rows, plan.n_keys)
        args = view_args(index, plan, views)
        if client is not None:
            if target.missing and session.manifest is not None:
                session.write_view(**args, versions=base_versions())  # "incomplete" until the new rows are in
            extractor.validate()
            # a new store: "incomplete" from its first shard on (the model is built on the workers only)
            n_extracted = fill_store_on_dask(client, session, plan, target.missing, extractor, views=views,
                                             shard_rows=shard_rows, dtype=dtype, strict=strict, progress=progress,
                                             after_first_commit=lambda: session.write_view(**args,
                                                                                           versions=base_versions()))
            if session.manifest is None:  # nothing could be read: the width comes from the model here
                session.ensure_manifest(extractor.output_dim)
            session.write_view(**args, versions=base_versions())
            session.remove_orphans()
            info = features_store.read_info(out)
            # up to date only when nothing was missing: shards that an interrupted run's tasks finished, committed
            # now, were not (they were extracted, though by that run)
            return ExtractResult(out, info.n_rows, info.n_failed, n_extracted, not target.missing, fp,
                                 info.garbage_rows, plan.n_repeated, len(failed_keys(out, target.missing)),
                                 plan.n_unreadable)
        if target.missing or session.manifest is None:
            extractor.validate()
            session.ensure_manifest(extractor.output_dim)  # builds the model: something is to extract
            # readers see "incomplete, re-run" until the new rows are in, never a stale view of another index
            session.write_view(**args, versions=base_versions())

        def build():
            return [extractor.output_dim], lambda chunks: ([out] for out in extractor.stream(chunks))

        # `input_shape` of a saved model (`keras`, `cae`) loads it: only when something is to extract, so that a
        # relabel, a reorder or a moved root builds no model (and imports no Keras)
        n_extracted = 0 if not target.missing else fill_stores(
            plan, [target], build, input_size=extractor.input_shape[:2], views=views, strict=strict, workers=workers,
            progress=progress, batch_size=extractor.batch_size, resize=extractor.resize)
        session.write_view(**args, versions=base_versions())
        session.remove_orphans()
    info = features_store.read_info(out)
    return ExtractResult(out, info.n_rows, info.n_failed, n_extracted, n_extracted == 0, fp, info.garbage_rows,
                         plan.n_repeated, len(failed_keys(out, target.missing)) if n_extracted else 0,
                         plan.n_unreadable)


@contextmanager
def stop_recorded(session, *, overflow_advice: str | None = None):
    """Clear the note of an earlier run that stopped where a re-run stops again, and keep one for this run when it
    does (features the store's dtype cannot hold, inf or NaN out of the model, or an overflow inside the network
    under float16 precision): `inspect` and the readers then say why, instead of advising to resume.

    `overflow_advice` replaces extract's advice after an overflow, in the note and in the error raised."""
    session.record_stop("")
    try:
        yield
    except (features_store.FeatureRangeError, PrecisionOverflowError) as err:
        reason, reworded = str(err), None
        if isinstance(err, PrecisionOverflowError) and overflow_advice is not None and err.what:
            reason = f"{err.what}; {overflow_advice}"
            reworded = PrecisionOverflowError(reason)
            reworded.what = err.what
        elif isinstance(err, PrecisionOverflowError):  # the whole network's: every store it fills stops again
            reason += " into another --out"  # precision is in the fingerprint: not into this store
        elif err.store is None or os.path.abspath(err.store) != os.path.abspath(session.store):
            raise  # another store's shard (a sweep fills several; a Dask task's path is absolute): not this one's
        else:
            reason = err.reason
        try:
            session.record_stop(reason)
        except features_store.StoreWriteError as note_err:  # the run's own error is the one to report
            logger.warning("could not record why the extraction stopped: %s", note_err)
        if reworded is not None:
            raise reworded from err
        raise


def failed_keys(out: Path, keys: list[str]) -> set[str]:
    """Which of the stored rows `keys` (a run's) the view marks failed: images that could not be decoded."""
    if not keys:
        return set()
    cols = open_view(out).cols
    return set(cols["keys"][~cols["ok"]].tolist()) & set(keys)


def _up_to_date_as_it_is(index, plan, out: Path, views, fp: str, dtype: str) -> ExtractResult | None:
    """The result of a store that already lists exactly this index, these images and this images root, complete,
    for this extractor and dtype (nothing to write: a read-only store is fine as it is); None otherwise."""
    try:
        view = open_view(out)  # read once: its summary and its keys
        info = view.info()
    except (features_store.FeatureStoreError, OSError, KeyError):
        return None
    same_keys = features_store.digest_keys(view.cols["keys"]) == features_store.digest_keys(plan.keys)
    attrs = view_args(index, plan, views)["attrs"]
    if not (info.complete and same_keys and info.fingerprint == fp and info.dtype == dtype
            and info.index_sha256 == store_identity(index, views)
            and all(str(info.attrs.get(k, "")) == str(v) for k, v in attrs.items())):
        return None
    return ExtractResult(out, info.n_rows, info.n_failed, 0, True, fp, info.garbage_rows, plan.n_repeated,
                         n_unreadable=plan.n_unreadable)
