"""The one stratified hold-out (`classify.holdout`) and the one label <-> code mapping (`classify.encode_labels`)."""

import numpy as np
import pytest

from classify import encode_labels, holdout


def test_holdout_is_seeded_stratified_and_keeps_groups_whole():
    labels = np.repeat([0, 1], 30)
    groups = np.repeat(np.arange(12), 5)  # 12 images, each with 4 views: 5 rows per group
    train, held = holdout(labels, 0.25, groups=groups, random_state=0)
    assert set(groups[train]).isdisjoint(groups[held])
    assert len(train) + len(held) == 60 and len(held) == 3 * 5
    assert sorted(set(labels[held])) == [0, 1]  # each class on both sides
    again = holdout(labels, 0.25, groups=groups, random_state=0)
    np.testing.assert_array_equal(again[1], held)
    assert not np.array_equal(holdout(labels, 0.25, groups=groups, random_state=1)[1], held)


def test_holdout_holds_at_least_one_row_of_each_class():
    labels = np.array(["a"] * 5 + ["b"] * 5 + ["c"] * 5)
    _, held = holdout(labels, 0.05, random_state=0)
    assert sorted(set(labels[held])) == ["a", "b", "c"]


def test_holdout_refuses_or_falls_back_when_a_class_has_one_group():
    labels = np.array([0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="every class needs at least 2 groups"):
        holdout(labels, 0.4)
    train, held = holdout(labels, 0.4, fallback=True)
    assert len(held) == 2 and sorted(np.concatenate([train, held])) == [0, 1, 2, 3, 4]


def test_holdout_keeps_a_class_of_one_group_in_train_and_stratifies_the_rest():
    labels = np.array(["a"] * 6 + ["b"] * 6 + ["c"] + ["d"] * 4)
    groups = np.concatenate([np.repeat(np.arange(6), 2)[:12], [6], [7, 7, 8, 8]])  # "a"/"b" 3 images, views
    for seed in range(20):
        train, held = holdout(labels, 0.3, groups=groups, random_state=seed, fallback=True, singles_to_train=True)
        assert 12 in train and sorted(set(labels[held])) == ["a", "b", "d"]  # the lone "c" is never held out
        assert sorted(np.concatenate([train, held])) == list(range(17))
        assert not set(groups[train]) & set(groups[held])
    everything, nothing = holdout(["a", "b", "c"], 0.3, singles_to_train=True)
    assert everything.tolist() == [0, 1, 2] and nothing.size == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        pytest.param({"fraction": 0.0}, r"`fraction` must be in \(0, 1\). Received: fraction=0.0", id="zero"),
        pytest.param({"fraction": 0.5, "groups": [1, 2]}, r"`groups` must have shape \(4,\)", id="groups"),
    ],
)
def test_holdout_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        holdout([0, 0, 1, 1], **kwargs)


def test_encode_labels_in_any_class_order():
    np.testing.assert_array_equal(encode_labels(["b", "a", "c", "b"], ["c", "a", "b"]), [2, 1, 0, 2])
    assert encode_labels(["a"], ["a", "b"]).dtype == np.int32
    np.testing.assert_array_equal(encode_labels(["a", "", "z"], ["a", "b"], unknown="code"), [0, -1, -1])
    np.testing.assert_array_equal(encode_labels(["a"], [], unknown="code"), [-1])
    with pytest.raises(ValueError, match=r"batch labels must be among `classes` \['a', 'b'\]. Received: 'z'"):
        encode_labels(["a", "z"], ["a", "b"], name="batch labels")
    with pytest.raises(ValueError, match="`unknown` must be one of 'raise', 'code'"):
        encode_labels(["a"], ["a"], unknown="skip")
