"""The fused Transformer pieces (bias_gelu, bias_residual, add_layer_norm) against their
compositions, and the fused TransformerBlock against the same block composed of ops."""

import numpy as np
import pytest

import steepest as st
from helpers import F32_ATOL, LOOSE_RTOL, F, check_op, torch

ops = st.ops
LN_TOL = dict(rtol=LOOSE_RTOL, atol=F32_ATOL)  # mean/variance summation order differs


@pytest.mark.parametrize("shape, layouts", [
    pytest.param((3, 5), None, id="3x5"),
    pytest.param((2, 3, 4), None, id="2x3x4"),
    pytest.param((130, 7), None, id="three-row-blocks"),  # the bias gradient's row blocks
    pytest.param((3, 600), None, id="rows-of-600"),  # vector lanes and tails
    pytest.param((4, 6), ("slice", None), id="sliced-x"),
    pytest.param((5, 4), ("T", "slice"), id="transposed-x-sliced-bias"),
])
def test_bias_gelu(shape, layouts):
    check_op(ops.bias_gelu, lambda x, b: F.gelu(x + b), [shape, (shape[-1],)], noncontig=layouts)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4), (4, 70)])
def test_bias_residual(shape, with_bias):
    if with_bias:
        check_op(ops.bias_residual, lambda x, y, b: x + y + b, [shape, shape, (shape[-1],)])
    else:
        check_op(ops.bias_residual, lambda x, y: x + y, [shape, shape])


def _both(pair):
    # Both outputs in one tensor, so that both gradients are checked.
    s, n = pair
    return s * 0.37 + n


@pytest.mark.parametrize("shape, layouts", [
    pytest.param((3, 5), None, id="3x5"),
    pytest.param((2, 3, 8), None, id="2x3x8"),
    pytest.param((3, 600), None, id="rows-of-600"),
    pytest.param((4, 6), ("T", "slice", None, None, None), id="noncontiguous"),
])
def test_add_layer_norm(shape, layouts):
    c = shape[-1]

    def ref(x, y, b, w, lb):
        s = x + y + b
        return s * 0.37 + F.layer_norm(s, (c,), w, lb, eps=1e-5)

    check_op(lambda x, y, b, w, lb: _both(ops.add_layer_norm(x, y, b, w, lb)), ref,
             [shape, shape, (c,), (c,), (c,)], noncontig=layouts, **LN_TOL)


@pytest.mark.parametrize("which", ["bias", "weight", "ln_bias"])
def test_add_layer_norm_optional_parameters(which):
    # Each missing parameter takes another path through the kernel.
    def fn(x, y, p):
        kwargs = {k: (p if k != which else None) for k in ("bias", "weight", "ln_bias")}
        return _both(ops.add_layer_norm(x, y, **kwargs))

    def ref(x, y, p):
        s = x + y + (p if which != "bias" else 0)
        return s * 0.37 + F.layer_norm(s, (9,), p if which != "weight" else None,
                                       p if which != "ln_bias" else None, eps=1e-5)

    check_op(fn, ref, [(4, 9), (4, 9), (9,)], **LN_TOL)


def test_add_layer_norm_records_layer_norm_of_the_sum():
    x = st.tensor(np.ones((2, 3)), requires_grad=True)
    s, n = ops.add_layer_norm(x, x, None, None, None)
    assert s.grad_fn == "ResidualAddBackward"
    assert n.grad_fn == "LayerNormBackward"
    assert ops.bias_gelu(x, st.tensor(np.ones(3), requires_grad=True)).grad_fn == "BiasGeluBackward"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_fused_16bit_match_the_composition(dtype):
    rng = np.random.default_rng(1)
    x, y = (st.tensor(rng.standard_normal((6, 40)), dtype=dtype) for _ in range(2))
    b, w, lb = (st.tensor(rng.standard_normal(40), dtype=dtype) for _ in range(3))
    tol = dict(rtol=2e-2, atol=2e-2)
    f32 = lambda t: t.astype("float32").numpy()  # noqa: E731
    np.testing.assert_allclose(f32(ops.bias_gelu(x, b)), f32(ops.gelu(x + b)), **tol)
    s, n = ops.add_layer_norm(x, y, b, w, lb)
    np.testing.assert_allclose(f32(s), f32(x + y + b), **tol)
    np.testing.assert_allclose(f32(n), f32(ops.layer_norm(x + y + b, w, lb)), **tol)
    np.testing.assert_allclose(f32(ops.bias_residual(x, y, b)), f32(x + y + b), **tol)


