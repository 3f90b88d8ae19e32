"""Elementwise ops: binary with broadcasting, unary activations, power, operators, methods."""

import numpy as np
import pytest

import steepest as st
from helpers import F, check_op, torch

ops = st.ops

BINARY = {
    "add": (ops.add, lambda a, b: a + b),
    "sub": (ops.sub, lambda a, b: a - b),
    "mul": (ops.mul, lambda a, b: a * b),
    "div": (ops.div, lambda a, b: a / b),
}

# (lhs shape, rhs shape): same shape, numpy broadcasting in every direction, size-1 dims.
BROADCAST_SHAPES = [
    pytest.param([(3, 4), (3, 4)], id="3x4.3x4"),
    pytest.param([(4, 3), (3,)], id="4x3.3"),
    pytest.param([(3,), (4, 3)], id="3.4x3"),
    pytest.param([(4, 1), (1, 5)], id="4x1.1x5"),
    pytest.param([(2, 3), (1,)], id="2x3.1"),
    pytest.param([(1,), (2, 3)], id="1.2x3"),
    pytest.param([(2, 1, 3), (4, 1)], id="2x1x3.4x1"),
    pytest.param([(1, 1), (1, 1)], id="1x1.1x1"),
    pytest.param([(5,), (5,)], id="5.5"),
]


@pytest.mark.parametrize("shapes", BROADCAST_SHAPES)
@pytest.mark.parametrize("name", list(BINARY))
def test_binary_broadcast(name, shapes):
    st_fn, torch_fn = BINARY[name]
    # Divisors stay away from zero so the finite differences are well conditioned.
    domain = ("normal", "nonzero") if name == "div" else "normal"
    check_op(st_fn, torch_fn, shapes, domain=domain)


@pytest.mark.parametrize("layouts", [
    pytest.param(("T", None), id="T.contig"),
    pytest.param((None, "T"), id="contig.T"),
    pytest.param(("slice", "T"), id="slice.T"),
    pytest.param(("T", "slice"), id="T.slice"),
])
@pytest.mark.parametrize("name", list(BINARY))
def test_binary_noncontiguous(name, layouts):
    st_fn, torch_fn = BINARY[name]
    domain = ("normal", "nonzero") if name == "div" else "normal"
    check_op(st_fn, torch_fn, [(3, 4), (3, 4)], noncontig=layouts, domain=domain)


@pytest.mark.parametrize("name", list(BINARY))
def test_binary_noncontiguous_broadcast(name):
    st_fn, torch_fn = BINARY[name]
    domain = ("normal", "nonzero") if name == "div" else "normal"
    check_op(st_fn, torch_fn, [(2, 4, 3), (3,)], noncontig=("T", "slice"), domain=domain)


def test_binary_same_tensor_twice():
    # Both operands are the same leaf: the two gradient contributions must add up.
    check_op(lambda x: ops.mul(x, x), lambda x: x * x, [(3, 4)])
    check_op(lambda x: ops.add(x, x), lambda x: x + x, [(3, 4)])


UNARY = {
    # name: (steepest op, torch reference, input domain)
    "neg": (ops.neg, lambda x: -x, "normal"),
    "exp": (ops.exp, lambda x: torch.exp(x), "normal"),
    "log": (ops.log, lambda x: torch.log(x), "positive"),
    "sqrt": (ops.sqrt, lambda x: torch.sqrt(x), "positive"),
    "abs": (ops.abs, lambda x: torch.abs(x), "nonzero"),
    "relu": (ops.relu, lambda x: torch.relu(x), "nonzero"),
    "sigmoid": (ops.sigmoid, lambda x: torch.sigmoid(x), "normal"),
    "tanh": (ops.tanh, lambda x: torch.tanh(x), "normal"),
    "gelu": (ops.gelu, lambda x: F.gelu(x), "normal"),
}

UNARY_SHAPES = [
    pytest.param((2, 3), None, id="2x3"),
    pytest.param((7,), None, id="7"),
    pytest.param((1,), None, id="1"),
    pytest.param((3, 1, 2), None, id="3x1x2"),
    pytest.param((3, 4), "T", id="3x4-transposed"),
    pytest.param((2, 4), "slice", id="2x4-sliced"),
]


@pytest.mark.parametrize("shape, layout", UNARY_SHAPES)
@pytest.mark.parametrize("name", list(UNARY))
def test_unary(name, shape, layout):
    st_fn, torch_fn, domain = UNARY[name]
    check_op(st_fn, torch_fn, [shape], domain=domain, noncontig=[layout])


def test_unary_wide_range():
    # Saturated regions of sigmoid/tanh/gelu and large exp arguments, compared with torch.
    x = np.linspace(-12.0, 12.0, 25).reshape(5, 5)
    for name in ("sigmoid", "tanh", "gelu", "neg"):
        st_fn, torch_fn, _ = UNARY[name]
        check_op(st_fn, torch_fn, [x])
    check_op(ops.exp, lambda t: torch.exp(t), [np.linspace(-8.0, 8.0, 9)])


