"""The everyday ops (issue 22, item 4): where, maximum/minimum, clip, argmax/argmin,
cat/stack/split, pad, flip, cumsum, logsumexp, var/std, min, prod, one_hot,
take_along_axis/gather, tril/triu, eye, linspace, erf, silu, softplus, leaky_relu, elu
and a tensor exponent in **; and the tie rule of max/min (tied extrema share the
gradient evenly). Each differentiable op goes through check_op (float64 gradcheck, torch
parity, non-contiguous inputs); bad inputs raise errors that name the op."""

import numpy as np
import pytest

import steepest as st
from helpers import F, check_op, raises_op, requires_torch, torch

ops = st.ops


def f64(x, grad=False):
    return st.tensor(np.asarray(x, dtype=np.float64), dtype="float64", requires_grad=grad)


# ------------------------------------------------------------------- activations

ACTIVATIONS = {
    "erf": (ops.erf, lambda x: torch.erf(x)),
    "silu": (ops.silu, lambda x: F.silu(x)),
    "softplus": (ops.softplus, lambda x: F.softplus(x)),
    "softplus_beta": (lambda x: ops.softplus(x, beta=2.0, threshold=3.0),
                      lambda x: F.softplus(x, beta=2.0, threshold=3.0)),
    "elu": (ops.elu, lambda x: F.elu(x)),
    "elu_alpha": (lambda x: ops.elu(x, alpha=0.5), lambda x: F.elu(x, alpha=0.5)),
    "leaky_relu": (ops.leaky_relu, lambda x: F.leaky_relu(x)),
    "leaky_relu_slope": (lambda x: ops.leaky_relu(x, negative_slope=0.2),
                         lambda x: F.leaky_relu(x, negative_slope=0.2)),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
@pytest.mark.parametrize("layout", [None, "T", "slice"])
def test_activation(name, layout):
    st_fn, torch_fn = ACTIVATIONS[name]
    # |x| >= 0.3 keeps the finite differences off the kinks of elu and leaky_relu.
    check_op(st_fn, torch_fn, [(3, 4)], domain="nonzero", noncontig=layout)


def test_softplus_is_stable_for_large_inputs():
    x = st.tensor([-1000.0, -50.0, 0.0, 50.0, 1000.0], dtype="float64")
    np.testing.assert_allclose(ops.softplus(x).numpy(),
                               np.logaddexp(0.0, x.numpy()), rtol=1e-15, atol=1e-300)
    t = st.tensor([-1000.0, 1000.0], dtype="float32", requires_grad=True)
    ops.softplus(t).sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), [0.0, 1.0])


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_activations_in_16_bits(dtype):
    x = np.linspace(-3, 3, 13).astype(np.float32)
    for name in ("erf", "silu", "softplus", "elu", "leaky_relu"):
        got = getattr(ops, name)(st.tensor(x).astype(dtype)).astype("float32").numpy()
        want = getattr(ops, name)(st.tensor(x)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2, err_msg=name)


def test_erf_method_and_top_level():
    x = st.tensor([0.5, -1.0])
    np.testing.assert_allclose(x.erf().numpy(), st.erf(x).numpy())


# ------------------------------------------------------------ where, maximum, clip

@pytest.mark.parametrize("shapes", [[(3, 4), (3, 4)], [(3, 1), (1, 4)], [(4,), (3, 4)]])
def test_where(shapes):
    cond = np.random.default_rng(1).random((3, 4)) > 0.5
    check_op(lambda x, y: ops.where(st.tensor(cond), x, y),
             lambda x, y: torch.where(torch.from_numpy(cond), x, y), shapes)


