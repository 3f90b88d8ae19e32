"""The CUDA backend against the CPU backend: every kernel of cpp/include/steepest/kernels.def,
forward and backward, device moves, DLPack with torch.cuda, the optimizers and the
mixed-device errors.

Every op runs on CPU and GPU copies of the same inputs; outputs and input gradients (of
sum(out * W) for a fixed random W) must agree to rtol = atol = 1e-4 in float32. float16
and bfloat16 ops are held to test_mixed_precision.py's bound against both the CPU's
16-bit result and float32. Without a GPU everything here skips except the tests of the
error a GPU request raises.
"""

import os

import numpy as np
import pytest

import steepest as st
from steepest import ops

HAS_CUDA = st.backends()["cuda"]
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")

RTOL = 1e-4
ATOL = 1e-4


# ------------------------------------------------------------------ without a GPU

@pytest.mark.skipif(HAS_CUDA, reason="a CUDA device is present")
@pytest.mark.parametrize("make", [
    pytest.param(lambda: st.tensor([1.0]).to("cuda"), id="to"),
    pytest.param(lambda: st.zeros(3, device="cuda"), id="zeros"),
    pytest.param(lambda: st.randn(2, 2, device="cuda"), id="randn"),
    pytest.param(lambda: st.tensor([1, 2], device="cuda:0"), id="tensor"),
])
def test_cuda_request_without_a_gpu_raises(make):
    expected = r"\[cuda\] .*(no CUDA device is available|built without CUDA)"
    with pytest.raises(RuntimeError, match=expected):
        make()


def test_backends_report_cuda():
    info = st.backends()
    assert isinstance(info["cuda_compiled"], bool)
    assert info["cuda"] == (info["cuda_devices"] > 0)
    assert len(info["cuda_device_names"]) == info["cuda_devices"]
    assert isinstance(info["cublas"], str)
    assert info["cuda_allow_tf32"] is False
    if not info["cuda_compiled"]:
        assert not info["cuda"]


# ------------------------------------------------------------------------- helpers

def _leaf(array, device, grad):
    t = st.tensor(array, dtype=str(array.dtype), device=device)
    if grad and array.dtype.kind == "f":
        t.requires_grad = True
    return t


def _host(t):
    return t.to("cpu").numpy()


def run_on(device, fn, arrays, grad=True, seed=0):
    """fn(*tensors) on `device`; returns the output and the input gradients as arrays."""
    leaves = [_leaf(a, device, grad) for a in arrays]
    out = fn(*leaves)
    grads = []
    if grad and out.requires_grad:
        weight = np.random.default_rng(seed).standard_normal(out.shape).astype(out.dtype)
        out.backward(st.tensor(weight, dtype=out.dtype, device=device))
        grads = [None if leaf.grad is None else _host(leaf.grad) for leaf in leaves]
    return _host(out), grads


def check_devices(fn, *arrays, grad=True, rtol=RTOL, atol=ATOL):
    """fn on CPU and CUDA copies of the inputs must agree, forward and backward."""
    out_cpu, grads_cpu = run_on("cpu", fn, arrays, grad)
    out_gpu, grads_gpu = run_on("cuda", fn, arrays, grad)
    assert out_gpu.shape == out_cpu.shape and out_gpu.dtype == out_cpu.dtype
    if out_cpu.dtype == np.bool_ or out_cpu.dtype.kind == "i":
        np.testing.assert_array_equal(out_gpu, out_cpu)
    else:
        np.testing.assert_allclose(out_gpu, out_cpu, rtol=rtol, atol=atol)
    assert len(grads_gpu) == len(grads_cpu)
    for i, (g_gpu, g_cpu) in enumerate(zip(grads_gpu, grads_cpu)):
        assert (g_gpu is None) == (g_cpu is None), f"input {i}"
        if g_cpu is not None:
            np.testing.assert_allclose(g_gpu, g_cpu, rtol=rtol, atol=atol, err_msg=f"input {i}")


def normal(rng, *shape, dtype="float32"):
    return rng.standard_normal(shape).astype(dtype)


def positive(rng, *shape):
    return rng.uniform(0.5, 2.0, shape).astype("float32")


# ---------------------------------------------------------------------- device moves

@requires_cuda
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "bool"])
def test_round_trip_keeps_values_and_dtype(rng, dtype):
    data = (rng.standard_normal((3, 5)) * 10).astype(dtype)
    t = st.tensor(data, dtype=dtype, device="cuda")
    assert t.device == "cuda:0" and t.dtype == dtype
    np.testing.assert_array_equal(_host(t), data)


@requires_cuda
def test_strided_views_move_both_ways(rng):
    data = normal(rng, 4, 6)
    view = st.tensor(data)[:, 1::2].transpose(0, 1)
    np.testing.assert_array_equal(_host(view.to("cuda")), data[:, 1::2].T)
    gpu_view = st.tensor(data, device="cuda")[1:, ::3].transpose(0, 1)
    np.testing.assert_array_equal(_host(gpu_view), data[1:, ::3].T)
    np.testing.assert_array_equal(_host(gpu_view.contiguous()), data[1:, ::3].T)


@requires_cuda
def test_item_and_numpy_protocol_synchronise(rng):
    x = st.tensor(normal(rng, 1000), device="cuda")
    total = (x * x).sum()
    assert total.device == "cuda:0"
    assert total.item() == pytest.approx(float(np.sum(_host(x) ** 2)), rel=1e-4)
    np.testing.assert_array_equal(np.asarray(x), _host(x))


@requires_cuda
@pytest.mark.parametrize("src, dst", [("float32", "float64"), ("float64", "int32"),
                                      ("int64", "float32"), ("float32", "bool"),
                                      ("bool", "int64")])
def test_astype_on_the_device(rng, src, dst):
    data = (rng.standard_normal((4, 3)) * 3).astype(src)
    out = st.tensor(data, device="cuda").astype(dst)
    assert out.device == "cuda:0"
    np.testing.assert_array_equal(_host(out), data.astype(dst))


