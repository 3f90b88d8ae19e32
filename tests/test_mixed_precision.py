"""Mixed precision: float16/bfloat16 tensors and ops, dtype policies, dynamic loss scaling.

Op results in 16 bits are checked against float32 on the same values: inputs are rounded
to the 16-bit dtype first, and the reference runs on exactly those values in float32. A
16-bit op rounds its output (and a composite op its intermediates) to 16 bits, so the
error scales with the magnitudes flowing through it: the bound is rtol relative to each
element plus rtol relative to the tensor's largest magnitude (torch.testing's float16 and
bfloat16 rtol: 1e-3 and 1.6e-2).
"""

import sys

import numpy as np
import pytest
import steepest as st
from helpers import check_op, requires_torch, torch
from steepest.cli import build_model, main

RTOL = {"float16": 1e-3, "bfloat16": 1.6e-2}
HALF_DTYPES = tuple(RTOL)


@pytest.fixture(autouse=True)
def _restore_policy():
    before = st.mixed_precision.global_policy()
    yield
    st.mixed_precision.set_global_policy(before)


def assert_close(got, ref, rtol, what=""):
    got = got.astype("float32").numpy() if isinstance(got, st.Tensor) else np.asarray(got)
    ref = ref.numpy() if isinstance(ref, st.Tensor) else np.asarray(ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} vs {ref.shape}"
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale, err_msg=what)


# ------------------------------------------------------------------------ conversions


def _bits_as_float32(bits):
    return np.asarray(bits, dtype=np.uint32).view(np.float32)


def _float16_cases(rng):
    """Random float32 bit patterns (every exponent, NaN and inf included) plus the edges of
    float16: ties at every scale, the overflow threshold, subnormals, signed zeros."""
    edges = np.array(
        [
            0.0,
            -0.0,
            1.0,
            65504.0,
            65519.99,
            65520.0,
            65536.0,
            2.0**-14,
            2.0**-24,
            2.0**-25,
            2.0**-25 * 1.0000001,
            3 * 2.0**-26,
            1 + 2.0**-11,
            1 + 3 * 2.0**-11,
            2.0**-14 - 2.0**-25,
            np.inf,
            -np.inf,
            np.nan,
            1e-30,
            3.0e38,
        ],
        dtype=np.float32,
    )
    random = _bits_as_float32(rng.integers(0, 2**32, size=20000, dtype=np.uint64))
    # Exactly halfway between neighbouring float16 values: ties to even.
    halves = np.arange(-2048, 2048, dtype=np.float32) * np.float32(2.0**-11) + np.float32(2.0**-12)
    return np.concatenate([edges, -edges, random, halves, halves * 1024, halves / 1024])


def _bfloat16_reference(values):
    """float32 -> bfloat16 with round-to-nearest-even, in NumPy (as ml_dtypes does)."""
    bits = values.view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    out = rounded.astype(np.uint32).view(np.float32).copy()
    out[np.isnan(values)] = np.nan
    return out


def _as_host_float32(t):
    return t.astype("float32").numpy()


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_float32_to_float16_rounds_like_numpy(rng, layout):
    values = _float16_cases(rng)
    if layout == "strided":  # the element-by-element software path
        wide = np.zeros((values.size, 2), dtype=np.float32)
        wide[:, 0] = values
        source = st.from_numpy(wide)[:, 0]
    else:  # the bulk path (F16C where the CPU has it)
        source = st.from_numpy(values)
    got = _as_host_float32(source.astype("float16"))
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16)
    np.testing.assert_array_equal(got, expected.astype(np.float32))
    np.testing.assert_array_equal(np.signbit(got), np.signbit(expected))  # signed zeros, too


def test_astype_check_op():
    # CastBackward: the gradient of a cast is the incoming gradient cast back. The float64
    # gradcheck goes through float32, where the values round, so its finite differences
    # take a wide step; the float32 torch comparison goes through float64.
    def there_and_back(x):
        other = "float32" if x.dtype == "float64" else "float64"
        return (x.astype(other) * 3.0).astype(x.dtype)

    check_op(there_and_back, lambda x: (x.double() * 3.0).to(x.dtype), [(3, 4)],
             gc_eps=1e-2, gc_atol=1e-4, gc_rtol=1e-4, noncontig=["T"])


def test_float16_widens_exactly(rng):
    every = np.arange(2**16, dtype=np.uint16).view(np.float16)
    t = st.from_numpy(every)
    np.testing.assert_array_equal(_as_host_float32(t), every.astype(np.float32))
    wide = np.zeros((every.size, 3), dtype=np.float16)
    wide[:, 1] = every
    np.testing.assert_array_equal(
        _as_host_float32(st.from_numpy(wide)[:, 1]), every.astype(np.float32)
    )