def test_where_noncontiguous_and_scalars():
    cond = np.random.default_rng(2).random((4, 3)) > 0.5
    check_op(lambda x, y: st.where(st.tensor(cond), x, y),
             lambda x, y: torch.where(torch.from_numpy(cond), x, y), [(4, 3), (4, 3)],
             noncontig=("T", "slice"))
    x = st.tensor([1.0, -2.0, 3.0])
    np.testing.assert_array_equal(st.where(x > 0, x, 0.0).numpy(), [1.0, 0.0, 3.0])
    np.testing.assert_array_equal(x.where(x > 0, -1.0).numpy(), [1.0, -1.0, 3.0])
    ints = st.tensor([1, 2, 3])
    np.testing.assert_array_equal(st.where(ints > 1, ints, st.tensor([0, 0, 0])).numpy(),
                                  [0, 2, 3])


@pytest.mark.parametrize("op", ["maximum", "minimum"])
@pytest.mark.parametrize("shapes", [[(3, 4), (3, 4)], [(3, 1), (4,)]])
def test_maximum_minimum(op, shapes):
    check_op(getattr(ops, op), lambda a, b: getattr(torch, op)(a, b), shapes)


@pytest.mark.parametrize("op", ["maximum", "minimum"])
def test_maximum_minimum_noncontiguous(op):
    check_op(getattr(st, op), lambda a, b: getattr(torch, op)(a, b), [(3, 4), (3, 4)],
             noncontig=("T", "slice"))


@requires_torch
@pytest.mark.parametrize("op", ["maximum", "minimum"])
def test_maximum_minimum_ties_split_and_nan_propagates(op):
    a = np.array([1.0, 2.0, 3.0, np.nan, 5.0])
    b = np.array([1.0, 3.0, 2.0, 0.0, np.nan])
    sa, sb = f64(a, True), f64(b, True)
    ta = torch.tensor(a, requires_grad=True)
    tb = torch.tensor(b, requires_grad=True)
    out = getattr(ops, op)(sa, sb)
    ref = getattr(torch, op)(ta, tb)
    np.testing.assert_array_equal(out.numpy(), ref.detach().numpy())
    out.sum().backward()
    ref.sum().backward()
    np.testing.assert_array_equal(sa.grad.numpy(), ta.grad.numpy())
    np.testing.assert_array_equal(sb.grad.numpy(), tb.grad.numpy())
    assert sa.grad.numpy()[0] == 0.5


@pytest.mark.parametrize("bounds", [(-0.5, 0.5), (None, 0.2), (-0.2, None)])
def test_clip_scalar_bounds(bounds):
    lo, hi = bounds
    check_op(lambda x: ops.clip(x, lo, hi), lambda x: torch.clamp(x, lo, hi), [(4, 5)])
    check_op(lambda x: x.clamp(min=lo, max=hi), lambda x: torch.clamp(x, lo, hi), [(4, 5)],
             noncontig="T")


def test_clip_tensor_bounds():
    check_op(lambda x, lo, hi: st.clip(x, lo, hi),
             lambda x, lo, hi: torch.clamp(x, lo, hi),
             [(3, 4), (4,), (3, 1)], domain=("normal", "normal", "positive"))


def test_integer_maximum_minimum_clip_where():
    a, b = st.tensor([1, 5, -3]), st.tensor([2, 2, 2])
    np.testing.assert_array_equal(st.maximum(a, b).numpy(), [2, 5, 2])
    np.testing.assert_array_equal(st.minimum(a, 0).numpy(), [0, 0, -3])
    np.testing.assert_array_equal(a.clip(0, 3).numpy(), [1, 3, 0])
    assert a.clip(0, 3).dtype == "int64"
    out = st.where(a > 0, 1.0, 0.0)
    assert out.dtype == "float32"
    np.testing.assert_array_equal(out.numpy(), [1.0, 1.0, 0.0])
    with raises_op(TypeError, "clip", (3,), contains=["0.5", "int64"]):
        a.clip(0.5)


def test_clip_keeps_the_gradient_at_the_bound_and_nan():
    x = f64([-1.0, 0.0, 0.5, 1.0, 2.0, np.nan], True)
    y = ops.clip(x, 0.0, 1.0)
    np.testing.assert_array_equal(y.numpy()[:5], [0.0, 0.0, 0.5, 1.0, 1.0])
    assert np.isnan(y.numpy()[5])
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 1, 1, 1, 0, 0])  # torch.clamp's rule