@requires_cuda
@pytest.mark.parametrize("dtype", ["float32", "int64", "bool"])
def test_creation_on_the_device(dtype):
    np.testing.assert_array_equal(_host(st.full((2, 3), 3, dtype=dtype, device="cuda")),
                                  np.full((2, 3), 3, dtype=dtype))
    np.testing.assert_array_equal(_host(st.zeros(5, dtype=dtype, device="cuda")),
                                  np.zeros(5, dtype=dtype))
    np.testing.assert_array_equal(_host(st.arange(2, 11, 3, device="cuda")), np.arange(2, 11, 3))


@requires_cuda
def test_gradient_flows_back_across_devices(rng):
    data = normal(rng, 3, 4)
    x = st.tensor(data, requires_grad=True)
    y = (x.to("cuda") * 2.0).sum()
    y.backward()
    assert x.grad.device == "cpu"
    np.testing.assert_allclose(x.grad.numpy(), np.full_like(data, 2.0))


@requires_cuda
def test_mixed_device_inputs_raise(rng):
    a = st.tensor(normal(rng, 2, 3))
    b = st.tensor(normal(rng, 2, 3), device="cuda")
    with pytest.raises(ValueError, match="different devices: cpu and cuda:0"):
        ops.add(a, b)
    with pytest.raises(ValueError, match="different devices"):
        ops.matmul(a, b.transpose(0, 1))
    with pytest.raises(ValueError, match="different devices"):
        ops.cross_entropy(b, st.tensor([0, 1]))


@requires_cuda
def test_missing_device_index_is_named():
    with pytest.raises(RuntimeError, match="cuda:99 does not exist"):
        st.zeros(2, device="cuda:99")


@requires_cuda
def test_caching_allocator_reuses_and_empties():
    st.empty_cache()
    before = st.memory_stats("cuda")
    x = st.zeros((1024, 1024), device="cuda")
    during = st.memory_stats("cuda")
    assert during["allocated_bytes"] >= before["allocated_bytes"] + 4 * 1024 * 1024
    del x
    after = st.memory_stats("cuda")
    assert after["allocated_bytes"] == before["allocated_bytes"]
    assert after["cached_bytes"] >= 4 * 1024 * 1024
    st.zeros((1024, 1024), device="cuda")  # served from the cache
    assert st.memory_stats("cuda")["cached_bytes"] == after["cached_bytes"]
    st.empty_cache()
    assert st.memory_stats("cuda")["cached_bytes"] == 0


# ---------------------------------------------------------------------- elementwise

UNARY = [
    ("neg", ops.neg, normal), ("exp", ops.exp, normal), ("log", ops.log, positive),
    ("sqrt", ops.sqrt, positive), ("abs", ops.abs, normal), ("relu", ops.relu, normal),
    ("sigmoid", ops.sigmoid, normal), ("tanh", ops.tanh, normal), ("gelu", ops.gelu, normal),
    ("power", lambda x: ops.power(x, 2.5), positive),
    ("clamp_min", lambda x: ops.clamp_min(x, 0.1), normal),
    ("add_scalar", lambda x: x + 2.0, normal), ("mul_scalar", lambda x: x * -3.0, normal),
]


@requires_cuda
@pytest.mark.parametrize("name, fn, make", UNARY, ids=[u[0] for u in UNARY])
def test_unary(rng, name, fn, make):
    check_devices(fn, make(rng, 3, 70))
    # A transposed input takes the strided path of the launcher.
    check_devices(lambda x: fn(x.transpose(0, 1)), make(rng, 5, 7))


@requires_cuda
@pytest.mark.parametrize("op", [ops.add, ops.sub, ops.mul, ops.div])
@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 3), (4, 1)),
                                    ((5,), (2, 3, 1))], ids=str)
def test_binary_broadcasting(rng, op, shapes):
    a, b = normal(rng, *shapes[0]), positive(rng, *shapes[1])
    check_devices(op, a, b)


@requires_cuda
def test_activation_gradients_and_bce(rng):
    x, y = normal(rng, 4, 9), rng.uniform(0, 1, (4, 9)).astype("float32")
    check_devices(lambda z, t: ops.binary_cross_entropy(z, t, reduction="none"), x, y)
    check_devices(lambda z, t: ops.mse_loss(z, t), x, y)


@requires_cuda
@pytest.mark.parametrize("dtype", ["float32", "int64", "int32", "bool"])
def test_comparisons(rng, dtype):
    a = (rng.standard_normal((3, 5)) * 2).astype(dtype)
    b = (rng.standard_normal((5,)) * 2).astype(dtype)
    for compare in (lambda p, q: p == q, lambda p, q: p != q, lambda p, q: p < q,
                    lambda p, q: p <= q, lambda p, q: p > q, lambda p, q: p >= q):
        check_devices(compare, a, b, grad=False)


@requires_cuda
@pytest.mark.parametrize("dtype", ["int64", "int32"])
def test_integer_arithmetic(rng, dtype):
    a = rng.integers(-50, 50, (4, 6)).astype(dtype)
    b = rng.integers(-50, 50, (6,)).astype(dtype)
    for op in (ops.add, ops.sub, ops.mul):
        check_devices(op, a, b, grad=False)


# ------------------------------------------------------------------------ reductions

@requires_cuda
@pytest.mark.parametrize("shape, axis", [
    ((5, 7), None), ((5, 7), 0), ((5, 7), 1), ((3, 4, 5), (0, 2)), ((3, 4, 5), 1),
    ((2, 3000), 1),          # block-per-row path
    ((1 << 20,), None),      # one long row: split into chunks
    ((3, 70000), -1),        # few long rows: chunks too
    ((2, 600, 33), 1),       # inner > 1: the column kernel
])
@pytest.mark.parametrize("name", ["sum", "mean", "max"])
def test_reductions(rng, shape, axis, name):
    fn = getattr(ops, name)
    tol = 1e-3 if np.prod(shape) > 100000 and name != "max" else RTOL
    check_devices(lambda x: fn(x, axis=axis), normal(rng, *shape), rtol=tol, atol=tol)


