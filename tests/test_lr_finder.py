"""model.find_learning_rate and `steepest lr-find`: the learning-rate range test (Smith
2017), which must leave the model exactly as it found it."""

import importlib.util

import numpy as np
import pytest

import steepest as st
from steepest.cli import main


@pytest.fixture(scope="module")
def digits():
    (x, y), _ = st.datasets.load_digits(flatten=True)
    return x, y


def mlp(optimizer):
    st.manual_seed(0)
    model = st.Sequential([st.layers.Input((64,)), st.layers.Dense(32, activation="relu"),
                           st.layers.Dense(10)])
    model.compile(optimizer=optimizer, loss=st.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def test_returns_the_exponential_range_the_smoothed_losses_and_a_suggestion(digits):
    model = mlp("adam")
    rates, losses, suggestion = model.find_learning_rate(*digits, start=1e-5, end=10.0, steps=60, seed=1)
    assert rates.shape == losses.shape and 2 <= len(rates) <= 60
    np.testing.assert_allclose(rates, 1e-5 * (1e6) ** (np.arange(len(rates)) / 59))
    # Adam diverges well before 10 on this model: the loss rises again after its minimum.
    assert np.argmin(losses) < len(losses) - 5 and losses[-1] > 1.25 * losses.min()
    assert 1e-4 < suggestion < rates[np.argmin(losses)] + 1e-12
    assert np.all(np.isfinite(losses))
    # With a lower divergence threshold the test stops as soon as it is crossed.
    rates, losses, _ = mlp("adam").find_learning_rate(*digits, start=1e-5, end=10.0, steps=60,
                                                      divergence=1.2, seed=1)
    assert len(rates) < 60 and losses[-1] > 1.2 * losses.min() and losses[-2] <= 1.2 * losses[:-1].min()


def test_smoothing_is_the_bias_corrected_moving_average(digits, monkeypatch):
    import steepest.lr_finder as lr_finder

    raw = []
    original = lr_finder._RangeTest.on_epoch_end

    def record(self, epoch, logs=None):
        raw.append(logs["loss"])
        original(self, epoch, logs)

    monkeypatch.setattr(lr_finder._RangeTest, "on_epoch_end", record)
    _, losses, _ = mlp("sgd").find_learning_rate(*digits, start=1e-4, end=1e-2, steps=10,
                                                 smoothing=0.9, seed=0)
    average, expected = 0.0, []
    for i, loss in enumerate(raw):
        average = 0.9 * average + 0.1 * loss
        expected.append(average / (1 - 0.9 ** (i + 1)))
    np.testing.assert_allclose(losses, expected, rtol=1e-12)


def test_leaves_weights_optimizer_and_schedule_untouched(digits):
    x, y = digits
    schedule = st.schedules.StepDecay(0.05, 20, 0.5)
    tested = mlp(st.optimizers.SGD(schedule, momentum=0.9))
    tested.fit(x, y, epochs=1, seed=3, verbose=0)  # optimizer state and a step count exist
    before = [w.copy() for w in tested.get_weights()]
    iterations = tested.optimizer.iterations
    tested.find_learning_rate(x, y, steps=30, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(before, tested.get_weights()))
    assert tested.optimizer.iterations == iterations
    assert tested.optimizer.get_config()["learning_rate"] is schedule
    reference = mlp(st.optimizers.SGD(schedule, momentum=0.9))
    reference.fit(x, y, epochs=1, seed=3, verbose=0)
    # The next fit (same shuffling, same optimizer state) is bit-identical.
    h1 = tested.fit(x, y, epochs=2, seed=3, verbose=0).history
    h2 = reference.fit(x, y, epochs=2, seed=3, verbose=0).history
    assert h1 == h2
    assert all(np.array_equal(a, b) for a, b in zip(tested.get_weights(), reference.get_weights()))


def test_builds_an_unbuilt_model_first_and_bad_arguments(digits):
    x, y = digits
    model = st.Sequential([st.layers.Dense(10)])
    model.compile(optimizer="sgd", loss=st.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.find_learning_rate(x, y, steps=5)
    assert model.built
    with pytest.raises(ValueError, match="steps must be an int >= 2"):
        model.find_learning_rate(x, y, steps=1)
    with pytest.raises(ValueError, match="0 < start < end"):
        model.find_learning_rate(x, y, start=1.0, end=0.1)
    with pytest.raises(ValueError, match="smoothing"):
        model.find_learning_rate(x, y, smoothing=1.0)
    with pytest.raises(ValueError, match="divergence"):
        model.find_learning_rate(x, y, divergence=0.5)
    with pytest.raises(RuntimeError, match="compile"):
        st.Sequential([st.layers.Input((64,)), st.layers.Dense(10)]).find_learning_rate(x, y)


def test_cli_lr_find(capsys, tmp_path):
    rc = main(["lr-find", "--model", "mlp", "--optimizer", "adam", "--steps", "40", "--start", "1e-4"])
    out, _ = capsys.readouterr()
    assert rc == 0 and "Suggested learning rate:" in out
    suggestion = float(out.rsplit("Suggested learning rate:", 1)[1])
    assert 1e-4 <= suggestion <= 10
    rc = main(["lr-find", "--start", "1", "--end", "0.1"])
    _, err = capsys.readouterr()
    assert rc == 1 and "--start 1 must be below --end 0.1" in err


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_cli_lr_find_plot(capsys, tmp_path):
    path = tmp_path / "lr.png"
    assert main(["lr-find", "--model", "mlp", "--steps", "10", "--plot", str(path)]) == 0
    assert path.stat().st_size > 0