def test_float64_to_16_bits_rounds_once():
    # Just above a float16 tie: rounding to float32 first would land on the tie and round
    # down to even; the correct result rounds up (as numpy's direct conversion).
    values = np.array(
        [
            1 + 2.0**-11 + 2.0**-40,
            1 + 2.0**-11 - 2.0**-40,
            3 * 2.0**-25 + 2.0**-60,
            1 + 2.0**-8 + 2.0**-45,
            65519.999999,
            -(1 + 2.0**-11 + 2.0**-40),
        ]
    )
    got16 = _as_host_float32(st.from_numpy(values).astype("float16"))
    np.testing.assert_array_equal(got16, values.astype(np.float16).astype(np.float32))
    got_bf16 = _as_host_float32(st.from_numpy(values).astype("bfloat16"))
    assert got_bf16[3] == np.float32(1 + 2.0**-7)  # above the bfloat16 tie at 1 + 2⁻⁸: up
    assert st.tensor([1 + 2.0**-11 + 2.0**-40], dtype="float16").item() == 1 + 2.0**-10


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_float32_to_bfloat16_rounds_to_nearest_even(rng, layout):
    values = _float16_cases(rng)
    ties = (np.arange(1, 4000, dtype=np.uint32) << 16 | 0x8000).view(np.float32)
    values = np.concatenate([values, ties, -ties])
    if layout == "strided":
        wide = np.zeros((values.size, 2), dtype=np.float32)
        wide[:, 1] = values
        source = st.from_numpy(wide)[:, 1]
    else:
        source = st.from_numpy(values)
    np.testing.assert_array_equal(
        _as_host_float32(source.astype("bfloat16")), _bfloat16_reference(values)
    )


def test_conversions_between_all_dtypes():
    values = [0.0, 1.0, -2.5, 3.75, 100.0]
    for dtype in HALF_DTYPES:
        t = st.tensor(values, dtype=dtype)
        assert t.dtype == dtype
        for other in ("float32", "float64", "int32", "int64", "bool", "float16", "bfloat16"):
            np.testing.assert_array_equal(
                _as_host_float32(t.astype(other)),
                np.array(values)
                .astype(other if other != "bfloat16" else "float32")
                .astype(np.float32),
            )
        assert st.tensor([1, 2, 300], dtype=dtype).astype("int64").numpy().tolist() == [1, 2, 300]
        assert st.zeros(3, dtype=dtype).dtype == dtype
        np.testing.assert_array_equal(
            _as_host_float32(st.full((2,), 0.1, dtype=dtype)),
            _as_host_float32(st.tensor([0.1, 0.1], dtype=dtype)),
        )
        assert t[1].item() == 1.0
        assert t.sum().item() == st.tensor(sum(values), dtype=dtype).item()  # rounded once


def test_random_16_bit_tensors_stay_below_one():
    for dtype in HALF_DTYPES:
        u = _as_host_float32(st.rand((200000,), seed=3, dtype=dtype))
        assert u.min() >= 0.0 and u.max() < 1.0
        n = _as_host_float32(st.randn((20000,), seed=4, dtype=dtype))
        assert abs(n.mean()) < 0.05 and abs(n.std() - 1) < 0.05


# --------------------------------------------------------------------------- NumPy


def test_float16_numpy_shares_memory():
    a = np.array([1.0, 2.0, 3.0], dtype=np.float16)
    t = st.from_numpy(a)
    assert t.dtype == "float16"
    a[0] = 7.0
    assert t[0].item() == 7.0
    view = t.numpy()
    assert view.dtype == np.float16
    view[1] = -1.0
    assert t[1].item() == -1.0
    assert st.tensor(a).dtype == "float32" and st.tensor(a, dtype="float16").dtype == "float16"


def test_bfloat16_numpy_with_ml_dtypes():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    a = np.array([1.0, 3.14159, -2.0], dtype=ml_dtypes.bfloat16)
    t = st.from_numpy(a)
    assert t.dtype == "bfloat16"
    np.testing.assert_array_equal(_as_host_float32(t), a.astype(np.float32))
    back = t.numpy()
    assert back.dtype == ml_dtypes.bfloat16
    back[2] = 5.0  # shares memory
    assert t[2].item() == 5.0
    x = np.linspace(-3, 3, 101, dtype=np.float32)
    np.testing.assert_array_equal(
        st.from_numpy(x).astype("bfloat16").numpy(), x.astype(ml_dtypes.bfloat16)
    )
    assert np.asarray(t, dtype=np.float32).dtype == np.float32


def test_bfloat16_numpy_without_ml_dtypes_is_a_clear_error(monkeypatch):
    t = st.tensor([1.0, 2.0], dtype="bfloat16")
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # import ml_dtypes now fails
    with pytest.raises(TypeError, match=r"ml_dtypes.*astype\('float32'\)"):
        t.numpy()
    # Everything that does not need a NumPy bfloat16 still works.
    assert "dtype=bfloat16" in repr(t)
    np.testing.assert_array_equal(np.asarray(t, dtype=np.float32), [1.0, 2.0])
    assert t.astype("float32").numpy().tolist() == [1.0, 2.0]


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_python_scalars_keep_the_16_bit_dtype(dtype):
    x = st.tensor([1.0, 2.0, 4.0], dtype=dtype)
    for result in (x * 2.0, 2.0 * x, x + 1, 1 - x, x / 3.0, 3.0 / x, x**2, -x, x.exp(), x.mean()):
        assert result.dtype == dtype
    assert (x > 1.5).dtype == "bool" and (x > 1.5).numpy().tolist() == [False, True, True]
    # A float32 tensor (with dimensions) is not weak: the sum is float32, as in torch.
    assert (x + st.tensor([1.0, 2.0, 3.0])).dtype == "float32"


# ------------------------------------------------------------------------------- ops


def _labels(rows, classes, seed):
    return np.random.default_rng(seed).integers(0, classes, size=rows)