@requires_cuda
def test_max_ties_pick_the_first_and_nan_wins():
    x = np.array([[1.0, 3.0, 3.0, 2.0], [np.nan, 5.0, np.nan, 1.0]], dtype="float32")
    check_devices(lambda t: ops.max(t, axis=1), x)
    check_devices(lambda t: ops.max(t, axis=0), x.T.copy())


@requires_cuda
def test_keepdims_and_sum_to(rng):
    check_devices(lambda x: ops.sum(x, axis=1, keepdims=True), normal(rng, 4, 5, 6))
    check_devices(lambda x: ops.sum_to(x, (5, 1)), normal(rng, 3, 5, 6))


# ------------------------------------------------------------------------ matrices

@requires_cuda
@pytest.mark.parametrize("shapes", [
    ((4, 6), (6, 5)), ((1, 7), (7, 1)), ((3, 4, 6), (6, 5)), ((2, 3, 4, 6), (2, 3, 6, 5)),
    ((2, 1, 4, 6), (3, 6, 5)), ((6,), (6, 5)), ((4, 6), (6,)), ((64, 130), (130, 96)),
], ids=str)
def test_matmul(rng, shapes):
    check_devices(ops.matmul, normal(rng, *shapes[0]), normal(rng, *shapes[1]))


@requires_cuda
def test_matmul_transposed_operands_and_float64(rng):
    a, b = normal(rng, 6, 4), normal(rng, 5, 6)
    check_devices(lambda p, q: ops.matmul(p.transpose(0, 1), q.transpose(0, 1)), a, b)
    check_devices(ops.matmul, normal(rng, 5, 7, dtype="float64"),
                  normal(rng, 7, 3, dtype="float64"))


@requires_cuda
def test_matmul_with_empty_inner_dimension():
    out = ops.matmul(st.zeros((3, 0), device="cuda"), st.zeros((0, 4), device="cuda"))
    np.testing.assert_array_equal(_host(out), np.zeros((3, 4), dtype="float32"))


@requires_cuda
def test_linear_and_attention(rng):
    check_devices(ops.linear, normal(rng, 8, 5), normal(rng, 5, 3), normal(rng, 3))
    q, k, v = normal(rng, 2, 5, 4), normal(rng, 2, 6, 4), normal(rng, 2, 6, 3)
    check_devices(lambda a, b, c: ops.scaled_dot_product_attention(a, b, c), q, k, v)
    q2 = normal(rng, 2, 5, 4)
    check_devices(lambda a, b, c: ops.scaled_dot_product_attention(a, b, c, causal=True),
                  q2, normal(rng, 2, 5, 4), normal(rng, 2, 5, 3))


@requires_cuda
def test_tf32_flag_is_off_by_default_and_switchable(rng):
    a, b = normal(rng, 64, 64), normal(rng, 64, 64)
    exact = _host(ops.matmul(st.tensor(a, device="cuda"), st.tensor(b, device="cuda")))
    np.testing.assert_allclose(exact, a @ b, rtol=1e-4, atol=1e-4)
    st._core.set_allow_tf32(True)
    try:
        assert st.backends()["cuda_allow_tf32"]
        fast = _host(ops.matmul(st.tensor(a, device="cuda"), st.tensor(b, device="cuda")))
        np.testing.assert_allclose(fast, a @ b, rtol=2e-2, atol=5e-2)
    finally:
        st._core.set_allow_tf32(False)
    assert "cuBLAS" in st.backends()["cublas"]


# --------------------------------------------------------------------- softmax family

@requires_cuda
@pytest.mark.parametrize("cols", [10, 1024, 3000])
@pytest.mark.parametrize("fn", [ops.softmax, ops.log_softmax], ids=["softmax", "log_softmax"])
def test_softmax(rng, fn, cols):
    check_devices(fn, normal(rng, 7, cols) * 5)


@requires_cuda
def test_softmax_over_a_middle_axis_and_extreme_values(rng):
    check_devices(lambda x: ops.softmax(x, axis=1), normal(rng, 3, 5, 4))
    check_devices(ops.log_softmax, np.array([[1e4, -1e4, 0.0], [-np.inf, 0.0, 1.0]], "float32"))


@requires_cuda
@pytest.mark.parametrize("classes", [5, 2000])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_with_indices(rng, classes, reduction):
    logits = normal(rng, 6, classes) * 4
    labels = rng.integers(0, classes, 6).astype("int64")
    check_devices(lambda z, y: ops.cross_entropy(z, y, reduction=reduction), logits, labels)
    check_devices(lambda z, y: ops.cross_entropy(z, y, reduction=reduction), logits,
                  labels.astype("int32"))


@requires_cuda
@pytest.mark.parametrize("classes", [5, 2000])
def test_cross_entropy_with_probabilities(rng, classes):
    logits = normal(rng, 6, classes)
    target = rng.uniform(0, 1, (6, classes)).astype("float32")
    target[:, ::3] = 0.0
    check_devices(ops.cross_entropy, logits, target)


@requires_cuda
def test_cross_entropy_label_out_of_range_raises(rng):
    logits = st.tensor(normal(rng, 3, 4), device="cuda")
    with pytest.raises(IndexError, match=r"class index 7 at labels\[1\] is out of range for 4"):
        ops.cross_entropy(logits, st.tensor([0, 7, -1], device="cuda"))


# ------------------------------------------------------------------ layers of the seed

@requires_cuda
@pytest.mark.parametrize("cols", [6, 1500])
def test_layer_norm(rng, cols):
    check_devices(lambda x, w, b: ops.layer_norm(x, w, b), normal(rng, 5, cols),
                  normal(rng, cols), normal(rng, cols))
    check_devices(ops.layer_norm, normal(rng, 2, 3, cols))


@requires_cuda
@pytest.mark.parametrize("shape, axis", [((6, 5), 1), ((4, 3, 5, 6), 1), ((4, 5, 6, 3), -1),
                                         ((2, 2, 40, 40), 1)])
