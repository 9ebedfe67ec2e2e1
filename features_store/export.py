"""`export`: one self-contained HDF5 file with real datasets under the view's names, for readers with only h5py."""

from __future__ import annotations

import os

import numpy as np

from features_store import durable, schema
from features_store.errors import StoreDamagedError, StoreWriteError
from features_store.reader import open_view

_SLAB_BYTES = 64 << 20


def export(store: str | os.PathLike, out: str | os.PathLike) -> int:
    """Write the store's view, features included, to the single file `out`; return its rows.

    Every dataset of the view file is copied except the shard locations (`shard`, `shard_row`, `shard_files`),
    and `features` is a real dataset. The file is written under a temporary name and renamed into place.
    """
    view = open_view(store)
    visible = view.visible(fingerprint=None, allow_incomplete=False)
    n, d = len(visible), view.manifest.n_features
    dtype = np.dtype(view.manifest.dtype)
    slab = max(1, _SLAB_BYTES // (d * 4))
    out = os.fspath(out)
    source_file = os.path.join(view.store, schema.VIEW_FILE)

    def write(tmp: str) -> None:
        with durable.h5_reading(source_file) as src, durable.h5_writing(tmp) as f:
            if view.replaced():  # the columns copied below must be the rows whose features are read
                raise StoreDamagedError(f"{view.store} changed while it was exported (a writer replaced its view); "
                                        "export it again.")
            for name in src:
                if name not in ("features", "shard", "shard_row", "shard_files"):
                    src.copy(src[name], f, name)
            for key, value in src.attrs.items():
                f.attrs[key] = value
            f.attrs["features_layout"] = "exported"
            chunks = (max(1, min(n, (1 << 20) // (d * dtype.itemsize))), d) if n else None
            features = f.create_dataset("features", shape=(n, d), dtype=dtype, chunks=chunks)
            for lo in range(0, n, slab):
                features[lo : lo + slab] = view.features(visible[lo : lo + slab]).astype(dtype, copy=False)

    folder = os.path.dirname(os.path.abspath(out))
    if (os.path.realpath(out) + os.sep).startswith(os.path.realpath(view.store) + os.sep):  # its own view file
        raise StoreWriteError(f"{out} is inside the store {view.store}; export to a file outside it, e.g. "
                              f"{os.path.normpath(view.store)}.h5")
    if os.path.isdir(out):
        raise StoreWriteError(f"{out} is a folder; give the file to write, e.g. {os.path.join(out, 'features.h5')}")
    if os.path.lexists(out) and not _is_export(out):
        raise StoreWriteError(f"{out} exists and is not a file that export wrote (the index? an image?); refusing to "
                              "overwrite it: choose another --out")
    try:
        os.makedirs(folder, exist_ok=True)
        durable.check_writable(folder)  # before the free space: a small read-only mount said to free space
    except OSError as err:
        raise durable.write_error(err, store=folder, what=out) from err
    durable.remove_dead_writers_files(out)  # a killed export's copy would count against the space it needs
    # checked first: HDF5 meeting a full disk mid-write fails to flush its objects (tracebacks, a crash at exit)
    durable.check_free(folder, n * d * dtype.itemsize + os.path.getsize(source_file), store=folder, what=out)
    try:
        durable.atomic_write(out, write)
    except (StoreDamagedError, StoreWriteError):  # the store's own lines (also OSErrors), as they are
        raise
    except (OSError, RuntimeError) as err:  # RuntimeError: HDF5 failed to flush or close the file
        raise durable.write_error(err, store=folder, what=out) from err
    return n


def _is_export(path: str) -> bool:
    """Whether `path` is empty (`mktemp`: nothing to lose) or an HDF5 file that `export` wrote (one it may
    replace)."""
    try:
        if os.path.getsize(path) == 0:
            return True
        with durable.h5_reading(path) as f:
            return f.attrs.get("features_layout") == "exported"
    except (OSError, ValueError):
        return False
