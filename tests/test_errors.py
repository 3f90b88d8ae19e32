"""Bad inputs: exception type, "[op]" message prefix, and the offending shapes named.

Contract: shape/value problems -> ValueError, dtype problems -> TypeError, out-of-range
class or embedding index -> IndexError, autograd misuse -> RuntimeError.
"""

import numpy as np
import pytest

import steepest as st
from helpers import raises_op

ops = st.ops


def randn(*shape, dtype="float32", requires_grad=False):
    data = np.random.default_rng(0).standard_normal(shape)
    return st.tensor(data, dtype=dtype, requires_grad=requires_grad)


# ----------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("a, b", [
    pytest.param((2, 3), (4, 5), id="2x3@4x5"),
    pytest.param((2, 3), (2, 3), id="2x3@2x3"),
    pytest.param((5, 2, 3), (5, 4, 2), id="batched-inner"),
])
def test_matmul_inner_dim_mismatch(a, b):
    with raises_op(ValueError, "matmul", a, b):
        ops.matmul(randn(*a), randn(*b))
    with raises_op(ValueError, "matmul", a, b):
        randn(*a) @ randn(*b)


def test_matmul_batch_dims_do_not_broadcast():
    with raises_op(ValueError, "matmul", (2, 3, 4), (5, 4, 2)):
        ops.matmul(randn(2, 3, 4), randn(5, 4, 2))


def test_linear_in_features_mismatch():
    with raises_op(ValueError, "linear", (3, 4), (5, 2)):
        ops.linear(randn(3, 4), randn(5, 2))


@pytest.mark.parametrize("name, op", [
    pytest.param("add", lambda a, b: ops.add(a, b), id="add"),
    pytest.param("add", lambda a, b: a + b, id="operator+"),
    pytest.param("sub", lambda a, b: ops.sub(a, b), id="sub"),
    pytest.param("mul", lambda a, b: ops.mul(a, b), id="mul"),
    pytest.param("mul", lambda a, b: a * b, id="operator*"),
    pytest.param("div", lambda a, b: ops.div(a, b), id="div"),
])
@pytest.mark.parametrize("a, b", [
    pytest.param((4, 3), (4,), id="4x3.4"),
    pytest.param((2, 3), (3, 2), id="2x3.3x2"),
    pytest.param((2, 1, 3), (4, 2), id="2x1x3.4x2"),
])
def test_shapes_that_cannot_broadcast(name, op, a, b):
    with raises_op(ValueError, name, a, b):
        op(randn(*a), randn(*b))


def test_mse_loss_shape_mismatch():
    with raises_op(ValueError, "mse_loss", (3, 4), (4, 3)):
        ops.mse_loss(randn(3, 4), randn(4, 3))


@pytest.mark.parametrize("shape, new_shape", [
    pytest.param((2, 3), (4, 2), id="6-to-8"),
    pytest.param((2, 3), (5, 1), id="6-to-5"),
    pytest.param((2, 3, 4), (5, 5), id="24-to-25"),
])
def test_bad_reshape(shape, new_shape):
    with raises_op(ValueError, "reshape", shape, new_shape):
        randn(*shape).reshape(*new_shape)


@pytest.mark.parametrize("name, call", [
    pytest.param("sum", lambda x: ops.sum(x, axis=2), id="sum-2"),
    pytest.param("sum", lambda x: x.sum(axis=-3), id="sum-method--3"),
    pytest.param("mean", lambda x: ops.mean(x, axis=(0, 5)), id="mean-tuple"),
    pytest.param("max", lambda x: ops.max(x, axis=3), id="max-3"),
    pytest.param("softmax", lambda x: ops.softmax(x, axis=2), id="softmax-2"),
    pytest.param("log_softmax", lambda x: ops.log_softmax(x, axis=-3), id="log_softmax--3"),
    pytest.param("transpose", lambda x: x.transpose(0, 2), id="transpose"),
])
def test_axis_out_of_range(name, call):
    with raises_op(ValueError, name, (2, 3)):
        call(randn(2, 3))


# ----------------------------------------------------------------------- losses

@pytest.mark.parametrize("labels", [pytest.param([0, 3], id="3-of-3-classes"),
                                    pytest.param([7, 1], id="7"),
                                    pytest.param([0, -1], id="negative")])
def test_cross_entropy_class_index_out_of_range(labels):
    # For a bad index the useful facts are the index itself, not the shapes.
    bad = str(labels[1] if labels[0] == 0 else labels[0])
    with raises_op(IndexError, "cross_entropy", contains=(bad,)):
        ops.cross_entropy(randn(2, 3), st.tensor(np.array(labels), dtype="int64"))