# ----------------------------------------------------------------- tensor exponent

def test_pow_tensor_exponent():
    check_op(lambda x, y: x ** y, lambda x, y: x ** y, [(3, 4), (3, 4)],
             domain=("positive", "normal"))
    check_op(ops.pow, lambda x, y: torch.pow(x, y), [(3, 4), (4,)], domain=("positive", "normal"),
             noncontig=("T", None))


def test_scalar_base_and_scalar_exponent():
    check_op(lambda y: 2.0 ** y, lambda y: 2.0 ** y, [(5,)])
    check_op(lambda x: x.pow(3.0), lambda x: x.pow(3.0), [(5,)])


@requires_torch
def test_pow_gradient_conventions_at_zero():
    base = np.array([0.0, 0.0, 0.0, 2.0, -1.5])
    expo = np.array([0.0, 2.0, -1.0, 0.0, 2.0])
    sx, sy = f64(base, True), f64(expo, True)
    tx = torch.tensor(base, requires_grad=True)
    ty = torch.tensor(expo, requires_grad=True)
    (sx ** sy).sum().backward()
    (tx ** ty).sum().backward()
    np.testing.assert_array_equal(sx.grad.numpy(), tx.grad.numpy())
    np.testing.assert_array_equal(sy.grad.numpy(), ty.grad.numpy())


# ------------------------------------------------------------ reductions and scans

