"""Regression tests for the hardening issue: sizes that overflow, layer arguments that
used to crash the process, deep graphs, threads, and values that used to be silently
wrong. Calls that used to kill the interpreter run in a child process, so that a
regression fails the test instead of the whole suite."""

import subprocess
import sys
import threading

import numpy as np
import pytest

import steepest as st


def run_isolated(code, timeout=60):
    """Runs `import steepest as st; <code>` in a fresh interpreter: (returncode, stderr)."""
    proc = subprocess.run([sys.executable, "-c", "import steepest as st\n" + code],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("code, error, text", [
    ("st.zeros(2**62)", "MemoryError", "[empty]"),
    ("st.ones(2**62)", "MemoryError", "[empty]"),
    ("st.randn(2**62)", "MemoryError", "[empty]"),
    ("st.arange(0, 2**62)", "MemoryError", "[empty]"),
    ("st.zeros(5, 2**62)", "ValueError", "more elements than 2^63 - 1"),
    ("st.zeros(2**61 + 1)", "MemoryError", "[empty]"),  # used to hang: the size class wrapped to 0
    ("st.zeros(2**63)", "ValueError", "does not fit in 64 bits"),
    ("st.zeros(2**32, 2**32)", "ValueError", "more elements than 2^63 - 1"),
    ("st.arange(-2**63, 2**63 - 1)", "ValueError", "[arange]"),
])
def test_sizes_that_overflow_raise(code, error, text):
    rc, err = run_isolated(code)
    assert rc == 1 and f"{error}: " in err and text in err, err


@pytest.mark.parametrize("layers", [
    "st.layers.Flatten(), st.layers.Dense(2**62)",
    "st.layers.Conv2D(2**62, 3)",
])
def test_huge_layers_raise_when_built(layers):
    rc, err = run_isolated(f"st.Sequential([st.layers.Input((1, 8, 8)), {layers}]).build()")
    assert rc == 1 and "ValueError: " in err and "more elements than 2^63 - 1" in err, err


@pytest.mark.parametrize("make", [
    lambda: st.layers.MaxPool2D(0),
    lambda: st.layers.AvgPool2D(0),
    lambda: st.layers.MaxPool2D(2, strides=0),
    lambda: st.layers.MaxPool2D(-1),
])
def test_pool_arguments_are_checked(make):
    with pytest.raises(ValueError, match="must be positive"):
        make()


def test_deleting_a_deep_graph_does_not_overflow_the_stack():
    code = ("w = st.randn(4, requires_grad=True)\n"
            "total = st.zeros(())\n"
            "for _ in range(200_000):\n"
            "    total = total + (w * 0.5).sum()\n"
            "del total\n"
            "print('freed')\n")
    proc = subprocess.run([sys.executable, "-c", "import steepest as st\n" + code],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "freed" in proc.stdout, proc.stderr


def test_backward_of_one_graph_from_several_threads():
    x = st.randn(64, 64, requires_grad=True)
    y = ((x @ x).relu() @ x).sum()
    errors = []

    def backward():
        try:
            y.backward()
        except RuntimeError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=backward) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # One thread ran it; the others found the graph released.
    assert len(errors) == 5 and all("second time" in e for e in errors)
    assert x.grad is not None and np.isfinite(x.grad.numpy()).all()


def test_relu_keeps_nan():
    out = st.ops.relu(st.tensor([float("nan"), -1.0, 2.0])).numpy()
    assert np.isnan(out[0]) and out[1] == 0.0 and out[2] == 2.0


def test_uint8_arrays_are_refused_not_read_as_bool():
    with pytest.raises(TypeError, match="uint8"):
        st.from_dlpack(np.array([0, 1, 2], dtype=np.uint8))


@pytest.mark.parametrize("data, dtype, error", [
    ([2**63], None, OverflowError),
    ([2**40], "int32", OverflowError),
    ([float("nan")], "int64", ValueError),
    ([float("inf")], "int32", ValueError),
    ([1e19], "int64", OverflowError),
])
def test_integer_tensors_refuse_values_they_cannot_hold(data, dtype, error):
    with pytest.raises(error, match=r"\[tensor\]"):
        st.tensor(data, dtype=dtype)
    assert st.tensor([2**62, -(2**63)]).numpy().tolist() == [2**62, -(2**63)]


# ------------------------------------------------------------------ files


def _safetensors_blob(header, data=b""):
    import json
    import struct
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def _raw_blob(header_text):
    import struct
    return struct.pack("<Q", len(header_text)) + header_text


def test_plain_safetensors_round_trip_with_the_safetensors_package(tmp_path):
    numpy_io = pytest.importorskip("safetensors.numpy")
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "h": np.array([1.5, -2], np.float16),
              "i": np.array([7, -8], np.int64), "u": np.array([0, 200, 255], np.uint8),
              "m": np.array([True, False])}
    numpy_io.save_file(arrays, str(tmp_path / "theirs.safetensors"))
    loaded = st.io.load_file(str(tmp_path / "theirs.safetensors"))
    for name, array in arrays.items():
        assert np.array_equal(loaded[name].numpy(), array)
    assert loaded["u"].dtype == "int32" and loaded["h"].dtype == "float16"
    st.io.save_file({"t": st.tensor([[1.0, 2.0]]), "b": st.tensor([1.0, 3.0], dtype="bfloat16"),
                     "n": np.array([1, 2], np.int32)}, str(tmp_path / "ours.safetensors"))
    from safetensors import safe_open
    with safe_open(str(tmp_path / "ours.safetensors"), framework="numpy") as f:
        assert set(f.keys()) == {"t", "b", "n"} and np.array_equal(f.get_tensor("n"), [1, 2])
    back = st.io.load_file(str(tmp_path / "ours.safetensors"))
    assert back["b"].dtype == "bfloat16" and back["b"].astype("float32").numpy().tolist() == [1.0, 3.0]


