"""Regression tests for the bugs of issue 22 (found by a ported peer op suite)."""

import numpy as np
import pytest

import steepest as st
from helpers import HAS_TORCH, check_op, requires_torch, torch


@requires_torch
def test_permute_negative_axes_4d_backward():
    # Stored raw negative axes once made the inverse permutation repeat an axis.
    check_op(lambda x: x.permute((-2, -1, 1, 0)), lambda t: t.permute(-2, -1, 1, 0), [(2, 3, 4, 5)])
    check_op(lambda x: x.permute(-1, 0, -2, 1), lambda t: t.permute(-1, 0, -2, 1), [(2, 3, 4, 5)],
             noncontig=["T"])


def test_permute_negative_axes_grad_values():
    x = st.randn(2, 3, 4, 5, seed=1, requires_grad=True)
    y = x.permute((-2, -1, 1, 0))
    assert y.shape == (4, 5, 3, 2)
    w = st.randn(4, 5, 3, 2, seed=2)
    (y * w).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), w.numpy().transpose(3, 2, 0, 1))


def test_int_tensor_plus_float_scalar_is_float():
    assert (st.tensor(1) + 0.5).dtype == "float32"
    assert (st.tensor(1) + 0.5).item() == 1.5
    np.testing.assert_array_equal((st.tensor([1, 2, 3]) * 0.5).numpy(), [0.5, 1.0, 1.5])
    assert (0.5 * st.tensor([1, 2, 3])).dtype == "float32"


def test_index_with_none():
    assert st.ones(3)[None].shape == (1, 3)
    assert st.ones(3)[None, :, None].shape == (1, 3, 1)


def test_pow_zero_gradient_at_zero():
    x = st.tensor([0.0, 1.0, -2.0], dtype="float64", requires_grad=True)
    (x ** 0.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal((x ** 0.0).detach().numpy(), [1.0, 1.0, 1.0])


@pytest.mark.parametrize("key", [slice(None, None, -1), slice(None, None, -2), slice(3, 0, -1),
                                 slice(-1, None, -3), slice(2, -10, -1), slice(0, 5, -1)])
def test_negative_slice_steps(key):
    a = np.arange(7.0)
    t = st.tensor(a, dtype="float64", requires_grad=True)
    out = t[key]
    np.testing.assert_array_equal(out.detach().numpy(), a[key])
    w = np.arange(1.0, out.shape[0] + 1)
    (out * st.tensor(w, dtype="float64")).sum().backward()
    expected = np.zeros(7)
    expected[key] = w
    np.testing.assert_array_equal(t.grad.numpy(), expected)


def test_negative_slice_step_2d_gradcheck():
    check_op(lambda x: x[::-1, 1::-2], None, [(4, 5)])
    m = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(st.tensor(m)[::-1, ::-1].numpy(), m[::-1, ::-1])
    np.testing.assert_array_equal(st.tensor(m)[::-1].contiguous().numpy(), m[::-1])


def test_squeeze_semantics():
    x = st.ones(2, 1, 3, 1)
    assert x.squeeze(0).shape == (2, 1, 3, 1)  # not of size 1: a no-op, as torch
    assert x.squeeze(1).shape == (2, 3, 1)
    assert x.squeeze(-1).shape == (2, 1, 3)
    assert x.squeeze().shape == (2, 3)
    assert x.squeeze((1, 3)).shape == (2, 3)
    assert st.ops.squeeze(x).shape == (2, 3)
    assert st.tensor(2.0).squeeze(0).shape == ()
    with pytest.raises(ValueError, match="squeeze"):
        x.squeeze(4)


def test_squeeze_backward():
    check_op(lambda x: x.squeeze(), lambda t: t.squeeze(), [(3, 1, 2)])


@pytest.mark.parametrize("args", [(0, 1, 0.1), (1.5,), (0.5, 3), (3, 0, -0.7), (-1, 1, 0.25),
                                  (0, 1, 0.3), (1, 1, 0.5)])
def test_float_arange(args):
    t = st.arange(*args)
    assert t.dtype == "float32"
    np.testing.assert_allclose(t.numpy(), np.arange(*args, dtype=np.float64).astype(np.float32),
                               rtol=1e-6)
    if HAS_TORCH:
        ref = torch.arange(*args)
        assert ref.dtype == torch.float32
        np.testing.assert_allclose(t.numpy(), ref.numpy(), rtol=1e-6)


def test_arange_dtypes():
    assert st.arange(5).dtype == "int64"
    assert st.arange(0, 1, 0.1, dtype="float64").dtype == "float64"
    assert st.arange(0.0, 3.0, dtype="int64").numpy().tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="arange"):
        st.arange(0, 1, 0.0)


@pytest.mark.parametrize("axis", [0, -1, (0,), (-1,)])
def test_reductions_of_0d_with_axis(axis):
    x = st.tensor(3.0, dtype="float64", requires_grad=True)
    for fn in (st.ops.sum, st.ops.mean, st.ops.max):
        y = fn(x, axis=axis)
        assert y.shape == () and y.item() == 3.0
        y.backward()
        assert x.grad.item() == 1.0
        x.grad = None
    assert st.ops.sum(x, axis=axis, keepdims=True).shape == ()


@pytest.mark.parametrize("axis", [0, -1])
def test_softmax_of_0d_with_axis(axis):
    x = st.tensor(3.0, dtype="float64", requires_grad=True)
    y = st.ops.softmax(x, axis=axis)
    assert y.shape == () and y.item() == 1.0
    assert st.ops.log_softmax(x, axis=axis).item() == 0.0
    y.backward()
    assert x.grad.item() == 0.0
    with pytest.raises(ValueError, match="out of range"):
        st.ops.softmax(x, axis=1)


def test_0d_axis_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        st.tensor(3.0).sum(1)
    with pytest.raises(ValueError, match="out of range"):
        st.tensor(3.0).sum(-2)


def test_0d_unsqueeze_flatten():
    assert st.tensor(3.0).unsqueeze(0).shape == (1,)
    assert st.tensor(3.0).unsqueeze(-1).shape == (1,)
    assert st.tensor(3.0).flatten().shape == (1,)
