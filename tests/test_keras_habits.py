"""Code written the way a Keras 3 user writes it runs unchanged on steepest."""

import numpy as np
import pytest

import steepest as st


def _blobs(n=256, features=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, features)) * 3
    y = rng.integers(0, classes, n)
    x = (centers[y] + rng.standard_normal((n, features))).astype(np.float32)
    return x, y.astype(np.int64)


def _classifier(features=8, classes=3, metrics=("accuracy",), optimizer="adam"):
    st.manual_seed(0)
    model = st.Sequential([
        st.layers.Input((features,)),
        st.layers.Dense(16, activation="relu"),
        st.layers.Dense(classes),
    ])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=list(metrics))
    return model


# ---------------------------------------------------------------- evaluate's return value

def test_evaluate_returns_loss_and_metrics_as_a_list():
    x, y = _blobs()
    model = _classifier()
    model.fit(x, y, epochs=2, verbose=0, seed=0)
    loss, accuracy = model.evaluate(x, y, verbose=0)
    assert isinstance(loss, float) and isinstance(accuracy, float)
    assert model.evaluate(x, y, return_dict=True) == {"loss": loss, "accuracy": accuracy}


def test_evaluate_without_metrics_returns_a_float():
    x, y = _blobs()
    model = _classifier(metrics=())
    loss = model.evaluate(x, y)
    assert isinstance(loss, float) and loss > 0
    assert model.evaluate(x, y, return_dict=True) == {"loss": loss}


def test_predict_takes_verbose():
    x, _ = _blobs()
    assert _classifier().predict(x, batch_size=64, verbose=0).shape == (len(x), 3)


# ---------------------------------------------------------------- losses over any leading shape

def _sequence_tagger(vocab=11, classes=5, steps=6, loss="sparse_categorical_crossentropy"):
    st.manual_seed(0)
    model = st.Sequential([
        st.layers.Input((steps,)),
        st.layers.Embedding(vocab, 8),
        st.layers.Dense(classes),
    ])
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    return model


def _log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def test_sparse_crossentropy_over_time_steps():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 11, (64, 6))
    tags = tokens % 5  # (B, T) int targets for (B, T, V) logits
    model = _sequence_tagger()
    history = model.fit(tokens, tags, batch_size=16, epochs=5, verbose=0, seed=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    logits = model.predict(tokens).astype(np.float64)
    assert logits.shape == (64, 6, 5)
    log_p = _log_softmax(logits)
    expected_loss = -np.take_along_axis(log_p, tags[..., None], axis=-1).mean()
    loss, accuracy = model.evaluate(tokens, tags, batch_size=10)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    assert accuracy == pytest.approx(np.mean(logits.argmax(-1) == tags))


def test_categorical_crossentropy_over_time_steps():
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 11, (32, 6))
    one_hot = np.eye(5, dtype=np.float32)[tokens % 5]  # (B, T, V)
    model = _sequence_tagger(loss="categorical_crossentropy")
    model.fit(tokens, one_hot, epochs=1, verbose=0, seed=0)
    logits = model.predict(tokens).astype(np.float64)
    loss, accuracy = model.evaluate(tokens, one_hot)
    assert loss == pytest.approx(-(one_hot * _log_softmax(logits)).sum(-1).mean(), rel=1e-5)
    assert accuracy == pytest.approx(np.mean(logits.argmax(-1) == tokens % 5))


@pytest.mark.parametrize("loss", ["mse", "mae", "binary_crossentropy"])
def test_elementwise_losses_average_over_every_element(loss):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 4, 3)).astype(np.float32)
    y = (rng.random((40, 4, 2)) > 0.5).astype(np.float32)
    st.manual_seed(0)
    model = st.Sequential([st.layers.Input((4, 3)), st.layers.Dense(2)])
    model.compile(optimizer="sgd", loss=loss, metrics=["mae"])
    out = model.predict(x).astype(np.float64)
    expected = {
        "mse": np.mean((out - y) ** 2),
        "mae": np.mean(np.abs(out - y)),
        "binary_crossentropy": np.mean(np.maximum(out, 0) - out * y + np.log1p(np.exp(-np.abs(out)))),
    }[loss]
    value, mae = model.evaluate(x, y, batch_size=16)
    assert value == pytest.approx(expected, rel=1e-5)
    assert mae == pytest.approx(np.mean(np.abs(out - y)), rel=1e-5)


def test_sparse_labels_of_the_wrong_shape_are_refused():
    model = _sequence_tagger()
    tokens = np.zeros((8, 6), dtype=np.int64)
    with pytest.raises(ValueError, match=r"expected class indices of shape \(8, 6\)"):
        model.fit(tokens, np.zeros((8, 5), dtype=np.int64), verbose=0)


# ---------------------------------------------------------------- progress output

class _Terminal:
    """A stdout that says it is a terminal and keeps what is written."""

    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_progress_is_one_line_per_epoch_outside_a_terminal(capsys):
    x, y = _blobs()
    _classifier().fit(x, y, epochs=2, verbose=1, seed=0)
    out = capsys.readouterr().out
    assert "\r" not in out
    lines = out.splitlines()
    assert lines[0] == "Epoch 1/2" and lines[2] == "Epoch 2/2" and len(lines) == 4
    assert "loss: " in lines[1] and "accuracy: " in lines[1]


def test_progress_bar_redraws_in_a_terminal(monkeypatch):
    x, y = _blobs()
    terminal = _Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    _classifier().fit(x, y, epochs=1, verbose=1, seed=0)
    assert "\r" in terminal.text and "[==============================]" in terminal.text


def test_verbose_0_prints_nothing_even_for_a_nan_loss(capsys, caplog):
    x, y = _blobs()
    model = _classifier(optimizer=st.optimizers.SGD(learning_rate=1e6))
    model.fit(x, y, epochs=3, verbose=0, seed=0, callbacks=[st.callbacks.TerminateOnNaN()])
    assert capsys.readouterr() == ("", "") and not caplog.records


def test_a_nan_loss_is_logged_on_the_steepest_logger(caplog):
    x, y = _blobs()
    model = _classifier(optimizer=st.optimizers.SGD(learning_rate=1e6))
    model.fit(x, y, epochs=3, verbose=2, seed=0, callbacks=[st.callbacks.TerminateOnNaN()])
    assert [r.name for r in caplog.records] == ["steepest"]
    assert "invalid loss, terminating training" in caplog.records[0].getMessage()
