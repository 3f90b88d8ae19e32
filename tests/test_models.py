"""Sequential: training, evaluation, persistence, callbacks and bad input."""

import _thread
import os
import threading

import numpy as np
import pytest

import steepest as st
from helpers import blobs


def _blobs(n=600, features=16, classes=4, seed=0):
    return blobs(n, features, classes, seed)


def _mlp(features=16, classes=4, dropout=0.0, optimizer="adamw"):
    st.manual_seed(1)
    layers = [st.layers.Input((features,)), st.layers.Dense(32, activation="relu")]
    if dropout:
        layers.append(st.layers.Dropout(dropout, seed=7))
    layers.append(st.layers.Dense(classes))
    model = st.Sequential(layers)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_fit_learns_and_reports_history():
    x, y = _blobs()
    model = _mlp()
    history = model.fit(x, y, batch_size=32, epochs=5, validation_split=0.25, verbose=0, seed=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert len(history.history["loss"]) == 5
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["val_accuracy"][-1] > 0.9
    loss, accuracy = model.evaluate(x, y)
    assert isinstance(loss, float) and loss > 0 and accuracy > 0.9


def test_evaluate_matches_numpy_on_predictions():
    x, y = _blobs()
    model = _mlp()
    model.fit(x, y, epochs=2, verbose=0, seed=0)
    logits = model.predict(x).astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected_loss = -log_p[np.arange(len(y)), y].mean()
    logs = model.evaluate(x, y, batch_size=64, return_dict=True)
    assert logs["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert logs["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == y))


def test_softmax_output_with_probability_loss_is_fused_and_equivalent():
    x, y = _blobs()
    st.manual_seed(3)
    logits_model = st.Sequential([st.layers.Input((16,)), st.layers.Dense(4)])
    st.manual_seed(3)
    softmax_model = st.Sequential([st.layers.Input((16,)), st.layers.Dense(4, activation="softmax")])
    logits_model.compile("sgd", st.losses.SparseCategoricalCrossentropy(from_logits=True))
    softmax_model.compile("sgd", "sparse_categorical_crossentropy")
    a = logits_model.evaluate(x, y)
    b = softmax_model.evaluate(x, y)
    assert a == pytest.approx(b, rel=1e-6)
    probabilities = softmax_model.predict(x)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_regression_with_mse_and_mae_metric():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 3)).astype(np.float32)
    y = (x @ np.array([1.5, -2.0, 0.5]) + 0.3).astype(np.float32)
    st.manual_seed(0)
    model = st.Sequential([st.layers.Input((3,)), st.layers.Dense(1)])
    model.compile(st.optimizers.Adam(learning_rate=0.05), loss="mse", metrics=["mae"])
    history = model.fit(x, y, batch_size=16, epochs=30, verbose=0, seed=0)
    assert history.history["loss"][-1] < 1e-3
    assert history.history["mae"][-1] < 0.05


def test_save_load_predictions_identical(tmp_path):
    x, y = _blobs()
    model = _mlp(dropout=0.2)
    model.fit(x, y, epochs=2, verbose=0, seed=0)
    path = str(tmp_path / "model.steepest")
    model.save(path)
    loaded = st.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert [type(l).__name__ for l in loaded.layers] == ["Dense", "Dropout", "Dense"]


def test_save_load_then_continue_equals_uninterrupted(tmp_path):
    x, y = _blobs()
    uninterrupted = _mlp(dropout=0.2)
    uninterrupted.fit(x, y, epochs=4, verbose=0, seed=5)

    resumed = _mlp(dropout=0.2)
    resumed.fit(x, y, epochs=2, verbose=0, seed=5)
    path = str(tmp_path / "ckpt.steepest")
    resumed.save(path)
    del resumed
    restored = st.models.load_model(path)
    restored.fit(x, y, epochs=2, verbose=0, seed=5)
    for a, b in zip(restored.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert restored.optimizer.iterations == uninterrupted.optimizer.iterations


def test_save_is_atomic_and_corruption_is_detected(tmp_path):
    x, y = _blobs()
    model = _mlp()
    model.fit(x, y, epochs=1, verbose=0, seed=0)
    path = str(tmp_path / "model.steepest")
    model.save(path)
    assert [p for p in os.listdir(tmp_path) if p != "model.steepest"] == []  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    blob = open(path, "rb").read()

    truncated = tmp_path / "truncated.steepest"
    truncated.write_bytes(blob[: len(blob) - 100])
    with pytest.raises(ValueError, match="truncated|corrupt"):
        st.models.load_model(str(truncated))

    flipped = bytearray(blob)
    flipped[len(blob) - 50] ^= 0x10
    (tmp_path / "flipped.steepest").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="checksum|corrupt"):
        st.models.load_model(str(tmp_path / "flipped.steepest"))

    header_flip = bytearray(blob)
    header_flip[20] ^= 0x01
    (tmp_path / "header.steepest").write_bytes(bytes(header_flip))
    with pytest.raises(ValueError, match=r"\[load_model\]"):
        st.models.load_model(str(tmp_path / "header.steepest"))


