"""Code written the way a Keras 3 user writes it runs unchanged on steepest."""

import numpy as np
import pytest

import steepest as st
from helpers import blobs


def _blobs(n=256, features=8, classes=3, seed=0):
    return blobs(n, features, classes, seed)


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


# ---------------------------------------------------------------- fit arguments

def _per_sample_crossentropy(model, x, y):
    log_p = _log_softmax(model.predict(x).astype(np.float64))
    return -log_p[np.arange(len(y)), y]


def test_sample_weight_weighs_the_loss_as_keras_does():
    x, y = _blobs()
    model = _classifier()
    w = np.random.default_rng(3).uniform(0.0, 2.0, len(x))
    loss, accuracy = model.evaluate(x, y, sample_weight=w, batch_size=50)
    # Σ w·loss / number of samples (not / Σ w); metrics stay unweighted.
    assert loss == pytest.approx(np.sum(w * _per_sample_crossentropy(model, x, y)) / len(x), rel=1e-5)
    assert accuracy == model.evaluate(x, y)[1]


def test_a_constant_sample_weight_scales_the_gradient():
    x, y = _blobs()
    doubled = _classifier(optimizer=st.optimizers.SGD(learning_rate=0.05))
    doubled.fit(x, y, epochs=2, verbose=0, seed=1, sample_weight=np.full(len(x), 2.0))
    faster = _classifier(optimizer=st.optimizers.SGD(learning_rate=0.1))
    faster.fit(x, y, epochs=2, verbose=0, seed=1)
    for a, b in zip(doubled.get_weights(), faster.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_class_weight_is_a_sample_weight_per_label():
    x, y = _blobs()
    by_class = _classifier()
    by_class.fit(x, y, epochs=2, verbose=0, seed=2, class_weight={0: 1.0, 1: 3.0, 2: 0.5})
    by_sample = _classifier()
    by_sample.fit(x, y, epochs=2, verbose=0, seed=2, sample_weight=np.array([1.0, 3.0, 0.5])[y])
    for a, b in zip(by_class.get_weights(), by_sample.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_sample_weight_per_time_step():
    rng = np.random.default_rng(4)
    tokens = rng.integers(0, 11, (32, 6))
    tags = tokens % 5
    mask = (rng.random((32, 6)) > 0.3).astype(np.float32)  # e.g. padding positions weigh 0
    model = _sequence_tagger()
    model.fit(tokens, tags, epochs=1, verbose=0, seed=0, sample_weight=mask)
    log_p = _log_softmax(model.predict(tokens).astype(np.float64))
    terms = -np.take_along_axis(log_p, tags[..., None], axis=-1)[..., 0]
    loss, _ = model.evaluate(tokens, tags, sample_weight=mask)
    assert loss == pytest.approx(np.sum(mask * terms) / terms.size, rel=1e-5)


def test_bad_sample_weight_is_refused():
    x, y = _blobs()
    with pytest.raises(ValueError, match=r"\[fit\] sample_weight of shape \(3,\) for 256 samples"):
        _classifier().fit(x, y, verbose=0, sample_weight=np.ones(3))


class _Epochs(st.callbacks.Callback):
    def __init__(self):
        self.begun, self.ended = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.begun.append(epoch)

    def on_epoch_end(self, epoch, logs=None):
        self.ended.append(epoch)


def test_initial_epoch_resumes_the_epoch_count(capsys):
    x, y = _blobs()
    seen = _Epochs()
    history = _classifier().fit(x, y, epochs=5, initial_epoch=2, verbose=2, callbacks=[seen])
    assert seen.begun == seen.ended == history.epoch == [2, 3, 4]
    out = capsys.readouterr().out
    assert "Epoch 3/5" in out and "Epoch 1/5" not in out
    assert len(history.history["loss"]) == 3


def test_steps_per_epoch_limits_the_batches():
    x, y = _blobs()
    model = _classifier()
    model.fit(x, y, batch_size=16, epochs=3, steps_per_epoch=4, verbose=0)
    assert model.optimizer.iterations == 12


def test_validation_steps_and_freq():
    x, y = _blobs()
    vx, vy = _blobs(n=100, seed=1)
    model = _classifier()
    history = model.fit(x, y, epochs=4, validation_data=(vx, vy), validation_freq=2,
                        validation_steps=2, batch_size=16, verbose=0, seed=0)
    assert len(history.history["loss"]) == 4 and len(history.history["val_loss"]) == 2
    # the last epoch validated, on its first 2 batches of 16
    assert history.history["val_loss"][-1] == pytest.approx(model.evaluate(vx[:32], vy[:32])[0], rel=1e-6)
    history = _classifier().fit(x, y, epochs=4, validation_data=(vx, vy), validation_freq=[1, 3],
                                verbose=0, seed=0)
    assert len(history.history["val_loss"]) == 2
    assert model.evaluate(vx, vy, batch_size=16, steps=2) == pytest.approx(model.evaluate(vx[:32], vy[:32]))
    with pytest.raises(ValueError, match=r"\[fit\] validation_freq must be >= 1"):
        model.fit(x, y, validation_data=(vx, vy), validation_freq=0, verbose=0)


# ---------------------------------------------------------------- callbacks

class _BatchLog(st.callbacks.Callback):
    def __init__(self):
        self.calls = []

    def on_train_batch_begin(self, batch, logs=None):
        self.calls.append(("begin", batch))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append(("end", batch, dict(logs)))

    def on_test_batch_end(self, batch, logs=None):
        self.calls.append(("test", batch, dict(logs)))

    def on_predict_batch_end(self, batch, logs=None):
        self.calls.append(("predict", batch, logs["outputs"].shape))


def test_batch_hooks_see_every_batch_with_running_logs():
    x, y = _blobs(n=100)
    log = _BatchLog()
    model = _classifier()
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, seed=0, callbacks=[log],
              validation_data=(x[:40], y[:40]))
    train = [c for c in log.calls if c[0] in ("begin", "end")]
    assert [c[:2] for c in train] == [(k, b) for _ in range(2) for b in range(4) for k in ("begin", "end")]
    assert set(train[1][2]) == {"loss", "accuracy"}
    assert [c[1] for c in log.calls if c[0] == "test"] == [0, 1, 0, 1]  # validation, each epoch
    log.calls.clear()
    model.evaluate(x, y, batch_size=50, callbacks=[log])
    assert [c[:2] for c in log.calls] == [("test", 0), ("test", 1)]
    assert log.calls[-1][2]["loss"] == pytest.approx(model.evaluate(x, y)[0])
    log.calls.clear()
    model.predict(x, batch_size=64, callbacks=[log])
    assert log.calls == [("predict", 0, (64, 3)), ("predict", 1, (36, 3))]


def test_stop_training_from_a_batch_hook():
    x, y = _blobs()
    model = _classifier()

    class StopAfterThree(st.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                self.model.stop_training = True

    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, callbacks=[StopAfterThree()])
    assert model.optimizer.iterations == 3 and len(history.epoch) == 1


def test_only_overridden_batch_hooks_hand_control_to_python():
    from steepest.callbacks import overriding

    epoch_only = st.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: None)
    per_batch = st.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: None)
    callbacks = [st.callbacks.History(), st.callbacks.EarlyStopping(), epoch_only, per_batch, _BatchLog()]
    assert overriding(callbacks, "on_train_batch_end") == callbacks[3:]
    assert overriding(callbacks, "on_train_batch_begin") == callbacks[4:]