def _soft(rows, classes, seed):
    p = np.random.default_rng(seed).uniform(0.1, 1.0, size=(rows, classes))
    return p / p.sum(axis=1, keepdims=True)


# name, function of the float inputs, float inputs as (shape, domain)
OPS = [
    ("add", st.ops.add, [((3, 4), "normal"), ((4,), "normal")]),
    ("sub", st.ops.sub, [((3, 4), "normal"), ((3, 1), "normal")]),
    ("mul", st.ops.mul, [((3, 4), "normal"), ((1, 4), "normal")]),
    ("div", st.ops.div, [((3, 4), "normal"), ((3, 4), "positive")]),
    ("neg", st.ops.neg, [((5, 6), "normal")]),
    ("exp", st.ops.exp, [((5, 6), "normal")]),
    ("log", st.ops.log, [((5, 6), "positive")]),
    ("sqrt", st.ops.sqrt, [((5, 6), "positive")]),
    ("abs", st.ops.abs, [((5, 6), "normal")]),
    ("relu", st.ops.relu, [((5, 6), "normal")]),
    ("sigmoid", st.ops.sigmoid, [((5, 6), "normal")]),
    ("tanh", st.ops.tanh, [((5, 6), "normal")]),
    ("gelu", st.ops.gelu, [((5, 6), "normal")]),
    ("power", lambda x: st.ops.power(x, 3.0), [((5, 6), "positive")]),
    ("power_sqrt", lambda x: x**0.5, [((5, 6), "positive")]),
    ("clamp_min", lambda x: st.ops.clamp_min(x, 0.1), [((5, 6), "normal")]),
    ("scalars", lambda x: (x * 3.0 + 1.0) / 2.0 - x, [((5, 6), "normal")]),
    ("sum_all", st.ops.sum, [((7, 9), "normal")]),
    ("sum_axis", lambda x: st.ops.sum(x, axis=0), [((300, 9), "normal")]),
    ("sum_rows", lambda x: st.ops.sum(x, axis=-1, keepdims=True), [((9, 300), "normal")]),
    ("mean_all", st.ops.mean, [((30, 40), "normal")]),
    ("mean_axes", lambda x: st.ops.mean(x, axis=(0, 2)), [((4, 5, 6), "normal")]),
    ("max", lambda x: st.ops.max(x, axis=1), [((6, 7), "normal")]),
    ("matmul", st.ops.matmul, [((5, 16), "normal"), ((16, 7), "normal")]),
    ("matmul_batched", st.ops.matmul, [((2, 3, 8), "normal"), ((8, 4), "normal")]),
    ("matmul_broadcast", st.ops.matmul, [((2, 1, 3, 8), "normal"), ((4, 8, 5), "normal")]),
    ("matmul_vector", st.ops.matmul, [((8,), "normal"), ((8, 3), "normal")]),
    ("matmul_transposed", lambda a, b: a.T @ b, [((16, 5), "normal"), ((16, 7), "normal")]),
    ("linear", st.ops.linear, [((6, 16), "normal"), ((16, 5), "normal"), ((5,), "normal")]),
    ("softmax", st.ops.softmax, [((4, 10), "normal")]),
    ("softmax_axis0", lambda x: st.ops.softmax(x, axis=0), [((10, 4), "normal")]),
    ("log_softmax", st.ops.log_softmax, [((4, 10), "normal")]),
    (
        "cross_entropy",
        lambda z: st.ops.cross_entropy(z, st.tensor(_labels(6, 10, 1))),
        [((6, 10), "normal")],
    ),
    (
        "cross_entropy_3d",
        lambda z: st.ops.cross_entropy(z, st.tensor(_labels(6, 10, 2).reshape(2, 3))),
        [((2, 3, 10), "normal")],
    ),
    (
        "cross_entropy_none",
        lambda z: st.ops.cross_entropy(z, st.tensor(_labels(6, 10, 3)), reduction="none"),
        [((6, 10), "normal")],
    ),
    (
        "cross_entropy_soft",
        lambda z, y: st.ops.cross_entropy(z, y, reduction="sum"),
        [((5, 7), "normal"), ((5, 7), "soft")],
    ),
    ("mse_loss", st.ops.mse_loss, [((4, 5), "normal"), ((4, 5), "normal")]),
    ("bce_logits", st.ops.binary_cross_entropy, [((4, 5), "normal"), ((4, 5), "unit")]),
    (
        "bce_probabilities",
        lambda p, y: st.ops.binary_cross_entropy(p, y, from_logits=False),
        [((4, 5), "unit"), ((4, 5), "unit")],
    ),
    (
        "conv2d",
        lambda x, w, b: st.ops.conv2d(x, w, b, padding=1),
        [((2, 3, 6, 6), "normal"), ((4, 3, 3, 3), "normal"), ((4,), "normal")],
    ),
    (
        "conv2d_strided",
        lambda x, w: st.ops.conv2d(x, w, stride=2),
        [((2, 2, 7, 7), "normal"), ((3, 2, 3, 3), "normal")],
    ),
    ("max_pool2d", lambda x: st.ops.max_pool2d(x, 2), [((2, 3, 6, 6), "normal")]),
    (
        "avg_pool2d",
        lambda x: st.ops.avg_pool2d(x, 3, stride=1, padding=1),
        [((2, 3, 5, 5), "normal")],
    ),
    ("flatten", st.ops.flatten, [((2, 3, 4), "normal")]),
    (
        "reshape_transpose",
        lambda x: st.ops.transpose(st.ops.reshape(x, (4, 6)), 0, 1),
        [((2, 3, 4), "normal")],
    ),
    ("slice", lambda x: x[1:, ::2], [((4, 6), "normal")]),
    ("sum_to", lambda x: st.ops.sum_to(x, (1, 6)), [((5, 6), "normal")]),
    (
        "layer_norm",
        lambda x, w, b: st.ops.layer_norm(x, w, b),
        [((4, 3, 16), "normal"), ((16,), "normal"), ((16,), "normal")],
    ),
    ("layer_norm_plain", st.ops.layer_norm, [((6, 8), "normal")]),
    (
        "embedding",
        lambda t: st.ops.embedding(st.tensor(np.array([[1, 3, 3], [0, 9, 3]])), t),
        [((10, 6), "normal")],
    ),
    ("dropout", lambda x: st.ops.dropout(x, 0.5, True, seed=7), [((40, 50), "normal")]),
    (
        "attention",
        lambda q, k, v: st.ops.scaled_dot_product_attention(q, k, v, causal=True),
        [((2, 5, 8), "normal"), ((2, 5, 8), "normal"), ((2, 5, 8), "normal")],
    ),
    ("cast_roundtrip", lambda x: x.astype("float32").astype(x.dtype) * 2.0, [((3, 4), "normal")]),
]