def _dims(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    return axis if isinstance(axis, tuple) else (axis,)


@pytest.mark.parametrize("axis", [None, 0, -1, (0, 2)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp(axis, keepdims):
    check_op(lambda x: ops.logsumexp(x, axis=axis, keepdims=keepdims),
             lambda x: torch.logsumexp(x, dim=_dims(axis, 3), keepdim=keepdims), [(2, 3, 4)])


def test_logsumexp_is_shifted_and_noncontiguous():
    check_op(lambda x: st.logsumexp(x, axis=-1), lambda x: torch.logsumexp(x, -1), [(3, 4)],
             noncontig="T")
    x = st.tensor([[1000.0, 1000.0], [-np.inf, -np.inf]])
    got = ops.logsumexp(x, axis=1).numpy()
    np.testing.assert_allclose(got, [1000.0 + np.log(2.0), -np.inf])


@pytest.mark.parametrize("op", ["var", "std"])
@pytest.mark.parametrize("axis", [None, 1, (0, 2)])
@pytest.mark.parametrize("ddof", [0, 1])
def test_var_std(op, axis, ddof):
    check_op(lambda x: getattr(ops, op)(x, axis=axis, ddof=ddof),
             lambda x: getattr(torch, op)(x, dim=_dims(axis, 3), correction=ddof), [(3, 4, 5)],
             rtol=1e-5)


@pytest.mark.parametrize("op", ["var", "std"])
def test_var_std_torch_keywords_and_noncontiguous(op):
    check_op(lambda x: getattr(x, op)(axis=0, keepdims=True, correction=1),
             lambda x: getattr(torch, op)(x, dim=0, keepdim=True, correction=1), [(4, 3)],
             noncontig="T", rtol=1e-5)
    x = st.tensor(np.arange(6.0).reshape(2, 3))
    np.testing.assert_allclose(getattr(st, op)(x, unbiased=True).numpy(),
                               getattr(np, op)(np.arange(6.0), ddof=1), rtol=1e-6)


@pytest.mark.parametrize("axis", [None, 0, -1, (0, 1)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_min(axis, keepdims):
    check_op(lambda x: ops.min(x, axis=axis, keepdims=keepdims),
             lambda x: torch.amin(x, dim=_dims(axis, 2), keepdim=keepdims), [(3, 4)])
    check_op(lambda x: x.min(axis=axis, keepdims=keepdims),
             lambda x: torch.amin(x, dim=_dims(axis, 2), keepdim=keepdims), [(3, 4)],
             noncontig="slice")


@pytest.mark.parametrize("axis", [None, 0, 1, (0, 2)])
def test_prod(axis):
    check_op(lambda x: ops.prod(x, axis=axis),
             lambda x: torch.prod(x) if axis is None else (
                 torch.prod(torch.prod(x, 2), 0) if axis == (0, 2) else torch.prod(x, axis)),
             [(2, 3, 4)], domain="nonzero", rtol=1e-5)


def test_prod_gradient_with_zeros():
    # d/dx_i Π x = Π_{j≠i} x_j: one zero leaves only its own gradient, two zeros none.
    x = f64([[2.0, 0.0, 3.0], [0.0, 4.0, 0.0], [1.0, 2.0, 3.0]], True)
    ops.prod(x, axis=1).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 6, 0], [0, 0, 0], [6, 3, 2]])
    check_op(lambda t: t.prod(axis=0, keepdims=True), lambda t: t.prod(0, keepdim=True),
             [np.array([[0.0, 1.5], [2.0, 0.0], [0.5, -1.0]])])


@pytest.mark.parametrize("zeros", [0, 1, 2, 3])
def test_prod_second_order_with_zeros(zeros):
    # The double backward's cases (no zero, one, two, three or more in a reduced row)
    # against finite differences of the gradient and torch's double backward.
    row = np.array([1.5, -2.0, 0.5, 3.0, -1.25])
    row[:zeros] = 0.0
    x = np.stack([row, np.roll(row, 2), [0.5, 2.0, -1.0, 1.5, 0.75]])
    check_op(lambda t: t.prod(axis=1), lambda t: t.prod(1), [x])
    check_op(lambda t: t.prod(), lambda t: t.prod(), [x[:2, :3].copy()])


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_cumsum(axis):
    check_op(lambda x: ops.cumsum(x, axis), lambda x: torch.cumsum(x, axis), [(3, 4, 2)])
    check_op(lambda x: x.cumsum(axis), lambda x: x.cumsum(axis), [(3, 4, 2)], noncontig="T")


def test_cumsum_flattens_and_sums_integers_in_int64():
    np.testing.assert_array_equal(st.cumsum(st.tensor([[1, 2], [3, 4]], dtype="int32")).numpy(),
                                  [1, 3, 6, 10])
    assert st.cumsum(st.tensor([True, True]), 0).dtype == "int64"


# ------------------------------------------------------------------ tie rule of max

def test_max_and_min_split_the_gradient_between_ties():
    x = f64([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0], [0.0, -1.0, 5.0]], True)
    ops.max(x, axis=1).backward(f64([6.0, 3.0, 1.0]))
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 3, 3], [1, 1, 1], [0, 0, 1]])
    x = f64([[1.0, 1.0], [4.0, 1.0]], True)
    ops.max(x).backward()
    np.testing.assert_array_equal(x.grad.numpy(), [[0, 0], [1, 0]])
    x = f64([[1.0, 1.0], [4.0, 1.0]], True)
    ops.min(x).backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.full((2, 2), 1.0 / 3.0) * [[1, 1], [0, 1]])


@requires_torch
@pytest.mark.parametrize("op", ["max", "min"])
@pytest.mark.parametrize("axis", [None, 0, (0, 2)])
def test_max_min_ties_match_torch_amax(op, axis):
    x = np.random.default_rng(3).integers(-2, 3, (3, 4, 5)).astype(np.float64)
    sx = f64(x, True)
    tx = torch.tensor(x, requires_grad=True)
    out = getattr(ops, op)(sx, axis=axis)
    ref = getattr(torch, "a" + op)(tx, dim=_dims(axis, 3))
    w = np.random.default_rng(4).standard_normal(ref.shape)
    out.backward(f64(w))
    ref.backward(torch.tensor(w))
    np.testing.assert_allclose(sx.grad.numpy(), tx.grad.numpy(), rtol=1e-15)


