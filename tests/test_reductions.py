"""sum / mean / max over axis None, int, negative int and tuples, with keepdims both ways."""

import numpy as np
import pytest

import steepest as st
from helpers import check_op, torch

ops = st.ops

AXES = [
    pytest.param(None, id="all"),
    pytest.param(0, id="ax0"),
    pytest.param(1, id="ax1"),
    pytest.param(-1, id="ax-1"),
    pytest.param((0, 2), id="ax0,2"),
    pytest.param((-1, 1), id="ax-1,1"),
    pytest.param((0, 1, 2), id="ax0,1,2"),
]
KEEPDIMS = [pytest.param(False, id="drop"), pytest.param(True, id="keep")]


def _dims(axis, ndim):
    return tuple(range(ndim)) if axis is None else axis


def torch_sum(axis, keepdims):
    return lambda x: torch.sum(x, dim=_dims(axis, x.ndim), keepdim=keepdims)


def torch_mean(axis, keepdims):
    return lambda x: torch.mean(x, dim=_dims(axis, x.ndim), keepdim=keepdims)


def torch_max(axis, keepdims):
    # amax splits the gradient between ties; the random inputs here have none.
    return lambda x: torch.amax(x, dim=_dims(axis, x.ndim), keepdim=keepdims)


REDUCTIONS = {
    "sum": (ops.sum, torch_sum),
    "mean": (ops.mean, torch_mean),
    "max": (ops.max, torch_max),
}


@pytest.mark.parametrize("keepdims", KEEPDIMS)
@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("name", list(REDUCTIONS))
def test_reduction(name, axis, keepdims):
    st_op, torch_ref = REDUCTIONS[name]
    check_op(lambda x: st_op(x, axis=axis, keepdims=keepdims), torch_ref(axis, keepdims),
             [(2, 3, 4)])


@pytest.mark.parametrize("keepdims", KEEPDIMS)
@pytest.mark.parametrize("axis", [pytest.param(None, id="all"), pytest.param(0, id="ax0"),
                                  pytest.param(-1, id="ax-1")])
@pytest.mark.parametrize("name", list(REDUCTIONS))
def test_reduction_method(name, axis, keepdims):
    _, torch_ref = REDUCTIONS[name]
    check_op(lambda x: getattr(x, name)(axis=axis, keepdims=keepdims),
             torch_ref(axis, keepdims), [(3, 4)])


@pytest.mark.parametrize("name", list(REDUCTIONS))
def test_reduction_defaults_reduce_everything(name):
    st_op, torch_ref = REDUCTIONS[name]
    check_op(lambda x: st_op(x), torch_ref(None, False), [(3, 4)])
    check_op(lambda x: getattr(x, name)(), torch_ref(None, False), [(3, 4)])


@pytest.mark.parametrize("axis", [pytest.param(None, id="all"), pytest.param(0, id="ax0"),
                                  pytest.param(1, id="ax1")])
@pytest.mark.parametrize("layout", ["T", "slice"])
@pytest.mark.parametrize("name", list(REDUCTIONS))
def test_reduction_noncontiguous(name, layout, axis):
    st_op, torch_ref = REDUCTIONS[name]
    check_op(lambda x: st_op(x, axis=axis), torch_ref(axis, False), [(3, 4)],
             noncontig=[layout])


@pytest.mark.parametrize("shape, axis", [
    pytest.param((1,), None, id="1-all"),
    pytest.param((1, 4), 0, id="1x4-ax0"),
    pytest.param((4, 1), 1, id="4x1-ax1"),
    pytest.param((5,), 0, id="5-ax0"),
])
@pytest.mark.parametrize("name", list(REDUCTIONS))
def test_reduction_size_one_dims(name, shape, axis):
    st_op, torch_ref = REDUCTIONS[name]
    check_op(lambda x: st_op(x, axis=axis, keepdims=True), torch_ref(axis, True), [shape])


def test_max_routes_gradient_to_argmax():
    x = np.array([[0.1, 0.9, -0.3], [2.0, -1.0, 0.5]])
    t = st.tensor(x, dtype="float64", requires_grad=True)
    ops.max(t, axis=1).backward(st.tensor([3.0, 5.0], dtype="float64"))
    np.testing.assert_array_equal(t.grad.numpy(), [[0.0, 3.0, 0.0], [5.0, 0.0, 0.0]])

    t = st.tensor(x, dtype="float64", requires_grad=True)
    ops.max(t).backward()
    np.testing.assert_array_equal(t.grad.numpy(), [[0, 0, 0], [1, 0, 0]])


def test_mean_gradient_is_uniform():
    t = st.tensor(np.ones((2, 5)), dtype="float64", requires_grad=True)
    ops.mean(t).backward()
    np.testing.assert_allclose(t.grad.numpy(), np.full((2, 5), 0.1))


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("axis, shape", [(1, (37, 53)), (1, (5, 1000)), (0, (53, 300)),
                                         (1, (4, 33, 70))])
def test_max_takes_the_first_maximum_and_the_first_nan(rng, dtype, axis, shape):
    # Values from a small set, so that ties are everywhere; then rows of -inf, signed
    # zeros and NaNs. The vectorised row and column kernels must pick what a left-to-right
    # scan picks: the first maximum, or the first NaN (argmax shares their kernel).
    x = rng.integers(-3, 4, shape).astype(np.float32)
    flat = np.moveaxis(x, axis, -1).reshape(-1, shape[axis])
    flat[0] = -np.inf
    flat[1] = 0.0
    flat[1, ::3] = -0.0
    flat[2, 5] = np.nan
    flat[2, 9] = np.nan
    flat[3, -1] = np.nan
    flat[4, :] = np.nan
    x = np.moveaxis(flat.reshape(np.moveaxis(x, axis, -1).shape), -1, axis).copy()
    t = st.tensor(x).astype(dtype).detach()
    t.requires_grad = True
    got = ops.max(t, axis=axis).astype("float32").numpy()
    values = t.astype("float32").numpy()
    nan_first = np.argmax(np.isnan(values), axis=axis)
    has_nan = np.isnan(values).any(axis=axis)
    expected_index = np.where(has_nan, nan_first, np.argmax(np.where(np.isnan(values), -np.inf,
                                                                      values), axis=axis))
    expected = np.take_along_axis(values, np.expand_dims(expected_index, axis), axis).squeeze(axis)
    np.testing.assert_array_equal(got, expected)
    assert np.array_equal(np.signbit(got), np.signbit(expected))
    np.testing.assert_array_equal(ops.argmax(t, axis=axis).numpy(), expected_index)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("op", [ops.sum, ops.mean])
def test_sums_over_separated_axes_round_once_in_16_bits(rng, dtype, op):
    # Axes (0, 2, 3) of NCHW are reduced in stages (rows of H·W, then the batch) with
    # float32 sums: the 16-bit result is the float32 result rounded once.
    x = st.tensor(rng.standard_normal((6, 5, 7, 9)).astype(np.float32)).astype(dtype)
    got = op(x, axis=(0, 2, 3))
    ref = op(x.astype("float32"), axis=(0, 2, 3)).astype(dtype)
    assert got.dtype == dtype and got.shape == (5,)
    np.testing.assert_array_equal(got.astype("float32").numpy(), ref.astype("float32").numpy())
    np.testing.assert_allclose(
        op(x.astype("float32"), axis=(0, 2, 3)).numpy(),
        getattr(np, op.__name__)(x.astype("float32").numpy().astype(np.float64), axis=(0, 2, 3)),
        rtol=1e-5, atol=1e-5)
