"""conv2d, pooling, flatten, layer_norm, embedding, dropout."""

import numpy as np
import pytest

import steepest as st
from helpers import F32_ATOL, LOOSE_ATOL, LOOSE_RTOL, F, check_op, torch

ops = st.ops

# im2col + GEMM (or any other summation order) differs from torch's float32 rounding.
CONV_TOL = dict(rtol=LOOSE_RTOL, atol=LOOSE_ATOL)

CONV_CASES = [
    # x, w, bias?, stride, padding
    pytest.param((1, 1, 5, 5), (1, 1, 3, 3), False, 1, 0, id="1ch-3x3"),
    pytest.param((2, 3, 5, 5), (4, 3, 3, 3), True, 1, 0, id="3to4ch-bias"),
    pytest.param((2, 2, 6, 6), (3, 2, 3, 3), True, 2, 1, id="stride2-pad1"),
    pytest.param((1, 2, 5, 5), (2, 2, 3, 3), True, 2, 0, id="stride2-no-pad"),
    pytest.param((1, 1, 6, 6), (1, 1, 3, 3), False, 2, 0, id="stride2-leftover-row"),
    pytest.param((1, 2, 4, 4), (2, 2, 3, 3), True, 1, 1, id="same-pad1"),
    pytest.param((1, 2, 5, 4), (2, 2, 2, 3), True, 1, 1, id="rect-kernel-pad1"),
    pytest.param((2, 3, 4, 4), (2, 3, 1, 1), True, 1, 0, id="1x1-kernel"),
    pytest.param((1, 1, 3, 3), (1, 1, 3, 3), True, 1, 0, id="kernel-equals-input"),
    pytest.param((1, 1, 2, 2), (1, 1, 3, 3), False, 1, 1, id="kernel-larger-than-input-pad"),
]


@pytest.mark.parametrize("x, w, bias, stride, padding", CONV_CASES)
def test_conv2d(x, w, bias, stride, padding):
    if bias:
        check_op(lambda x_, w_, b_: ops.conv2d(x_, w_, b_, stride=stride, padding=padding),
                 lambda x_, w_, b_: F.conv2d(x_, w_, b_, stride=stride, padding=padding),
                 [x, w, (w[0],)], **CONV_TOL)
    else:
        check_op(lambda x_, w_: ops.conv2d(x_, w_, stride=stride, padding=padding),
                 lambda x_, w_: F.conv2d(x_, w_, stride=stride, padding=padding),
                 [x, w], **CONV_TOL)


ASYMMETRIC_CASES = [
    # x, w, stride, padding ((top, bottom), (left, right)) or (ph, pw)
    pytest.param((2, 2, 7, 7), (3, 2, 3, 3), 2, ((0, 1), (0, 1)), id="keras-same-stride2"),
    pytest.param((1, 2, 5, 6), (2, 2, 2, 3), 1, ((0, 1), (1, 1)), id="even-kernel-stride1"),
    pytest.param((1, 1, 4, 5), (2, 1, 3, 2), 1, ((2, 0), (0, 3)), id="one-sided-beyond-kernel"),
    pytest.param((2, 3, 6, 5), (2, 3, 3, 3), (2, 1), ((1, 2), (2, 1)), id="rect-stride"),
    pytest.param((1, 2, 5, 5), (2, 2, 3, 3), 1, (1, 2), id="pair"),
]


@pytest.mark.parametrize("x, w, stride, padding", ASYMMETRIC_CASES)
def test_conv2d_asymmetric_padding(x, w, stride, padding):
    (top, bottom), (left, right) = padding if isinstance(padding[0], tuple) else [(p, p) for p in padding]
    check_op(lambda x_, w_, b_: ops.conv2d(x_, w_, b_, stride=stride, padding=padding),
             lambda x_, w_, b_: F.conv2d(F.pad(x_, (left, right, top, bottom)), w_, b_, stride=stride),
             [x, w, (w[0],)], **CONV_TOL)


def test_conv2d_padding_errors():
    x, w = st.randn((1, 1, 4, 4)), st.randn((1, 1, 3, 3))
    with pytest.raises(ValueError, match=r"\[conv2d\] padding must be non-negative, got \(\(0, -1\), \(1, 1\)\)"):
        ops.conv2d(x, w, padding=((0, -1), (1, 1)))
    with pytest.raises(TypeError, match=r"\[conv2d\] padding must be an int or a pair of ints"):
        ops.conv2d(x, w, padding=((0, 1, 2), (1, 1)))


@pytest.mark.parametrize("layouts", [
    pytest.param(("T", None, None), id="transposed-x"),
    pytest.param((None, "slice", "slice"), id="sliced-w-b"),
])
def test_conv2d_noncontiguous(layouts):
    check_op(lambda x_, w_, b_: ops.conv2d(x_, w_, b_, stride=2, padding=1),
             lambda x_, w_, b_: F.conv2d(x_, w_, b_, stride=2, padding=1),
             [(1, 2, 5, 5), (2, 2, 3, 3), (2,)], noncontig=layouts, **CONV_TOL)


