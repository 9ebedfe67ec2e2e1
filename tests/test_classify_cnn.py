import numpy as np
import pytest

from classify.cnn import FEATURE_LAYER, CNNConfigError, build_cnn, build_transfer, make_optimizer, train_cnn


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 8)
    X = rng.uniform(0, 0.5, (16, 12, 12, 1)).astype("float32")
    X[y == 1, 3:9, 3:9] += 0.5  # class 1 has a bright square
    return X, y


def test_layer_names_and_shapes():
    model = build_cnn((12, 12, 1), 3, filters=4, dense_units=8)
    names = [layer.name for layer in model.layers[1:]]
    assert names == ["features_conv1", "features_conv2", "features_pool", "features_dropout", FEATURE_LAYER,
                     "classifier_dense", "classifier_dropout", "predictions"]
    assert tuple(model.get_layer(FEATURE_LAYER).output.shape) == (None, 4 * 4 * 4)
    assert tuple(model.output.shape) == (None, 3)


def test_train_on_arrays_returns_history_and_epoch_times(data):
    X, y = data
    model = build_cnn(X.shape[1:], 2, filters=4, dense_units=8, seed=0)
    history = train_cnn(model, X, y, epochs=2, batch_size=8)
    assert len(history["loss"]) == len(history["accuracy"]) == len(history["epoch_seconds"]) == 2
    assert all(s > 0 for s in history["epoch_seconds"])


def test_epoch_times_leave_out_the_validation_after_each_epoch(data):
    """With val rows scored after every epoch (pretrain-cnn), the "s / epoch" of docs/experiments.md counted
    that scoring too. A probe stalls every validation by 0.3 s: the epoch times do not hold it."""
    import time

    import keras

    class Probe(keras.callbacks.Callback):  # runs after the timer (train_cnn puts its own callback first)
        def on_epoch_begin(self, epoch, logs=None):
            self.begin = time.perf_counter()

        def on_test_begin(self, logs=None):
            time.sleep(0.3)

        def on_epoch_end(self, epoch, logs=None):
            whole.append(time.perf_counter() - self.begin)

    whole = []
    X, y = data
    model = build_cnn(X.shape[1:], 2, filters=4, dense_units=8, seed=0)
    history = train_cnn(model, X, y, epochs=2, batch_size=8, validation_data=(X[:4], y[:4]), callbacks=[Probe()])
    assert len(history["val_loss"]) == len(history["epoch_seconds"]) == len(whole) == 2
    assert all(0 < s <= w - 0.3 for s, w in zip(history["epoch_seconds"], whole))


def test_transfer_freezes_the_feature_block(data):
    import keras

    X, y = data
    base = build_cnn(X.shape[1:], 3, filters=4, dense_units=8, seed=0)
    model = build_transfer(base, 2, dense_units=8, seed=1)
    features = keras.Model(base.inputs, base.get_layer(FEATURE_LAYER).output)
    before = np.asarray(features.predict_on_batch(X))
    train_cnn(model, X, y, epochs=1, batch_size=8)
    np.testing.assert_array_equal(np.asarray(features.predict_on_batch(X)), before)
    assert [w.name for w in model.trainable_weights] == ["kernel", "bias", "kernel", "bias"]  # the two new Dense
    assert tuple(model.output.shape) == (None, 2)


def test_seeded_builds_are_identical():
    a = build_cnn((12, 12, 1), 2, filters=4, dense_units=8, seed=3).get_weights()
    b = build_cnn((12, 12, 1), 2, filters=4, dense_units=8, seed=3).get_weights()
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa, wb)


@pytest.mark.parametrize(
    "call, match",
    [
        pytest.param(lambda: build_cnn((12, 12, 1), 1), r"`n_classes` must be an integer >= 2\. Received: n_classes=1", id="classes"),
        pytest.param(lambda: build_cnn((5, 12, 1), 2), r"`input_shape` must be at least 6x6 pixels .*Received: input_shape=\(5, 12, 1\)", id="size"),
        pytest.param(lambda: make_optimizer("adagrad"), r"`optimizer` must be one of 'adam', 'adadelta', 'sgd', 'rmsprop'\. Received: optimizer='adagrad'", id="optimizer"),
        pytest.param(lambda: build_transfer(build_cnn((12, 12, 1), 2, filters=4, dense_units=8), 2, feature_layer="flatten"),
                     r"`feature_layer` must be one of the base's layers .*Received: feature_layer='flatten'$", id="feature-layer"),
        pytest.param(lambda: build_transfer(build_cnn((12, 12, 1), 2, filters=4, dense_units=8), 2,
                                            feature_layer="features_flaten"),
                     r"Received: feature_layer='features_flaten' \(did you mean 'features_flatten'\?\)$",
                     id="feature-layer-typo"),
    ],
)
def test_errors(call, match):
    with pytest.raises(CNNConfigError, match=match):
        call()


def test_optimizer_learning_rate():
    assert float(make_optimizer("adadelta", 1.0).learning_rate) == 1.0
    assert float(make_optimizer("adadelta").learning_rate) == pytest.approx(0.001)  # the Keras default
