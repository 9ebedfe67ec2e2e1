"""Pure planning: chunk sizes (the transformer cache, the SGD slabs), batch plans, shard plans and names."""

import hashlib

import pytest

from features_store import batch_plan, chunk_rows, default_shard_rows, default_store_name, plan_shards, shard_name

KEYS = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(10)]


@pytest.mark.parametrize(
    "n_features, itemsize, expected",
    [
        pytest.param(512, 4, 512, id="vgg-avg-float32"),
        pytest.param(512, 2, 1024, id="float16-doubles-rows"),
        pytest.param(25088, 4, 10, id="vgg-flatten"),
        pytest.param(1 << 20, 4, 1, id="at-least-one-row"),
    ],
)
def test_chunk_rows(n_features, itemsize, expected):
    assert chunk_rows(n_features, itemsize) == expected


def test_chunk_rows_target_bytes():
    assert chunk_rows(4, 4, target_bytes=64) == 4


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_chunk_rows_rejects_bad_n_features(bad):
    with pytest.raises(ValueError, match="`n_features` must be a positive integer. Received: n_features="):
        chunk_rows(bad)


@pytest.mark.parametrize(
    "n_rows, batch_size, start, expected",
    [
        pytest.param(10, 4, 0, [(0, 4), (4, 8), (8, 10)], id="last-short"),
        pytest.param(8, 4, 0, [(0, 4), (4, 8)], id="exact"),
        pytest.param(10, 4, 6, [(6, 10)], id="resume"),
        pytest.param(10, 4, 10, [], id="done"),
        pytest.param(0, 4, 0, [], id="empty"),
    ],
)
def test_batch_plan(n_rows, batch_size, start, expected):
    assert batch_plan(n_rows, batch_size, start) == expected


def test_batch_plan_covers_every_row_once():
    plan = batch_plan(1001, 64, start=17)
    rows = [r for lo, hi in plan for r in range(lo, hi)]
    assert rows == list(range(17, 1001))


def test_batch_plan_rejects_bad_batch_size():
    with pytest.raises(ValueError, match=r"`batch_size` must be a positive integer. Received: batch_size=0"):
        batch_plan(10, 0)


@pytest.mark.parametrize("start", [-1, 11])
def test_batch_plan_rejects_bad_start(start):
    with pytest.raises(ValueError, match=rf"`start` must be an integer in \[0, n_rows=10\]. Received: start={start}"):
        batch_plan(10, 4, start)


def test_batch_plan_rejects_bad_n_rows():
    with pytest.raises(ValueError, match="`n_rows` must be a non-negative integer. Received: n_rows=-1"):
        batch_plan(-1, 4)


def test_default_store_name():
    assert default_store_name("flowers", "vgg16", "0123456789abcdef") == "flowers.vgg16-0123456789"


@pytest.mark.parametrize(
    "n_keys, shard_rows, sizes",
    [
        pytest.param(10, 4, [4, 4, 2], id="last-short"),
        pytest.param(8, 4, [4, 4], id="exact"),
        pytest.param(3, 4096, [3], id="one-shard"),
        pytest.param(0, 4, [], id="nothing-missing"),
        pytest.param(3, 1, [1, 1, 1], id="a-row-per-shard"),
    ],
)
def test_plan_shards(n_keys, shard_rows, sizes):
    plan = plan_shards(KEYS[:n_keys], shard_rows)
    assert [len(part) for part in plan] == sizes
    assert [k for part in plan for k in part] == KEYS[:n_keys]  # every key once, in order
    assert plan_shards(iter(KEYS[:n_keys]), shard_rows) == plan  # the same keys always give the same plan


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None])
def test_plan_shards_rejects_bad_shard_rows(bad):
    with pytest.raises(ValueError, match=rf"`shard_rows` must be a positive integer. Received: shard_rows={bad!r}"):
        plan_shards(KEYS, bad)


@pytest.mark.parametrize(
    "n_features, itemsize, expected",
    [
        pytest.param(512, 4, 4096, id="vgg-avg"),
        pytest.param(25088, 4, 4096, id="vgg-flatten-under-1GiB"),
        pytest.param(1 << 18, 4, 1024, id="capped-at-1GiB"),
        pytest.param(1 << 18, 2, 2048, id="float16-doubles-rows"),
        pytest.param(1 << 31, 4, 1, id="at-least-one-row"),
    ],
)
def test_default_shard_rows(n_features, itemsize, expected):
    assert default_shard_rows(n_features, itemsize) == expected


def test_shard_names_are_keyed_by_fingerprint_and_keys():
    name = shard_name("f" * 64, KEYS[:4])
    assert name.startswith("shard-") and name.endswith(".h5") and len(name) == len("shard-.h5") + 24
    assert shard_name("f" * 64, list(KEYS[:4])) == name  # a resumed run finds the same file
    assert name not in {shard_name("e" * 64, KEYS[:4]), shard_name("f" * 64, KEYS[1:5]),
                        shard_name("f" * 64, KEYS[:4][::-1])}
