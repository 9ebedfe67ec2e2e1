"""The Dask driver's own cost per shard: committing a finished 4096-row shard (reading its keys, rewriting the
manifest atomically with two fsyncs), as the manifest grows. Rows per second at which the driver saturates is
shard_rows / seconds per commit.

    python benchmarks/driver_commit.py --shards 200 --workdir /tmp/fh/commit
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import features_store as fs  # noqa: E402

FP = "b" * 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=200)
    parser.add_argument("--shard-rows", type=int, default=4096)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    store = Path(args.workdir or tempfile.mkdtemp(prefix="driver_commit-")) / "store"
    shutil.rmtree(store, ignore_errors=True)
    n = args.shard_rows
    plans = [[f"{s * n + i:064x}" for i in range(n)] for s in range(args.shards)]
    with fs.StoreSession.open(store, fingerprint=FP, extractor={"name": "bench"}) as session:
        for keys in plans:  # what the workers do: write complete shards (not timed)
            with fs.ShardWriter.open(store, keys, fingerprint=FP, n_features=8) as w:
                w.write(np.zeros((n, 8), np.float32), np.ones(n, bool))
                w.finish()
        session.missing(plans[0])  # the driver has loaded the (empty) key table, as in a run
        times = []
        for keys in plans:  # what the driver does per finished shard
            t0 = time.perf_counter()
            session.commit_shard(keys, n_features=8)
            times.append(time.perf_counter() - t0)
    first, last = np.median(times[:10]), np.median(times[-10:])
    print(f"commit of a {n}-row shard: {first * 1e3:.1f} ms with 1-10 shards listed, {last * 1e3:.1f} ms with "
          f"{args.shards - 9}-{args.shards}; driver ceiling about {n / last:,.0f} rows/s")


if __name__ == "__main__":
    main()
