"""Tensor construction, numpy/DLPack interop, views, and autograd graph mechanics."""

import numpy as np
import pytest

import steepest as st
from helpers import check_op, requires_torch, torch

ops = st.ops

DTYPES = ["float32", "float64", "int32", "int64", "bool"]


# ------------------------------------------------------------------- construction

@pytest.mark.parametrize("dtype", DTYPES)
def test_numpy_round_trip(dtype):
    a = (np.arange(12).reshape(3, 4) % 3).astype(dtype)
    t = st.tensor(a, dtype=dtype)
    assert t.shape == (3, 4) and t.ndim == 2 and t.dtype == dtype
    out = t.numpy()
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, a)


def test_tensor_from_list_and_scalar():
    t = st.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert t.shape == (2, 3) and t.dtype == "float32"  # default float dtype
    np.testing.assert_array_equal(t.numpy(), [[1, 2, 3], [4, 5, 6]])
    assert st.tensor(np.zeros(2, dtype=np.float64)).dtype == "float32"
    assert st.tensor([1, 2], dtype="int32").dtype == "int32"
    s = st.tensor(2.5, dtype="float64")
    assert s.shape == () and s.ndim == 0
    assert s.item() == 2.5 and isinstance(s.item(), float)
    assert st.tensor(7, dtype="int64").item() == 7


def test_tensor_copies_its_input():
    a = np.ones(3, dtype=np.float32)
    t = st.tensor(a)
    a[0] = 5.0
    assert t.numpy()[0] == 1.0


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
def test_from_numpy_shares_memory(dtype):
    a = np.arange(6).reshape(2, 3).astype(dtype)
    t = st.from_numpy(a)
    assert t.shape == (2, 3) and t.dtype == dtype
    a[1, 2] = 42
    assert t.numpy()[1, 2] == 42


def test_factories():
    z = st.zeros((2, 3))
    assert z.shape == (2, 3) and z.dtype == "float32"
    np.testing.assert_array_equal(z.numpy(), np.zeros((2, 3)))
    o = st.ones((4,), dtype="float64")
    assert o.dtype == "float64"
    np.testing.assert_array_equal(o.numpy(), np.ones(4))
    f = st.full((2, 2), 3.5)
    np.testing.assert_array_equal(f.numpy(), np.full((2, 2), 3.5))
    i = st.zeros((3,), dtype="int64")
    assert i.dtype == "int64"


def test_float32_rand_stays_below_one():
    # Seed 7 draws a double within 2^-25 of 1 among these 2^22, which rounds to 1.0f
    # unless the draw is clamped to the largest float below 1.
    st.manual_seed(7)
    assert st.rand(1 << 22).numpy().max() < 1.0


def test_random_factories_are_seeded():
    a = st.randn((50, 40), seed=1).numpy()
    np.testing.assert_array_equal(a, st.randn((50, 40), seed=1).numpy())
    assert not np.array_equal(a, st.randn((50, 40), seed=2).numpy())
    assert abs(a.mean()) < 0.1 and abs(a.std() - 1.0) < 0.1

    u = st.rand((50, 40), seed=1).numpy()
    np.testing.assert_array_equal(u, st.rand((50, 40), seed=1).numpy())
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.05


@pytest.mark.parametrize("src, dst", [("float32", "float64"), ("float64", "float32"),
                                      ("int64", "float32"), ("int32", "float64")])
def test_astype(src, dst):
    a = np.array([[1, 2], [3, 4]], dtype=src)
    out = st.tensor(a, dtype=src).astype(dst)
    assert out.dtype == dst
    np.testing.assert_array_equal(out.numpy(), a.astype(dst))


# ----------------------------------------------------------------------------- dlpack

@requires_torch
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
def test_dlpack_to_torch_shares_memory(dtype):
    t = st.tensor(np.arange(6).reshape(2, 3).astype(dtype), dtype=dtype)
    tt = torch.from_dlpack(t)
    assert tuple(tt.shape) == (2, 3) and str(tt.dtype) == f"torch.{dtype}"
    np.testing.assert_array_equal(tt.numpy(), np.arange(6).reshape(2, 3))
    tt[0, 1] = 9
    assert t.numpy()[0, 1] == 9


@requires_torch
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
def test_dlpack_from_torch_shares_memory(dtype):
    tt = torch.arange(6).reshape(2, 3).to(getattr(torch, dtype))
    t = st.from_dlpack(tt)
    assert t.shape == (2, 3) and t.dtype == dtype
    tt[1, 0] = 11
    assert t.numpy()[1, 0] == 11


@requires_torch
def test_dlpack_of_non_contiguous_view():
    a = np.arange(12.0, dtype=np.float32).reshape(3, 4)
    view = st.tensor(a).transpose(0, 1)[:, 1:]
    np.testing.assert_array_equal(torch.from_dlpack(view).numpy(), a.T[:, 1:])
    t = st.from_dlpack(torch.from_numpy(a).T)
    assert t.shape == (4, 3)
    np.testing.assert_array_equal(t.numpy(), a.T)