def test_fused_ops_bad_input():
    x = st.tensor(np.ones((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"bias_gelu.*\(4,\).*\(2, 3\)"):
        ops.bias_gelu(x, st.tensor(np.ones(4, dtype=np.float32)))
    with pytest.raises(TypeError, match="bias_gelu"):
        ops.bias_gelu(x, st.tensor(np.ones(3), dtype="float64"))  # float32 x
    with pytest.raises(ValueError, match=r"add_layer_norm.*\(2, 3\).*\(3, 2\)"):
        ops.add_layer_norm(x, st.tensor(np.ones((3, 2), dtype=np.float32)))
    with pytest.raises(ValueError, match="weight"):
        ops.add_layer_norm(x, x, None, st.tensor(np.ones(2, dtype=np.float32)))
    with pytest.raises(ValueError, match="eps"):
        ops.add_layer_norm(x, x, eps=0.0)
    with pytest.raises(ValueError, match=r"bias_residual.*\(5,\)"):
        ops.bias_residual(x, x, st.tensor(np.ones(5, dtype=np.float32)))


def _composed_block(x, w, heads):
    # TransformerBlock::block written with the unfused ops.
    b, t, d = x.shape
    qkv = ops.linear(ops.layer_norm(x, w["ln1_gamma"], w["ln1_beta"]), w["qkv_kernel"], w["qkv_bias"])
    split = qkv.reshape(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    q, k, v = split[0], split[1], split[2]
    a = ops.scaled_dot_product_attention(q, k, v, True).permute(0, 2, 1, 3).reshape(b, t, d)
    x1 = x + ops.linear(a, w["out_kernel"], w["out_bias"])
    hidden = ops.gelu(ops.linear(ops.layer_norm(x1, w["ln2_gamma"], w["ln2_beta"]), w["fc1_kernel"], w["fc1_bias"]))
    return x1 + ops.linear(hidden, w["fc2_kernel"], w["fc2_bias"])


def test_fused_block_matches_the_composed_block_in_float64():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 16))
    block = st.layers.TransformerBlock(16, 4, seed=4)
    block._impl.build([6, 16], 5)
    with st.no_grad():
        for w in block.weights.values():  # nonzero biases and affine parameters
            w.copy_(st.tensor(rng.standard_normal(w.shape).astype(np.float32) * 0.5))
    block._impl.compute_dtype = "float64"
    results = []
    for run in ("fused", "composed"):
        for w in block.weights.values():
            w.grad = None
        xt = st.tensor(x, dtype="float64", requires_grad=True)
        if run == "fused":
            out = block._impl.forward(xt, True, 0)
        else:
            out = _composed_block(xt, {k: v.astype("float64") for k, v in block.weights.items()}, 4)
        (out * out).sum().backward()
        results.append((out.numpy(), xt.grad.numpy(), {k: v.grad.numpy() for k, v in block.weights.items()}))
    (out_f, gx_f, gw_f), (out_c, gx_c, gw_c) = results
    assert out_f.dtype == np.float64
    np.testing.assert_allclose(out_f, out_c, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx_f, gx_c, rtol=1e-10, atol=1e-10)
    for k in gw_c:  # the float32 weights' gradients, each rounded once from float64
        np.testing.assert_allclose(gw_f[k], gw_c[k], rtol=1e-6, atol=1e-6, err_msg=k)