def _draw(shape, domain, rng):
    if domain == "positive":
        return rng.uniform(0.5, 2.0, size=shape)
    if domain == "unit":
        return rng.uniform(0.05, 0.95, size=shape)
    if domain == "soft":
        p = rng.uniform(0.1, 1.0, size=shape)
        return p / p.sum(axis=-1, keepdims=True)
    return rng.standard_normal(shape)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("name, fn, specs", OPS, ids=[op[0] for op in OPS])
def test_op_in_16_bits_matches_float32(name, fn, specs, dtype, rng):
    rtol = RTOL[dtype]
    halves = [
        st.tensor(_draw(shape, domain, rng), dtype=dtype, requires_grad=True)
        for shape, domain in specs
    ]
    # The reference: the same (rounded) values, in float32.
    singles = [h.detach().astype("float32").requires_grad_() for h in halves]
    out16, out32 = fn(*halves), fn(*singles)
    assert out16.dtype == dtype and out32.dtype == "float32"
    assert_close(out16, out32, rtol, f"{name} forward")

    upstream = st.tensor(rng.uniform(-1.0, 1.0, size=out16.shape), dtype=dtype)
    out16.backward(upstream)
    out32.backward(upstream.astype("float32"))
    for i, (h, s) in enumerate(zip(halves, singles)):
        assert h.grad is not None and h.grad.dtype == dtype, f"{name}: grad of input {i}"
        assert_close(h.grad, s.grad, rtol, f"{name} gradient of input {i}")


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_16_bit_reductions_accumulate_in_float(dtype):
    # A 16-bit accumulator would stall at 2048 (float16: 2048 + 1 rounds back to 2048) or
    # at 256 (bfloat16); float accumulation reaches 4096 exactly.
    assert st.ones(4096, dtype=dtype).sum().item() == 4096.0
    assert (
        st.ones((3, 4096), dtype=dtype).sum(axis=1).astype("float32").numpy().tolist()
        == [4096.0] * 3
    )
    assert (
        st.ones((4096, 3), dtype=dtype).sum(axis=0).astype("float32").numpy().tolist()
        == [4096.0] * 3
    )
    assert st.ones(4097, dtype=dtype).mean().item() == 1.0
    assert st.full((70000,), 1.0, dtype="float16").sum().item() == np.inf  # past 65504


# ------------------------------------------- 16-bit input times a float32 master weight
# matmul(x16, w32) reads w rounded to x's dtype while the GEMM packs it: the product of
# matmul(x16, w32.astype(x16.dtype)) bit for bit, without the 16-bit copy of w; the node
# saves w itself, dX is bit-identical to the composed path's and dW is float32, summed in
# float32 from the same products (the composed path rounds it to 16 bits first).
MIXED_SHAPES = [
    ((37, 70), (70, 45), "N"),
    ((3, 29, 40), (40, 33), "N"),  # the batch is folded into the rows
    ((3, 29, 40), (3, 40, 33), "N"),  # batched weights
    ((300, 530), (530, 70), "N"),  # past one row block and one depth block
    ((8, 70), (45, 70), "T"),  # a transposed view of the weight
    ((300, 64), (40, 64), "T"),
    ((5, 9), (9,), "N"),  # a vector on the right
]