# -------------------------------------------------------------- argmax and argmin

@pytest.mark.parametrize("op", ["argmax", "argmin"])
@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("keepdims", [False, True])
def test_argmax_argmin(op, axis, keepdims):
    x = np.random.default_rng(5).integers(-3, 4, (4, 5, 3)).astype(np.float32)  # ties
    got = getattr(st, op)(st.tensor(x), axis=axis, keepdims=keepdims)
    want = getattr(np, op)(x, axis=axis, keepdims=keepdims)
    assert got.dtype == "int64"
    np.testing.assert_array_equal(got.numpy(), want)
    np.testing.assert_array_equal(getattr(st.tensor(x), op)(axis).numpy(), getattr(np, op)(x, axis))


def test_argmax_of_integers_and_nan():
    np.testing.assert_array_equal(st.argmax(st.tensor([[1, 7, 7], [9, 0, 9]]), axis=1).numpy(),
                                  [1, 0])
    assert st.argmax(st.tensor([1.0, np.nan, 3.0])).item() == 1
    assert st.argmin(st.tensor([1.0, np.nan, -3.0])).item() == 1


# ------------------------------------------------------------ joining and splitting

@pytest.mark.parametrize("axis", [0, 1, -1])
def test_cat(axis):
    shapes = [(2, 3), (2, 3), (2, 3)]
    shapes = [tuple(n if d == (axis % 2) else s for d, s in enumerate(shape))
              for n, shape in zip((1, 2, 3), shapes)]
    check_op(lambda *xs: st.cat(list(xs), axis=axis), lambda *xs: torch.cat(xs, dim=axis),
             shapes)
    check_op(lambda a, b: st.concatenate((a, b), axis), lambda a, b: torch.cat((a, b), axis),
             [(3, 3), (3, 3)], noncontig=("T", "slice"))


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_stack(axis):
    check_op(lambda a, b: st.stack([a, b], axis=axis), lambda a, b: torch.stack([a, b], axis),
             [(2, 3), (2, 3)], noncontig=(None, "T"))


def test_split_torch_and_numpy_semantics():
    check_op(lambda x: st.cat([p * (i + 1.0) for i, p in enumerate(st.split(x, 2, axis=1))], 1),
             lambda x: torch.cat([p * (i + 1.0) for i, p in enumerate(torch.split(x, 2, 1))], 1),
             [(3, 5)])
    x = st.tensor(np.arange(10.0))
    assert [p.shape for p in x.split([3, 7])] == [(3,), (7,)]
    assert [p.shape for p in st.split(x, indices_or_sections=5)] == [(2,)] * 5
    parts = st.split(x, indices_or_sections=[2, 5])
    assert [p.numpy().tolist() for p in parts] == [[0, 1], [2, 3, 4], [5, 6, 7, 8, 9]]


@pytest.mark.parametrize("mode, torch_mode", [("constant", "constant"), ("reflect", "reflect"),
                                              ("edge", "replicate"), ("wrap", "circular")])
def test_pad(mode, torch_mode):
    # torch pads the last axes from the end: (left, right, top, bottom) for (1, 2), (2, 1).
    check_op(lambda x: st.pad(x, ((0, 0), (1, 2), (2, 1)), mode=mode),
             lambda x: F.pad(x, (2, 1, 1, 2), mode=torch_mode), [(2, 4, 5)])
    check_op(lambda x: st.pad(x, ((1, 2), (2, 1)), mode=mode),
             lambda x: F.pad(x[None], (2, 1, 1, 2), mode=torch_mode)[0], [(4, 5)],
             noncontig="T")
    check_op(lambda x: st.pad(x, pad=(2, 1, 1, 2), mode=torch_mode),
             lambda x: F.pad(x, (2, 1, 1, 2), mode=torch_mode), [(2, 4, 5)])


