"""st.ops.batch_norm and st.layers.BatchNormalization (Keras semantics)."""

import numpy as np
import pytest

import steepest as st
from helpers import LOOSE_ATOL, LOOSE_RTOL, F, check_op, requires_torch, torch

ops = st.ops
L = st.layers
TOL = dict(rtol=LOOSE_RTOL, atol=LOOSE_ATOL)


# --------------------------------------------------------------------------- the op

@pytest.mark.parametrize("shape, axis, layouts", [
    pytest.param((6, 5), 1, None, id="2d"),
    pytest.param((4, 3, 5, 6), 1, None, id="4d-channels-first"),
    pytest.param((4, 5, 6, 3), -1, None, id="4d-channels-last"),
    pytest.param((3, 4, 7), 1, ("T", None, None), id="3d-transposed-x"),
    pytest.param((5, 6), -1, ("slice", None, None), id="2d-sliced-x"),
])
def test_batch_norm_training_matches_torch(shape, axis, layouts):
    c = shape[axis]

    def ref(x, w, b):
        moved = x.movedim(axis, 1)
        y = F.batch_norm(moved, None, None, w, b, training=True, eps=1e-3)
        return y.movedim(1, axis)

    check_op(lambda x, w, b: ops.batch_norm(x, None, None, w, b, training=True, axis=axis),
             ref, [shape, (c,), (c,)], noncontig=layouts, **TOL)


@pytest.mark.parametrize("shape, axis", [((6, 5), 1), ((4, 3, 5, 6), 1), ((4, 5, 6, 3), -1)])
def test_batch_norm_inference_matches_torch(shape, axis):
    c = shape[axis]

    def fn(x, w, b, rm, rv):
        return ops.batch_norm(x, rm, rv, w, b, training=False, eps=1e-3, axis=axis)

    def ref(x, w, b, rm, rv):
        y = F.batch_norm(x.movedim(axis, 1), rm, rv, w, b, training=False, eps=1e-3)
        return y.movedim(1, axis)

    check_op(fn, ref, [shape, (c,), (c,), (c,), (c,)], grad_inputs=[0, 1, 2],
             domain={4: "positive"}, **TOL)


@pytest.mark.parametrize("affine", ["weight", "bias", "none"])
def test_batch_norm_without_some_parameters(affine):
    def fn(x, p=None):
        return ops.batch_norm(x, None, None, p if affine == "weight" else None,
                              p if affine == "bias" else None, training=True, eps=1e-5)

    def ref(x, p=None):
        return F.batch_norm(x, None, None, p if affine == "weight" else None,
                            p if affine == "bias" else None, training=True, eps=1e-5)

    if affine == "none":
        check_op(fn, ref, [(5, 4, 3)], **TOL)
    else:
        check_op(fn, ref, [(5, 4, 3), (4,)], **TOL)


