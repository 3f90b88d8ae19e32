"""Column sums made inside a row pass (layer_norm's weight and bias gradients,
bias_gelu's bias gradient): per-block partials added in block order, so the result is the
same bit for bit whatever the thread count, and equal to the float64 sums within float32
rounding. 200 rows make several blocks and an uneven last one."""

import math

import numpy as np
import pytest

import steepest as st

ops = st.ops


def _gradients(fn, arrays, grad, dtype, threads):
    previous = st.get_num_threads()
    st.set_num_threads(threads)
    try:
        leaves = [st.tensor(a, dtype=dtype, requires_grad=True) for a in arrays]
        fn(*leaves).backward(st.tensor(grad, dtype=dtype))
        return [leaf.grad.astype("float64").numpy() for leaf in leaves]
    finally:
        st.set_num_threads(previous)


def _layer_norm_grads64(x, w, g):
    mu = x.mean(-1, keepdims=True)
    rstd = 1.0 / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    xhat = (x - mu) * rstd
    gw = g * w
    dx = rstd * (gw - gw.mean(-1, keepdims=True) - xhat * (gw * xhat).mean(-1, keepdims=True))
    return [dx, (g * xhat).sum(0), g.sum(0)]


def _bias_gelu_grads64(x, b, g):
    z = x + b
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))
    dz = g * (cdf + z * np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi))
    return [dz, dz.sum(0)]


CASES = {
    "layer_norm": (lambda x, w, b: ops.layer_norm(x, w, b), lambda rng: [
        rng.standard_normal((200, 40)) * 3 + 1, rng.standard_normal(40), rng.standard_normal(40)],
        lambda a, g: _layer_norm_grads64(a[0], a[1], g)),
    "bias_gelu": (ops.bias_gelu, lambda rng: [rng.standard_normal((200, 40)) * 2,
                                              rng.standard_normal(40)],
                  lambda a, g: _bias_gelu_grads64(a[0], a[1], g)),
}


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_column_sums_do_not_depend_on_threads(name, dtype):
    fn, draw, _ = CASES[name]
    rng = np.random.default_rng(0)
    arrays = draw(rng)
    grad = rng.standard_normal((200, 40))
    one = _gradients(fn, arrays, grad, dtype, 1)
    for threads in (2, 3):
        for a, b in zip(one, _gradients(fn, arrays, grad, dtype, threads)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", sorted(CASES))
def test_column_sums_match_float64(name):
    fn, draw, reference = CASES[name]
    rng = np.random.default_rng(1)
    arrays = [a.astype(np.float32).astype(np.float64) for a in draw(rng)]
    grad = rng.standard_normal((200, 40)).astype(np.float32).astype(np.float64)
    got = _gradients(fn, arrays, grad, "float32", 2)
    want = reference(arrays, grad)
    # The input's gradient, then the column sums.
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * np.abs(w).max())