def test_pad_numpy_forms():
    a = np.arange(6.0).reshape(2, 3)
    for width in (1, (1, 2), ((1, 0), (0, 2)), ((1, 2),)):
        np.testing.assert_array_equal(st.pad(st.tensor(a), width, value=7.0).numpy(),
                                      np.pad(a, width, constant_values=7.0))
    for mode in ("reflect", "edge", "wrap"):
        np.testing.assert_array_equal(st.pad(st.tensor(a), 1, mode=mode).numpy(),
                                      np.pad(a, 1, mode=mode))


@pytest.mark.parametrize("axis", [None, 0, (0, 2), -1])
def test_flip(axis):
    dims = _dims(axis, 3)
    check_op(lambda x: st.flip(x, axis), lambda x: torch.flip(x, dims), [(2, 3, 4)])
    check_op(lambda x: x.flip(axis), lambda x: torch.flip(x, dims), [(2, 3, 4)], noncontig="T")


@pytest.mark.parametrize("op", ["tril", "triu"])
@pytest.mark.parametrize("k", [0, 1, -2])
def test_tril_triu(op, k):
    check_op(lambda x: getattr(st, op)(x, k), lambda x: getattr(torch, op)(x, k), [(2, 4, 5)])
    check_op(lambda x: getattr(x, op)(k=k), lambda x: getattr(x, op)(k), [(4, 3)],
             noncontig="slice")


# ------------------------------------------------------------- gather and friends

def test_take_along_axis():
    idx = np.random.default_rng(6).integers(-4, 4, (3, 5, 2))
    check_op(lambda x: st.take_along_axis(x, st.tensor(idx), axis=1),
             lambda x: torch.take_along_dim(x, torch.from_numpy(idx % 4), dim=1), [(3, 4, 2)])
    # index broadcast against x, as numpy
    idx = np.array([[0], [2], [1]])
    x = np.random.default_rng(7).standard_normal((3, 4))
    np.testing.assert_array_equal(st.take_along_axis(st.tensor(x), st.tensor(idx), 1).numpy(),
                                  np.take_along_axis(x.astype(np.float32), idx, 1))
    check_op(lambda x: st.take_along_axis(x, st.tensor([[3, 0, 0], [1, 1, 2]]), axis=0),
             lambda x: torch.take_along_dim(x, torch.tensor([[3, 0, 0], [1, 1, 2]]), dim=0),
             [(4, 3)], noncontig="T")


def test_gather_repeated_indices_accumulate():
    idx = np.array([[0, 0, 2], [1, 1, 1]])
    check_op(lambda x: st.gather(x, 1, st.tensor(idx)),
             lambda x: torch.gather(x, 1, torch.from_numpy(idx)), [(2, 4)])
    check_op(lambda x: x.gather(0, st.tensor(idx)),
             lambda x: x.gather(0, torch.from_numpy(idx)), [(3, 4)], noncontig="T")


def test_one_hot():
    labels = np.array([[0, 2], [3, 1]])
    got = ops.one_hot(st.tensor(labels), 5)
    assert got.dtype == "int64" and got.shape == (2, 2, 5)
    np.testing.assert_array_equal(got.numpy(), np.eye(5, dtype=np.int64)[labels])
    assert ops.one_hot(st.tensor([0, 3])).shape == (2, 4)


def test_eye_and_linspace():
    np.testing.assert_array_equal(st.eye(3).numpy(), np.eye(3))
    np.testing.assert_array_equal(st.eye(3, 4, k=1, dtype="int64").numpy(), np.eye(3, 4, k=1))
    np.testing.assert_allclose(st.linspace(0.0, 1.0, 5).numpy(), np.linspace(0, 1, 5))
    np.testing.assert_array_equal(st.linspace(-2.0, 3.0, 7, dtype="float64").numpy(),
                                  np.linspace(-2, 3, 7))
    np.testing.assert_allclose(st.linspace(0.0, 1.0, 4, endpoint=False).numpy(),
                               np.linspace(0, 1, 4, endpoint=False))
    assert st.linspace(0.0, 1.0, 0).shape == (0,)