def test_batch_norm(rng, shape, axis):
    c = shape[axis]
    check_devices(lambda x, w, b: ops.batch_norm(x, None, None, w, b, training=True, axis=axis),
                  normal(rng, *shape), normal(rng, c), normal(rng, c))
    check_devices(lambda x, w, b, m, v: ops.batch_norm(x, m, v, w, b, training=False, axis=axis),
                  normal(rng, *shape), normal(rng, c), normal(rng, c), normal(rng, c),
                  positive(rng, c))
    # The moving statistics are updated on the device as on the host.
    x = normal(rng, *shape)
    stats = []
    for device in ("cpu", "cuda"):
        m, v = st.zeros((c,), device=device), st.ones((c,), device=device)
        ops.batch_norm(st.tensor(x, device=device), m, v, training=True, axis=axis)
        stats.append((_host(m), _host(v)))
    np.testing.assert_allclose(stats[1][0], stats[0][0], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(stats[1][1], stats[0][1], rtol=RTOL, atol=ATOL)


@requires_cuda
def test_embedding(rng):
    table = normal(rng, 10, 6)
    indices = np.array([[0, 2, 2], [9, 0, 2]], dtype="int64")
    check_devices(lambda i, w: ops.embedding(i, w), indices, table)
    check_devices(lambda i, w: ops.embedding(i, w), indices.astype("int32"), table)


@requires_cuda
def test_embedding_index_out_of_range_raises(rng):
    table = st.tensor(normal(rng, 4, 3), device="cuda")
    with pytest.raises(IndexError, match="index 4 at position 2 is out of range for a table of 4"):
        ops.embedding(st.tensor([1, 0, 4], device="cuda"), table)


@requires_cuda
@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_draws_the_cpu_mask(rng, rate):
    x = normal(rng, 50, 40)
    check_devices(lambda t: ops.dropout(t, rate, seed=1234), x, rtol=0, atol=0)


@requires_cuda
def test_random_fills_match_the_cpu():
    for shape, seed in (((1000,), 7), ((33, 17), 2**63 + 5)):
        np.testing.assert_array_equal(_host(st.rand(*shape, seed=seed, device="cuda")),
                                      st.rand(*shape, seed=seed).numpy())
        np.testing.assert_allclose(_host(st.randn(*shape, seed=seed, device="cuda")),
                                   st.randn(*shape, seed=seed).numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(
            _host(st.randn(*shape, seed=seed, dtype="float64", device="cuda")),
            st.randn(*shape, seed=seed, dtype="float64").numpy(), rtol=1e-13, atol=1e-13)


# --------------------------------------------------------------- convolution, pooling

CONV = [
    pytest.param((2, 3, 7, 7), (4, 3, 3, 3), True, 1, 0, id="3x3"),
    pytest.param((2, 2, 6, 6), (3, 2, 3, 3), True, 2, 1, id="stride2-pad1"),
    pytest.param((1, 2, 5, 4), (2, 2, 2, 3), False, 1, 1, id="rect-kernel-pad1"),
    pytest.param((3, 4, 5, 5), (6, 4, 1, 1), True, 1, 0, id="pointwise"),
    pytest.param((1, 1, 2, 2), (1, 1, 3, 3), False, 1, 1, id="kernel-larger-than-input"),
    pytest.param((4, 8, 16, 16), (16, 8, 3, 3), True, 1, 1, id="wider"),
]


@requires_cuda
@pytest.mark.parametrize("x_shape, w_shape, bias, stride, padding", CONV)
def test_conv2d(rng, x_shape, w_shape, bias, stride, padding):
    arrays = [normal(rng, *x_shape), normal(rng, *w_shape)]
    if bias:
        arrays.append(normal(rng, w_shape[0]))
        check_devices(lambda x, w, b: ops.conv2d(x, w, b, stride=stride, padding=padding), *arrays)
    else:
        check_devices(lambda x, w: ops.conv2d(x, w, stride=stride, padding=padding), *arrays)


@requires_cuda
@pytest.mark.parametrize("shape, k, stride, padding", [
    ((2, 3, 6, 6), 2, None, 0), ((1, 2, 5, 5), 3, 2, 1), ((1, 1, 3, 4), 2, 1, 0),
    ((1, 1, 5, 6), 2, 3, 0),
])
@pytest.mark.parametrize("pool", [ops.max_pool2d, ops.avg_pool2d], ids=["max", "avg"])
def test_pool2d(rng, pool, shape, k, stride, padding):
    check_devices(lambda x: pool(x, k, stride=stride, padding=padding), normal(rng, *shape))


# ------------------------------------------------------------------------ optimizers

OPTIMIZERS = [
    ("sgd", lambda: st.optimizers.SGD(learning_rate=0.1)),
    ("sgd-momentum", lambda: st.optimizers.SGD(learning_rate=0.1, momentum=0.9, weight_decay=0.01)),
    ("sgd-nesterov", lambda: st.optimizers.SGD(learning_rate=0.1, momentum=0.9, nesterov=True,
                                               dampening=0.0)),
    ("rmsprop", lambda: st.optimizers.RMSprop(learning_rate=0.01, weight_decay=0.01)),
    ("adagrad", lambda: st.optimizers.Adagrad(learning_rate=0.1, weight_decay=0.01)),
    ("lion", lambda: st.optimizers.Lion(learning_rate=0.01, weight_decay=0.1, clipnorm=1.0)),
    ("muon", lambda: st.optimizers.Muon(learning_rate=0.02)),
    ("sophia", lambda: st.optimizers.Sophia(learning_rate=0.01, gamma=1.0, clipnorm=1.0)),
    ("adam", lambda: st.optimizers.Adam(learning_rate=0.01, weight_decay=0.01)),
    ("adamw-clip", lambda: st.optimizers.AdamW(learning_rate=0.01, clipnorm=0.5)),
    ("lamb", lambda: st.optimizers.Lamb(learning_rate=0.01, weight_decay=0.01)),
    ("adafactor", lambda: st.optimizers.Adafactor()),
    ("adafactor-lr", lambda: st.optimizers.Adafactor(learning_rate=0.01, relative_step=False,
                                                     weight_decay=0.1, clipnorm=1.0)),
]


@requires_cuda
@pytest.mark.parametrize("name, make", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_optimizer_steps_match_the_cpu(rng, name, make):
    shapes = [(6, 5), (5,), (2, 3, 4), (40, 70)]
    init = [normal(rng, *s) for s in shapes]
    grads = [[normal(rng, *s) for s in shapes] for _ in range(3)]
    results = {}
    for device in ("cpu", "cuda"):
        params = [st.tensor(a, device=device, requires_grad=True) for a in init]
        opt = make()
        for step in grads:
            for p, g in zip(params, step):
                p.grad = st.tensor(g, device=device)
            opt.step(params)
        results[device] = [_host(p) for p in params]
    for cpu, gpu in zip(results["cpu"], results["cuda"]):
        np.testing.assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-5)


@requires_cuda
def test_clip_grad_norm_on_the_device(rng):
    grads = [normal(rng, 30, 20), normal(rng, 20)]
    params = [st.tensor(np.zeros_like(g), device="cuda", requires_grad=True) for g in grads]
    for p, g in zip(params, grads):
        p.grad = st.tensor(g, device="cuda")
    norm = st.clip_grad_norm(params, 1.0)
    expected = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    assert norm == pytest.approx(expected, rel=1e-6)
    clipped = np.sqrt(sum(float(np.sum(_host(p.grad).astype(np.float64) ** 2)) for p in params))
    assert clipped == pytest.approx(1.0, rel=1e-4)


# ------------------------------------------------------------------- 16-bit floats

# test_mixed_precision.py's tolerances: torch.testing's float16 and bfloat16 rtol.
HALF_RTOL = {"float16": 1e-3, "bfloat16": 1.6e-2}
HALF_DTYPES = tuple(HALF_RTOL)


def _host_float32(t):
    return t.to("cpu").astype("float32").numpy()


def _rounded(array, half):
    """array's values rounded to the 16-bit dtype `half`, held exactly in float32."""
    return st.tensor(array, dtype=half).astype("float32").numpy()


def assert_close_16(got, ref, rtol, what):
    """test_mixed_precision.py's bound: rtol relative to each element plus rtol relative to
    the largest magnitude (a 16-bit op rounds its intermediates too)."""
    assert got.shape == ref.shape, f"{what}: shape {got.shape} vs {ref.shape}"
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale, err_msg=what)


def run_16(half, dtype, device, fn, arrays):
    """fn on `device` with the float arrays as `dtype` leaves and the integer arrays as
    constants; returns the output and the float inputs' gradients of sum(out * W), as
    float32 arrays. The float arrays and W hold values of the 16-bit dtype `half`, so a
    16-bit run and its float32 reference start from the same numbers."""
    leaves = [
        st.tensor(a, dtype=dtype, device=device, requires_grad=True) if a.dtype.kind == "f"
        else st.tensor(a, dtype=str(a.dtype), device=device)
        for a in arrays
    ]
    out = fn(*leaves)
    assert out.dtype == dtype
    weight = _rounded(np.random.default_rng(1).uniform(-1.0, 1.0, out.shape), half)
    out.backward(st.tensor(weight, dtype=dtype, device=device))
    grads = [_host_float32(leaf.grad) for leaf in leaves if leaf.requires_grad]
    return _host_float32(out), grads


def _labels(rows, classes, seed):
    return np.random.default_rng(seed).integers(0, classes, size=rows)


# name, function, inputs: (shape, domain) for floats, an integer array for constants
HALF_OPS = [
    ("add", ops.add, [((3, 40), "normal"), ((40,), "normal")]),
    ("sub", ops.sub, [((3, 40), "normal"), ((3, 1), "normal")]),
    ("mul", ops.mul, [((2, 1, 30), "normal"), ((4, 1), "normal")]),
    ("div", ops.div, [((3, 40), "normal"), ((3, 40), "positive")]),
    ("strided", lambda x: ops.exp(x.transpose(0, 1)) * 2.0, [((5, 7), "normal")]),
    ("neg", ops.neg, [((5, 70), "normal")]),
    ("exp", ops.exp, [((5, 70), "normal")]),
    ("log", ops.log, [((5, 70), "positive")]),
    ("sqrt", ops.sqrt, [((5, 70), "positive")]),
    ("abs", ops.abs, [((5, 70), "normal")]),
    ("relu", ops.relu, [((5, 70), "normal")]),
    ("sigmoid", ops.sigmoid, [((5, 70), "normal")]),
    ("tanh", ops.tanh, [((5, 70), "normal")]),
    ("gelu", ops.gelu, [((5, 70), "normal")]),
    ("power", lambda x: ops.power(x, 3.0), [((5, 70), "positive")]),
    ("power_sqrt", lambda x: x**0.5, [((5, 70), "positive")]),
    ("clamp_min", lambda x: ops.clamp_min(x, 0.1), [((5, 70), "normal")]),
    ("scalars", lambda x: (x * 3.0 + 1.0) / 2.0 - x, [((5, 70), "normal")]),
    ("sum_all", ops.sum, [((7, 9), "normal")]),
    ("sum_chunked", ops.sum, [((40000,), "unit")]),  # one long row: partial sums
    ("sum_columns", lambda x: ops.sum(x, axis=0), [((300, 9), "normal")]),
    ("sum_rows", lambda x: ops.sum(x, axis=-1, keepdims=True), [((9, 300), "normal")]),
    ("mean_all", ops.mean, [((30, 40), "normal")]),
    ("mean_axes", lambda x: ops.mean(x, axis=(0, 2)), [((4, 5, 6), "normal")]),
    ("max", lambda x: ops.max(x, axis=1), [((6, 7), "normal")]),
    ("max_long_rows", lambda x: ops.max(x, axis=1), [((2, 3000), "normal")]),
    ("max_columns", lambda x: ops.max(x, axis=1), [((3, 7, 5), "normal")]),
    ("matmul", ops.matmul, [((5, 16), "normal"), ((16, 7), "normal")]),
    ("matmul_large", ops.matmul, [((64, 130), "normal"), ((130, 96), "normal")]),
    ("matmul_batched", ops.matmul, [((2, 3, 8), "normal"), ((8, 4), "normal")]),
    ("matmul_broadcast", ops.matmul, [((2, 1, 3, 8), "normal"), ((4, 8, 5), "normal")]),
    ("matmul_vector", ops.matmul, [((8,), "normal"), ((8, 3), "normal")]),
    ("matmul_transposed", lambda a, b: a.transpose(0, 1) @ b,
     [((16, 5), "normal"), ((16, 7), "normal")]),
    ("linear", ops.linear, [((6, 16), "normal"), ((16, 5), "normal"), ((5,), "normal")]),
    ("softmax", ops.softmax, [((4, 10), "normal")]),
    ("softmax_long_rows", ops.softmax, [((3, 3000), "normal")]),
    ("softmax_axis0", lambda x: ops.softmax(x, axis=0), [((10, 4), "normal")]),
    ("log_softmax", ops.log_softmax, [((4, 10), "normal")]),
    ("cross_entropy", ops.cross_entropy, [((6, 10), "normal"), _labels(6, 10, 1)]),
    ("cross_entropy_int32", ops.cross_entropy,
     [((6, 10), "normal"), _labels(6, 10, 2).astype("int32")]),
    ("cross_entropy_long_rows", lambda z, y: ops.cross_entropy(z, y, reduction="sum"),
     [((4, 2000), "normal"), _labels(4, 2000, 3)]),
    ("cross_entropy_none", lambda z, y: ops.cross_entropy(z, y, reduction="none"),
     [((6, 10), "normal"), _labels(6, 10, 4)]),
    ("cross_entropy_soft", lambda z, y: ops.cross_entropy(z, y, reduction="sum"),
     [((5, 7), "normal"), ((5, 7), "soft")]),
    ("mse_loss", ops.mse_loss, [((4, 5), "normal"), ((4, 5), "normal")]),
    ("bce_logits", ops.binary_cross_entropy, [((4, 5), "normal"), ((4, 5), "unit")]),
    ("bce_probabilities", lambda p, y: ops.binary_cross_entropy(p, y, from_logits=False),
     [((4, 5), "unit"), ((4, 5), "unit")]),
    ("conv2d", lambda x, w, b: ops.conv2d(x, w, b, padding=1),
     [((2, 3, 6, 6), "normal"), ((4, 3, 3, 3), "normal"), ((4,), "normal")]),
    ("max_pool2d", lambda x: ops.max_pool2d(x, 2), [((2, 3, 6, 6), "normal")]),
    ("avg_pool2d", lambda x: ops.avg_pool2d(x, 3, stride=1, padding=1),
     [((2, 3, 5, 5), "normal")]),
    ("layer_norm", lambda x, w, b: ops.layer_norm(x, w, b),
     [((4, 3, 16), "normal"), ((16,), "normal"), ((16,), "normal")]),
    ("layer_norm_long_rows", lambda x, w, b: ops.layer_norm(x, w, b),
     [((5, 1500), "normal"), ((1500,), "normal"), ((1500,), "normal")]),
    ("layer_norm_plain", ops.layer_norm, [((6, 8), "normal")]),
    ("batch_norm", lambda x, w, b: ops.batch_norm(x, None, None, w, b, training=True),
     [((4, 3, 5, 5), "normal"), ((3,), "normal"), ((3,), "normal")]),
    ("embedding", lambda i, t: ops.embedding(i, t),
     [np.array([[1, 3, 3], [0, 9, 3]]), ((10, 6), "normal")]),
    ("dropout", lambda x: ops.dropout(x, 0.5, True, seed=7), [((40, 50), "normal")]),
    ("attention", lambda q, k, v: ops.scaled_dot_product_attention(q, k, v, causal=True),
     [((2, 5, 8), "normal"), ((2, 5, 8), "normal"), ((2, 5, 8), "normal")]),
    ("cast_roundtrip", lambda x: x.astype("float32").astype(x.dtype) * 2.0,
     [((3, 4), "normal")]),
]


def _draw(rng, spec, half):
    if isinstance(spec, np.ndarray):
        return spec
    shape, domain = spec
    if domain == "positive":
        values = rng.uniform(0.5, 2.0, size=shape)
    elif domain == "unit":
        values = rng.uniform(0.05, 0.95, size=shape)
    elif domain == "soft":
        p = rng.uniform(0.1, 1.0, size=shape)
        values = p / p.sum(axis=-1, keepdims=True)
    else:
        values = rng.standard_normal(shape)
    return _rounded(values, half)


@requires_cuda
@pytest.mark.parametrize("half", HALF_DTYPES)
@pytest.mark.parametrize("name, fn, specs", HALF_OPS, ids=[op[0] for op in HALF_OPS])
def test_16_bit_op_matches_the_cpu_and_float32(rng, name, fn, specs, half):
    rtol = HALF_RTOL[half]
    arrays = [_draw(rng, spec, half) for spec in specs]
    out_gpu, grads_gpu = run_16(half, half, "cuda", fn, arrays)
    for device, dtype in (("cpu", half), ("cpu", "float32")):
        out, grads = run_16(half, dtype, device, fn, arrays)
        assert_close_16(out_gpu, out, rtol, f"{name} forward vs {dtype} on the CPU")
        assert len(grads_gpu) == len(grads)
        for i, (g_gpu, g) in enumerate(zip(grads_gpu, grads)):
            assert_close_16(g_gpu, g, rtol, f"{name} gradient of input {i} vs {dtype} on the CPU")


@requires_cuda
@pytest.mark.parametrize("half", HALF_DTYPES)
def test_16_bit_comparisons(rng, half):
    a = _rounded(rng.standard_normal((3, 5)), half)
    b = _rounded(rng.standard_normal(5), half)
    b[1] = a[0, 1]  # ties compare equal
    for compare in (lambda p, q: p == q, lambda p, q: p != q, lambda p, q: p < q,
                    lambda p, q: p <= q, lambda p, q: p > q, lambda p, q: p >= q):
        on = {d: compare(st.tensor(a, dtype=half, device=d), st.tensor(b, dtype=half, device=d))
              for d in ("cpu", "cuda")}
        assert on["cuda"].dtype == "bool"
        np.testing.assert_array_equal(_host(on["cuda"]), on["cpu"].numpy())


def _conversion_sources(rng, dtype):
    """Values of `dtype` for the conversions into and out of 16 bits: rounding ties and
    edges of both 16-bit formats, overflow, subnormals, signed zeros, inf and NaN."""
    if dtype == "bool":
        return np.array([True, False, True])
    if dtype in ("int32", "int64"):
        edges = [0, 1, -1, 2049, 2051, -2049, 257, 259, 65504, 65519, 65520, 70000, -70000]
        return np.concatenate([edges, rng.integers(-100000, 100000, 500)]).astype(dtype)
    edges = [0.0, -0.0, 1.0, 65504.0, 65519.99, 65520.0, 2.0**-14, 2.0**-24, 2.0**-25,
             3 * 2.0**-26, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-8, 1 + 3 * 2.0**-8,
             1 + 2.0**-11 + 2.0**-40, 1 + 2.0**-8 + 2.0**-45, 3.0e38, np.inf, -np.inf, np.nan]
    random = rng.standard_normal(500) * np.exp2(rng.integers(-30, 30, 500))
    return np.concatenate([edges, np.negative(edges), random]).astype(
        dtype if dtype in ("float32", "float64") else "float64")


@requires_cuda
@pytest.mark.parametrize("half", HALF_DTYPES)
@pytest.mark.parametrize("other", ["float16", "bfloat16", "float32", "float64", "int32",
                                   "int64", "bool"])
def test_16_bit_conversions_round_like_the_cpu(rng, half, other):
    into = st.tensor(_conversion_sources(rng, other), dtype=other)
    values = _conversion_sources(rng, "float64")
    if other in ("int32", "int64", "bool"):  # float -> integer is undefined out of range
        values = values[np.isfinite(values) & (np.abs(values) < 60000)]
    out_of = st.tensor(values, dtype=half)
    for source, dst in ((into, half), (out_of, other)):
        for view in (lambda t: t, lambda t: t[::3]):  # contiguous and strided launches
            expected = view(source).astype(dst).astype("float64").numpy()
            got = _host(view(source.to("cuda")).astype(dst).to("cpu").astype("float64"))
            np.testing.assert_array_equal(got, expected, err_msg=f"{source.dtype} -> {dst}")
            # Signed zeros too; a NaN's sign is not specified.
            numbers = ~np.isnan(expected)
            np.testing.assert_array_equal(np.signbit(got[numbers]), np.signbit(expected[numbers]))


@requires_cuda
@pytest.mark.parametrize("half", HALF_DTYPES)
def test_16_bit_tensors_move_fill_and_draw_like_the_cpu(rng, half):
    data = _rounded(rng.standard_normal((3, 5)) * 10, half)
    t = st.tensor(data, dtype=half, device="cuda")
    assert t.device == "cuda:0" and t.dtype == half
    np.testing.assert_array_equal(_host_float32(t), data)
    np.testing.assert_array_equal(_host_float32(t.transpose(0, 1).contiguous()), data.T)
    for make in (lambda d: st.full((2, 3), 0.1, dtype=half, device=d),
                 lambda d: st.zeros(5, dtype=half, device=d),
                 lambda d: st.rand(1000, seed=7, dtype=half, device=d),
                 lambda d: ops.dropout(st.tensor(data, dtype=half, device=d), 0.3, True, seed=5)):
        np.testing.assert_array_equal(_host_float32(make("cuda")), _host_float32(make("cpu")))
    u = _host_float32(st.rand(200000, seed=3, dtype=half, device="cuda"))
    assert u.min() >= 0.0 and u.max() < 1.0
    # NOTE: the GPU's log1p and cos may differ from glibc's in the last bit of the double.
    np.testing.assert_allclose(_host_float32(st.randn(1000, seed=4, dtype=half, device="cuda")),
                               _host_float32(st.randn(1000, seed=4, dtype=half)),
                               rtol=HALF_RTOL[half], atol=0)


@requires_cuda
@pytest.mark.parametrize("half", HALF_DTYPES)
def test_16_bit_reductions_accumulate_in_float_on_the_gpu(half):
    # As on the CPU: a 16-bit accumulator would stall at 2048 (float16) or 256 (bfloat16).
    assert st.ones(4096, dtype=half, device="cuda").sum().item() == 4096.0
    assert _host_float32(st.ones((3, 4096), dtype=half, device="cuda").sum(axis=1)).tolist() \
        == [4096.0] * 3
    assert _host_float32(st.ones((4096, 3), dtype=half, device="cuda").sum(axis=0)).tolist() \
        == [4096.0] * 3
    assert st.ones(40960, dtype=half, device="cuda").sum().item() == 40960.0  # partial sums
    assert st.ones(40001, dtype=half, device="cuda").mean().item() == 1.0
    assert st.full((70000,), 1.0, dtype="float16", device="cuda").sum().item() == np.inf


@requires_cuda
@pytest.mark.parametrize("half", HALF_DTYPES)
def test_16_bit_matmul_with_empty_inner_dimension(half):
    out = ops.matmul(st.zeros((3, 0), dtype=half, device="cuda"),
                     st.zeros((0, 4), dtype=half, device="cuda"))
    assert out.dtype == half
    np.testing.assert_array_equal(_host_float32(out), np.zeros((3, 4), dtype="float32"))


# --------------------------------------------------------------------------- DLPack

@pytest.fixture
def torch_cuda():
    if os.environ.get("STEEPEST_TEST_NO_TORCH") == "1":
        pytest.skip("torch comparisons are turned off (STEEPEST_TEST_NO_TORCH=1)")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    return torch


@requires_cuda
def test_dlpack_from_torch_cuda_shares_memory(torch_cuda):
    torch = torch_cuda
    src = torch.arange(12, dtype=torch.float32, device="cuda").reshape(3, 4)
    t = st.from_dlpack(src)
    assert t.device == "cuda:0" and t.shape == (3, 4)
    np.testing.assert_array_equal(_host(t), src.cpu().numpy())
    src.mul_(2)  # torch's stream, then ours: the blocking stream orders them
    np.testing.assert_array_equal(_host(t * 1.0), src.cpu().numpy())


@requires_cuda
def test_dlpack_to_torch_cuda_shares_memory(rng, torch_cuda):
    torch = torch_cuda
    data = normal(rng, 4, 5)
    t = st.tensor(data, device="cuda") * 2.0
    view = torch.from_dlpack(t)
    assert view.is_cuda and view.device.index == 0
    np.testing.assert_allclose(view.cpu().numpy(), data * 2.0, rtol=1e-6)
    view.zero_()
    np.testing.assert_array_equal(_host(t), np.zeros_like(data))


@requires_cuda
def test_torch_agrees_on_a_training_step(rng, torch_cuda):
    torch = torch_cuda
    x, w = normal(rng, 16, 8), normal(rng, 8, 4)
    labels = rng.integers(0, 4, 16)
    ws = st.tensor(w, device="cuda", requires_grad=True)
    loss = ops.cross_entropy(ops.matmul(st.tensor(x, device="cuda"), ws),
                             st.tensor(labels, device="cuda"))
    loss.backward()
    wt = torch.tensor(w, device="cuda", requires_grad=True)
    ref = torch.nn.functional.cross_entropy(torch.tensor(x, device="cuda") @ wt,
                                            torch.tensor(labels, device="cuda"))
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    np.testing.assert_allclose(_host(ws.grad), wt.grad.cpu().numpy(), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ Sequential on GPU

def _blobs_and_model(dropout):
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4, 16)) * 3
    y = rng.integers(0, 4, 256).astype(np.int64)
    x = (centers[y] + rng.standard_normal((256, 16))).astype(np.float32)
    st.manual_seed(1)
    layers = [st.layers.Input((16,)), st.layers.Dense(32, activation="relu")]
    if dropout:
        layers.append(st.layers.Dropout(0.2, seed=7))
    layers += [st.layers.LayerNormalization(), st.layers.Dense(4)]
    model = st.Sequential(layers)
    model.compile(optimizer="adamw", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return x, y, model


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA device is present")
def test_sequential_to_cuda_without_a_gpu_raises():
    _, _, model = _blobs_and_model(False)
    with pytest.raises(RuntimeError, match="not available"):
        model.to("cuda")
    assert model.to("cpu") is model


@requires_cuda
@pytest.mark.parametrize("dropout", [False, True])
def test_sequential_fits_on_the_gpu_like_on_the_cpu(dropout):
    results = {}
    for device in ("cpu", "cuda"):
        x, y, model = _blobs_and_model(dropout)
        params = model.parameters()
        model.to(device)
        assert all(p.device == model._impl.device for p in params)  # moved in place
        history = model.fit(x, y, batch_size=32, epochs=3, verbose=0, seed=0)
        results[device] = (history.history["loss"], model.evaluate(x, y, return_dict=True), model.predict(x))
        assert isinstance(results[device][2], np.ndarray)
    (loss_cpu, eval_cpu, pred_cpu), (loss_gpu, eval_gpu, pred_gpu) = results["cpu"], results["cuda"]
    np.testing.assert_allclose(loss_gpu, loss_cpu, rtol=1e-3)
    assert eval_gpu["accuracy"] == pytest.approx(eval_cpu["accuracy"], abs=0.01)
    np.testing.assert_allclose(pred_gpu, pred_cpu, rtol=1e-3, atol=1e-3)


@requires_cuda
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_sequential_fits_in_mixed_precision_on_the_gpu_like_on_the_cpu(policy):
    before = st.mixed_precision.global_policy()
    results = {}
    try:
        for device in ("cpu", "cuda"):
            st.mixed_precision.set_global_policy(policy)  # compile takes it
            x, y, model = _blobs_and_model(True)
            model.to(device)
            history = model.fit(x, y, batch_size=32, epochs=3, verbose=0, seed=0)
            assert all(p.dtype == "float32" for p in model.parameters())  # the master weights
            results[device] = (history.history, model.evaluate(x, y, return_dict=True))
    finally:
        st.mixed_precision.set_global_policy(before)
    (history_cpu, eval_cpu), (history_gpu, eval_gpu) = results["cpu"], results["cuda"]
    # A step's 16-bit roundings may differ by an ulp between the devices, so the runs
    # drift apart more than float32 runs do.
    rtol = 2e-2
    np.testing.assert_allclose(history_gpu["loss"], history_cpu["loss"], rtol=rtol)
    assert history_gpu["loss"][-1] < history_gpu["loss"][0]
    assert history_gpu.get("loss_scale") == history_cpu.get("loss_scale")
    assert eval_gpu["loss"] == pytest.approx(eval_cpu["loss"], rel=rtol)
    assert eval_gpu["accuracy"] == pytest.approx(eval_cpu["accuracy"], abs=0.02)


@requires_cuda
def test_sequential_moves_back_to_the_cpu_with_its_optimizer_state():
    x, y, model = _blobs_and_model(False)
    model.to("cuda")
    model.fit(x, y, batch_size=64, epochs=1, verbose=0, seed=0)
    model.to("cpu")
    assert all(p.device == "cpu" for p in model.parameters())
    before = model.evaluate(x, y)
    model.fit(x, y, batch_size=64, epochs=1, verbose=0, seed=1)  # state follows to the CPU
    assert model.evaluate(x, y) < before
    assert len(model.get_weights()) == len(model.parameters())