def test_lambda_callback():
    x, y = _blobs()
    seen = []
    callback = st.callbacks.LambdaCallback(
        on_train_begin=lambda logs: seen.append("train"),
        on_epoch_end=lambda epoch, logs: seen.append((epoch, round(logs["loss"], 6))),
        on_batch_end=lambda batch, logs: seen.append(batch),
    )
    history = _classifier().fit(x, y, batch_size=128, epochs=2, verbose=0, seed=0, callbacks=[callback])
    assert seen == ["train", 0, 1, (0, round(history.history["loss"][0], 6)),
                    0, 1, (1, round(history.history["loss"][1], 6))]
    with pytest.raises(ValueError, match=r"\[LambdaCallback\] unknown hook 'on_epoch_finish'"):
        st.callbacks.LambdaCallback(on_epoch_finish=print)


def test_reduce_lr_on_plateau():
    x, y = _blobs()
    model = _classifier(optimizer=st.optimizers.SGD(learning_rate=0.1))
    reduce = st.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=10.0,
                                            min_lr=0.02)
    history = model.fit(x, y, epochs=4, verbose=0, seed=0, callbacks=[reduce])
    # min_delta=10: no epoch counts as an improvement after the first; each epoch logs
    # the rate it trained with, then the rate is halved, down to min_lr
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    assert model.optimizer.learning_rate == pytest.approx(0.02)