def test_batch_norm_large_channels_parallel_path():
    # Enough values for the CPU kernel to split the channels over threads; the
    # reference is the formula in float64.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 40, 8, 8)).astype(np.float32) * 3 + 1
    w = rng.standard_normal(40).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    xs = st.tensor(x, requires_grad=True)
    ws, bs = st.tensor(w, requires_grad=True), st.tensor(b, requires_grad=True)
    y = ops.batch_norm(xs, None, None, ws, bs, training=True)
    y.backward(st.tensor(g))
    mean = x.astype(np.float64).mean(axis=(0, 2, 3), keepdims=True)
    var = x.astype(np.float64).var(axis=(0, 2, 3), keepdims=True)
    xhat = (x - mean) / np.sqrt(var + 1e-3)
    np.testing.assert_allclose(y.numpy(), xhat * w[:, None, None] + b[:, None, None], atol=1e-4)
    np.testing.assert_allclose(bs.grad.numpy(), g.sum(axis=(0, 2, 3)), rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(ws.grad.numpy(), (g * xhat).sum(axis=(0, 2, 3)), rtol=1e-4, atol=1e-2)


def _keras_moving(x, axis, steps, momentum):
    """numpy transcription of Keras 3's BatchNormalization update."""
    axes = tuple(d for d in range(x[0].ndim) if d != axis % x[0].ndim)
    mm = np.zeros(x[0].shape[axis])
    mv = np.ones(x[0].shape[axis])
    for t in range(steps):
        mean, var = x[t].mean(axis=axes), x[t].var(axis=axes)
        mm = mm * momentum + mean * (1 - momentum)
        mv = mv * momentum + var * (1 - momentum)
    return mm, mv


@pytest.mark.parametrize("shape, axis", [((8, 3), 1), ((4, 3, 5, 5), 1), ((4, 5, 5, 3), -1)])
def test_batch_norm_running_statistics(shape, axis):
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal(shape) * 2.0 + 0.5 for _ in range(4)]
    c = shape[axis]
    rm = st.zeros((c,), dtype="float64")
    rv = st.ones((c,), dtype="float64")
    for xb in batches:
        ops.batch_norm(st.tensor(xb, dtype="float64"), rm, rv, training=True, momentum=0.9, axis=axis)
    mm, mv = _keras_moving(batches, axis, 4, 0.9)
    np.testing.assert_allclose(rm.numpy(), mm, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(rv.numpy(), mv, rtol=1e-12, atol=1e-12)
    if torch is None:
        return
    # torch: momentum 1 - m and the unbiased variance; mapped back, it agrees.
    n = np.prod(shape) // c
    trm, trv = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    for xb in batches:
        tx = torch.from_numpy(xb).movedim(axis, 1)
        F.batch_norm(tx, trm, trv, training=True, momentum=0.1, eps=1e-3)
    np.testing.assert_allclose(rm.numpy(), trm.numpy(), rtol=1e-12, atol=1e-12)
    # torch feeds var·n/(n−1) (unbiased) to the same linear update from the same start
    # (1): undoing that factor on the part that came from the batches maps it to ours.
    start = 0.9 ** len(batches)
    np.testing.assert_allclose(rv.numpy() - start, (trv.numpy() - start) * (n - 1) / n,
                               rtol=1e-12, atol=1e-12)


def test_batch_norm_inference_uses_running_statistics():
    x = np.arange(12.0).reshape(4, 3)
    rm = st.tensor(np.array([1.0, 2.0, 3.0]), dtype="float64")
    rv = st.tensor(np.array([4.0, 1.0, 0.25]), dtype="float64")
    y = ops.batch_norm(st.tensor(x, dtype="float64"), rm, rv, training=False, eps=1e-12)
    np.testing.assert_allclose(y.numpy(), (x - [1, 2, 3]) / np.sqrt([4.0, 1.0, 0.25]), rtol=1e-9)
    # Inference leaves the statistics alone.
    np.testing.assert_array_equal(rm.numpy(), [1.0, 2.0, 3.0])


def test_batch_norm_float16_keeps_float32_statistics():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 4, 3, 3)).astype(np.float32) * 4 + 2
    rm, rv = st.zeros((4,)), st.ones((4,))
    xs = st.tensor(x).astype("float16")
    xs.requires_grad = True
    y = ops.batch_norm(xs, rm, rv, training=True)
    assert y.dtype == "float16"
    ref = F.batch_norm(torch.from_numpy(x), None, None, training=True, eps=1e-3).numpy() \
        if torch is not None else None
    if ref is not None:
        np.testing.assert_allclose(y.numpy().astype(np.float32), ref, atol=1e-2)
    np.testing.assert_allclose(rm.numpy(), 0.01 * x.mean(axis=(0, 2, 3)), rtol=1e-3, atol=1e-4)
    y.sum().backward()
    assert xs.grad.dtype == "float16"
    with pytest.raises(TypeError, match=r"^\[batch_norm\].*float32"):
        ops.batch_norm(xs, st.zeros((4,), dtype="float16"), st.ones((4,), dtype="float16"),
                       training=True)


