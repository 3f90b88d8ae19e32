"""Type promotion (issue 22): one rule, NumPy >= 2 / PyTorch's, checked against torch over
every dtype pair steepest supports and every op family: the result dtype, the values, and
that where torch refuses a combination, steepest does too."""

import itertools
import operator

import numpy as np
import pytest

import steepest as st
from helpers import requires_torch, torch

pytestmark = requires_torch

DTYPES = ["bool", "int32", "int64", "float16", "bfloat16", "float32", "float64"]
TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPES} if torch is not None else {}

# Values every dtype holds exactly; no zeros, so integer division and log stay finite.
_DATA = {
    "bool": [True, False, True, True],
    "int": [3, -2, 7, 1],
    "float": [1.5, -0.25, 2.0, 0.75],
}
# A second operand of another shape (broadcast) and other values.
_DATA_B = {"bool": [[True], [False]], "int": [[2], [-3]], "float": [[0.5], [-1.75]]}


def _kind(dtype):
    return "bool" if dtype == "bool" else "int" if dtype.startswith("int") else "float"


def _pair(dtype, data):
    values = data[_kind(dtype)]
    return st.tensor(values, dtype=dtype), torch.tensor(values, dtype=TORCH_DTYPES[dtype])


def _numpy(t):
    if isinstance(t, torch.Tensor):
        return t.double().numpy()
    return t.astype("float64").numpy()


def _tolerance(dtype):
    return {"float16": 2e-3, "bfloat16": 1e-2, "float32": 2e-6}.get(dtype, 1e-12)


def _check(st_fn, torch_fn):
    """Same dtype and values as torch, or an error where torch raises one."""
    try:
        expected = torch_fn()
    except (RuntimeError, TypeError, NotImplementedError):
        with pytest.raises((TypeError, ValueError)):
            st_fn()
        return
    got = st_fn()
    want_dtype = str(expected.dtype).replace("torch.", "")
    assert got.dtype == want_dtype, f"dtype {got.dtype}, torch gives {want_dtype}"
    assert got.shape == tuple(expected.shape)
    tol = _tolerance(want_dtype)
    np.testing.assert_allclose(_numpy(got), _numpy(expected), rtol=tol, atol=tol, equal_nan=True)


BINARY = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "div": operator.truediv,
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
}


@pytest.mark.parametrize("op", list(BINARY))
@pytest.mark.parametrize("a_dtype, b_dtype", list(itertools.product(DTYPES, DTYPES)))
def test_tensor_tensor(op, a_dtype, b_dtype):
    fn = BINARY[op]
    sa, ta = _pair(a_dtype, _DATA)
    sb, tb = _pair(b_dtype, _DATA_B)
    _check(lambda: fn(sa, sb), lambda: fn(ta, tb))


SCALARS = [2, -3, 2.5, True, False]


@pytest.mark.parametrize("op", list(BINARY))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scalar", SCALARS, ids=repr)
def test_tensor_scalar(op, dtype, scalar):
    # Python scalars are weak: they only lift an integer/bool tensor to a higher kind.
    fn = BINARY[op]
    if op == "sub" and isinstance(scalar, bool) and dtype != "bool":
        # NOTE: torch refuses `-` with a Python bool too; steepest reads it as 0/1 as
        # NumPy does (a bool *tensor* operand of `-` is refused, as in torch).
        pytest.skip("torch refuses Python bool operands of -")
    sa, ta = _pair(dtype, _DATA)
    _check(lambda: fn(sa, scalar), lambda: fn(ta, scalar))
    _check(lambda: fn(scalar, sa), lambda: fn(scalar, ta))


@pytest.mark.parametrize("a_dtype, b_dtype", list(itertools.product(DTYPES, DTYPES)))
def test_zero_dim_tensors_are_weak(a_dtype, b_dtype):
    # As torch: a 0-d tensor only lifts the kind (int32 tensor + 0-d float64 -> float64,
    # float16 tensor + 0-d float64 -> float16).
    sa, ta = _pair(a_dtype, _DATA)
    value = _DATA[_kind(b_dtype)][0]
    sb, tb = st.tensor(value, dtype=b_dtype), torch.tensor(value, dtype=TORCH_DTYPES[b_dtype])
    for fn in (operator.add, operator.mul, operator.truediv, operator.lt):
        _check(lambda: fn(sa, sb), lambda: fn(ta, tb))
        _check(lambda: fn(sb, sa), lambda: fn(tb, ta))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("exponent", [2, 3, 0, 2.0, 0.5, -1, True], ids=repr)
def test_pow_scalar_exponent(dtype, exponent):
    values = {"bool": [True, False, True], "int": [3, 2, 5], "float": [1.5, 0.25, 2.0]}
    sa, ta = _pair(dtype, values)
    _check(lambda: sa ** exponent, lambda: ta ** exponent)
    _check(lambda: st.ops.power(sa, exponent), lambda: torch.pow(ta, exponent))


UNARY = {
    "exp": (lambda t: t.exp(), torch.exp if torch is not None else None),
    "log": (lambda t: t.log(), torch.log if torch is not None else None),
    "sqrt": (lambda t: t.sqrt(), torch.sqrt if torch is not None else None),
    "sigmoid": (lambda t: t.sigmoid(), torch.sigmoid if torch is not None else None),
    "tanh": (lambda t: t.tanh(), torch.tanh if torch is not None else None),
    "neg": (lambda t: -t, lambda t: -t),
    "abs": (lambda t: abs(t), lambda t: abs(t)),
    "relu": (lambda t: t.relu(), torch.relu if torch is not None else None),
}