POOL_CASES = [
    # x, kernel_size, stride (None: = kernel), padding
    pytest.param((1, 2, 4, 4), 2, None, 0, id="k2-default-stride"),
    pytest.param((2, 1, 5, 5), 3, 2, 0, id="k3-s2"),
    pytest.param((1, 1, 3, 4), 2, 1, 0, id="k2-s1-overlapping"),
    pytest.param((1, 2, 5, 5), 2, 2, 1, id="k2-s2-pad1"),
    pytest.param((1, 1, 4, 4), 3, 1, 1, id="k3-s1-pad1"),
    pytest.param((1, 1, 5, 6), 2, 3, 0, id="k2-s3-gaps"),
    pytest.param((1, 1, 1, 1), 1, None, 0, id="1x1"),
]


@pytest.mark.parametrize("x, k, stride, padding", POOL_CASES)
def test_max_pool2d(x, k, stride, padding):
    # Random normal inputs have no ties, so the argmax is unique in every window.
    check_op(lambda t: ops.max_pool2d(t, k, stride=stride, padding=padding),
             lambda t: F.max_pool2d(t, k, stride=stride, padding=padding), [x])


@pytest.mark.parametrize("x, k, stride, padding", POOL_CASES)
def test_avg_pool2d(x, k, stride, padding):
    check_op(lambda t: ops.avg_pool2d(t, k, stride=stride, padding=padding),
             lambda t: F.avg_pool2d(t, k, stride=stride, padding=padding,
                                    count_include_pad=True), [x])


@pytest.mark.parametrize("name", ["max_pool2d", "avg_pool2d"])
def test_pool_defaults_and_noncontiguous(name):
    st_op = getattr(ops, name)
    torch_op = lambda t: getattr(F, name)(t, 2)  # noqa: E731
    check_op(lambda t: st_op(t, 2), torch_op, [(1, 2, 4, 6)])
    check_op(lambda t: st_op(t, 2), torch_op, [(1, 2, 4, 6)], noncontig=["T"])


def test_max_pool2d_padding_is_never_the_max():
    # All-negative input: a zero-padded (instead of -inf padded) max pool would output 0.
    x = -np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    out = ops.max_pool2d(st.tensor(x, dtype="float64"), 2, stride=2, padding=1)
    np.testing.assert_array_equal(out.numpy(), [[[[-1.0, -2.0], [-4.0, -5.0]]]])


def test_avg_pool2d_counts_padding():
    out = ops.avg_pool2d(st.ones((1, 1, 2, 2), dtype="float64"), 2, stride=2, padding=1)
    np.testing.assert_allclose(out.numpy(), np.full((1, 1, 2, 2), 0.25))


@pytest.mark.parametrize("shape, layout", [
    pytest.param((2, 3, 4), None, id="2x3x4"),
    pytest.param((2, 3), None, id="2x3"),
    pytest.param((3, 1, 2, 2), None, id="3x1x2x2"),
    pytest.param((2, 4, 3), "T", id="2x4x3-transposed"),
    pytest.param((2, 3, 2), "slice", id="2x3x2-sliced"),
])
def test_flatten(shape, layout):
    check_op(ops.flatten, lambda t: torch.flatten(t, 1), [shape], noncontig=[layout])


LN_TOL = dict(rtol=LOOSE_RTOL, atol=F32_ATOL)  # mean/variance summation order differs


@pytest.mark.parametrize("shape, layouts", [
    pytest.param((3, 5), None, id="3x5"),
    pytest.param((2, 3, 4), None, id="2x3x4"),
    pytest.param((4, 2), None, id="two-features"),
    pytest.param((3, 5), ("slice", "slice", None), id="sliced-x-w"),
    pytest.param((4, 3), ("T", None, "slice"), id="transposed-x"),
    pytest.param((3, 600), None, id="rows-of-600"),  # vector lanes, blocks and tails
])
def test_layer_norm(shape, layouts):
    c = shape[-1]
    check_op(lambda x, w, b: ops.layer_norm(x, w, b),
             lambda x, w, b: F.layer_norm(x, (c,), w, b, eps=1e-5),
             [shape, (c,), (c,)], noncontig=layouts, **LN_TOL)


@pytest.mark.parametrize("affine", ["weight", "bias", "none"])
def test_layer_norm_without_some_parameters(affine):
    # Each parameter combination has its own loop in the CPU kernel.
    def fn(x, p):
        return ops.layer_norm(x, p if affine == "weight" else None, p if affine == "bias" else None)

    def ref(x, p):
        return F.layer_norm(x, (37,), p if affine == "weight" else None,
                            p if affine == "bias" else None, eps=1e-5)

    if affine == "none":
        check_op(lambda x: ops.layer_norm(x), lambda x: F.layer_norm(x, (37,), eps=1e-5),
                 [(5, 37)], **LN_TOL)
    else:
        check_op(fn, ref, [(5, 37), (37,)], **LN_TOL)


