"""Issue 15 items 1-3: Python layers, losses and metrics inside fit, written as a Keras
user writes them."""

import gc

import numpy as np
import pytest

import steepest as st
from steepest import ops


class MyDense(st.layers.Layer):
    """The built-in Dense, in Python: same weights, names and initializers."""

    def __init__(self, units, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.activation = activation

    def build(self, input_shape):
        self.kernel = self.add_weight((input_shape[-1], self.units), initializer="glorot_uniform", name="kernel")
        self.bias = self.add_weight((self.units,), initializer="zeros", name="bias")

    def call(self, x, training=None):
        y = x @ self.kernel + self.bias
        return ops.relu(y) if self.activation == "relu" else y

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation}


class ScaleShift(st.layers.Layer):
    """x * scale + shift, shift frozen (a non-trainable weight); no compute_output_shape."""

    def build(self, input_shape):
        self.scale = self.add_weight((input_shape[-1],), initializer="ones", name="scale")
        self.shift = self.add_weight((input_shape[-1],), initializer=lambda shape, dtype: np.full(shape, 0.5),
                                     trainable=False, name="shift")

    def call(self, x):
        return x * self.scale + self.shift


def _digits():
    (x, y), (x_test, y_test) = st.datasets.load_digits()
    return x, y, x_test, y_test


def _mlp(hidden, seed=0):
    st.manual_seed(seed)
    return st.Sequential([st.layers.Input((64,)), hidden, st.layers.Dense(10)])


@pytest.mark.training
def test_python_dense_trains_like_its_builtin_twin():
    x, y, x_test, y_test = _digits()
    accuracies, weights = [], []
    for hidden in (st.layers.Dense(32, activation="relu"), MyDense(32, activation="relu")):
        model = _mlp(hidden)
        model.compile(st.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.build()
        weights.append(model.get_weights())
        model.fit(x, y, batch_size=32, epochs=5, verbose=0, seed=1)
        accuracies.append(model.evaluate(x_test, y_test, return_dict=True)["accuracy"])
    # Same seed, same initializer, same names: the Python twin starts from the same weights.
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)
    assert accuracies[0] > 0.9
    assert abs(accuracies[0] - accuracies[1]) <= 0.02, accuracies


def categorical_ce(y_true, y_pred):
    """Per-sample cross-entropy on logits against one-hot labels."""
    return -(y_true * ops.log_softmax(y_pred, -1)).sum(axis=-1)


@pytest.mark.training
def test_custom_loss_trains_like_its_builtin_twin():
    x, y, x_test, y_test = _digits()
    onehot = np.eye(10, dtype=np.float32)[y]
    results = []
    for loss in (st.losses.CategoricalCrossentropy(from_logits=True), categorical_ce):
        model = _mlp(st.layers.Dense(32, activation="relu"))
        model.compile(st.optimizers.Adam(1e-2), loss, metrics=["accuracy"])
        history = model.fit(x, onehot, batch_size=32, epochs=5, verbose=0, seed=1)
        results.append((history.history["loss"], model.evaluate(x_test, np.eye(10)[y_test], return_dict=True)))
    (loss_a, eval_a), (loss_b, eval_b) = results
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-3)
    assert "categorical_ce" not in eval_b and set(eval_a) == set(eval_b) == {"loss", "accuracy"}
    assert eval_a["accuracy"] > 0.9 and abs(eval_a["accuracy"] - eval_b["accuracy"]) <= 0.02


class MeanSquared(st.losses.Loss):
    def call(self, y_true, y_pred):
        return ((y_pred - y_true) ** 2).mean(axis=-1)


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean_with_sample_weight"])
def test_loss_subclass_reductions_match_numpy(reduction, rng):
    x = rng.normal(size=(12, 3)).astype(np.float32)
    y = rng.normal(size=(12, 2)).astype(np.float32)
    w = rng.uniform(0.5, 2.0, size=12).astype(np.float32)
    model = st.Sequential([st.layers.Input((3,)), st.layers.Dense(2)])
    model.compile("sgd", MeanSquared(reduction=reduction))
    got = model.evaluate(x, y, batch_size=12, sample_weight=w)
    per_sample = ((model.predict(x) - y) ** 2).mean(axis=-1)
    expected = {"sum_over_batch_size": (w * per_sample).sum() / 12, "sum": (w * per_sample).sum(),
                "mean_with_sample_weight": (w * per_sample).sum() / w.sum()}[reduction]
    assert got == pytest.approx(expected, rel=1e-5)
    # The built-in mse gives the same with Keras' default reduction.
    if reduction == "sum_over_batch_size":
        model.compile("sgd", "mse")
        assert model.evaluate(x, y, batch_size=12, sample_weight=w) == pytest.approx(got, rel=1e-5)


