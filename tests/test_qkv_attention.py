"""st.ops.qkv_attention: multi-head self-attention on a fused projection (B, T, 3·d), the
heads read in place and the gradient written into one (B, T, 3·d) buffer by the flash
kernel. It must agree with the composed reshape/permute/select + scaled_dot_product_attention
path a transformer block used before, with torch, and under create_graph."""

import numpy as np
import pytest

import steepest as st
from helpers import check_op, torch

ops = st.ops


def split_attention(qkv, heads, causal, scale=None):
    """The same attention through the per-head views and scaled_dot_product_attention."""
    b, t, d3 = qkv.shape
    d = d3 // 3
    parts = qkv.reshape(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    out = ops.scaled_dot_product_attention(parts[0], parts[1], parts[2], causal=causal, scale=scale)
    return out.permute(0, 2, 1, 3).reshape(b, t, d)


def torch_qkv_attention(heads, causal):
    if torch is None:
        return None

    def fn(qkv):
        b, t, d3 = qkv.shape
        q, k, v = qkv.reshape(b, t, 3, heads, d3 // (3 * heads)).permute(2, 0, 3, 1, 4)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return out.permute(0, 2, 1, 3).reshape(b, t, d3 // 3)
    return fn


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("shape, heads", [
    pytest.param((1, 1, 3), 1, id="T1.h1"),
    pytest.param((2, 5, 12), 2, id="T5.h2"),
    pytest.param((1, 66, 6), 2, id="T66.h2"),
])
def test_qkv_attention_gradcheck_and_torch(shape, heads, causal):
    check_op(lambda qkv: ops.qkv_attention(qkv, heads, causal=causal),
             torch_qkv_attention(heads, causal), [shape], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("t", [1, 64, 130])
def test_qkv_attention_equals_split_path(t, causal):
    rng = np.random.default_rng(t)
    data = rng.standard_normal((2, t, 3 * 3 * 8))
    weights = rng.standard_normal((2, t, 3 * 8))
    results = []
    for fn in (lambda x: ops.qkv_attention(x, 3, causal=causal, scale=0.3),
               lambda x: split_attention(x, 3, causal, scale=0.3)):
        leaf = st.tensor(data, dtype="float64", requires_grad=True)
        out = fn(leaf)
        out.backward(st.tensor(weights, dtype="float64"))
        results.append((out.numpy(), leaf.grad.numpy()))
    for fused, reference in zip(*results):
        np.testing.assert_allclose(fused, reference, rtol=1e-10, atol=1e-12)


def test_qkv_attention_default_scale_is_per_head():
    rng = np.random.default_rng(1)
    qkv = st.tensor(rng.standard_normal((2, 9, 3 * 16)), dtype="float64")
    np.testing.assert_allclose(ops.qkv_attention(qkv, 4).numpy(),
                               split_attention(qkv, 4, True).numpy(), rtol=1e-12, atol=1e-13)


def on_both_paths(data, gradient):
    """gradient(attention, leaf) for the fused op and for the split path (2 heads, causal),
    each on a fresh float64 leaf holding data."""
    results = []
    for attention in (lambda x: ops.qkv_attention(x, 2), lambda x: split_attention(x, 2, True)):
        leaf = st.tensor(data, dtype="float64", requires_grad=True)
        results.append(gradient(attention, leaf))
    return results


def test_qkv_attention_noncontiguous_input_and_gradient():
    # A transposed qkv is read through a copy; a broadcast incoming gradient (from sum)
    # is copied into the kernel's layout.
    def gradient(attention, leaf):
        attention(ops.transpose(leaf, 1, 2)).sum().backward()
        return leaf.grad.numpy()

    fused, split = on_both_paths(np.random.default_rng(2).standard_normal((2, 12, 7)), gradient)
    np.testing.assert_allclose(fused, split, rtol=1e-10, atol=1e-12)


def test_qkv_attention_gradient_of_input_used_twice():
    # The fused gradient buffer must add to, not replace, the other use's gradient.
    def gradient(attention, leaf):
        (ops.qkv_attention(leaf, 1, causal=False).sum() + (attention(leaf) ** 2).sum()).backward()
        return leaf.grad.numpy()

    fused, split = on_both_paths(np.random.default_rng(3).standard_normal((1, 10, 12)), gradient)
    np.testing.assert_allclose(fused, split, rtol=1e-10, atol=1e-12)


def test_qkv_attention_second_order_matches_split_path():
    def gradient(attention, leaf):
        (g,) = st.autograd.grad([(attention(leaf) ** 2).sum()], [leaf], create_graph=True)
        (g2,) = st.autograd.grad([(g ** 2).sum()], [leaf])
        return g2.numpy()

    fused, split = on_both_paths(np.random.default_rng(4).standard_normal((1, 66, 12)), gradient)
    np.testing.assert_allclose(fused, split, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_qkv_attention_16bit_computes_in_float32(dtype):
    rng = np.random.default_rng(5)
    data = rng.standard_normal((2, 70, 3 * 16)).astype(np.float32)
    wide = ops.qkv_attention(st.tensor(data), 2)
    leaf = st.tensor(data).astype(dtype)
    leaf.requires_grad = True
    narrow = ops.qkv_attention(leaf, 2)
    assert narrow.dtype == dtype and narrow.shape == (2, 70, 16)
    np.testing.assert_allclose(narrow.astype("float32").numpy(), wide.numpy(), atol=0.05)
    narrow.astype("float32").sum().backward()
    assert leaf.grad.dtype == dtype and leaf.grad.shape == (2, 70, 48)
    reference = st.tensor(data, requires_grad=True)
    ops.qkv_attention(reference, 2).sum().backward()
    np.testing.assert_allclose(leaf.grad.astype("float32").numpy(), reference.grad.numpy(),
                               atol=0.05)


@pytest.mark.parametrize("shape, heads, error, pattern", [
    ((2, 12), 2, ValueError, r"\[qkv_attention\].*\(2, 12\)"),
    ((1, 2, 12, 1), 2, ValueError, r"\[qkv_attention\].*heads = 2"),
    ((1, 2, 12), 5, ValueError, r"\[qkv_attention\].*heads = 5.*\(1, 2, 12\)"),
    ((1, 2, 12), 0, ValueError, r"\[qkv_attention\].*heads must be positive"),
    ((1, 2, 12), 2**62, ValueError, r"\[qkv_attention\].*heads = 4611686018427387904"),
])
def test_qkv_attention_bad_shapes(shape, heads, error, pattern):
    with pytest.raises(error, match=pattern):
        ops.qkv_attention(st.zeros(*shape), heads)


def test_qkv_attention_needs_float():
    with pytest.raises(TypeError, match=r"\[qkv_attention\].*qkv"):
        ops.qkv_attention(st.zeros(1, 2, 6, dtype="int64"), 1)