# ----------------------------------------------------------------------- errors

def test_errors_name_the_op_shapes_and_dtypes():
    x = st.ones((2, 3))
    with raises_op(TypeError, "where", (2, 3), contains=["float32", "bool"]):
        st.where(x, x, x)
    with raises_op(ValueError, "where", (2, 3), (4,)):
        st.where(x > 0, x, st.ones(4))
    with raises_op(TypeError, "maximum", contains=["float32", "float64"]):
        st.maximum(x, x.astype("float64"))
    with raises_op(ValueError, "clip", contains=["min", "max"]):
        st.clip(x)
    with raises_op(ValueError, "cat", (2, 3), (3, 3), contains=["axis 1"]):
        st.cat([x, st.ones((3, 3))], axis=1)
    with raises_op(TypeError, "cat"):
        st.cat(x)
    with raises_op(ValueError, "cat"):
        st.cat([])
    with raises_op(ValueError, "stack", (2, 3), (3, 2)):
        st.stack([x, st.ones((3, 2))])
    with raises_op(ValueError, "split", (2, 3)):
        st.split(x, [1, 1], axis=1)
    with raises_op(ValueError, "split", (2, 3)):
        st.split(x, indices_or_sections=2, axis=1)
    with raises_op(ValueError, "pad", (2, 3)):
        st.pad(x, ((1, 1),) * 3)
    with raises_op(ValueError, "pad", (2, 3), contains=["reflect"]):
        st.pad(x, 3, mode="reflect")
    with raises_op(ValueError, "pad", contains=["unknown mode"]):
        st.pad(x, 1, mode="bogus")
    with raises_op(ValueError, "pad", contains=["exactly one"]):
        st.pad(x, 1, pad=(1, 1))
    with raises_op(ValueError, "pad", contains=["even number"]):
        st.pad(x, pad=(1, 1, 1))
    with raises_op(ValueError, "pad", contains=["negative"]):
        st.pad(x, -1)
    with raises_op(ValueError, "flip", contains=["repeated"]):
        st.flip(x, (0, 0))
    with raises_op(IndexError, "gather", (2, 3), contains=["index 3"]):
        st.gather(x, 1, st.tensor([[0, 3]]))
    with raises_op(TypeError, "gather", contains=["float32"]):
        st.gather(x, 1, x)
    with raises_op(ValueError, "gather", (2, 3), (1, 4)):
        st.gather(x, 0, st.tensor([[0, 0, 0, 0]]))
    with raises_op(IndexError, "take_along_axis", contains=["index -4"]):
        st.take_along_axis(x, st.tensor([[-4, 0, 0]]), 1)
    with raises_op(IndexError, "one_hot", contains=["num_classes=3"]):
        ops.one_hot(st.tensor([0, 3]), 3)
    with raises_op(IndexError, "one_hot", contains=["negative"]):
        ops.one_hot(st.tensor([-1]), 3)
    with raises_op(TypeError, "one_hot", contains=["float32"]):
        ops.one_hot(x, 3)
    with raises_op(ValueError, "tril", (3,)):
        st.tril(st.ones(3))
    with raises_op(ValueError, "argmax", (0, 2)):
        st.argmax(st.ones((0, 2)), axis=0)
    with raises_op(ValueError, "min", (0,)):
        ops.min(st.ones(0))
    with raises_op(TypeError, "erf", contains=["int64"]):
        st.erf(st.tensor([1, 2]))
    with raises_op(ValueError, "var", contains=["at most one"]):
        st.var(x, ddof=1, correction=1)
    with raises_op(ValueError, "cumsum", contains=["axis 2"]):
        st.cumsum(x, 2)
    with raises_op(ValueError, "linspace", contains=["-1"]):
        st.linspace(0.0, 1.0, -1)
    with raises_op(ValueError, "softplus", contains=["beta"]):
        ops.softplus(x, beta=0.0)


# ------------------------------------------------------------------------ CUDA

HAS_CUDA = st.backends()["cuda"]
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")