class _Crash(st.callbacks.Callback):
    def __init__(self, at_epoch):
        self.at_epoch = at_epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise RuntimeError("the machine went down")


def _dropout_classifier():
    st.manual_seed(0)
    model = st.Sequential([st.layers.Input((8,)), st.layers.Dense(16, activation="relu"),
                           st.layers.Dropout(0.3), st.layers.Dense(3)])
    model.compile(optimizer="adamw", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.mark.parametrize("seed", [5, None])
def test_backup_and_restore_resumes_after_a_crash(tmp_path, seed, capsys):
    x, y = _blobs()
    backup = str(tmp_path / "backup")
    first = _dropout_classifier()
    with pytest.raises(RuntimeError, match="went down"):
        first.fit(x, y, epochs=5, seed=seed, verbose=0,
                  callbacks=[st.callbacks.BackupAndRestore(backup), _Crash(3)])
    resumed = _dropout_classifier()  # a new process would build the model afresh
    seen = _Epochs()
    history = resumed.fit(x, y, epochs=5, seed=seed, verbose=2,
                          callbacks=[st.callbacks.BackupAndRestore(backup), seen])
    assert seen.begun == [3, 4] and history.epoch == [3, 4]
    assert "Epoch 4/5" in capsys.readouterr().out
    assert not (tmp_path / "backup" / "latest.steepest").exists()  # finished: backup removed
    if seed is None:
        return  # the shuffling seed was restored too, but there is no reference run
    reference = _dropout_classifier()
    reference.fit(x, y, epochs=5, seed=seed, verbose=0)
    assert resumed.optimizer.iterations == reference.optimizer.iterations
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_backup_keeps_the_unseeded_shuffle(tmp_path):
    x, y = _blobs()
    backup = str(tmp_path / "backup")
    first = _dropout_classifier()
    with pytest.raises(RuntimeError):
        first.fit(x, y, epochs=3, verbose=0, callbacks=[st.callbacks.BackupAndRestore(backup), _Crash(1)])
    resumed = _dropout_classifier()
    resumed.fit(x, y, epochs=2, verbose=0, callbacks=[st.callbacks.BackupAndRestore(backup)])
    assert resumed._shuffle_seed == first._shuffle_seed


# ---------------------------------------------------------------- weights on any device

requires_cuda = pytest.mark.skipif(not st.backends()["cuda"], reason="needs a CUDA GPU")


def _roundtrip_weights(model):
    x, _ = _blobs(n=16)
    before = model.predict(x)
    weights = model.get_weights()
    model.set_weights([np.zeros_like(w) for w in weights])
    assert all(not w.any() for w in model.get_weights())
    assert not model.predict(x).any()
    model.set_weights(weights)
    np.testing.assert_array_equal(model.predict(x), before)


def test_set_weights_writes_in_place_on_the_cpu():
    model = _classifier()
    params = model.parameters()  # taken before: the same tensors are written
    model.set_weights([np.ones_like(w) for w in model.get_weights()])
    assert all(np.all(p.numpy() == 1) for p in params)
    _roundtrip_weights(model)


@requires_cuda
def test_get_and_set_weights_on_a_gpu_model():
    model = _classifier()
    model.to("cuda")
    _roundtrip_weights(model)
    assert all(p.device.startswith("cuda") for p in model.parameters())


def test_copy_into_a_tensor_checks_the_shape():
    t = st.zeros((2, 3))
    t.copy_(st.tensor(np.arange(6.0).reshape(2, 3), dtype="float64"))
    assert t.dtype == "float32" and t.numpy().tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError, match=r"\[copy_\] cannot write a tensor of shape \(3, 2\) into one of shape \(2, 3\)"):
        t.copy_(st.zeros((3, 2)))