@pytest.mark.parametrize("labels", [
    pytest.param(np.array([0, 1, 2]), id="indices-3-for-batch-2"),
    pytest.param(np.array([[0, 1]]), id="indices-2d"),
    pytest.param(np.full((2, 4), 0.25), id="probabilities-2x4"),
    pytest.param(np.full((3, 3), 1 / 3), id="probabilities-3x3"),
])
def test_cross_entropy_label_shape_mismatch(labels):
    dtype = "float32" if labels.dtype.kind == "f" else "int64"
    with raises_op(ValueError, "cross_entropy", (2, 3), labels.shape):
        ops.cross_entropy(randn(2, 3), st.tensor(labels, dtype=dtype))


def test_cross_entropy_bad_reduction():
    with raises_op(ValueError, "cross_entropy", contains=("average",)):
        ops.cross_entropy(randn(2, 3), st.tensor(np.array([0, 1]), dtype="int64"),
                          reduction="average")


def test_embedding_index_out_of_range():
    table = randn(5, 3)
    with raises_op(IndexError, "embedding", contains=("5",)):
        ops.embedding(st.tensor(np.array([0, 5]), dtype="int64"), table)
    with raises_op(IndexError, "embedding", contains=("-1",)):
        ops.embedding(st.tensor(np.array([[1], [-1]]), dtype="int64"), table)


# ------------------------------------------------------------------ conv and pooling

def test_conv2d_channel_mismatch():
    with raises_op(ValueError, "conv2d", (1, 3, 5, 5), (2, 2, 3, 3)):
        ops.conv2d(randn(1, 3, 5, 5), randn(2, 2, 3, 3))


def test_conv2d_bias_shape_mismatch():
    with raises_op(ValueError, "conv2d", (3,)):
        ops.conv2d(randn(1, 3, 5, 5), randn(2, 3, 3, 3), randn(3))


@pytest.mark.parametrize("x, w, padding", [
    pytest.param((1, 1, 3, 3), (1, 1, 5, 5), 0, id="5x5-kernel-on-3x3"),
    pytest.param((1, 1, 2, 2), (1, 1, 5, 5), 1, id="5x5-kernel-on-padded-4x4"),
    pytest.param((1, 1, 4, 8), (1, 1, 5, 3), 0, id="kernel-taller-than-input"),
])
def test_conv2d_kernel_larger_than_padded_input(x, w, padding):
    # The kernel may be named by its weight shape or by its spatial size.
    with raises_op(ValueError, "conv2d", x, [w, w[2:]]):
        ops.conv2d(randn(*x), randn(*w), padding=padding)


def test_conv2d_needs_4d_input():
    with raises_op(ValueError, "conv2d", (3, 5, 5)):
        ops.conv2d(randn(3, 5, 5), randn(2, 3, 3, 3))


@pytest.mark.parametrize("name", ["max_pool2d", "avg_pool2d"])
@pytest.mark.parametrize("x, k, stride", [
    pytest.param((1, 1, 2, 2), 3, None, id="k3-on-2x2"),
    pytest.param((2, 3, 4, 1), 2, 1, id="k2-on-width-1"),
])
def test_pool_output_size_not_positive(name, x, k, stride):
    with raises_op(ValueError, name, x):
        getattr(ops, name)(randn(*x), k, stride=stride)


def test_max_of_empty_tensor_without_axis():
    with raises_op(ValueError, "max", (0, 3)):
        ops.max(st.zeros((0, 3)))
    with raises_op(ValueError, "max", (0, 3)):
        st.zeros((0, 3)).max()


def test_max_over_an_empty_axis():
    with raises_op(ValueError, "max", (0, 3)):
        ops.max(st.zeros((0, 3)), axis=0)


# ------------------------------------------------------------------------------ dtype

def test_matmul_does_not_promote():
    # Elementwise ops promote (tests/test_promotion.py); matmul, as torch's, does not.
    a = randn(2, 2, dtype="float32")
    b = randn(2, 2, dtype="float64")
    with raises_op(TypeError, "matmul", contains=("float32", "float64")):
        a @ b
    assert (a + b).dtype == "float64" and ops.mul(a, b).dtype == "float64"


def test_embedding_float_indices_is_type_error():
    with raises_op(TypeError, "embedding", contains=("float32",)):
        ops.embedding(st.tensor([0.0, 1.0], dtype="float32"), randn(5, 3))


# --------------------------------------------------------------------------- autograd

def test_backward_twice_through_freed_graph():
    x = randn(3, requires_grad=True)
    loss = ops.sum(x * x)  # saves x for backward
    loss.backward()
    with pytest.raises(RuntimeError, match=r"^\[backward\]"):
        loss.backward()


def test_backward_on_tensor_without_grad():
    y = ops.sum(randn(2, 3))
    with pytest.raises(RuntimeError, match=r"^\[backward\]"):
        y.backward()


def test_non_scalar_backward_needs_grad():
    y = randn(2, 3, requires_grad=True) * randn(2, 3)
    with raises_op(RuntimeError, "backward", (2, 3)):
        y.backward()
