"""Numerical stability at extreme logits, and zero-size dimensions."""

import math

import numpy as np
import pytest

import steepest as st

ops = st.ops

FLOATS = [pytest.param("float32", id="f32"), pytest.param("float64", id="f64")]


@pytest.mark.parametrize("dtype", FLOATS)
def test_log_softmax_of_huge_logits(dtype):
    out = ops.log_softmax(st.tensor([1000.0, 1.0], dtype=dtype), axis=-1).numpy()
    np.testing.assert_allclose(out, [0.0, -999.0], atol=1e-5)


@pytest.mark.parametrize("dtype", FLOATS)
def test_softmax_of_huge_logits(dtype):
    out = ops.softmax(st.tensor([[1000.0, 1.0], [-1000.0, -1000.0]], dtype=dtype)).numpy()
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, [[1.0, 0.0], [0.5, 0.5]], atol=1e-6)


def _cross_entropy_ref(z, labels):
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    return np.mean(lse - z[np.arange(len(labels)), labels])


def test_cross_entropy_is_shift_invariant_float64():
    z = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]])
    labels = st.tensor(np.array([2, 1]), dtype="int64")
    base = ops.cross_entropy(st.tensor(z, dtype="float64"), labels).item()
    shifted = ops.cross_entropy(st.tensor(z + 1e4, dtype="float64"), labels).item()
    assert math.isfinite(shifted)
    assert shifted == pytest.approx(base, abs=1e-9)
    assert base == pytest.approx(_cross_entropy_ref(z, np.array([2, 1])), rel=1e-12)


def test_cross_entropy_is_shift_invariant_float32():
    # In float32, z + 1e4 is rounded to a multiple of ~1e-3; the reference uses exactly
    # those rounded logits, so any remaining difference comes from the op itself.
    z = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]], dtype=np.float32)
    shifted32 = z + np.float32(1e4)
    expected = _cross_entropy_ref(shifted32.astype(np.float64) - 1e4, np.array([2, 1]))
    labels = st.tensor(np.array([2, 1]), dtype="int64")
    out = ops.cross_entropy(st.tensor(shifted32, dtype="float32"), labels).item()
    assert math.isfinite(out)
    assert out == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("dtype", FLOATS)
def test_cross_entropy_finite_gradients_at_extreme_logits(dtype):
    z = st.tensor([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 1000.0]], dtype=dtype,
                  requires_grad=True)
    loss = ops.cross_entropy(z, st.tensor(np.array([0, 2]), dtype="int64"))
    loss.backward()
    # Row 0 is certain and right (loss 0); row 1 splits evenly between classes 1 and 2.
    assert loss.item() == pytest.approx(math.log(2) / 2, rel=1e-5)
    grad = z.grad.numpy()
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, [[0.0, 0.0, 0.0], [0.0, 0.25, -0.25]], atol=1e-6)


@pytest.mark.parametrize("dtype", FLOATS)
def test_cross_entropy_probabilities_finite_at_extreme_logits(dtype):
    z = st.tensor([[1000.0, -1000.0]], dtype=dtype, requires_grad=True)
    loss = ops.cross_entropy(z, st.tensor([[0.5, 0.5]], dtype=dtype), reduction="sum")
    loss.backward()
    # -(0.5 log 1 + 0.5 log e^-2000) = 1000
    assert loss.item() == pytest.approx(1000.0, rel=1e-6)
    np.testing.assert_allclose(z.grad.numpy(), [[0.5, -0.5]], atol=1e-6)


@pytest.mark.parametrize("dtype", FLOATS)
def test_log_softmax_finite_gradients_at_extreme_logits(dtype):
    z = st.tensor([1000.0, -1000.0, 0.0], dtype=dtype, requires_grad=True)
    ops.log_softmax(z, axis=-1).backward(st.tensor([1.0, 2.0, 3.0], dtype=dtype))
    # d/dz of sum(g * log_softmax(z)) = g - p * sum(g), with p = (1, 0, 0).
    np.testing.assert_allclose(z.grad.numpy(), [1.0 - 6.0, 2.0, 3.0], atol=1e-5)