# ---------------------------------------------------------------- Input(shape, dtype)

def _declared_tagger():
    st.manual_seed(0)
    model = st.Sequential([st.layers.Input((6,), dtype="int64"), st.layers.Embedding(11, 8),
                           st.layers.Dense(5)])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_input_dtype_declares_token_ids(tmp_path):
    tokens = np.random.default_rng(5).integers(0, 11, (32, 6))
    model = _declared_tagger()
    # ids read as floats (from a CSV, say) are still ids
    model.fit(tokens.astype(np.float64), tokens % 5, epochs=1, verbose=0, seed=0)
    np.testing.assert_array_equal(model.predict(tokens.astype(np.float32)), model.predict(tokens))
    with pytest.raises(ValueError, match=r"\[predict\] the model takes integer inputs"):
        model.predict(tokens + 0.5)
    model.save(str(tmp_path / "tagger.steepest"))
    restored = st.models.load_model(str(tmp_path / "tagger.steepest"))
    assert restored._input_dtype == "int64"
    np.testing.assert_array_equal(restored.predict(tokens), model.predict(tokens))


def test_input_dtype_is_checked():
    with pytest.raises(TypeError, match=r"\[Input\] dtype must be one of"):
        st.layers.Input((4,), dtype="complex64")
    assert st.layers.Input((4,), dtype="int64").dtype == "int64"


def test_backup_survives_ctrl_c(tmp_path):
    import _thread
    import threading

    x, y = _blobs(n=512)
    backup = tmp_path / "backup"
    model = _classifier()
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    try:
        model.fit(x, y, batch_size=1, epochs=100000, verbose=0,
                  callbacks=[st.callbacks.BackupAndRestore(str(backup))])
        assert model._interrupted  # stopped cleanly inside the C++ loop
    except KeyboardInterrupt:
        pass  # it landed in Python code between two epochs
    timer.cancel()
    assert (backup / "latest.steepest").exists()  # Ctrl-C is not the end: fit can resume


# ------------------------------------------------------- images: data_format and "same"

def _images(n=16, h=9, w=9, c=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, h, w, c)).astype(np.float32), rng.integers(0, 3, n)