def test_batch_norm_errors():
    x = st.ones((4, 3))
    with pytest.raises(ValueError, match=r"^\[batch_norm\].*\(5,?\)"):
        ops.batch_norm(x, None, None, st.ones((5,)), None, training=True)
    with pytest.raises(ValueError, match=r"^\[batch_norm\].*needs running_mean"):
        ops.batch_norm(x, None, None, training=False)
    with pytest.raises(ValueError, match=r"^\[batch_norm\].*both"):
        ops.batch_norm(x, st.zeros((3,)), None, training=True)
    with pytest.raises(ValueError, match=r"^\[batch_norm\].*axis"):
        ops.batch_norm(x, None, None, training=True, axis=2)
    with pytest.raises(ValueError, match=r"^\[batch_norm\].*momentum"):
        ops.batch_norm(x, st.zeros((3,)), st.ones((3,)), training=True, momentum=1.5)
    with pytest.raises(ValueError, match=r"^\[batch_norm\].*eps"):
        ops.batch_norm(x, None, None, training=True, eps=0.0)
    with pytest.raises(ValueError, match=r"^\[batch_norm\].*at least one value"):
        ops.batch_norm(st.ones((0, 3)), None, None, training=True)
    with pytest.raises(ValueError, match=r"^\[batch_norm\].*require grad"):
        ops.batch_norm(x, st.zeros((3,), requires_grad=True), st.ones((3,)), training=True)
    with pytest.raises(TypeError, match=r"^\[batch_norm\]"):
        ops.batch_norm(st.tensor(np.ones((4, 3), dtype=np.int64)), None, None, training=True)


# ------------------------------------------------------------------------ the layer

def _torch_bn(c, ndim):
    cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d}[ndim]
    return cls(c, eps=1e-3, momentum=0.01).double()


@requires_torch
@pytest.mark.parametrize("data_format, shape", [
    ("channels_first", (6, 3, 4, 4)), ("channels_last", (6, 4, 4, 3)),
    ("channels_first", (6, 5)), ("channels_last", (6, 5)),
])
def test_layer_follows_torch_and_keras_over_steps(data_format, shape):
    rng = np.random.default_rng(3)
    old = st.config.image_data_format()
    st.config.set_image_data_format(data_format)
    try:
        layer = L.BatchNormalization()
    finally:
        st.config.set_image_data_format(old)
    axis = layer.get_config()["axis"]
    assert axis == (1 if data_format == "channels_first" else -1)
    c = shape[axis]
    ref = _torch_bn(c, len(shape))
    batches = [rng.standard_normal(shape) * 1.5 + 0.3 for _ in range(3)]
    for xb in batches:
        x = st.tensor(xb.astype(np.float32), requires_grad=True)
        y = layer(x, training=True)
        tx = torch.from_numpy(xb).movedim(axis, 1).requires_grad_(True)
        ty = ref(tx).movedim(1, axis)
        np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), atol=1e-4)
        g = rng.standard_normal(shape)
        y.backward(st.tensor(g.astype(np.float32)))
        ty.backward(torch.from_numpy(g))
        np.testing.assert_allclose(x.grad.numpy(), tx.grad.movedim(1, axis).numpy(), atol=1e-4)
    w = layer.weights
    assert list(w) == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert not w["moving_mean"].requires_grad and w["gamma"].requires_grad
    mm, mv = _keras_moving(batches, axis, 3, 0.99)
    np.testing.assert_allclose(w["moving_mean"].numpy(), mm, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w["moving_variance"].numpy(), mv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w["moving_mean"].numpy(), ref.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    # Inference: the moving statistics.
    ref.eval()
    xb = batches[0]
    y = layer(st.tensor(xb.astype(np.float32)), training=False)
    # torch's running variance is unbiased: rebuild the expected output from Keras' one.
    xa = np.moveaxis(xb, axis, -1)
    expect = np.moveaxis((xa - mm) / np.sqrt(mv + 1e-3), -1, axis)
    np.testing.assert_allclose(y.numpy(), expect, atol=1e-4)


def test_layer_in_a_model_trains_saves_and_summarises(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, 2, 6, 6)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0).astype(np.int64)
    model = st.Sequential([
        L.Input((2, 6, 6)),
        L.Conv2D(4, 3, padding="same"),
        L.BatchNormalization(),
        L.Activation("relu"),
        L.GlobalAveragePooling2D(),
        L.Dense(2),
    ])
    model.compile(optimizer=st.optimizers.SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, seed=0)
    bn = model.layers[1]
    assert not np.allclose(bn.weights["moving_mean"].numpy(), 0.0)
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "Non-trainable params: 8" in text
    assert bn.count_params() == 16
    assert len(model.parameters()) == 2 + 2 + 2  # conv, gamma/beta, dense
    before = model.predict(x[:8])
    path = tmp_path / "bn_model"
    model.save(path)
    loaded = st.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x[:8]), before, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(loaded.layers[1].weights["moving_variance"].numpy(),
                                  bn.weights["moving_variance"].numpy())
    # evaluate runs in inference mode: the moving statistics do not move.
    mm = bn.weights["moving_mean"].numpy().copy()
    model.evaluate(x, y, verbose=0)
    model.predict(x)
    np.testing.assert_array_equal(bn.weights["moving_mean"].numpy(), mm)


