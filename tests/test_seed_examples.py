"""The seed document's worked backprop derivations, as executable checks (float64)."""

import math

import numpy as np
import pytest

import steepest as st

ops = st.ops


def f64(data, requires_grad=False):
    return st.tensor(np.asarray(data, dtype=np.float64), dtype="float64",
                     requires_grad=requires_grad)


def sigmoid(z):
    return 1.0 / (1.0 + math.exp(-z))


# ----------------------------------------------- scalar linear + sigmoid + BCE demo

SCALAR_DEMO = [
    pytest.param(1.5, 0.8, -0.3, 1.0, id="y1"),
    pytest.param(1.5, 0.8, -0.3, 0.0, id="y0"),
    pytest.param(-2.0, 0.4, 0.7, 1.0, id="negative-x"),
]


def _demo_expected(x, w, b, y):
    a = sigmoid(w * x + b)
    loss = -(y * math.log(a) + (1 - y) * math.log(1 - a))
    # The seed's table: dL/dz = a - y, dL/dw = (a - y) x, dL/db = a - y, dL/dx = (a - y) w.
    return loss, (a - y) * w, (a - y) * x, a - y


@pytest.mark.parametrize("x, w, b, y", SCALAR_DEMO)
def test_scalar_demo_with_fused_bce(x, w, b, y):
    xt, wt, bt = f64(x, True), f64(w, True), f64(b, True)
    z = wt * xt + bt
    loss = ops.binary_cross_entropy(z, f64(y), from_logits=True)
    loss.backward()
    exp_loss, exp_dx, exp_dw, exp_db = _demo_expected(x, w, b, y)
    assert loss.item() == pytest.approx(exp_loss, rel=1e-12)
    assert wt.grad.item() == pytest.approx(exp_dw, rel=1e-12)
    assert bt.grad.item() == pytest.approx(exp_db, rel=1e-12)
    assert xt.grad.item() == pytest.approx(exp_dx, rel=1e-12)


@pytest.mark.parametrize("x, w, b, y", SCALAR_DEMO)
def test_scalar_demo_by_hand(x, w, b, y):
    # The seed's forward written op by op; autograd must reproduce the simplified result.
    xt, wt, bt = f64(x, True), f64(w, True), f64(b, True)
    yt, one = f64(y), f64(1.0)
    a = (wt * xt + bt).sigmoid()
    loss = -(yt * a.log() + (one - yt) * (one - a).log())
    loss.backward()
    exp_loss, exp_dx, exp_dw, exp_db = _demo_expected(x, w, b, y)
    assert loss.item() == pytest.approx(exp_loss, rel=1e-12)
    assert wt.grad.item() == pytest.approx(exp_dw, rel=1e-10)
    assert bt.grad.item() == pytest.approx(exp_db, rel=1e-10)
    assert xt.grad.item() == pytest.approx(exp_dx, rel=1e-10)


def test_scalar_demo_hard_coded_numbers():
    # x=1.5, w=0.8, b=-0.3, y=1: z=0.9, a=sigmoid(0.9)=0.7109495026, a-y=-0.2890504974.
    xt, wt, bt = f64(1.5, True), f64(0.8, True), f64(-0.3, True)
    loss = ops.binary_cross_entropy(wt * xt + bt, f64(1.0))
    loss.backward()
    assert loss.item() == pytest.approx(0.3411538747, rel=1e-9)
    assert bt.grad.item() == pytest.approx(-0.2890504974, rel=1e-9)
    assert wt.grad.item() == pytest.approx(-0.4335757461, rel=1e-9)
    assert xt.grad.item() == pytest.approx(-0.2312403979, rel=1e-9)


def test_batched_demo_mean_reduction():
    # The same demo over a batch: the mean reduction averages the per-sample gradients.
    x = np.array([1.5, -0.5, 2.0, 0.1])
    y = np.array([1.0, 0.0, 0.0, 1.0])
    w, b = 0.8, -0.3
    wt, bt = f64(w, True), f64(b, True)
    loss = ops.binary_cross_entropy(wt * f64(x) + bt, f64(y), from_logits=True)
    loss.backward()
    a = 1.0 / (1.0 + np.exp(-(w * x + b)))
    assert wt.grad.item() == pytest.approx(np.mean((a - y) * x), rel=1e-12)
    assert bt.grad.item() == pytest.approx(np.mean(a - y), rel=1e-12)


# ----------------------------------------------------------------------- MSE loss

def test_half_squared_frobenius_gradient_is_x_minus_y(rng):
    x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    xt = f64(x, True)
    loss = 0.5 * ops.sum((xt - f64(y)) ** 2)
    loss.backward()
    assert loss.item() == pytest.approx(0.5 * np.sum((x - y) ** 2), rel=1e-12)
    np.testing.assert_allclose(xt.grad.numpy(), x - y, rtol=1e-12)