def _mixed_operands(rng, dtype, x_shape, w_shape, layout):
    x = st.tensor(rng.standard_normal(x_shape).astype(np.float32)).astype(dtype).detach()
    w_np = rng.standard_normal(w_shape).astype(np.float32)
    w = st.tensor(w_np).T if layout == "T" else st.tensor(w_np)
    return x, w.detach()


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("x_shape, w_shape, layout", MIXED_SHAPES)
def test_16_bit_input_times_float32_weight_matches_the_cast(rng, dtype, x_shape, w_shape, layout):
    x, w = _mixed_operands(rng, dtype, x_shape, w_shape, layout)
    x.requires_grad = w.requires_grad = True
    out = st.ops.matmul(x, w)
    assert out.dtype == dtype
    x_ref, w_ref = x.detach(), w.detach()
    x_ref.requires_grad = w_ref.requires_grad = True
    ref = st.ops.matmul(x_ref, w_ref.astype(dtype))
    np.testing.assert_array_equal(_as_host_float32(out), _as_host_float32(ref))

    upstream = st.tensor(rng.standard_normal(out.shape).astype(np.float32)).astype(dtype)
    out.backward(upstream)
    ref.backward(upstream)
    np.testing.assert_array_equal(_as_host_float32(x.grad), _as_host_float32(x_ref.grad))
    assert w.grad.dtype == "float32" and w.grad.shape == w.shape
    # dW against the exact sum of the same products: float32 summation error only.
    x64 = _as_host_float32(x).astype(np.float64)
    g64 = _as_host_float32(upstream).astype(np.float64)

    def xt_g(a, g):
        if len(w_shape) == 1:
            return np.einsum("ik,i->k", a, g)
        if len(w_shape) == 2:
            return a.reshape(-1, x_shape[-1]).T @ g.reshape(-1, g.shape[-1])
        return np.swapaxes(a, -1, -2) @ g

    bound = 2e-5 * xt_g(np.abs(x64), np.abs(g64))
    err = np.abs(w.grad.numpy().astype(np.float64) - xt_g(x64, g64))
    assert np.all(err <= bound), f"max excess {np.max(err - bound)}"
    assert_close(w.grad, w_ref.grad, RTOL[dtype], "dW against the composed path")


def test_mixed_matmul_saves_the_weight_not_a_16_bit_copy():
    width, batch = 512, 8
    x = st.randn((batch, width), seed=1).astype("bfloat16")
    w = st.randn((width, width), seed=2)
    w.requires_grad = True
    st.reset_peak_memory_stats()
    base = st.memory_stats()["allocated_bytes"]
    out = st.ops.matmul(x, w)
    kept = st.memory_stats()["allocated_bytes"] - base
    assert kept == out.numel() * 2  # the output only: no copy of w exists
    out.sum().backward()
    assert w.grad.dtype == "float32"
    # The backward's temporaries: the float32 gradient and the reduction's ones, never
    # a 16-bit copy of w nor a 16-bit dW (another width² · 2 bytes each).
    peak = st.memory_stats()["peak_allocated_bytes"] - base
    assert peak < w.numel() * 4 + w.numel() * 2


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_mixed_matmul_second_order_through_the_composite(rng, dtype):
    x, w = _mixed_operands(rng, dtype, (6, 5), (5, 4), "N")
    x.requires_grad = w.requires_grad = True
    (gw,) = st.autograd.grad([st.ops.matmul(x, w).sum()], [w], create_graph=True)
    assert gw.dtype == "float32"
    (gx,) = st.autograd.grad([(gw * gw).sum()], [x])
    x_ref, w_ref = x.detach(), w.detach()
    x_ref.requires_grad = w_ref.requires_grad = True
    (gw_ref,) = st.autograd.grad([st.ops.matmul(x_ref, w_ref.astype(dtype)).sum()], [w_ref],
                                 create_graph=True)
    (gx_ref,) = st.autograd.grad([(gw_ref * gw_ref).sum()], [x_ref])
    np.testing.assert_array_equal(_as_host_float32(gx), _as_host_float32(gx_ref))


def test_mixed_matmul_takes_only_a_float32_right_operand():
    with pytest.raises(TypeError, match="matmul"):
        st.ops.matmul(st.ones((2, 2)), st.ones((2, 2), dtype="bfloat16"))
    with pytest.raises(TypeError, match="matmul"):
        st.ops.matmul(st.ones((2, 2), dtype="float16"), st.ones((2, 2), dtype="float64"))
    with pytest.raises(TypeError, match="matmul"):
        st.ops.matmul(st.ones((2, 2), dtype="float16"), st.ones((2, 2), dtype="bfloat16"))


@requires_torch
@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_mixed_linear_matches_torch_autocast(rng, dtype):
    x_np = rng.standard_normal((24, 40)).astype(np.float32)
    w_np = rng.standard_normal((40, 30)).astype(np.float32)
    b_np = rng.standard_normal(30).astype(np.float32)
    g_np = rng.standard_normal((24, 30)).astype(np.float32)
    x = st.tensor(x_np).astype(dtype).detach()
    w, b = st.tensor(w_np), st.tensor(b_np)
    w.requires_grad = b.requires_grad = True
    out = st.ops.linear(x, w, b.astype(dtype))
    out.backward(st.tensor(g_np).astype(dtype))

    torch_dtype = getattr(torch, dtype)
    tx = torch.tensor(_as_host_float32(x)).to(torch_dtype)
    tw = torch.tensor(w_np.T.copy(), requires_grad=True)
    tb = torch.tensor(b_np, requires_grad=True)
    with torch.autocast("cpu", dtype=torch_dtype):
        tout = torch.nn.functional.linear(tx, tw, tb)
    assert tout.dtype == torch_dtype
    tout.backward(torch.tensor(g_np).to(torch_dtype))
    rtol = RTOL[dtype]
    assert_close(out, tout.detach().float().numpy(), rtol, "forward against autocast")
    assert w.grad.dtype == "float32"
    assert_close(w.grad, tw.grad.numpy().T, rtol, "dW against autocast")
    assert_close(b.grad, tb.grad.numpy(), rtol, "db against autocast")


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_dense_and_transformer_keep_no_16_bit_weight_copies(policy):
    st.mixed_precision.set_global_policy(policy)
    st.manual_seed(0)
    dense = st.layers.Dense(256)
    block = st.layers.TransformerBlock(64, 4)
    x = st.randn((4, 256), seed=1)
    tokens = st.randn((2, 8, 64), seed=2)
    dense(x)
    block(tokens)  # build the weights first
    for layer, inputs in ((dense, x), (block, tokens)):
        st.reset_peak_memory_stats()
        base = st.memory_stats()["allocated_bytes"]
        out = layer(inputs, training=True)
        kept = st.memory_stats()["allocated_bytes"] - base
        matrices = sum(p.numel() for p in layer.trainable_weights if len(p.shape) == 2)
        # A 16-bit copy of the weight matrices alone would be matrices · 2 bytes.
        assert kept < matrices * 2, f"{layer}: {kept} bytes kept for backward"
        out.astype("float32").sum().backward()
        assert all(p.grad.dtype == "float32" for p in layer.trainable_weights)


