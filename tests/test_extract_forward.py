"""The forward pass's stream: the features of each chunk in order, equal to one call per chunk, and (with two
batches in flight, as under jax and torch) the next chunk's batch submitted before the previous one is fetched."""

import numpy as np
import pytest

from extract import ExtractorConfigError, get_extractor
from extract.applications import VGG16Extractor
from extract.forward import make_forward


@pytest.fixture(scope="module")
def extractor():
    e = get_extractor("vgg16", weights="none", input_size=32, pooling="avg", batch_size=4)
    e(np.zeros((1, 32, 32, 3), np.uint8))  # builds the model
    return e


def _chunks(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8) for n in sizes]


SIZES = [4, 1, 0, 9, 4, 0, 0, 3]  # one batch, a padded one, empty ones, several batches with a padded tail


def test_stream_gives_each_chunk_what_one_call_gives(extractor):
    chunks = _chunks(SIZES)
    out = list(extractor.stream(iter(chunks)))
    assert [o.shape for o in out] == [(n, 512) for n in SIZES]
    for got, chunk in zip(out, chunks):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, extractor(chunk), rtol=1e-5, atol=1e-6)


def _recorded(in_flight):
    """This backend's forward pass (its own model) with `in_flight` set as under jax and torch, recording its
    calls."""
    model = get_extractor("vgg16", weights="none", input_size=32, pooling="avg").model
    base = type(make_forward(model, 4, (32, 32, 3)))

    class Recorded(base):
        def submit(self, batch):
            self.events.append("submit")
            return super().submit(batch)

        def fetch(self, handle):
            self.events.append("fetch")
            return super().fetch(handle)

    forward = Recorded(model, 4, (32, 32, 3))
    forward.in_flight, forward.events = in_flight, []
    return forward


@pytest.mark.parametrize("in_flight", [1, 2, 3])
def test_batches_stay_in_flight_across_chunks(extractor, in_flight):
    forward = _recorded(in_flight)
    chunks = _chunks([4, 4, 4, 4])  # one batch each, as run_extract feeds them
    taken = []

    def feed():
        for i, chunk in enumerate(chunks):
            taken.append(i)
            yield chunk

    got = []
    for out in forward.stream(feed()):
        got.append(out)
        # a chunk's features come out once `in_flight - 1` later chunks are on the device (or there are no more)
        assert len(taken) == min(len(chunks), len(got) + in_flight - 1)
    assert forward.events[:in_flight] == ["submit"] * in_flight
    assert forward.events.count("submit") == forward.events.count("fetch") == 4
    for a, b in zip(got, chunks):
        np.testing.assert_allclose(a, extractor(b), rtol=1e-5, atol=1e-6)


def test_a_chunk_of_the_wrong_shape_is_refused(extractor):
    with pytest.raises(ExtractorConfigError, match=r"images must have shape \(n, 32, 32, 3\)"):
        list(extractor.stream(iter([np.zeros((2, 16, 16, 3), np.uint8)])))


class Doubled(VGG16Extractor):
    """A subclass with a forward pass of its own."""

    def __call__(self, images):
        return 2 * super().__call__(images)


def test_a_subclass_with_its_own_call_is_what_the_stream_runs(extractor):
    chunks = _chunks([4, 3])
    doubled = Doubled(weights="none", input_size=32, pooling="avg", batch_size=4)
    for got, chunk in zip(doubled.stream(iter(chunks)), chunks):
        np.testing.assert_allclose(got, 2 * extractor(chunk), rtol=1e-5, atol=1e-6)