def test_mse_loss_matches_half_frobenius(rng):
    x, y = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    xt = f64(x, True)
    ops.mse_loss(xt, f64(y), reduction="sum").backward()
    np.testing.assert_allclose(xt.grad.numpy(), 2 * (x - y), rtol=1e-12)
    xt = f64(x, True)
    ops.mse_loss(xt, f64(y)).backward()  # mean over all B*D elements
    np.testing.assert_allclose(xt.grad.numpy(), 2 * (x - y) / x.size, rtol=1e-12)


# ------------------------------------------------------------- matmul and bias add

def test_matmul_gradients_are_xt_g_and_g_wt(rng):
    x, w, g = rng.standard_normal((5, 3)), rng.standard_normal((3, 2)), rng.standard_normal((5, 2))
    xt, wt = f64(x, True), f64(w, True)
    (xt @ wt).backward(f64(g))
    np.testing.assert_allclose(wt.grad.numpy(), x.T @ g, rtol=1e-12)  # dL/dW = X^T G
    np.testing.assert_allclose(xt.grad.numpy(), g @ w.T, rtol=1e-12)  # dL/dX = G W^T


@pytest.mark.parametrize("bias_shape", [pytest.param((3,), id="b-3"),
                                        pytest.param((1, 3), id="b-1x3")])
def test_broadcast_bias_gradient_is_column_sums(rng, bias_shape):
    x, b, g = rng.standard_normal((4, 3)), rng.standard_normal(bias_shape), rng.standard_normal((4, 3))
    xt, bt = f64(x, True), f64(b, True)
    (xt + bt).backward(f64(g))
    np.testing.assert_allclose(xt.grad.numpy(), g, rtol=1e-12)  # matrix add: dL/dX = G
    np.testing.assert_allclose(bt.grad.numpy(), g.sum(axis=0).reshape(bias_shape), rtol=1e-12)


def test_hadamard_gradient(rng):
    p, q, g = (rng.standard_normal((3, 4)) for _ in range(3))
    pt, qt = f64(p, True), f64(q, True)
    (pt * qt).backward(f64(g))
    np.testing.assert_allclose(pt.grad.numpy(), g * q, rtol=1e-12)
    np.testing.assert_allclose(qt.grad.numpy(), g * p, rtol=1e-12)


# ------------------------------------------------------- elementwise derivative table

@pytest.mark.parametrize("fn, derivative, domain", [
    pytest.param(lambda t: t.relu(), lambda x, z: (x > 0).astype(float), "nonzero", id="relu"),
    pytest.param(lambda t: t.sigmoid(), lambda x, z: z * (1 - z), "normal", id="sigmoid"),
    pytest.param(lambda t: t.tanh(), lambda x, z: 1 - z ** 2, "normal", id="tanh"),
    pytest.param(lambda t: t ** 3, lambda x, z: 3 * x ** 2, "normal", id="power3"),
    pytest.param(lambda t: t ** 2.5, lambda x, z: 2.5 * x ** 1.5, "positive", id="power2.5"),
    pytest.param(lambda t: t.log(), lambda x, z: 1 / x, "positive", id="log"),
    pytest.param(lambda t: t.exp(), lambda x, z: z, "normal", id="exp"),
])
def test_activation_derivative_table(rng, fn, derivative, domain):
    x = {"normal": rng.standard_normal((3, 4)),
         "positive": rng.uniform(0.5, 2.0, (3, 4)),
         "nonzero": rng.uniform(0.3, 1.5, (3, 4)) * rng.choice([-1, 1], (3, 4))}[domain]
    g = rng.standard_normal((3, 4))
    xt = f64(x, True)
    z = fn(xt)
    z.backward(f64(g))
    # G_Y = G_Z ⊙ f'(Y)
    np.testing.assert_allclose(xt.grad.numpy(), g * derivative(x, z.numpy()), rtol=1e-10)


# ------------------------------------------------------------ reductions and max

def test_sum_and_mean_gradients_are_constant():
    x = f64(np.arange(6.0).reshape(2, 3), True)
    (ops.sum(x) * f64(2.5)).backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.full((2, 3), 2.5))
    x = f64(np.arange(6.0).reshape(2, 3), True)
    (ops.mean(x) * f64(2.5)).backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full((2, 3), 2.5 / 6), rtol=1e-15)


def test_max_keeps_only_argmax_gradient():
    x = f64([[0.3, -1.0, 2.5], [1.0, 0.0, -4.0]], True)
    (ops.max(x) * f64(7.0)).backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 0, 7.0], [0, 0, 0]])


# ------------------------------------------------------------------------ softmax