@pytest.mark.parametrize("name", list(UNARY))
@pytest.mark.parametrize("dtype", DTYPES)
def test_unary(name, dtype):
    # Float functions of integers and bools give the default float dtype (float32).
    st_fn, torch_fn = UNARY[name]
    values = {"bool": [True, False], "int": [3, 1, 4], "float": [1.5, 0.25, 2.0]}
    sa, ta = _pair(dtype, values)
    _check(lambda: st_fn(sa), lambda: torch_fn(ta))


REDUCTIONS = {
    "sum": (lambda t, **k: t.sum(**k), lambda t, **k: t.sum(**k)),
    "mean": (lambda t, **k: t.mean(**k), lambda t, **k: t.mean(**k)),
    "max": (lambda t, **k: t.max(**k), lambda t, **k: t.amax(**k)),
}


@pytest.mark.parametrize("name", list(REDUCTIONS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [None, 0, 1, (0, 1)], ids=repr)
def test_reductions(name, dtype, axis):
    # sum of int/bool is int64, max keeps the dtype, mean of int/bool is refused (torch).
    st_fn, torch_fn = REDUCTIONS[name]
    values = {"bool": [[True, False, True], [False, False, True]],
              "int": [[3, -1, 4], [1, -5, 9]], "float": [[1.5, 0.25, 2.0], [-3.0, 0.5, 1.0]]}
    sa, ta = _pair(dtype, values)
    if axis is None:
        _check(lambda: st_fn(sa), lambda: torch_fn(ta) if name != "max" else ta.max())
    else:
        _check(lambda: st_fn(sa, axis=axis), lambda: torch_fn(ta, dim=axis))
        _check(lambda: st_fn(sa, axis=axis, keepdims=True),
               lambda: torch_fn(ta, dim=axis, keepdim=True))


def test_large_int64_sums_and_maxima_are_exact():
    big = 2**62 + 1
    t = st.tensor([big, 1, -3], dtype="int64")
    assert int(t.numpy().sum()) == big - 2
    assert t.sum().numpy().item() == big - 2
    assert t.max().numpy().item() == big
    assert (t * 1).numpy().tolist() == [big, 1, -3]


def test_integer_power_is_exact():
    t = st.tensor([3, -2, 1], dtype="int64")
    assert (t ** 39).numpy().tolist() == [3**39, (-2) ** 39, 1]
    assert (st.tensor([3, 2], dtype="int32") ** 3).dtype == "int32"


@pytest.mark.parametrize("a_dtype, b_dtype", [("float16", "float32"), ("bfloat16", "float64"),
                                              ("float32", "float64"), ("float16", "bfloat16")])
def test_gradients_flow_back_through_promotion(a_dtype, b_dtype):
    a = st.tensor([1.0, 2.0, 3.0], dtype=a_dtype, requires_grad=True)
    b = st.tensor([0.5, -1.0, 2.0], dtype=b_dtype, requires_grad=True)
    ta = torch.tensor([1.0, 2.0, 3.0], dtype=TORCH_DTYPES[a_dtype], requires_grad=True)
    tb = torch.tensor([0.5, -1.0, 2.0], dtype=TORCH_DTYPES[b_dtype], requires_grad=True)
    (a * b + a / b).sum().backward()
    (ta * tb + ta / tb).sum().backward()
    assert a.grad.dtype == a_dtype and b.grad.dtype == b_dtype
    np.testing.assert_allclose(_numpy(a.grad), _numpy(ta.grad), rtol=1e-2)
    np.testing.assert_allclose(_numpy(b.grad), _numpy(tb.grad), rtol=1e-2)


@pytest.mark.parametrize("other", ["int64", "int32", "bool"])
def test_gradients_only_to_floating_inputs(other):
    x = st.tensor([0.0, 1.5, -2.0], dtype="float64", requires_grad=True)
    mask = x != 0 if other == "bool" else st.tensor([1, 2, 3], dtype=other)
    y = x * mask
    assert y.dtype == "float64"
    y.sum().backward()
    expected = [0.0, 1.0, 1.0] if other == "bool" else [1.0, 2.0, 3.0]
    np.testing.assert_array_equal(x.grad.numpy(), expected)
    assert not mask.requires_grad and mask.grad is None


def test_int_tensors_cannot_require_grad():
    with pytest.raises(TypeError, match="floating-point"):
        st.tensor([1, 2]).requires_grad = True


def test_float_times_bool_mask_gradcheck():
    x = st.tensor(np.array([0.5, 1.5, -2.0, 3.0]), dtype="float64", requires_grad=True)
    assert st.grad_check(lambda t: t * (t > 0) + t / 2, [x])


def test_non_number_operands_are_not_implemented():
    t = st.tensor([1.0])
    assert (t == None) is False  # noqa: E711 - Python falls back to identity
    with pytest.raises(TypeError):
        t + "a"
    with pytest.raises(TypeError):
        t ** "a"


def test_numpy_scalars_take_part_as_python_numbers():
    assert (st.tensor([1, 2]) * np.float32(0.5)).dtype == "float32"
    assert (st.tensor([1, 2], dtype="int32") + np.int64(3)).dtype == "int32"