def test_bfloat16_from_torch_safetensors(tmp_path, torch_mod):
    torch_io = pytest.importorskip("safetensors.torch")
    torch_io.save_file({"x": torch_mod.tensor([1.0, -2.5, 3.0], dtype=torch_mod.bfloat16)},
                       str(tmp_path / "bf16.safetensors"))
    x = st.io.load_file(str(tmp_path / "bf16.safetensors"))["x"]
    assert x.dtype == "bfloat16" and x.astype("float32").numpy().tolist() == [1.0, -2.5, 3.0]


@pytest.mark.parametrize("blob, text", [
    (_safetensors_blob({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                        "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)),
     "without overlaps"),
    (_safetensors_blob({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, bytes(8)), "needs 16 bytes"),
    (_safetensors_blob({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(4)), "truncated"),
    (_safetensors_blob({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}, bytes(8)), "invalid shape"),
    (_safetensors_blob({"a": {"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)), "unsupported dtype"),
    (_raw_blob(b'{"a":' + b"[" * 100 + b"]" * 100 + b"}"), "nests deeper"),
    (b"\xff" * 8 + b"{}", "does not fit the file"),
    (b"\x02\x00\x00\x00\x00\x00\x00\x00[]", "damaged"),
])
def test_crafted_files_are_refused(tmp_path, blob, text):
    path = tmp_path / "crafted.safetensors"
    path.write_bytes(blob)
    with pytest.raises(st.io.CorruptFileError, match=text) as caught:
        st.io.load_file(str(path))
    assert str(caught.value).startswith(f"[load_file] {path}")
    with pytest.raises(ValueError, match=r"^\[load_model\] "):
        st.models.load_model(str(path))


def test_special_files_and_plain_files_are_refused_by_load_model(tmp_path):
    with pytest.raises(ValueError, match="not a tensor file"):
        st.models.load_model("/dev/zero")
    st.io.save_file({"x": np.ones(2, np.float32)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="no steepest checksum"):
        st.models.load_model(str(tmp_path / "plain.safetensors"))


def test_a_save_removes_what_killed_saves_of_that_path_left(tmp_path):
    target = tmp_path / "m.safetensors"
    stale = [tmp_path / f".m.safetensors.killed{i}.tmp" for i in range(3)]
    other = tmp_path / ".other.safetensors.x.tmp"
    for p in [*stale, other]:
        p.write_bytes(b"partial")
    st.io.save_file({"x": np.zeros(3, np.float32)}, str(target))
    assert not any(p.exists() for p in stale) and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.safetensors.x.tmp", "m.safetensors"]


def test_read_only_arrays_are_copied_not_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(6, dtype=np.float32).reshape(3, 2))
    x = np.load(tmp_path / "x.npy", mmap_mode="r")
    assert st.from_numpy(x).numpy().tolist() == x.tolist()
    model = st.Sequential([st.layers.Input((2,)), st.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, x[:, :1], verbose=0)


def test_permute_with_negative_axes_has_the_right_gradient(torch_mod):
    a = np.random.default_rng(0).standard_normal((2, 3, 4, 5))
    x = st.tensor(a, dtype="float64", requires_grad=True)
    y = x.permute((-2, -1, 1, 0))
    (y * st.tensor(np.arange(y.numel(), dtype=np.float64).reshape(y.shape), dtype="float64")).sum().backward()
    t = torch_mod.tensor(a, requires_grad=True)
    u = t.permute(-2, -1, 1, 0)
    (u * torch_mod.arange(u.numel(), dtype=torch_mod.float64).reshape(u.shape)).sum().backward()
    assert y.shape == tuple(u.shape)
    np.testing.assert_array_equal(x.grad.numpy(), t.grad.numpy())


def test_empty_data_and_huge_batches_are_not_silently_zero():
    model = st.Sequential([st.layers.Input((3,)), st.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((10, 3), np.float32), np.zeros((10, 2), np.float32)
    history = model.fit(x, y, batch_size=2**63 - 1, verbose=0)  # one batch: the whole data
    assert history.history["loss"][0] > 0
    with pytest.raises(ValueError, match=r"\[fit\] x has no samples"):
        model.fit(x[:0], y[:0], verbose=0)
    with pytest.raises(ValueError, match=r"\[fit\] x has no samples"):
        model.fit(x, y, validation_split=0.95, verbose=0)
    with pytest.raises(ValueError, match=r"\[evaluate\] x has no samples"):
        model.evaluate(x[:0], y[:0])


def _model_file_with_config(tmp_path, edit):
    """A saved two-layer model whose JSON config `edit(config)` has rewritten."""
    import json
    model = st.Sequential([st.layers.Input((4,)), st.layers.Dense(3, name="hidden"), st.layers.Dense(2, name="out")])
    model.compile(optimizer="adam", loss="mse")
    model.save(str(tmp_path / "good.steepest"))
    tensors, metadata = st.io.read(str(tmp_path / "good.steepest"))
    edited = edit(json.loads(metadata["config"]))
    metadata["config"] = edited if isinstance(edited, str) else json.dumps(edited)
    path = tmp_path / "edited.steepest"
    st.io.write(str(path), tensors, metadata)
    return path


def _set_layer_config(index, **changes):
    def edit(config):
        config["layers"][index]["config"].update(changes)
        return config
    return edit


def _deep(config):
    import json
    config["layers"][0]["config"]["units"] = "NESTED"
    return json.dumps(config).replace('"NESTED"', "[" * 100_000 + "]" * 100_000)


@pytest.mark.parametrize("edit, text", [
    (_set_layer_config(0, units=30_000_000), r"'model/hidden/kernel' of shape \(4, 30000000\), the file holds shape \(4, 3\)"),
    (lambda c: {**c, "input_shape": [2**40]}, r"of shape \(1099511627776, 3\), the file holds shape \(4, 3\)"),
    (_set_layer_config(1, name="renamed"), "'model/renamed/kernel' of shape \\(3, 2\\), which the file does not hold"),
    (_set_layer_config(0, units="3"), r"\[Dense\] units must be a positive int"),
    (_set_layer_config(0, no_such_argument=1), "unexpected keyword argument"),
    (lambda c: {**c, "layers": [{"class_name": "os.system", "config": {}}]}, "unknown layer type"),
    (lambda c: {**c, "layers": [{"class_name": "Dense"}]}, "a layer entry must be"),
    (lambda c: {k: v for k, v in c.items() if k != "layers"}, "must be an object with a list of layers"),
    (lambda c: {**c, "input_shape": "4"}, "input_shape must be a list of ints"),
    (lambda c: [c], "must be an object with a list of layers"),
    (_deep, "RecursionError"),
])
def test_model_config_is_checked_against_its_tensors_before_building(tmp_path, edit, text):
    path = _model_file_with_config(tmp_path, edit)
    assert path.stat().st_size < 2**18  # what the config asks for would take gigabytes
    with pytest.raises(ValueError, match=text) as caught:
        st.models.load_model(str(path))
    assert str(caught.value).startswith(f"[load_model] {path}: ")


def test_unknown_loss_class_in_a_model_file_is_refused(tmp_path):
    import json
    model = st.Sequential([st.layers.Input((4,)), st.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.save(str(tmp_path / "m.steepest"))
    tensors, metadata = st.io.read(str(tmp_path / "m.steepest"))
    compile_config = json.loads(metadata["compile"])
    compile_config["loss"] = {"class_name": "get", "config": {"identifier": "mse"}}
    metadata["compile"] = json.dumps(compile_config)
    st.io.write(str(tmp_path / "bad.steepest"), tensors, metadata)
    with pytest.raises(ValueError, match=r"^\[load_model\] .*unknown loss 'get'"):
        st.models.load_model(str(tmp_path / "bad.steepest"))
    assert st.models.load_model(str(tmp_path / "m.steepest")).predict(np.ones((1, 4))).shape == (1, 2)


def test_float64_values_beyond_float32_are_refused_not_trained_to_nan():
    model = st.Sequential([st.layers.Input((3,)), st.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((8, 3)), np.zeros((8, 2))
    x[5, 1] = 1e39
    with pytest.raises(ValueError, match=r"^\[fit\] x has values beyond float32's range \(first at index \(5, 1\)\)"):
        model.fit(x, y, verbose=0)
    with pytest.raises(ValueError, match=r"^\[evaluate\] x has values beyond float32's range"):
        model.evaluate(x, y)
    with pytest.raises(ValueError, match=r"^\[predict\] x has values beyond float32's range"):
        model.predict(x)
    with pytest.raises(ValueError, match=r"^\[fit\] y has values beyond float32's range \(first at index \(0, 0\)\)"):
        model.fit(np.ones((8, 3)), np.full((8, 2), -1e300), verbose=0)
    with pytest.raises(ValueError, match=r"^\[fit\] sample_weight has values beyond float32's range"):
        model.fit(np.ones((8, 3)), y, sample_weight=np.full(8, 1e40), verbose=0)
    assert all(np.isfinite(w).all() for w in model.get_weights())


def _tiny_model():
    model = st.Sequential([st.layers.Input((3,)), st.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    return model, np.ones((8, 3), np.float32), np.zeros((8, 2), np.float32)


def test_model_checkpoint_says_why_it_does_not_save(tmp_path):
    model, x, y = _tiny_model()
    best = st.callbacks.ModelCheckpoint(str(tmp_path / "best.steepest"), save_best_only=True)
    with pytest.warns(UserWarning, match=r"\[ModelCheckpoint\] monitor 'val_loss' is not in the logs \(loss\)") as caught:
        model.fit(x, y, epochs=3, verbose=0, callbacks=[best])
    assert len(caught) == 1 and not (tmp_path / "best.steepest").exists()
    named = st.callbacks.ModelCheckpoint(str(tmp_path / "m-{epoch}-{val_loss:.2f}.steepest"))
    with pytest.raises(ValueError, match=r"^\[ModelCheckpoint\] filepath .* names 'val_loss', which is not in "
                                         r"this epoch's logs; available: epoch, loss"):
        model.fit(x, y, verbose=0, callbacks=[named])
    model.fit(x, y, verbose=0, validation_data=(x, y), callbacks=[named])
    assert [p.name for p in tmp_path.iterdir()] == [f"m-1-{model.evaluate(x, y):.2f}.steepest"]


def test_a_layer_in_two_models_is_refused_when_the_second_builds():
    shared = st.layers.Dense(2)
    first = st.Sequential([st.layers.Input((3,)), shared])
    first.build()
    before = first.get_weights()
    second = st.Sequential([st.layers.Input((5,)), shared])
    with pytest.raises(ValueError, match=r"^\[Sequential.build\] layer 'dense.*' already belongs to model 'sequential'"):
        second.build()
    assert [w.shape for w in first.get_weights()] == [(3, 2), (2,)]
    np.testing.assert_array_equal(first.get_weights()[0], before[0])
    del first
    import gc
    gc.collect()
    second.build()  # the first model is gone: its layer is free again
    assert second.get_weights()[0].shape == (5, 2)


def test_csv_logger_closes_its_file_when_fit_raises(tmp_path):
    model, x, y = _tiny_model()
    logger = st.callbacks.CSVLogger(str(tmp_path / "log.csv"))

    class Fails(st.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        model.fit(x, y, epochs=5, verbose=0, callbacks=[logger, Fails()])
    assert logger._file is None
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 3  # header and two epochs


def _sigint():
    import os
    import signal
    os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("hook", ["on_test_batch_end", "on_test_batch_begin", "on_epoch_end", "on_epoch_begin",
                                  "on_train_batch_end"])
def test_ctrl_c_during_validation_or_callbacks_stops_fit_cleanly(hook, caplog):
    model, x, y = _tiny_model()
    x, y = np.ones((64, 3), np.float32), np.zeros((64, 2), np.float32)
    calls = []

    def press(*args):
        calls.append(args)
        if len(calls) == 3:  # in the second epoch for the epoch hooks
            _sigint()

    history = model.fit(x, y, epochs=50, batch_size=8, verbose=1, validation_data=(x, y),
                        callbacks=[st.callbacks.LambdaCallback(**{hook: press})])
    assert model._interrupted and "Training interrupted (Ctrl-C)" in caplog.text
    epochs = len(history.epoch)
    assert 1 <= epochs <= 3
    assert len(history.history["loss"]) == epochs
    assert len(history.history.get("val_loss", [])) in (epochs - 1, epochs)  # a cut validation is left out
    assert np.isfinite(model.evaluate(x, y))  # the model stays usable
    model.fit(x, y, epochs=1, verbose=0)
    assert not model._interrupted


def test_ctrl_c_during_evaluate_raises_rather_than_returning_part_of_the_data():
    model, x, y = _tiny_model()
    with pytest.raises(KeyboardInterrupt):
        model.evaluate(x, y, batch_size=2, callbacks=[st.callbacks.LambdaCallback(on_test_batch_end=lambda b, l: _sigint())])


# ---------------------------------------------------------------- saved-tensor versions

def test_numpy_view_of_a_tensor_in_a_graph_is_read_only():
    # The case: writing through y.numpy() into a tensor saved for backward gave a
    # wrong gradient (20000 instead of 14.78) with no error.
    x = st.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x * 2.0
    loss = (y * y).sum()
    with pytest.raises(ValueError, match="read-only"):
        y.numpy()[0] = 100.0
    data = st.tensor([1.0, 2.0])
    w = st.tensor([3.0, 4.0], requires_grad=True)
    product = (data * w).sum()
    with pytest.raises(ValueError, match="read-only"):
        data.numpy()[0] = 0.0  # saved by the multiplication for w's gradient
    product.backward()
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), 8.0 * np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(w.grad.numpy(), [1.0, 2.0])
    # Once backward has released the graph the memory is writable again.
    data.numpy()[0] = 5.0
    assert data.numpy()[0] == 5.0


def test_in_place_write_after_saving_makes_backward_raise():
    x = st.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x.exp()  # saves its output
    loss = (y * 3.0).sum()
    y.detach().copy_(st.zeros(3))
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()
    assert x.grad is None


def test_optimizer_step_between_forward_and_backward_is_detected():
    w = st.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    loss = (st.tensor([[1.0, 1.0]]) @ w).relu().sum() * (w * w).sum()
    w.grad = st.ones((2, 2))
    st.optimizers.SGD(learning_rate=0.1).step([w])
    with pytest.raises(RuntimeError, match="MulBackward.*modified in place"):
        loss.backward()


def test_writes_that_autograd_does_not_depend_on_are_allowed():
    x = st.tensor([1.0, 2.0], requires_grad=True)
    c = st.tensor([5.0, 6.0])
    loss = (x + c).sum()  # addition saves nothing
    c.copy_(st.zeros(2))
    c.numpy()[1] = 7.0
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), [1.0, 1.0])


@pytest.mark.parametrize("make", [lambda: st.layers.Dense(3), lambda: st.layers.TransformerBlock(16, 4)])
def test_engine_layer_forward_before_build_raises(make):
    # The engine's layers index their weights unchecked; an unbuilt one must refuse.
    layer = make()
    with pytest.raises(ValueError, match="forward before build"):
        layer._impl.forward(st.randn((2, 6, 16)))