@requires_torch
def test_dlpack_round_trip_gradients_are_independent():
    # DLPack exchanges data only; the steepest result must still be usable in autograd.
    t = st.from_dlpack(torch.ones(2, 3, dtype=torch.float64))
    x = st.tensor(np.full((2, 3), 2.0), dtype="float64", requires_grad=True)
    ops.sum(x * t).backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.ones((2, 3)))


# ------------------------------------------------------------------------------ views

INDEXES = [
    pytest.param((1,), id="[1]"),
    pytest.param((-1,), id="[-1]"),
    pytest.param((slice(None), 1), id="[:,1]"),
    pytest.param((slice(0, 2), slice(None, None, 2)), id="[0:2,::2]"),
    pytest.param((Ellipsis, 3), id="[...,3]"),
    pytest.param((None, 1, slice(1, 3)), id="[None,1,1:3]"),
    pytest.param((slice(None), None, slice(2, None)), id="[:,None,2:]"),
    pytest.param((Ellipsis, slice(1, None, 3)), id="[...,1::3]"),
    pytest.param((1, 2), id="[1,2]"),
    pytest.param((slice(5, 9),), id="[5:9]-clipped"),
]


@pytest.mark.parametrize("index", INDEXES)
def test_basic_slicing_matches_numpy(index):
    a = np.arange(12.0).reshape(3, 4)
    out = st.tensor(a, dtype="float64")[index]
    assert out.shape == a[index].shape
    np.testing.assert_array_equal(out.numpy(), a[index])


@pytest.mark.parametrize("index", INDEXES[:-1])
def test_slicing_gradients(index):
    check_op(lambda x: x[index], lambda x: x[index], [(3, 4)])


@pytest.mark.parametrize("make_view, reference", [
    pytest.param(lambda t: t.transpose(0, 1), lambda a: a.T, id="transpose"),
    pytest.param(lambda t: t.T, lambda a: a.T, id="T"),
    pytest.param(lambda t: t.reshape(4, 3), lambda a: a.reshape(4, 3), id="reshape"),
    pytest.param(lambda t: t.reshape(-1), lambda a: a.reshape(-1), id="reshape-1"),
    pytest.param(lambda t: t[:, 1:3], lambda a: a[:, 1:3], id="slice"),
    pytest.param(lambda t: t[1], lambda a: a[1], id="row"),
])
def test_views_share_storage(make_view, reference):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    view = make_view(st.from_numpy(a))
    a[1, 2] = 100.0  # visible through the view: it aliases the numpy buffer
    np.testing.assert_array_equal(view.numpy(), reference(a))


@pytest.mark.parametrize("fn", [
    pytest.param(lambda x: x.reshape(2, 6), id="reshape"),
    pytest.param(lambda x: x.reshape(3, -1, 2), id="reshape-infer"),
    pytest.param(lambda x: x.transpose(0, 1), id="transpose"),
    pytest.param(lambda x: x.T, id="T"),
    pytest.param(lambda x: x.T.reshape(12), id="T-then-reshape"),
    pytest.param(lambda x: x[1:, ::2].T, id="slice-then-T"),
    pytest.param(lambda x: x.contiguous(), id="contiguous"),
    pytest.param(lambda x: x.T.contiguous(), id="T-contiguous"),
])
def test_view_gradients_flow_to_the_base(fn):
    check_op(fn, fn, [(3, 4)])


def test_transpose_3d_gradients():
    check_op(lambda x: x.transpose(0, 2), lambda x: x.transpose(0, 2), [(2, 3, 4)])


def test_contiguous_of_transposed_view():
    a = np.arange(6.0).reshape(2, 3)
    c = st.tensor(a, dtype="float64").T.contiguous()
    assert c.shape == (3, 2)
    np.testing.assert_array_equal(c.numpy(), a.T)


def test_numpy_of_views_matches():
    a = np.arange(24.0).reshape(2, 3, 4)
    t = st.tensor(a, dtype="float64")
    np.testing.assert_array_equal(t.transpose(0, 2).numpy(), a.transpose(2, 1, 0))
    np.testing.assert_array_equal(t[:, ::2, 1:].numpy(), a[:, ::2, 1:])


# --------------------------------------------------------------------------- autograd

def f64(data, requires_grad=False):
    return st.tensor(np.asarray(data, dtype=np.float64), dtype="float64",
                     requires_grad=requires_grad)


def test_leaf_state():
    x = f64([1.0, 2.0], requires_grad=True)
    assert x.requires_grad and x.grad is None
    y = x * x
    assert y.requires_grad
    assert not f64([1.0]).requires_grad


def test_gradient_accumulates_across_backward_calls():
    x = f64([1.0, 2.0, 3.0], requires_grad=True)
    ops.sum(x * f64(2.0)).backward()
    ops.sum(x * f64(3.0)).backward()
    np.testing.assert_array_equal(x.grad.numpy(), [5.0, 5.0, 5.0])


def test_grad_is_a_plain_tensor():
    x = f64([[1.0, 2.0]], requires_grad=True)
    ops.sum(x * x).backward()
    assert x.grad.shape == (1, 2) and x.grad.dtype == "float64"
    assert not x.grad.requires_grad