def test_optimizers_step_float32_master_weights_only():
    w = st.zeros((3,), dtype="float16", requires_grad=True)
    w.grad = st.ones((3,), dtype="float16")
    with pytest.raises(TypeError, match=r"\[AdamW\] parameter 0 is float16"):
        st.optimizers.AdamW().step([w])


# ------------------------------------------------------------------------- LossScaler


def _param_with_grad(values, grad):
    p = st.tensor(values, requires_grad=True)
    p.grad = st.tensor(grad)
    return p


def test_loss_scaler_state_machine():
    # PyTorch's test_grad_scaling_update_scale: start 4, growth 2, backoff 0.25, interval 2.
    scaler = st.mixed_precision.LossScaler(
        initial_scale=4.0, growth_factor=2.0, backoff_factor=0.25, growth_interval=2
    )
    opt = st.optimizers.SGD(learning_rate=0.1)
    p = _param_with_grad([1.0], [4.0])
    scales = []
    for grad in (4.0, 4.0, np.inf, 4.0, 4.0, 4.0, np.nan):
        p.grad = st.tensor([grad])
        scaler.step(opt, [p])
        scaler.update()
        scales.append((scaler.get_scale(), scaler.growth_tracker))
    assert scales == [(4.0, 1), (8.0, 0), (2.0, 0), (2.0, 1), (4.0, 0), (4.0, 1), (1.0, 0)]
    assert opt.iterations == 5


def test_loss_scaler_growth_stays_finite_and_backoff_has_no_floor():
    scaler = st.mixed_precision.LossScaler(
        initial_scale=2.0**127, growth_factor=2.0, growth_interval=1
    )
    opt = st.optimizers.SGD()
    p = _param_with_grad([1.0], [0.0])
    scaler.step(opt, [p])
    scaler.update()
    assert scaler.get_scale() == 2.0**127  # 2¹²⁸ is inf in float32: not adopted
    scaler = st.mixed_precision.LossScaler(initial_scale=1.0, backoff_factor=0.5)
    for _ in range(30):
        p.grad = st.tensor([np.inf])
        assert not scaler.step(opt, [p])
        scaler.update()
    assert scaler.get_scale() == 2.0**-30


@pytest.mark.parametrize("bad", [0, 1, 2])
def test_loss_scaler_skips_a_step_with_inf_in_any_gradient(bad):
    lr = st.schedules.WarmupCosine(0.1, warmup_steps=5, total_steps=20)
    opt = st.optimizers.AdamW(learning_rate=lr, clipnorm=1.0)
    scaler = st.mixed_precision.LossScaler(initial_scale=8.0)
    params = [
        _param_with_grad(np.ones((2, 3)), np.ones((2, 3))),
        _param_with_grad([1.0, 2.0], [0.5, 0.5]),
        _param_with_grad([3.0], [1.0]),
    ]
    assert scaler.step(opt, params)  # one good step, so there is optimizer state
    scaler.update()
    before = [p.numpy().copy() for p in params]
    state_before = opt.state_dict()
    rate_before = opt.learning_rate
    for i, p in enumerate(params):
        grad = np.full(p.shape, 2.0, dtype=np.float32)
        if i == bad:
            grad.flat[-1] = np.inf if bad != 1 else np.nan
        p.grad = st.tensor(grad)
    assert not scaler.step(opt, params)
    scaler.update()
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.numpy(), b)
    state_after = opt.state_dict()
    assert state_after["iterations"] == state_before["iterations"] == 1
    for old, new in zip(state_before["state"], state_after["state"]):
        assert old.keys() == new.keys()
        for key in old:
            np.testing.assert_array_equal(old[key], new[key])
    assert opt.learning_rate == rate_before
    assert scaler.get_scale() == 4.0 and scaler.growth_tracker == 0


def _tiny_mlp_step(params, x, y):
    w1, b1, w2, b2 = params
    hidden = st.ops.relu(st.ops.linear(x, w1, b1))
    return st.ops.cross_entropy(st.ops.linear(hidden, w2, b2), y)


