"""SIGKILL a writing process at many moments; every kill must leave a resumable store."""

import random
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

import features_store as fs

N, D, BATCH = 400, 2048, 8  # 128 rows per 1 MiB chunk: several chunks, each rewritten by many batches

SCRIPT = f"""
import sys, time
import numpy as np
import features_store as fs

path, compression = sys.argv[1], (sys.argv[2] or None)
n, d = {N}, {D}
with fs.StoreWriter.open(
    path, fingerprint="c" * 64, extractor={{"name": "crash"}}, index_sha256="i" * 64, n_features=d,
    ids=[f"{{i}}.png" for i in range(n)], labels=np.arange(n) % 3, classes=["a", "b", "c"],
    split=["train"] * n, compression=compression,
) as writer:
    print(writer.n_done, flush=True)
    for lo, hi in fs.batch_plan(n, {BATCH}, writer.n_done):
        rows = np.arange(lo, hi)
        x = np.sin(rows[:, None] * 0.01 + np.arange(d)[None, :]).astype(np.float32)
        ok = rows % 37 != 5
        writer.write(lo, x, ok, [f"row {{r}} failed: é" for r in rows])
        print(hi, flush=True)
        time.sleep(float(sys.argv[3]))
    writer.finish()
"""


def run_writer(path, compression, sleep=0.0, kill_at=None, jitter=0.0):
    """Run the writer to the end, or SIGKILL it `jitter` s after it reports row `kill_at` (-1: at once)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(path), compression or "", str(sleep)],
        stdout=subprocess.PIPE, text=True,
    )
    with proc:
        if kill_at is None:
            proc.communicate(timeout=60)
            assert proc.returncode == 0
            return
        if kill_at >= 0:
            for line in proc.stdout:  # progress lines, not a clock: a loaded machine cannot skew the kills
                if int(line) >= kill_at:
                    break
        time.sleep(jitter)
        proc.kill()  # SIGKILL
        proc.communicate(timeout=60)


@pytest.mark.parametrize(
    "compression, kill_rows",
    [
        pytest.param(None, [-1, 40, 96, 150, 210, 270, 330], id="uncompressed"),
        # compressed rows become durable a whole chunk (here 128 rows) at a time
        pytest.param("lzf", [-1, 60, 150, 200, 290, 310, 340], id="lzf"),
    ],
)
def test_sigkill_at_any_moment_leaves_a_resumable_store(tmp_path, compression, kill_rows):
    clean = tmp_path / "clean.h5"
    run_writer(clean, compression)
    want = fs.read_features(clean)
    rng = random.Random(1234)
    path = tmp_path / "crash.h5"
    done = []
    for kill_at in kill_rows:
        run_writer(path, compression, sleep=0.002, kill_at=kill_at, jitter=rng.uniform(0, 0.004))
        if not path.exists():  # killed before creation finished: nothing half-made under PATH
            continue
        with h5py.File(path, "r") as f:
            assert f["features"].shape == (N, D)
        info = fs.read_info(path)
        assert info.n_done >= (done[-1] if done else 0)
        assert info.n_done % BATCH == 0
        done.append(info.n_done)
        np.testing.assert_array_equal(fs.read_features(path, allow_incomplete=True), want[: info.n_done])
    assert len([d for d in done if 0 < d < N]) >= 5, f"kills did not land mid-write: {done}"
    run_writer(path, compression)

    assert fs.read_info(path).complete and fs.read_info(path).n_failed == fs.read_info(clean).n_failed == 11
    np.testing.assert_array_equal(fs.read_features(path), want)
    got, want = fs.read_meta(path), fs.read_meta(clean)
    np.testing.assert_array_equal(got.ok, want.ok)
    np.testing.assert_array_equal(got.errors, want.errors)
