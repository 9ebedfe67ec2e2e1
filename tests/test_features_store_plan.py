import pytest

from features_store import batch_plan, chunk_rows, default_store_name
from features_store.plan import mismatches


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


def test_mismatches_names_each_difference():
    stored = {"fingerprint": "aaa", "n_rows": 10, "n_features": 4}
    assert mismatches(stored, dict(stored)) == []
    assert mismatches(stored, {"fingerprint": "bbb", "n_rows": 10, "n_features": 8}) == [
        "fingerprint: stored='aaa', asked='bbb'",
        "n_features: stored=4, asked=8",
    ]