def test_backward_with_explicit_grad():
    x = f64([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    (x * x).backward(f64([[1.0, 0.5], [0.0, -1.0]]))
    np.testing.assert_array_equal(x.grad.numpy(), [[2.0, 2.0], [0.0, -8.0]])


def test_scalar_backward_with_explicit_grad():
    x = f64([1.0, 2.0], requires_grad=True)
    ops.sum(x * x).backward(f64(3.0))
    np.testing.assert_array_equal(x.grad.numpy(), [6.0, 12.0])


def test_no_grad():
    x = f64([1.0, 2.0], requires_grad=True)
    with st.no_grad():
        y = x * x
        z = ops.sum(y.exp())
    assert not y.requires_grad and not z.requires_grad
    assert (x * x).requires_grad  # grad mode is back after the block


def test_no_grad_restores_grad_mode_after_an_exception():
    x = f64([1.0], requires_grad=True)
    with pytest.raises(ZeroDivisionError):
        with st.no_grad():
            1 / 0
    assert (x * x).requires_grad


def test_no_grad_nested():
    x = f64([1.0], requires_grad=True)
    with st.no_grad():
        with st.no_grad():
            pass
        assert not (x * x).requires_grad
    assert (x * x).requires_grad


def test_detach():
    x = f64([1.0, 2.0, 3.0], requires_grad=True)
    d = x.detach()
    assert not d.requires_grad
    np.testing.assert_array_equal(d.numpy(), x.numpy())
    # The detached factor is a constant: d(x * d)/dx = d, not 2x.
    ops.sum(x * d).backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 2.0, 3.0])


def test_detach_shares_storage():
    a = np.zeros(3, dtype=np.float32)
    d = st.from_numpy(a).detach()
    a[0] = 4.0
    assert d.numpy()[0] == 4.0


def test_leaf_used_twice():
    x = f64([1.0, -2.0, 3.0], requires_grad=True)
    ops.sum(x * x + x).backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, -3.0, 7.0])  # 2x + 1


def test_diamond_graph():
    xv = np.array([0.3, -0.4, 0.5])
    x = f64(xv, requires_grad=True)
    a = x.exp()
    b = a * f64(2.0)
    c = a.tanh()
    ops.sum(b * c).backward()
    # y = sum(2a tanh(a)), a = e^x: dy/dx = (2 tanh(a) + 2a (1 - tanh(a)^2)) a
    av = np.exp(xv)
    expected = (2 * np.tanh(av) + 2 * av * (1 - np.tanh(av) ** 2)) * av
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-12)


def test_diamond_graph_against_torch():
    def fn(x, w):
        h = (x @ w).tanh()
        return (h * h.sigmoid() + h.exp()) @ w.T - x
    check_op(fn, fn, [(3, 4), (4, 4)], rtol=1e-5, atol=1e-4)


def test_intermediate_results_get_no_grad():
    x = f64([1.0, 2.0], requires_grad=True)
    y = x * f64(3.0)
    ops.sum(y * y).backward()
    np.testing.assert_array_equal(x.grad.numpy(), [18.0, 36.0])
    assert y.grad is None  # only leaves accumulate .grad


def test_gradient_flows_only_to_requires_grad_leaves():
    x = f64([1.0, 2.0], requires_grad=True)
    c = f64([3.0, 4.0])
    ops.sum(x * c).backward()
    assert c.grad is None
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 4.0])


def test_deep_chain_does_not_overflow_the_stack():
    # A recursive backward would blow the C/Python stack on long chains.
    x = f64([0.5], requires_grad=True)
    y = x
    for _ in range(5000):
        y = y * f64(1.0)
    ops.sum(y).backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0])


# ------------------------------------------------------------------------- grad_check

def test_grad_check_accepts_a_correct_function():
    x = st.tensor(np.random.default_rng(0).standard_normal((2, 3)), dtype="float64",
                  requires_grad=True)
    assert st.grad_check(lambda t: (t * t).tanh(), [x]) is True


def test_grad_check_skips_inputs_without_grad():
    rng = np.random.default_rng(1)
    x = st.tensor(rng.standard_normal((2, 3)), dtype="float64", requires_grad=True)
    c = st.tensor(rng.standard_normal((2, 3)), dtype="float64")
    assert st.grad_check(lambda a, b: a * b.exp(), [x, c]) is True


@pytest.mark.parametrize("shape", [(37, 53), (64, 128), (3, 33, 17), (1, 5), (300, 7)])
@pytest.mark.parametrize("dtype, to", [("float32", "float32"), ("float64", "float32"),
                                       ("float32", "bfloat16"), ("int64", "int64")])
def test_transposing_copies(shape, dtype, to):
    # The CPU copy tiles transposed layouts; every element must land where numpy puts it,
    # converted as a contiguous copy converts it.
    x = np.arange(np.prod(shape)).reshape(shape).astype(dtype)
    got = st.ops.transpose(st.tensor(x), -1, -2).astype(to).contiguous()
    expected = st.tensor(np.ascontiguousarray(np.swapaxes(x, -1, -2))).astype(to)
    np.testing.assert_array_equal(got.astype("float64").numpy(),
                                  expected.astype("float64").numpy())
