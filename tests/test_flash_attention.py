"""The fused (flash) attention kernel behind st.ops.scaled_dot_product_attention: tiled
online softmax forward, FlashAttention-2 backward from the saved log-sum-exp. The kernel
tiles 64 queries by 64 keys, so the lengths below cross tile edges on both sides; the
finite-difference checks use few features to stay quick, the comparison with the composed
attention (exact to rounding) takes wider heads."""

import numpy as np
import pytest

import steepest as st
from helpers import check_op, torch

ops = st.ops


def torch_attention(causal):
    if torch is None:
        return None

    def fn(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return fn


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shapes", [
    pytest.param([(1, 2, 1, 3), (1, 2, 1, 3), (1, 2, 1, 3)], id="T1"),
    pytest.param([(1, 1, 65, 3), (1, 1, 65, 3), (1, 1, 65, 1)], id="T65.d3.dv1"),
    pytest.param([(70, 1), (129, 1), (129, 2)], id="Tq70.Tk129"),
])
def test_fused_attention_gradcheck_and_torch(shapes, causal):
    check_op(lambda q, k, v: ops.scaled_dot_product_attention(q, k, v, causal=causal),
             torch_attention(causal), shapes, rtol=1e-5, atol=1e-5)


def composed(q, k, v, causal, scale):
    """softmax(scale·q·kᵀ + mask)·v from steepest's own ops (autograd's backward)."""
    scores = ops.matmul(q, ops.transpose(k, -1, -2)) * scale
    if causal:
        tq, tk = q.shape[-2], k.shape[-2]
        mask = np.where(np.arange(tk)[None, :] > np.arange(tq)[:, None], -np.inf, 0.0)
        scores = scores + st.tensor(mask, dtype=q.dtype)
    return ops.matmul(ops.softmax(scores, -1), v)


def forward_and_gradients(attention, arrays, weights, dtype):
    """attention's output for leaves holding arrays, and their gradients for the incoming
    gradient weights."""
    leaves = [st.tensor(a, dtype=dtype, requires_grad=True) for a in arrays]
    out = attention(*leaves)
    out.backward(st.tensor(weights, dtype=dtype))
    return [out.numpy()] + [leaf.grad.numpy() for leaf in leaves]


def assert_fused_equals_composed(arrays, weights, causal, scale, dtype="float64",
                                 rtol=1e-10, atol=1e-12):
    fused = forward_and_gradients(
        lambda q, k, v: ops.scaled_dot_product_attention(q, k, v, causal=causal, scale=scale),
        arrays, weights, dtype)
    reference = forward_and_gradients(lambda q, k, v: composed(q, k, v, causal, scale),
                                      arrays, weights, dtype)
    for f, r in zip(fused, reference):
        np.testing.assert_allclose(f, r, rtol=rtol, atol=atol)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("t", [1, 63, 64, 200])
def test_fused_attention_equals_composed(t, causal):
    rng = np.random.default_rng(t)
    arrays = [rng.standard_normal((2, 3, t, 7)) for _ in range(3)]
    assert_fused_equals_composed(arrays, rng.standard_normal((2, 3, t, 7)), causal, 0.3)


def test_fused_attention_saves_linear_memory():
    # Context 1024: the scores of one head alone would be 1024² float64 = 8 MiB; the fused
    # forward keeps q, k, v, the output and one log-sum-exp per row.
    t, d = 1024, 8
    rng = np.random.default_rng(0)
    leaves = [st.tensor(rng.standard_normal((1, 1, t, d)), requires_grad=True) for _ in range(3)]
    st.reset_peak_memory_stats()
    base = st.memory_stats()["allocated_bytes"]
    out = ops.scaled_dot_product_attention(*leaves, causal=True)
    out.sum().backward()
    peak = st.memory_stats()["peak_allocated_bytes"] - base
    assert peak < t * t * 4 // 4, f"peak {peak} bytes grows like T²"


