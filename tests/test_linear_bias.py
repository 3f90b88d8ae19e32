"""linear with a bias: the GEMM starts from the broadcast bias (beta = 1) instead of adding
it afterwards. Checked against add(matmul(x, w), b): values, every gradient, the graph, and
the bias left untouched (the GEMM writes into a buffer of its own)."""

import numpy as np
import pytest

import steepest as st
from helpers import LOOSE_ATOL, LOOSE_RTOL, F, HAS_TORCH, check_op

ops = st.ops
MM_TOL = dict(rtol=LOOSE_RTOL, atol=LOOSE_ATOL)


@pytest.mark.parametrize("x, w, b, layouts", [
    pytest.param((1, 5), (5, 3), (3,), None, id="one-row"),
    pytest.param((2, 3, 2, 4), (4, 3), (3,), None, id="4d-input"),
    pytest.param((5,), (5, 2), (2,), None, id="1d-input"),
    pytest.param((2, 3, 4), (4, 2), (2,), ("T", "T", None), id="3d-transposed-x-w"),
])
def test_linear_bias_gradients(x, w, b, layouts):
    check_op(ops.linear, lambda x_, w_, b_: F.linear(x_, w_.T, b_), [x, w, b],
             noncontig=layouts, **MM_TOL)


def test_linear_leaves_the_bias_alone():
    # One row: the broadcast bias is already contiguous, the GEMM must not add into it.
    x = st.tensor(np.arange(5.0).reshape(1, 5))
    w = st.tensor(np.ones((5, 1)))
    b = st.tensor(np.array([100.0]))
    for _ in range(2):
        np.testing.assert_array_equal(ops.linear(x, w, b).numpy(), [[110.0]])
    np.testing.assert_array_equal(b.numpy(), [100.0])


def test_linear_graph_is_add_over_matmul():
    rng = np.random.default_rng(0)
    x, w, b = (st.tensor(rng.standard_normal(shape), dtype="float64", requires_grad=True)
               for shape in ((3, 4), (4, 2), (2,)))
    out = ops.linear(x, w, b)
    assert out.grad_fn == "AddBackward"
    np.testing.assert_allclose(out.numpy(), x.numpy() @ w.numpy() + b.numpy(), rtol=1e-14)


@pytest.mark.parametrize("rows, k", [(0, 4), (3, 0)])
def test_linear_bias_empty(rows, k):
    x = st.tensor(np.ones((rows, k), dtype=np.float32), requires_grad=True)
    w = st.tensor(np.ones((k, 2), dtype=np.float32), requires_grad=True)
    b = st.tensor(np.array([1.0, 2.0], dtype=np.float32), requires_grad=True)
    out = ops.linear(x, w, b)
    np.testing.assert_array_equal(out.numpy(), np.tile([1.0, 2.0], (rows, 1)))
    out.backward(st.ones_like(out))
    np.testing.assert_array_equal(b.grad.numpy(), [rows, rows])
    np.testing.assert_array_equal(w.grad.numpy(), np.full((k, 2), rows))


def test_linear_bias_promotes_like_add():
    # A bias of another dtype takes the composed ops, which promote.
    x = st.tensor(np.ones((2, 3), dtype=np.float32))
    w = st.tensor(np.ones((3, 2), dtype=np.float32))
    b = st.tensor(np.array([0.5, 1.5]), dtype="float64")
    out = ops.linear(x, w, b)
    assert out.dtype == "float64"
    np.testing.assert_array_equal(out.numpy(), [[3.5, 4.5], [3.5, 4.5]])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mixed_precision_linear_bias(dtype):
    # 16-bit x and bias with a float32 master weight: the bias is added in float32 and the
    # result rounded once, so it is the float64 result rounded to dtype, within a rounding
    # of the products' float32 sums; the gradients are those of add(matmul(x, w), b).
    rng = np.random.default_rng(3)
    x = st.tensor(rng.standard_normal((2, 6, 16)), dtype=dtype, requires_grad=True)
    w = st.tensor(rng.standard_normal((16, 5)), dtype="float32", requires_grad=True)
    b = st.tensor(rng.standard_normal(5), dtype=dtype, requires_grad=True)
    g = st.tensor(rng.standard_normal((2, 6, 5)), dtype=dtype)
    out = ops.linear(x, w, b)
    assert out.dtype == dtype
    x64 = x.astype("float64").numpy()
    w64 = w.astype(dtype).astype("float64").numpy()
    ref = x64 @ w64 + b.astype("float64").numpy()
    got = out.astype("float64").numpy()
    ulp = 2.0 ** -8 if dtype == "bfloat16" else 2.0 ** -11
    assert np.all(np.abs(got - ref) <= ulp * np.abs(ref) + 1e-5 * (np.abs(x64) @ np.abs(w64)))
    out.backward(g)
    grads = [t.grad.astype("float64").numpy() for t in (x, w, b)]
    assert (x.grad.dtype, w.grad.dtype, b.grad.dtype) == (dtype, "float32", dtype)
    for t in (x, w, b):
        t.grad = None
    ops.add(ops.matmul(x, w), b).backward(g)
    for got_grad, t in zip(grads, (x, w, b)):
        np.testing.assert_array_equal(got_grad, t.grad.astype("float64").numpy())


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_linear_bias_matches_torch_float32():
    import torch

    rng = np.random.default_rng(4)
    x_np = rng.standard_normal((4, 7, 24)).astype(np.float32)
    w_np = rng.standard_normal((24, 18)).astype(np.float32)
    b_np = rng.standard_normal(18).astype(np.float32)
    out = ops.linear(st.tensor(x_np), st.tensor(w_np), st.tensor(b_np))
    ref = torch.nn.functional.linear(torch.tensor(x_np), torch.tensor(w_np.T.copy()),
                                     torch.tensor(b_np))
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)