def test_softmax_jacobian_vector_product(rng):
    # dL/dz = G ⊙ p − (G · pᵀ) p, from the Jacobian diag(p) − p pᵀ.
    z, g = rng.standard_normal((1, 5)), rng.standard_normal((1, 5))
    zt = f64(z, True)
    p = ops.softmax(zt, axis=-1)
    p.backward(f64(g))
    pn = p.numpy()
    expected = g * pn - (g @ pn.T) * pn
    np.testing.assert_allclose(zt.grad.numpy(), expected, rtol=1e-10, atol=1e-14)
    jac = np.diag(pn[0]) - np.outer(pn[0], pn[0])
    np.testing.assert_allclose(zt.grad.numpy()[0], g[0] @ jac, rtol=1e-10, atol=1e-14)


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_softmax_cross_entropy_gradient_is_p_minus_y_for_indices(rng):
    z = rng.standard_normal((4, 5))
    labels = np.array([1, 4, 0, 1])
    y = np.eye(5)[labels]
    zt = f64(z, True)
    ops.cross_entropy(zt, st.tensor(labels, dtype="int64"), reduction="sum").backward()
    np.testing.assert_allclose(zt.grad.numpy(), _softmax(z) - y, rtol=1e-10, atol=1e-14)
    zt = f64(z, True)
    ops.cross_entropy(zt, st.tensor(labels, dtype="int64")).backward()
    np.testing.assert_allclose(zt.grad.numpy(), (_softmax(z) - y) / 4, rtol=1e-10, atol=1e-14)


def test_softmax_cross_entropy_gradient_is_p_minus_y_for_probabilities(rng):
    z = rng.standard_normal((3, 4))
    y = rng.uniform(0.1, 1.0, (3, 4))
    y /= y.sum(axis=1, keepdims=True)
    zt = f64(z, True)
    loss = ops.cross_entropy(zt, f64(y), reduction="sum")
    loss.backward()
    assert loss.item() == pytest.approx(-np.sum(y * np.log(_softmax(z))), rel=1e-12)
    np.testing.assert_allclose(zt.grad.numpy(), _softmax(z) - y, rtol=1e-10, atol=1e-14)


def test_log_softmax_then_nll_equals_cross_entropy(rng):
    z = rng.standard_normal((3, 4))
    y = np.eye(4)[[2, 0, 3]]
    zt = f64(z, True)
    loss = -ops.sum(ops.log_softmax(zt, axis=-1) * f64(y))
    loss.backward()
    np.testing.assert_allclose(zt.grad.numpy(), _softmax(z) - y, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------- convolution as im2col GEMM

SEED_X = np.arange(1.0, 17.0).reshape(1, 1, 4, 4)
SEED_W = np.array([[1.0, 0.0, -1.0]] * 3).reshape(1, 1, 3, 3)
# The seed's X_col: each column is one 3x3 patch, flattened row by row.
SEED_X_COL = np.array([
    [1, 2, 5, 6], [2, 3, 6, 7], [3, 4, 7, 8],
    [5, 6, 9, 10], [6, 7, 10, 11], [7, 8, 11, 12],
    [9, 10, 13, 14], [10, 11, 14, 15], [11, 12, 15, 16],
], dtype=np.float64)


def test_seed_convolution_is_all_minus_six():
    y = ops.conv2d(f64(SEED_X), f64(SEED_W))
    assert y.shape == (1, 1, 2, 2)
    np.testing.assert_array_equal(y.numpy(), np.full((1, 1, 2, 2), -6.0))


def test_seed_convolution_float32():
    y = ops.conv2d(st.tensor(SEED_X, dtype="float32"), st.tensor(SEED_W, dtype="float32"))
    assert y.dtype == "float32"
    np.testing.assert_array_equal(y.numpy(), np.full((1, 1, 2, 2), -6.0, dtype=np.float32))


def test_seed_convolution_as_matmul():
    y_col = ops.matmul(f64(SEED_W.reshape(1, 9)), f64(SEED_X_COL))
    np.testing.assert_array_equal(y_col.numpy(), [[-6.0, -6.0, -6.0, -6.0]])


def test_seed_convolution_gradients_match_the_gemm_form(rng):
    g = rng.standard_normal((1, 1, 2, 2))
    x, w = f64(SEED_X, True), f64(SEED_W, True)
    ops.conv2d(x, w).backward(f64(g))

    g_row = g.reshape(1, 4)
    # dL/dW_row = G_row · X_colᵀ, reshaped back to the kernel.
    np.testing.assert_allclose(w.grad.numpy(), (g_row @ SEED_X_COL.T).reshape(1, 1, 3, 3),
                               rtol=1e-12)
    # dL/dX_col = W_rowᵀ · G_row, each patch's gradient accumulated into its positions.
    dx_col = SEED_W.reshape(1, 9).T @ g_row
    dx = np.zeros((4, 4))
    for p, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        dx[i:i + 3, j:j + 3] += dx_col[:, p].reshape(3, 3)
    np.testing.assert_allclose(x.grad.numpy(), dx.reshape(1, 1, 4, 4), rtol=1e-12)


def test_seed_convolution_gradients_for_sum_loss():
    x, w = f64(SEED_X, True), f64(SEED_W, True)
    ops.sum(ops.conv2d(x, w)).backward()
    np.testing.assert_array_equal(w.grad.numpy().reshape(3, 3),
                                  [[14, 18, 22], [30, 34, 38], [46, 50, 54]])
    np.testing.assert_array_equal(x.grad.numpy().reshape(4, 4),
                                  [[1, 1, -1, -1], [2, 2, -2, -2],
                                   [2, 2, -2, -2], [1, 1, -1, -1]])