def test_scaled_float32_run_matches_unscaled_control(rng):
    # All float32: scaling by a power of two and unscaling is exact, so the runs agree.
    x = st.tensor(rng.standard_normal((64, 10)))
    y = st.tensor(rng.integers(0, 4, size=64))
    init = [
        rng.standard_normal((10, 16)) * 0.3,
        np.zeros(16),
        rng.standard_normal((16, 4)) * 0.3,
        np.zeros(4),
    ]
    runs = []
    for scaled in (False, True):
        params = [st.tensor(v, requires_grad=True) for v in init]
        opt = st.optimizers.AdamW(learning_rate=0.01, clipnorm=0.5)
        scaler = st.mixed_precision.LossScaler(initial_scale=2.0**16, growth_interval=3)
        for step in range(25):
            opt.zero_grad(params)
            xb, yb = (
                x[(step % 4) * 16 : (step % 4 + 1) * 16],
                y[(step % 4) * 16 : (step % 4 + 1) * 16],
            )
            loss = _tiny_mlp_step(params, xb, yb)
            if scaled:
                scaled_loss = scaler.scale(loss)
                assert scaled_loss.item() == pytest.approx(
                    loss.item() * scaler.get_scale(), rel=1e-6
                )
                scaled_loss.backward()
                assert scaler.step(opt, params)
                scaler.update()
            else:
                loss.backward()
                opt.step(params)
        assert not scaled or scaler.get_scale() == 2.0**24  # grew every 3 steps
        runs.append([p.numpy().copy() for p in params])
    for a, b in zip(*runs):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def test_unscale_before_clipping_gives_the_true_gradients():
    scaler = st.mixed_precision.LossScaler(initial_scale=1024.0)
    p = st.tensor([3.0, 4.0], requires_grad=True)
    scaler.scale((p * p).sum()).backward()
    np.testing.assert_array_equal(p.grad.numpy(), [6144.0, 8192.0])
    assert scaler.unscale([p])
    np.testing.assert_array_equal(p.grad.numpy(), [6.0, 8.0])
    assert st.clip_grad_norm([p], 5.0) == pytest.approx(10.0)
    with pytest.raises(RuntimeError, match=r"\[LossScaler\] unscale\(\) was already called"):
        scaler.unscale([p])
    opt = st.optimizers.SGD(learning_rate=1.0)
    assert scaler.step(opt, [p])  # does not unscale a second time
    np.testing.assert_allclose(p.numpy(), [3.0 - 3.0, 4.0 - 4.0], atol=1e-5)
    with pytest.raises(RuntimeError, match=r"step\(\) was already called"):
        scaler.step(opt, [p])
    scaler.update()
    with pytest.raises(RuntimeError, match=r"update\(\) needs a step\(\)"):
        scaler.update()


def test_loss_scaler_scales_a_16_bit_loss_in_float32():
    scaler = st.mixed_precision.LossScaler()
    loss = st.tensor(3.0, dtype="float16")
    scaled = scaler.scale(loss)
    assert scaled.dtype == "float32" and scaled.item() == 3.0 * 2**16


def test_loss_scaler_state_dict_round_trip():
    a = st.mixed_precision.LossScaler(initial_scale=256.0, growth_interval=3)
    p = _param_with_grad([1.0], [1.0])
    opt = st.optimizers.SGD()
    for _ in range(2):
        a.step(opt, [p])
        a.update()
    state = a.state_dict()
    assert state == {
        "scale": 256.0,
        "growth_factor": 2.0,
        "backoff_factor": 0.5,
        "growth_interval": 3,
        "_growth_tracker": 2,
    }
    b = st.mixed_precision.LossScaler()
    b.load_state_dict(state)
    assert b.state_dict() == state
    b.step(opt, [p])
    b.update()
    assert b.get_scale() == 512.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"initial_scale": 0.0}, "initial_scale"),
        ({"growth_factor": 1.0}, "growth_factor must be a finite number > 1"),
        ({"backoff_factor": 1.0}, r"backoff_factor must be in \(0, 1\)"),
        ({"growth_interval": 0}, "growth_interval must be >= 1"),
    ],
)
def test_loss_scaler_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=r"\[LossScaler\] " + message):
        st.mixed_precision.LossScaler(**kwargs)


# ----------------------------------------------------------------- policies and models


def test_policies():
    mp = st.mixed_precision
    assert mp.global_policy() == mp.Policy("float32")
    mp.set_global_policy("mixed_bfloat16")
    policy = mp.global_policy()
    assert (policy.name, policy.compute_dtype, policy.variable_dtype) == (
        "mixed_bfloat16",
        "bfloat16",
        "float32",
    )
    assert repr(policy) == '<Policy "mixed_bfloat16">' and not policy.loss_scaling
    assert mp.Policy("mixed_float16").loss_scaling
    mp.set_global_policy(None)
    assert mp.global_policy().name == "float32"
    with pytest.raises(ValueError, match="unknown policy 'float16'"):
        mp.set_global_policy("float16")


