"""st.callbacks.BatchSizeScheduler (issue 17 item 3) and the Smith et al. 2017 example:
growing the batch instead of decaying the learning rate."""

import os
import sys

import numpy as np
import pytest

import steepest as st

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import batch_size_schedule  # noqa: E402


def mlp():
    st.manual_seed(0)
    model = st.Sequential([st.layers.Input((6,)), st.layers.Dense(8, activation="tanh"), st.layers.Dense(3)])
    model.compile(optimizer=st.optimizers.SGD(0.05, momentum=0.9),
                  loss=st.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((100, 6)).astype(np.float32), rng.integers(0, 3, 100)


class Batches(st.callbacks.Callback):
    def __init__(self):
        self.per_epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.per_epoch.append(self.model.optimizer.iterations)


def test_each_epoch_runs_with_the_scheduled_batch_size(data):
    x, y = data
    seen, counter = [], Batches()
    model = mlp()
    schedule = st.callbacks.BatchSizeScheduler(lambda epoch, size: seen.append(size) or 10 * 2 ** epoch)
    model.fit(x, y, batch_size=10, epochs=4, verbose=0, callbacks=[schedule, counter], seed=0)
    assert seen == [10, 10, 20, 40]  # each call gets the size the previous epoch used
    # 100 samples in batches of 10, 20, 40, 80: 10, 5, 3 and 2 steps.
    assert np.diff([0, *counter.per_epoch]).tolist() == [10, 5, 3, 2]


def test_the_same_as_separate_fits_with_those_batch_sizes(data):
    x, y = data
    scheduled = mlp()
    scheduled.fit(x, y, batch_size=10, epochs=3, verbose=0, shuffle=False,
                  callbacks=[st.callbacks.BatchSizeScheduler(lambda epoch, size: [10, 25, 50][epoch])])
    separate = mlp()
    for size in (10, 25, 50):
        separate.fit(x, y, batch_size=size, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(scheduled.get_weights(), separate.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_schedule_of_the_epoch_alone(data):
    x, y = data
    counter = Batches()
    mlp().fit(x, y, batch_size=10, epochs=2, verbose=0, callbacks=[
        st.callbacks.BatchSizeScheduler(lambda epoch: 50 * (epoch + 1)), counter])
    assert np.diff([0, *counter.per_epoch]).tolist() == [2, 1]
    with pytest.raises(TypeError, match="callable"):
        st.callbacks.BatchSizeScheduler(64)


def test_bad_schedules_and_streamed_inputs_are_refused(data):
    x, y = data
    for bad in (0, -3, 2.5, None, True):
        with pytest.raises(ValueError, match="positive int batch size"):
            mlp().fit(x, y, epochs=1, verbose=0,
                      callbacks=[st.callbacks.BatchSizeScheduler(lambda epoch, size, bad=bad: bad)])

    def batches():
        while True:
            yield x[:10], y[:10]

    with pytest.raises(ValueError, match="generator or PyDataset makes its own batches"):
        mlp().fit(batches(), steps_per_epoch=2, epochs=1, verbose=0,
                  callbacks=[st.callbacks.BatchSizeScheduler(lambda epoch, size: 20)])


@pytest.mark.training
def test_growing_the_batch_matches_decaying_the_rate_with_fewer_updates():
    decay = batch_size_schedule.run("decay", seed=0, epochs=12)
    grow = batch_size_schedule.run("grow", seed=0, epochs=12)
    assert grow["updates"] < 0.6 * decay["updates"]
    assert grow["accuracy"] > 0.9 and abs(grow["accuracy"] - decay["accuracy"]) < 0.03