def test_layer_under_mixed_precision():
    st.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = st.Sequential([L.Input((5,)), L.Dense(8), L.BatchNormalization(), L.Dense(2)])
        model.compile(optimizer="adamw", loss="sparse_categorical_crossentropy")
        rng = np.random.default_rng(5)
        x = rng.standard_normal((32, 5)).astype(np.float32)
        y = rng.integers(0, 2, 32)
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        bn = model.layers[1]
        assert bn.compute_dtype == "bfloat16"
        assert bn.weights["moving_mean"].dtype == "float32"
        assert np.isfinite(bn.weights["moving_variance"].numpy()).all()
    finally:
        st.mixed_precision.set_global_policy("float32")


def test_layer_options_and_errors():
    layer = L.BatchNormalization(axis=1, center=False, scale=False, momentum=0.5, epsilon=0.1)
    layer(st.ones((3, 4)), training=True)
    assert list(layer.weights) == ["moving_mean", "moving_variance"]
    np.testing.assert_allclose(layer.weights["moving_mean"].numpy(), [0.5] * 4)
    with pytest.raises(ValueError, match=r"^\[BatchNormalization\].*batch axis"):
        L.BatchNormalization(axis=0)
    with pytest.raises(ValueError, match=r"^\[BatchNormalization\].*momentum"):
        L.BatchNormalization(momentum=2.0)
    with pytest.raises(ValueError, match=r"^\[BatchNormalization\].*axis 3 is out of range"):
        L.BatchNormalization(axis=3)(st.ones((2, 4)))
    with pytest.raises(ValueError, match=r"^\[BatchNormalization\] axis must be an int"):
        L.BatchNormalization(axis="x")


# ------------------------------------------------------- the seed's recipe (issue 15)

def _example():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "cnn_batchnorm_sgd.py"
    spec = importlib.util.spec_from_file_location("cnn_batchnorm_sgd", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_choose_returns_the_dense_generalization_recipe():
    opt, reason = st.optimizers.choose(data="dense", goal="generalization", total_steps=900)
    assert type(opt) is st.optimizers.SGD
    config = opt.get_config()
    assert config["momentum"] == 0.9 and config["nesterov"] is True
    assert config["weight_decay"] == 5e-4
    schedule = config["learning_rate"]
    assert isinstance(schedule, st.schedules.WarmupCosine)
    assert schedule.get_config() == {"peak_learning_rate": 0.1, "warmup_steps": 45,
                                     "total_steps": 900, "final_learning_rate": 0.0}
    for words in ("Nesterov", "warmup + cosine", "weight decay", "BatchNormalization"):
        assert words in reason
    with pytest.raises(ValueError, match=r"^\[choose\] total_steps"):
        st.optimizers.choose(total_steps=0)


@pytest.mark.training
def test_recipe_trains_the_example_cnn():
    example = _example()
    data = st.datasets.load_digits(flatten=False)
    # momentum 0.9: with Keras' 0.99 the moving statistics of a 225-step run still
    # remember their start (mean 0, variance 1), which the full example outgrows.
    accuracy = example.run("sgd_recipe", seed=0, epochs=5, batch_size=32, data=data,
                           bn_momentum=0.9)
    assert accuracy >= 0.95, accuracy