def test_loaded_model_rejects_wrong_input_width(tmp_path):
    x, y = _blobs()
    model = _mlp()
    model.fit(x, y, epochs=1, verbose=0, seed=0)
    model.save(str(tmp_path / "m.steepest"))
    loaded = st.models.load_model(str(tmp_path / "m.steepest"))
    with pytest.raises(ValueError, match=r"expects inputs of shape \(None, 16\).*\(10, 12\)"):
        loaded.predict(np.zeros((10, 12), np.float32))


def test_conv_model_trains():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 256)
    x = rng.standard_normal((256, 1, 8, 8)).astype(np.float32) * 0.1
    x[y == 1, :, 2:6, 2:6] += 1.0  # class 1 has a bright square
    st.manual_seed(0)
    model = st.Sequential([
        st.layers.Input((1, 8, 8)),
        st.layers.Conv2D(8, 3, padding="same", activation="relu"),
        st.layers.MaxPool2D(2),
        st.layers.Conv2D(8, 3, activation="relu"),
        st.layers.AvgPool2D(2),
        st.layers.Flatten(),
        st.layers.Dense(2),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    assert model.layers[1].output_shape == (None, 8, 4, 4)
    history = model.fit(x, y, epochs=10, verbose=0, seed=0)
    assert history.history["accuracy"][-1] > 0.95


def test_embedding_layernorm_model_trains():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 20, (300, 4))
    y = (x[:, 0] % 2).astype(np.int64)
    st.manual_seed(0)
    model = st.Sequential([
        st.layers.Input((4,)),
        st.layers.Embedding(20, 8),
        st.layers.LayerNormalization(),
        st.layers.Flatten(),
        st.layers.Dense(2),
    ])
    model.compile(st.optimizers.Adam(learning_rate=0.01), "sparse_categorical_crossentropy", ["accuracy"])
    history = model.fit(x, y, epochs=10, verbose=0, seed=0)
    assert history.history["accuracy"][-1] > 0.95


def test_progress_bar_output(capsys, monkeypatch):
    monkeypatch.setattr("steepest.models._interactive", lambda: True)  # as in a terminal
    x, y = _blobs(n=100)
    model = _mlp()
    model.fit(x, y, batch_size=50, epochs=2, verbose=1, seed=0)
    out = capsys.readouterr().out
    assert "Epoch 1/2" in out and "Epoch 2/2" in out
    assert "2/2 [==============================]" in out and "loss:" in out and "accuracy:" in out
    model.fit(x, y, batch_size=50, epochs=1, verbose=2, seed=0)
    assert "2/2 - " in capsys.readouterr().out


def test_summary_lists_layers(capsys):
    model = _mlp()
    model.summary()
    out = capsys.readouterr().out
    assert "dense" in out and "(None, 32)" in out and "Total params: 676" in out


# ---------------------------------------------------------------------------- callbacks


def test_early_stopping_and_checkpoint_and_csv(tmp_path):
    x, y = _blobs()
    model = _mlp()
    csv_path = tmp_path / "log.csv"
    callbacks = [
        st.callbacks.EarlyStopping(monitor="loss", patience=0, min_delta=10.0),
        st.callbacks.ModelCheckpoint(str(tmp_path / "ckpt-{epoch}.steepest")),
        st.callbacks.CSVLogger(str(csv_path)),
    ]
    history = model.fit(x, y, epochs=10, verbose=0, callbacks=callbacks, seed=0)
    assert len(history.history["loss"]) == 2  # no epoch improves by 10: stop after patience
    assert (tmp_path / "ckpt-1.steepest").exists() and (tmp_path / "ckpt-2.steepest").exists()
    lines = csv_path.read_text().strip().splitlines()
    assert lines[0] == "epoch,accuracy,loss" and len(lines) == 3


def test_terminate_on_nan_keeps_last_finite_weights():
    x, y = _blobs()
    model = _mlp(optimizer=st.optimizers.SGD(learning_rate=1e6))
    history = model.fit(x, y, epochs=5, verbose=0, seed=0, callbacks=[st.callbacks.TerminateOnNaN()])
    assert len(history.history["loss"]) == 1
    for w in model.get_weights():
        assert np.all(np.isfinite(w))


def test_keyboard_interrupt_stops_cleanly():
    x, y = _blobs(n=4000)
    model = _mlp()
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    history = model.fit(x, y, batch_size=1, epochs=1000, verbose=0, seed=0)
    timer.cancel()
    assert len(history.history["loss"]) < 1000
    for w in model.get_weights():
        assert np.all(np.isfinite(w))


# ---------------------------------------------------------------------------- bad input


def test_fit_before_compile():
    model = st.Sequential([st.layers.Input((4,)), st.layers.Dense(2)])
    with pytest.raises(RuntimeError, match=r"\[fit\] the model must be compiled"):
        model.fit(np.zeros((4, 4)), np.zeros(4))


def test_fit_length_mismatch():
    model = _mlp()
    with pytest.raises(ValueError, match=r"same number of samples.*\(10, 16\).*\(9,\)"):
        model.fit(np.zeros((10, 16)), np.zeros(9, np.int64), verbose=0)


def test_fit_wrong_input_width():
    model = _mlp()
    with pytest.raises(ValueError, match=r"expects inputs of shape \(None, 16\)"):
        model.fit(np.zeros((10, 15)), np.zeros(10, np.int64), verbose=0)


def test_labels_out_of_range():
    model = _mlp()
    with pytest.raises(ValueError, match=r"label 7 is out of range: the model outputs 4 classes"):
        model.fit(np.zeros((10, 16)), np.full(10, 7), verbose=0)


def test_nan_in_data():
    model = _mlp()
    x = np.zeros((10, 16), np.float32)
    x[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"x contains NaN or inf \(first at index \(3, 2\)\)"):
        model.fit(x, np.zeros(10, np.int64), verbose=0)


def test_unknown_names():
    model = st.Sequential([st.layers.Input((4,)), st.layers.Dense(2)])
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        model.compile("adamw", "hinge")
    with pytest.raises(ValueError, match="unknown optimizer 'adamax'"):
        model.compile("adamax", "mse")
    with pytest.raises(ValueError, match="unknown metric 'f1'"):
        model.compile("adamw", "mse", metrics=["f1"])
        model.fit(np.zeros((2, 4)), np.zeros((2, 2)), verbose=0)
    with pytest.raises(ValueError, match="unknown activation 'swishy'"):
        st.layers.Dense(3, activation="swishy")


def test_normalization_layer_standardises_and_is_not_trained(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((200, 3)) * [1.0, 5.0, 0.1] + [2.0, -3.0, 10.0]).astype(np.float32)
    y = rng.integers(0, 2, 200)
    norm = st.layers.Normalization()
    norm.adapt(x)
    st.manual_seed(0)
    model = st.Sequential([st.layers.Input((3,)), norm, st.layers.Dense(2)])
    out = norm(st.tensor(x)).numpy()
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=0), 1.0, rtol=1e-4)
    model.compile("sgd", "sparse_categorical_crossentropy")
    assert len(model.parameters()) == 2  # the Dense kernel and bias only
    before = norm.weights["mean"].numpy().copy()
    model.fit(x, y, epochs=2, verbose=0, seed=0)
    np.testing.assert_array_equal(norm.weights["mean"].numpy(), before)
    model.save(str(tmp_path / "n.steepest"))
    loaded = st.models.load_model(str(tmp_path / "n.steepest"))
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))

    scalar = st.layers.Normalization(axis=None, mean=2.0, variance=4.0)
    np.testing.assert_allclose(scalar(st.tensor([[4.0, 0.0]])).numpy(), [[1.0, -1.0]])


def test_learning_rate_scheduler_sets_the_rate_each_epoch():
    x, y = _blobs()
    model = _mlp(optimizer=st.optimizers.SGD(learning_rate=0.1))
    seen = []

    def schedule(epoch, lr):
        seen.append(lr)
        return 0.1 * 0.5 ** epoch

    model.fit(x, y, epochs=3, verbose=0, seed=0,
              callbacks=[st.callbacks.LearningRateScheduler(schedule)])
    assert seen == pytest.approx([0.1, 0.1, 0.05])
    assert model.optimizer.learning_rate == pytest.approx(0.025)