def test_python_layer_between_cpp_layers_and_frozen_weight():
    x, y, _, _ = _digits()
    st.manual_seed(0)
    layer = ScaleShift()
    model = st.Sequential([st.layers.Input((64,)), st.layers.Dense(16, activation="relu"), layer,
                           st.layers.Dense(10)])
    model.compile(st.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=2, verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]
    assert layer.output_shape == (None, 16)
    np.testing.assert_array_equal(layer.shift.numpy(), np.full(16, 0.5, np.float32))
    assert not np.allclose(layer.scale.numpy(), 1.0)
    assert [w.shape for w in layer.trainable_weights] == [(16,)]
    assert [w.shape for w in layer.non_trainable_weights] == [(16,)]
    # The optimizer sees the trainable weight only.
    assert len(model.parameters()) == 2 + 1 + 2


def test_summary_and_count_params_include_python_weights():
    model = st.Sequential([st.layers.Input((8,)), MyDense(4), ScaleShift(), st.layers.Dense(2)])
    model.build()
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "(MyDense)" in text and "(ScaleShift)" in text
    assert model.layers[0].count_params() == 8 * 4 + 4
    assert model.layers[1].count_params() == 4 + 4
    assert model.count_params() == 36 + 4 + 10
    assert "Total params: 54" in text and "Non-trainable params: 4" in text


def test_save_and_load_with_custom_objects(tmp_path, rng):
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=40)
    model = st.Sequential([st.layers.Input((6,)), MyDense(5, activation="relu"), ScaleShift(),
                           st.layers.Dense(3)])

    def sparse_ce(y_true, y_pred):
        return ops.cross_entropy(y_pred, y_true)

    model.compile("adam", sparse_ce, metrics=["accuracy"])
    model.fit(x, y, epochs=2, verbose=0)
    config = model.layers[0].get_config()
    assert config["units"] == 5 and config["activation"] == "relu" and config["name"] == model.layers[0].name
    path = str(tmp_path / "m.steepest")
    model.save(path)
    custom = {"MyDense": MyDense, "ScaleShift": ScaleShift, "sparse_ce": sparse_ce}
    loaded = st.models.load_model(path, custom_objects=custom)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    # Training continues on the loaded model with the custom loss.
    loaded.fit(x, y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="MyDense.*custom_objects"):
        st.models.load_model(path)
    with pytest.raises(ValueError, match="sparse_ce"):
        st.models.load_model(path, custom_objects={"MyDense": MyDense, "ScaleShift": ScaleShift})


def test_plain_models_still_load_without_custom_objects(tmp_path):
    model = st.Sequential([st.layers.Input((4,)), st.layers.Dense(2)])
    model.compile("adam", "mse", metrics=["mae"])
    model.fit(np.ones((8, 4)), np.zeros((8, 2)), verbose=0)
    model.save(str(tmp_path / "p.steepest"))
    assert st.models.load_model(str(tmp_path / "p.steepest")).metrics_names == ["mae"]


class DtypeProbe(st.layers.Layer):
    seen = []

    def build(self, input_shape):
        self.w = self.add_weight((input_shape[-1],), initializer="ones")

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, x, training=None):
        DtypeProbe.seen.append((x.dtype, self.w.dtype))
        return x * self.w


def test_mixed_bfloat16_policy_with_python_layer(rng):
    st.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        probe = DtypeProbe()
        model = st.Sequential([st.layers.Input((5,)), st.layers.Dense(4), probe, st.layers.Dense(2)])
        model.compile("adam", "mse")
        DtypeProbe.seen.clear()
        history = model.fit(rng.normal(size=(32, 5)), rng.normal(size=(32, 2)), batch_size=8, epochs=2, verbose=0)
    finally:
        st.mixed_precision.set_global_policy("float32")
    assert DtypeProbe.seen and set(DtypeProbe.seen) == {("bfloat16", "bfloat16")}
    assert probe.w.dtype == "float32" and not np.allclose(probe.w.numpy(), 1.0)
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.skipif(not st._core.backends()["cuda"], reason="needs a CUDA device")
def test_python_layer_moves_to_cuda(rng):
    x = rng.normal(size=(16, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=16)
    layer = MyDense(3)
    model = st.Sequential([st.layers.Input((6,)), st.layers.Dense(8), layer])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.build()
    model.to("cuda")
    assert layer.kernel.device.startswith("cuda")
    before = layer.kernel.numpy().copy()
    model.fit(x, y, epochs=1, verbose=0)
    assert not np.allclose(layer.kernel.numpy(), before)


class SampleCount(st.metrics.Metric):
    def __init__(self, name="sample_count", **kwargs):
        super().__init__(name=name, **kwargs)
        self.count = 0

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.count += y_pred.shape[0]

    def result(self):
        return self.count

    def reset_state(self):
        self.count = 0


def mean_output(y_true, y_pred):
    return y_pred.mean(axis=-1)


def test_custom_metrics_in_history_evaluate_and_logs(rng, tmp_path):
    x = rng.normal(size=(50, 4)).astype(np.float32)
    y = rng.normal(size=(50, 3)).astype(np.float32)
    model = st.Sequential([st.layers.Input((4,)), st.layers.Dense(3)])
    # Learning rate 0: the weights stay put, so each epoch's metric is checkable by numpy.
    model.compile(st.optimizers.SGD(0.0), "mse", metrics=[mean_output, "mae", SampleCount()])
    assert model.metrics_names == ["mean_output", "mae", "sample_count"]
    csv = tmp_path / "log.csv"
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False,
                        callbacks=[st.callbacks.CSVLogger(str(csv))])
    out = model.predict(x)
    assert history.history["mean_output"] == pytest.approx([out.mean()] * 2, rel=1e-5)
    assert history.history["mae"] == pytest.approx([np.abs(out - y).mean()] * 2, rel=1e-5)
    # Reset before each epoch: 50 samples per epoch, not 100 after the second.
    assert history.history["sample_count"] == [50.0, 50.0]
    assert "mean_output" in csv.read_text().splitlines()[0]
    values = model.evaluate(x, y, batch_size=7)
    assert values[0] == pytest.approx(((out - y) ** 2).mean(), rel=1e-5)
    assert values[1:] == pytest.approx([out.mean(), np.abs(out - y).mean(), 50.0], rel=1e-5)