def test_broadcast_batch_axes_fall_back_to_composed():
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, 3, 5, 4))
    k = rng.standard_normal((1, 3, 6, 4))
    v = rng.standard_normal((1, 3, 6, 2))
    out = ops.scaled_dot_product_attention(st.tensor(q), st.tensor(k), st.tensor(v)).numpy()
    s = q @ np.swapaxes(k, -1, -2) / 2.0
    p = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(out, (p / p.sum(-1, keepdims=True)) @ v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_fused_attention_16bit_computes_in_float32(dtype):
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal((2, 70, 8)).astype(np.float32) for _ in range(3)]
    wide = ops.scaled_dot_product_attention(*(st.tensor(a) for a in arrays), causal=True)
    narrow = ops.scaled_dot_product_attention(*(st.tensor(a).astype(dtype) for a in arrays),
                                              causal=True)
    assert narrow.dtype == dtype
    np.testing.assert_allclose(narrow.astype("float32").numpy(), wide.numpy(), atol=0.05)


def test_fused_attention_second_order_matches_composed():
    rng = np.random.default_rng(3)
    arrays = [rng.standard_normal((1, 2, 66, 3)) for _ in range(3)]
    grads = []
    for fn in (lambda *x: ops.scaled_dot_product_attention(*x, causal=True),
               lambda *x: composed(*x, True, 1 / np.sqrt(3))):
        leaves = [st.tensor(a, dtype="float64", requires_grad=True) for a in arrays]
        (gq,) = st.autograd.grad([(fn(*leaves) ** 2).sum()], [leaves[0]], create_graph=True)
        (g2,) = st.autograd.grad([(gq ** 2).sum()], [leaves[1]])
        grads.append(g2.numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("q, k, v, match", [
    ((2, 3), (2, 4), (2, 4), r"\[scaled_dot_product_attention\].*feature axis"),
    ((2, 4), (3, 4), (2, 4), r"\[scaled_dot_product_attention\].*sequence axis"),
    ((4,), (4,), (4,), r"\[scaled_dot_product_attention\].*\(\.\.\., T, D\)"),
])
def test_fused_attention_bad_shapes(q, k, v, match):
    with pytest.raises(ValueError, match=match):
        ops.scaled_dot_product_attention(st.zeros(*q), st.zeros(*k), st.zeros(*v))


def test_fused_attention_bad_dtypes():
    with pytest.raises(TypeError, match=r"\[scaled_dot_product_attention\]"):
        ops.scaled_dot_product_attention(st.zeros(2, 4), st.zeros(2, 4, dtype="float64"),
                                         st.zeros(2, 4))
    with pytest.raises(TypeError, match=r"\[scaled_dot_product_attention\]"):
        ops.scaled_dot_product_attention(st.zeros(2, 4, dtype="int64"), st.zeros(2, 4, dtype="int64"),
                                         st.zeros(2, 4, dtype="int64"))


def test_attention_backward_node_is_fused():
    q = st.tensor(np.ones((1, 4, 2)), requires_grad=True)
    out = ops.scaled_dot_product_attention(q, q, q, causal=True)
    assert out.grad_fn == "AttentionBackward"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_attention_reads_strided_heads_in_place(dtype):
    # The heads of a fused (B, T, 3, H, dh) projection, as TransformerBlock makes them:
    # read through their strides, with results equal to contiguous copies' and the
    # output stored (B, T, H, dh) so that merging the heads copies nothing.
    b, t, h, dh = 2, 70, 3, 5
    rng = np.random.default_rng(4)
    qkv_array = rng.standard_normal((b, t, 3, h, dh))
    weights = st.tensor(rng.standard_normal((b, t, h * dh)), dtype=dtype)
    results = []
    for strided in (True, False):
        qkv = st.tensor(qkv_array, dtype=dtype, requires_grad=True)
        heads = qkv.permute(2, 0, 3, 1, 4)
        q, k, v = (heads[i] if strided else heads[i].contiguous() for i in range(3))
        with st.profiler.profile() as prof:
            out = ops.scaled_dot_product_attention(q, k, v, causal=True)
            merged = out.permute(0, 2, 1, 3).reshape(b, t, h * dh)
        if strided:
            assert [s.name for s in prof.key_averages() if s.name == "clone"] == []
        assert out.strides == (t * h * dh, dh, h * dh, 1)
        # A strided gradient reaches the backward as it is.
        (merged * weights).sum().backward()
        results.append([merged.numpy(), qkv.grad.numpy()])
    for strided, copied in zip(*results):
        np.testing.assert_allclose(strided, copied, rtol=1e-12 if dtype == "float64" else 1e-6)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_fused_attention_long_context_equals_composed(causal):
    # Several 64-key tiles on both sides with ragged ends, dh as in the GPT benchmark.
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal((1, 2, 200, 32)) for _ in range(3)]
    assert_fused_equals_composed(arrays, rng.standard_normal((1, 2, 200, 32)), causal,
                                 1 / np.sqrt(32), "float32", rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("d, dv", [(64, 48), (72, 40), (33, 97)])
def test_fused_attention_head_sizes_equal_composed(d, dv, causal):
    # The kernel's products run on blocks of whole vectors, a half block and a remainder,
    # whose widths depend on the dtype and the instruction set: these head sizes reach
    # all three at every level, with tq != tk ragged at tile and half-tile edges.
    rng = np.random.default_rng(d)
    arrays = [rng.standard_normal(s) for s in ((2, 70, d), (2, 100, d), (2, 100, dv))]
    assert_fused_equals_composed(arrays, rng.standard_normal((2, 70, dv)), causal, 0.2)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_fused_attention_underflowing_probabilities(causal):
    # Scores hundreds apart: most probabilities underflow float32 (the kernel takes no
    # exponential below the normal range), yet the results equal float64's.
    rng = np.random.default_rng(6)
    arrays = [rng.standard_normal((1, 2, 130, 32)) for _ in range(3)]
    weights = rng.standard_normal((1, 2, 130, 32))

    def attention(q, k, v):
        return ops.scaled_dot_product_attention(q, k, v, causal=causal, scale=8.0)

    single = forward_and_gradients(attention, arrays, weights, "float32")
    double = forward_and_gradients(attention, arrays, weights, "float64")
    for s, d in zip(single, double):
        assert np.isfinite(s).all()
        np.testing.assert_allclose(s, d, rtol=1e-3, atol=1e-3)


def test_fused_attention_float32_probabilities_accurate():
    # One query with weight 1 against keys holding the scores themselves, and v the
    # identity: the output row is softmax(scores) and dV's rows are the recomputed
    # probabilities. The scores are exact in float32, rise across 16 key tiles (so the
    # running max moves) and keep every e^(s − lse) normal (the kernel floors its
    # exponent at -87), so the forward's error is the kernel's exponential and
    # normalisation: a few ulp. The backward's exponent s − lse is rounded to float32
    # first, up to ulp(80)/2 relative.
    rng = np.random.default_rng(7)
    tk = 1000
    scores = np.sort(rng.uniform(-80, 0, tk)).astype(np.float32).astype(np.float64)
    leaves = [st.tensor(a, dtype="float32", requires_grad=True)
              for a in (np.ones((1, 1)), scores[:, None], np.eye(tk))]
    out = ops.scaled_dot_product_attention(*leaves, scale=1.0)
    out.backward(st.ones(1, tk))
    expected = np.exp(scores - scores.max())
    expected /= expected.sum()
    np.testing.assert_allclose(out.numpy()[0], expected, rtol=6e-7, atol=0)
    np.testing.assert_allclose(leaves[2].grad.numpy()[:, 0], expected, rtol=6e-6, atol=0)