@pytest.mark.parametrize("dtype", FLOATS)
def test_binary_cross_entropy_from_logits_at_extremes(dtype):
    z = st.tensor([1000.0, -1000.0, 1000.0, -1000.0], dtype=dtype, requires_grad=True)
    y = st.tensor([1.0, 1.0, 0.0, 0.0], dtype=dtype)
    loss = ops.binary_cross_entropy(z, y, from_logits=True, reduction="none")
    np.testing.assert_allclose(loss.numpy(), [0.0, 1000.0, 1000.0, 0.0], rtol=1e-6)
    loss.backward(st.ones((4,), dtype=dtype))
    # sigmoid(z) - y
    np.testing.assert_allclose(z.grad.numpy(), [0.0, -1.0, 1.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("name, expected_out", [
    pytest.param("sigmoid", [1.0, 0.0], id="sigmoid"),
    pytest.param("tanh", [1.0, -1.0], id="tanh"),
])
def test_saturating_activations_at_extremes(name, expected_out, dtype):
    x = st.tensor([1000.0, -1000.0], dtype=dtype, requires_grad=True)
    y = getattr(ops, name)(x)
    np.testing.assert_array_equal(y.numpy(), expected_out)
    y.backward(st.ones((2,), dtype=dtype))
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0])


# -------------------------------------------------------------------- zero-size dims

@pytest.mark.parametrize("fn", [
    pytest.param(lambda a, b: a + b, id="add"),
    pytest.param(lambda a, b: a * b, id="mul"),
    pytest.param(lambda a, b: a - b.exp(), id="sub-exp"),
    pytest.param(lambda a, b: ops.relu(a) / (b * b + 1.0), id="relu-div"),
])
def test_zero_size_elementwise(fn):
    a = st.zeros((0, 3), requires_grad=True)
    b = st.ones((3,), requires_grad=True)  # broadcasts against the empty batch
    out = fn(a, b)
    assert out.shape == (0, 3)
    ops.sum(out).backward()
    assert a.grad.shape == (0, 3)
    np.testing.assert_array_equal(b.grad.numpy(), np.zeros(3, dtype=np.float32))


@pytest.mark.parametrize("axis, keepdims, shape, value", [
    pytest.param(None, False, (), 0.0, id="all"),
    pytest.param(0, False, (3,), np.zeros(3), id="ax0"),
    pytest.param(1, False, (0,), np.zeros(0), id="ax1"),
    pytest.param(0, True, (1, 3), np.zeros((1, 3)), id="ax0-keep"),
])
def test_zero_size_sum(axis, keepdims, shape, value):
    x = st.zeros((0, 3), requires_grad=True)
    out = ops.sum(x, axis=axis, keepdims=keepdims)
    assert out.shape == shape
    np.testing.assert_array_equal(out.numpy(), value)
    ops.sum(out).backward()
    assert x.grad.shape == (0, 3)


@pytest.mark.parametrize("a, b, shape", [
    pytest.param((0, 3), (3, 4), (0, 4), id="0x3@3x4"),
    pytest.param((2, 0), (0, 4), (2, 4), id="2x0@0x4"),
    pytest.param((2, 3), (3, 0), (2, 0), id="2x3@3x0"),
    pytest.param((0, 2, 3), (3, 4), (0, 2, 4), id="batch0"),
])
def test_zero_size_matmul(a, b, shape):
    at = st.ones(a, requires_grad=True)
    bt = st.ones(b, requires_grad=True)
    out = at @ bt
    assert out.shape == shape
    # An empty inner dimension means every output is an empty sum: zero.
    np.testing.assert_array_equal(out.numpy(), np.zeros(shape, dtype=np.float32))
    ops.sum(out).backward()
    assert at.grad.shape == a and bt.grad.shape == b
    np.testing.assert_array_equal(at.grad.numpy(), np.zeros(a, dtype=np.float32))
    np.testing.assert_array_equal(bt.grad.numpy(), np.zeros(b, dtype=np.float32))