_RNG = np.random.default_rng(11)
_X = _RNG.standard_normal((3, 4, 5)).astype(np.float32)
_Y = _RNG.standard_normal((3, 4, 5)).astype(np.float32)
_TIES = _RNG.integers(-2, 3, (3, 4, 5)).astype(np.float32)
_IDX = _RNG.integers(-4, 4, (3, 6, 5))

CUDA_CASES = {
    "erf": (ops.erf, [_X]),
    "silu": (ops.silu, [_X]),
    "softplus": (lambda x: ops.softplus(x * 30.0, beta=0.5), [_X]),
    "elu": (ops.elu, [_X]),
    "leaky_relu": (ops.leaky_relu, [_X]),
    "where": (lambda x, y: st.where(x > y, x, y), [_X, _Y]),
    "maximum": (st.maximum, [_TIES, _TIES[:, :1]]),
    "minimum": (st.minimum, [_TIES, _TIES[:1]]),
    "clip": (lambda x: st.clip(x, -0.5, 0.7), [_X]),
    "clip_tensor": (lambda x, y: st.clip(x, y, None), [_X, _Y]),
    "pow": (lambda x, y: ops.abs(x) ** y, [_X, _Y]),
    "max_ties": (lambda x: ops.max(x, axis=(0, 2)), [_TIES]),
    "min_ties": (lambda x: ops.min(x), [_TIES]),
    "prod": (lambda x: st.prod(x, axis=1), [_X]),
    "cumsum": (lambda x: st.cumsum(x, 1), [_X]),
    "logsumexp": (lambda x: st.logsumexp(x, axis=-1), [_X]),
    "var": (lambda x: st.var(x, axis=(0, 1), ddof=1), [_X]),
    "std": (lambda x: st.std(x, axis=2), [_X]),
    "cat": (lambda x, y: st.cat([x, y], axis=1), [_X, _Y]),
    "stack": (lambda x, y: st.stack([x, y], axis=-1), [_X, _Y]),
    "split": (lambda x: st.split(x, 2, axis=1)[1], [_X]),
    "pad": (lambda x: st.pad(x, ((0, 0), (1, 2), (2, 1)), value=1.5), [_X]),
    "pad_reflect": (lambda x: st.pad(x, ((0, 0), (1, 2), (2, 1)), mode="reflect"), [_X]),
    "flip": (lambda x: st.flip(x, (0, 2)), [_X]),
    "tril": (lambda x: st.tril(x, -1), [_X]),
    "take_along_axis": (lambda x: st.take_along_axis(x, st.tensor(_IDX, device=x.device), 1),
                        [_X]),
    "gather": (lambda x: st.gather(x, 2, st.tensor(_IDX[:, :4, :3] % 5, device=x.device)), [_X]),
    "argmax": (lambda x: st.argmax(x, axis=1), [_TIES]),
    "argmin": (lambda x: st.argmin(x), [_TIES]),
}


@requires_cuda
@pytest.mark.parametrize("name", list(CUDA_CASES))
def test_cuda_matches_cpu(name):
    from test_cuda import check_devices

    fn, arrays = CUDA_CASES[name]
    check_devices(fn, *arrays)


@requires_cuda
def test_cuda_creation_and_index_errors():
    np.testing.assert_array_equal(st.eye(3, 4, k=1, device="cuda").to("cpu").numpy(),
                                  np.eye(3, 4, k=1))
    np.testing.assert_allclose(st.linspace(0.0, 2.0, 5, device="cuda").to("cpu").numpy(),
                               np.linspace(0, 2, 5))
    labels = st.tensor([1, 0, 2], device="cuda")
    np.testing.assert_array_equal(ops.one_hot(labels, 3).to("cpu").numpy(), np.eye(3)[[1, 0, 2]])
    with raises_op(IndexError, "gather"):
        st.gather(st.ones((2, 3), device="cuda"), 1, st.tensor([[0, 5]], device="cuda"))