def test_accuracy_with_custom_loss_follows_the_labels(rng):
    x = rng.normal(size=(30, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=30)
    model = st.Sequential([st.layers.Input((4,)), st.layers.Dense(3)])
    model.compile("sgd", lambda t, p: ops.cross_entropy(p, t), metrics=["accuracy"])
    acc = model.evaluate(x, y, return_dict=True)["accuracy"]
    assert acc == pytest.approx(np.mean(model.predict(x).argmax(-1) == y))


class Flaky(st.layers.Layer):
    fail = True

    def compute_output_shape(self, input_shape):
        return input_shape

    def call(self, x, training=None):
        if training and Flaky.fail:
            raise ValueError("flaky layer says no")
        return x


def test_exception_in_call_reaches_fit_caller_and_model_stays_usable(rng):
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 1))
    model = st.Sequential([st.layers.Input((3,)), st.layers.Dense(4), Flaky(), st.layers.Dense(1)])
    model.compile("adam", "mse")
    Flaky.fail = True
    with pytest.raises(ValueError, match="flaky layer says no"):
        model.fit(x, y, epochs=1, verbose=0)
    Flaky.fail = False
    history = model.fit(x, y, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert model.predict(x).shape == (20, 1)


def test_loss_of_wrong_shape_or_type_is_a_clear_error(rng):
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(20, 2))
    model = st.Sequential([st.layers.Input((3,)), st.layers.Dense(2)])
    model.compile("adam", lambda t, p: (p - t).mean(axis=0))
    with pytest.raises(ValueError, match=r"shape \(2,\).*batch of 20 samples.*\(20,\)"):
        model.fit(x, y, batch_size=20, epochs=1, verbose=0)
    model.compile("adam", lambda t, p: 0.5)
    with pytest.raises(TypeError, match="loss.*must return a steepest Tensor.*float"):
        model.fit(x, y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="reduction='none' cannot train"):
        model.compile("adam", MeanSquared(reduction="none"))
    model.compile("adam", "mse")
    assert np.isfinite(model.fit(x, y, epochs=1, verbose=0).history["loss"][0])


def test_non_tensor_from_call_and_uninitialised_layer_are_clear_errors(rng):
    class ReturnsArray(st.layers.Layer):
        def compute_output_shape(self, input_shape):
            return input_shape

        def call(self, x):
            return x.numpy()

    class NoSuper(st.layers.Layer):
        def __init__(self):
            self.units = 3

    model = st.Sequential([st.layers.Input((3,)), ReturnsArray()])
    model.compile("adam", "mse")
    with pytest.raises(TypeError, match="ReturnsArray.call.*must return a steepest Tensor.*ndarray"):
        model.fit(rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), verbose=0)
    with pytest.raises(TypeError, match="super\\(\\).__init__"):
        st.Sequential([st.layers.Input((3,)), NoSuper()])


def test_python_layer_eager_and_gc():
    layer = MyDense(2)
    out = layer(st.tensor(np.ones((3, 4), np.float32)))
    assert out.shape == (3, 2) and layer.built and set(layer.weights) == {"kernel", "bias"}
    model = st.Sequential([st.layers.Input((4,)), MyDense(2)])
    model.build()
    del model
    gc.collect()


def test_loss_and_metric_subclasses_save_and_load(tmp_path, rng):
    x, y = rng.normal(size=(24, 3)).astype(np.float32), rng.normal(size=(24, 2)).astype(np.float32)
    model = st.Sequential([st.layers.Input((3,)), st.layers.Dense(2)])
    model.compile("adam", MeanSquared(reduction="sum"), metrics=[SampleCount(), "mae"])
    model.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "s.steepest")
    model.save(path)
    with pytest.raises(ValueError, match="MeanSquared"):
        st.models.load_model(path)
    loaded = st.models.load_model(path, custom_objects={"MeanSquared": MeanSquared, "SampleCount": SampleCount})
    assert loaded.loss.reduction == "sum" and loaded.metrics_names == ["sample_count", "mae"]
    assert loaded.evaluate(x, y, return_dict=True) == pytest.approx(model.evaluate(x, y, return_dict=True))