def test_layer_norm_single_feature():
    # One feature normalizes to exactly 0, so the output is the bias and d/dx vanishes.
    # No torch comparison: in float32 both sides only show amplified rounding noise.
    check_op(lambda x, w, b: ops.layer_norm(x, w, b), None, [(4, 1), (1,), (1,)])
    b = np.array([0.25])
    out = ops.layer_norm(st.tensor(np.arange(4.0).reshape(4, 1), dtype="float64"),
                         st.tensor(np.array([2.0]), dtype="float64"),
                         st.tensor(b, dtype="float64"))
    np.testing.assert_allclose(out.numpy(), np.full((4, 1), 0.25), atol=1e-12)


def test_layer_norm_custom_eps():
    # A large eps makes its contribution visible in both the values and the gradients.
    check_op(lambda x, w, b: ops.layer_norm(x, w, b, eps=0.5),
             lambda x, w, b: F.layer_norm(x, (4,), w, b, eps=0.5),
             [(3, 4), (4,), (4,)], **LN_TOL)


def test_layer_norm_normalizes_rows():
    x = np.array([[1.0, 2.0, 3.0, 4.0], [10.0, 10.0, 20.0, 20.0]])
    out = ops.layer_norm(st.tensor(x, dtype="float64"), st.ones((4,), dtype="float64"),
                         st.zeros((4,), dtype="float64"), eps=1e-12).numpy()
    np.testing.assert_allclose(out.mean(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(out.var(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("index_dtype", [np.int64, np.int32])
@pytest.mark.parametrize("indices", [
    pytest.param(np.array([[0, 2, 2], [4, 0, 2]]), id="2x3-repeats"),
    pytest.param(np.array([3, 3, 3, 3]), id="all-same"),
    pytest.param(np.array([1]), id="single"),
    pytest.param(np.array([[[0, 1]], [[4, 3]]]), id="3d"),
])
def test_embedding(indices, index_dtype):
    check_op(ops.embedding, lambda i, t: F.embedding(i, t),
             [indices.astype(index_dtype), (5, 3)])


def test_embedding_noncontiguous_table():
    check_op(ops.embedding, lambda i, t: F.embedding(i, t),
             [np.array([2, 0, 2]), (3, 4)], noncontig=[None, "T"])


def test_embedding_gradient_accumulates_repeated_rows():
    table = st.tensor(np.zeros((4, 2)), dtype="float64", requires_grad=True)
    idx = st.tensor(np.array([1, 3, 1, 1]), dtype="int64")
    g = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    ops.embedding(idx, table).backward(st.tensor(g, dtype="float64"))
    np.testing.assert_array_equal(table.grad.numpy(),
                                  [[0, 0], [13.0, 16.0], [0, 0], [3.0, 4.0]])


# ----------------------------------------------------------------------------- dropout

@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_gradient_is_mask_over_keep_probability(rate):
    x = np.random.default_rng(1).uniform(0.5, 1.5, (20, 30))  # nonzero: the mask is visible
    t = st.tensor(x, dtype="float64", requires_grad=True)
    out = ops.dropout(t, rate, training=True, seed=7)
    kept = out.numpy() != 0
    # Inverted dropout: kept values scaled by 1/(1-rate), the rest exactly zero.
    np.testing.assert_allclose(out.numpy(), np.where(kept, x / (1 - rate), 0.0), rtol=1e-12)
    assert abs(kept.mean() - (1 - rate)) < 0.08

    g = np.random.default_rng(2).standard_normal((20, 30))
    out.backward(st.tensor(g, dtype="float64"))
    np.testing.assert_allclose(t.grad.numpy(), g * kept / (1 - rate), rtol=1e-12)


def test_dropout_gradcheck_with_fixed_seed():
    # The same seed gives the same mask on every call, so finite differences are valid.
    check_op(lambda x: ops.dropout(x, 0.3, training=True, seed=11), None, [(4, 5)])


def test_dropout_same_seed_same_mask_different_seed_different_mask():
    x = st.ones((50, 40))
    a = ops.dropout(x, 0.5, training=True, seed=3).numpy()
    b = ops.dropout(x, 0.5, training=True, seed=3).numpy()
    c = ops.dropout(x, 0.5, training=True, seed=4).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("kwargs", [
    pytest.param(dict(rate=0.5, training=False), id="eval"),
    pytest.param(dict(rate=0.0, training=True), id="rate0"),
])
def test_dropout_identity(kwargs):
    x = np.random.default_rng(3).standard_normal((3, 4))
    t = st.tensor(x, dtype="float64", requires_grad=True)
    out = ops.dropout(t, seed=5, **kwargs)
    np.testing.assert_array_equal(out.numpy(), x)
    g = np.arange(12.0).reshape(3, 4)
    out.backward(st.tensor(g, dtype="float64"))
    np.testing.assert_array_equal(t.grad.numpy(), g)