def _digits_model(kind, policy, seed=0):
    st.mixed_precision.set_global_policy(policy)
    (x, y), (x_test, y_test) = st.datasets.load_digits(flatten=kind == "mlp")
    st.manual_seed(seed)
    model = build_model(kind, x)
    model.compile(st.optimizers.AdamW(), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, (x, y), (x_test, y_test)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_compile_takes_the_policy(policy):
    model, (x, y), (x_test, _) = _digits_model("cnn", policy)
    st.mixed_precision.set_global_policy("float32")  # compile already took it
    compute = st.mixed_precision.Policy(policy).compute_dtype
    assert model.dtype_policy.name == policy
    assert all(layer.compute_dtype == compute for layer in model.layers)
    assert (model.loss_scaler is not None) == (policy == "mixed_float16")
    history = model.fit(x[:256], y[:256], batch_size=64, epochs=1, verbose=0, seed=0)
    assert [p.dtype for p in model.parameters()] == ["float32"] * len(model.parameters())
    assert all(p.grad.dtype == "float32" for p in model.parameters())
    if policy == "mixed_float16":
        assert history.history["loss_scale"] == [2.0**16]
    else:
        assert "loss_scale" not in history.history
    out = model(st.tensor(x_test[:4]))
    assert out.dtype == "float32" and model.predict(x_test[:4]).dtype == np.float32
    lines = []
    model.summary(print_fn=lines.append)
    assert f"Dtype policy: {policy} (variables float32, compute {compute})" in lines


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_a_layer_takes_the_policy_it_was_built_under(policy):
    # Keras: a layer used on its own computes under the global policy of its construction
    # and keeps float32 weights; the cast of the weights is differentiable.
    st.mixed_precision.set_global_policy(policy)
    dense = st.layers.Dense(3)
    st.mixed_precision.set_global_policy("float32")
    compute = st.mixed_precision.Policy(policy).compute_dtype
    assert dense.dtype_policy.name == policy and dense.compute_dtype == compute
    x = st.tensor(np.ones((2, 4), np.float32))
    y = dense(x)
    assert y.dtype == compute
    assert all(w.dtype == "float32" for w in dense.weights.values())
    st.ops.sum(y.astype("float32")).backward()
    assert dense.weights["kernel"].grad.dtype == "float32"
    assert st.layers.Dense(3).compute_dtype == "float32"


def test_fit_skips_overflowing_steps_and_backs_off():
    model, (x, y), _ = _digits_model("mlp", "mixed_float16")
    model.loss_scaler.load_state_dict({**model.loss_scaler.state_dict(), "scale": 2.0**30})
    before = [p.numpy().copy() for p in model.parameters()]
    model.fit(x[:640], y[:640], batch_size=32, epochs=1, verbose=0, shuffle=False)
    scale = model.loss_scaler.get_scale()
    skipped = 20 - model.optimizer.iterations
    # The float16 gradients overflow until the scale is back in range, halving each time.
    assert 1 <= skipped < 20 and scale == 2.0 ** (30 - skipped)
    assert any(not np.array_equal(p.numpy(), b) for p, b in zip(model.parameters(), before))


def test_progress_bar_shows_the_loss_scale(capsys):
    model, (x, y), _ = _digits_model("mlp", "mixed_float16")
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=1)
    assert "loss_scale: 65536" in capsys.readouterr().out


def test_save_and_load_keep_policy_and_scaler(tmp_path):
    model, (x, y), (x_test, _) = _digits_model("mlp", "mixed_float16")
    model.fit(x[:96], y[:96], batch_size=32, epochs=1, verbose=0)
    path = str(tmp_path / "mp.steepest")
    model.save(path)
    st.mixed_precision.set_global_policy("float32")
    loaded = st.models.load_model(path)
    assert loaded.dtype_policy.name == "mixed_float16"
    assert loaded.loss_scaler.state_dict() == model.loss_scaler.state_dict()
    np.testing.assert_array_equal(loaded.predict(x_test[:8]), model.predict(x_test[:8]))


def test_gpt_layers_train_under_mixed_precision():
    st.mixed_precision.set_global_policy("mixed_bfloat16")
    tokens = np.random.default_rng(0).integers(0, 11, size=(16, 12))
    st.manual_seed(0)
    model = st.models.GPT(11, 12, d_model=16, num_heads=2, num_layers=2, remat=True)
    model.compile(st.optimizers.AdamW(learning_rate=3e-3), loss=st.losses.CausalLMCrossEntropy())
    history = model.fit(tokens, tokens, batch_size=8, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert all(p.dtype == "float32" for p in model.parameters())
    assert all(layer.compute_dtype == "bfloat16" for layer in model.layers)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "gpt"])
@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_cli_trains_in_mixed_precision(capsys, kind, precision):
    assert (
        main(
            [
                "train",
                "--model",
                kind,
                "--epochs",
                "1",
                "--no-save",
                "--quiet",
                "--precision",
                precision,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert ("Validation loss" if kind == "gpt" else "Test accuracy") in out
    assert st.mixed_precision.global_policy().name == "float32"


# The bar: within 1 point of float32 test accuracy, same recipe as test_digits.
SEEDS = range(3)


def _mean_accuracy(kind, policy):
    accuracies = []
    for seed in SEEDS:
        model, (x, y), (x_test, y_test) = _digits_model(kind, policy, seed)
        model.fit(x, y, batch_size=32, epochs=20, verbose=0, seed=seed)
        assert all(p.dtype == "float32" for p in model.parameters())  # the master weights
        accuracies.append(model.evaluate(x_test, y_test, return_dict=True)["accuracy"])
    return float(np.mean(accuracies))


@pytest.mark.training
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_mixed_precision_digits_accuracy_matches_float32(kind):
    reference = _mean_accuracy(kind, "float32")
    for policy in ("mixed_bfloat16", "mixed_float16"):
        accuracy = _mean_accuracy(kind, policy)
        assert abs(accuracy - reference) <= 0.01, (
            f"{kind} {policy}: {accuracy:.4f} vs float32 {reference:.4f}"
        )