def test_channels_last_images_train_like_keras(tmp_path):
    x, y = _images()
    st.manual_seed(0)
    model = st.Sequential([
        st.layers.Input((9, 9, 2)),
        st.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", data_format="channels_last"),
        st.layers.MaxPool2D(2, data_format="channels_last"),
        st.layers.Flatten(),
        st.layers.Dense(3),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert [l.output_shape for l in model.layers[:2]] == [(None, 5, 5, 4), (None, 2, 2, 4)]
    assert model.predict(x).shape == (16, 3)
    model.save(str(tmp_path / "nhwc.steepest"))
    restored = st.models.load_model(str(tmp_path / "nhwc.steepest"))
    assert restored.layers[0].get_config()["data_format"] == "channels_last"
    assert restored.layers[1].get_config()["data_format"] == "channels_last"
    np.testing.assert_array_equal(restored.predict(x), model.predict(x))


def test_channels_last_computes_what_channels_first_does():
    x, _ = _images()
    nchw = x.transpose(0, 3, 1, 2).copy()
    outputs = {}
    for fmt, data in (("channels_first", nchw), ("channels_last", x)):
        conv = st.layers.Conv2D(3, (3, 2), strides=(2, 1), padding="same", data_format=fmt)
        pool = st.layers.AvgPool2D(2, data_format=fmt)
        st.manual_seed(0)  # the same kernel (out, in, kh, kw) in both layouts
        outputs[fmt] = pool(conv(st.tensor(data))).numpy()
    np.testing.assert_allclose(outputs["channels_last"], outputs["channels_first"].transpose(0, 2, 3, 1),
                               rtol=1e-6, atol=1e-6)


def test_image_data_format_sets_the_default():
    assert st.config.image_data_format() == "channels_first"
    st.config.set_image_data_format("channels_last")
    try:
        model = st.Sequential([st.layers.Input((28, 28, 1)),
                               st.layers.Conv2D(8, 3, strides=2, padding="same"),
                               st.layers.MaxPool2D()])
        model.build()
        assert model.layers[0].output_shape == (None, 14, 14, 8)
        assert model.layers[1].output_shape == (None, 7, 7, 8)
        assert model.predict(np.zeros((2, 28, 28, 1), np.float32)).shape == (2, 7, 7, 8)
    finally:
        st.config.set_image_data_format("channels_first")
    assert st.layers.Conv2D(8, 3).get_config()["data_format"] == "channels_first"
    with pytest.raises(ValueError, match=r"\[set_image_data_format\] data_format must be"):
        st.config.set_image_data_format("NHWC")


@pytest.mark.parametrize("size, kernel, stride", [(28, 3, 2), (7, 2, 1), (8, 4, 3), (5, 1, 2)])
def test_same_padding_pads_like_keras_at_any_stride(size, kernel, stride):
    # Keras: output ceil(size / stride); the odd padding pixel goes after (bottom/right).
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    x = st.randn((2, 3, size, size), seed=1)
    conv = st.layers.Conv2D(4, kernel, strides=stride, padding="same")
    y = conv(x)
    assert y.shape == (2, 4, out, out)
    pads = ((total // 2, total - total // 2),) * 2
    expected = st.ops.conv2d(x, conv.weights["kernel"], conv.weights["bias"], stride=stride, padding=pads)
    np.testing.assert_array_equal(y.numpy(), expected.numpy())


# ------------------------------------------------------------ exclude_from_weight_decay

@pytest.mark.parametrize("name, extra", [
    ("SGD", {"momentum": 0.9}), ("RMSprop", {}), ("Adam", {}), ("AdamW", {}), ("Lamb", {}),
    ("Adafactor", {"relative_step": False}),
])
def test_exclude_from_weight_decay_var_list(name, extra):
    # With zero gradients only weight decay (decoupled or L2) moves a parameter.
    optimizer = getattr(st.optimizers, name)(learning_rate=0.1, weight_decay=0.1, **extra)
    kernel, bias = st.ones((3, 2)), st.ones((2,))
    for p in (kernel, bias):
        p.grad = st.zeros(p.shape)
    optimizer.exclude_from_weight_decay(var_list=[bias])
    optimizer.step([kernel, bias])
    assert np.all(kernel.numpy() < 1)
    np.testing.assert_array_equal(bias.numpy(), np.ones(2, np.float32))


def _frozen_projection_model():
    # A 1-unit projection followed by LayerNormalization over that one unit: the output
    # is beta whatever the projection gives, so "proj" and gamma get zero gradients and
    # only weight decay can move them.
    st.manual_seed(0)
    return st.Sequential([
        st.layers.Input((4,)),
        st.layers.Dense(1, bias_initializer="ones", name="proj"),
        st.layers.LayerNormalization(),
        st.layers.Dense(3),
    ])


def test_exclude_from_weight_decay_var_names_in_fit(tmp_path):
    x, y = _blobs(n=64, features=4)
    model = _frozen_projection_model()
    optimizer = st.optimizers.AdamW(learning_rate=0.1, weight_decay=0.5)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma"])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    model.build()
    kernel0 = model.layers[0].weights["kernel"].numpy().copy()
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)  # 8 steps
    np.testing.assert_allclose(model.layers[0].weights["kernel"].numpy(), kernel0 * 0.95 ** 8, rtol=1e-5)
    np.testing.assert_array_equal(model.layers[0].weights["bias"].numpy(), [1.0])
    np.testing.assert_array_equal(model.layers[1].weights["gamma"].numpy(), [1.0])
    model.save(str(tmp_path / "m.steepest"))
    restored = st.models.load_model(str(tmp_path / "m.steepest"))
    assert restored.optimizer.state_dict()["exclude_from_weight_decay"] == ["bias", "gamma"]


def test_gpt_recipe_decays_only_matrices():
    model = st.models.GPT(vocab_size=11, context=8, d_model=16, num_heads=2, num_layers=2)
    model.build()
    for layer in model.layers:
        for name, weight in layer.weights.items():
            path = f"{layer.name}/{name}"
            excluded = any(part in path for part in st.models.GPT_NO_WEIGHT_DECAY)
            assert excluded == (weight.ndim != 2), path