@pytest.mark.parametrize("exponent, domain", [
    pytest.param(2.0, "normal", id="2"),
    pytest.param(3.0, "normal", id="3"),
    pytest.param(1.0, "normal", id="1"),
    pytest.param(0.0, "nonzero", id="0"),
    pytest.param(0.5, "positive", id="0.5"),
    pytest.param(1.5, "positive", id="1.5"),
    pytest.param(-1.0, "positive", id="-1"),
    pytest.param(-2.5, "positive", id="-2.5"),
])
def test_power(exponent, domain):
    check_op(lambda x: ops.power(x, exponent), lambda x: torch.pow(x, exponent),
             [(3, 4)], domain=domain)


def test_power_noncontiguous():
    check_op(lambda x: ops.power(x, 3.0), lambda x: x ** 3.0, [(3, 4)], noncontig=["T"])


# Operator and method spellings must dispatch to the same ops (and torch spells them
# identically, so one lambda serves both sides).
OPERATORS = [
    pytest.param(lambda a, b: a + b, "normal", id="a+b"),
    pytest.param(lambda a, b: a - b, "normal", id="a-b"),
    pytest.param(lambda a, b: a * b, "normal", id="a*b"),
    pytest.param(lambda a, b: a / b, ("normal", "nonzero"), id="a/b"),
    pytest.param(lambda a, b: -a * b, "normal", id="-a*b"),
    pytest.param(lambda a, b: (a + b) * a - b / (a * a + 1.0), "normal", id="expression"),
]


@pytest.mark.parametrize("fn, domain", OPERATORS)
def test_operators(fn, domain):
    check_op(fn, fn, [(3, 4), (4,)], domain=domain)


@pytest.mark.parametrize("fn, domain", [
    pytest.param(lambda x: x ** 2, "normal", id="x**2"),
    pytest.param(lambda x: x ** 0.5, "positive", id="x**0.5"),
    pytest.param(lambda x: -x, "normal", id="-x"),
    pytest.param(lambda x: x.exp(), "normal", id="exp"),
    pytest.param(lambda x: x.log(), "positive", id="log"),
    pytest.param(lambda x: x.sqrt(), "positive", id="sqrt"),
    pytest.param(lambda x: x.relu(), "nonzero", id="relu"),
    pytest.param(lambda x: x.sigmoid(), "normal", id="sigmoid"),
    pytest.param(lambda x: x.tanh(), "normal", id="tanh"),
    pytest.param(lambda x: x.abs(), "nonzero", id="abs"),
])
def test_methods_and_unary_operators(fn, domain):
    check_op(fn, fn, [(2, 3)], domain=domain)


def test_python_scalar_operands_keep_dtype():
    # Python numbers are "weak": float32 op float stays float32 (numpy 2 / torch rule).
    x = st.tensor([1.0, 2.0, 4.0], dtype="float32")
    for y, expected in [
        (x + 1.0, [2.0, 3.0, 5.0]),
        (1.0 + x, [2.0, 3.0, 5.0]),
        (x - 1.0, [0.0, 1.0, 3.0]),
        (1.0 - x, [0.0, -1.0, -3.0]),
        (2.0 * x, [2.0, 4.0, 8.0]),
        (x * 2.0, [2.0, 4.0, 8.0]),
        (x / 2.0, [0.5, 1.0, 2.0]),
        (4.0 / x, [4.0, 2.0, 1.0]),
    ]:
        assert y.dtype == "float32"
        np.testing.assert_allclose(y.numpy(), expected)


def test_python_scalar_operand_gradients():
    check_op(lambda x: 3.0 * x - 1.0 / (x + 2.0), lambda x: 3.0 * x - 1.0 / (x + 2.0),
             [(2, 3)], domain="positive")


@pytest.mark.parametrize("op, np_op", [
    pytest.param(lambda a, b: a < b, np.less, id="lt"),
    pytest.param(lambda a, b: a <= b, np.less_equal, id="le"),
    pytest.param(lambda a, b: a > b, np.greater, id="gt"),
    pytest.param(lambda a, b: a >= b, np.greater_equal, id="ge"),
    pytest.param(lambda a, b: a == b, np.equal, id="eq"),
    pytest.param(lambda a, b: a != b, np.not_equal, id="ne"),
])
def test_comparisons_return_bool_without_grad(op, np_op):
    a = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], dtype=np.float32)
    b = np.array([2.0, 2.0, 2.0], dtype=np.float32)  # broadcasts, and gives ties
    out = op(st.tensor(a, requires_grad=True), st.tensor(b))
    assert out.dtype == "bool"
    assert out.requires_grad is False
    np.testing.assert_array_equal(out.numpy(), np_op(a, b))


@pytest.mark.parametrize("lower", [-0.5, 0.0, 0.3])
def test_clamp_min(lower):
    # Random normal inputs sit away from the kink at `lower` almost surely.
    check_op(lambda x: ops.clamp_min(x, lower),
             (lambda x: torch.clamp(x, min=lower)) if torch is not None else None,
             [(4, 5)])
