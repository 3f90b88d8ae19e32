"""The packed SIMD GEMM (cpp/cpu/gemm*.cpp) against numpy.

Every transpose combination (reached through .T views, st.ops.transpose and padded
row strides, which the GEMM reads without copying), sizes around the micro-tile and
cache-block edges, batched and broadcast-batched products, and the beta = 1 accumulate
paths behind matmul and conv2d backward; float64 to near machine precision, float32
relative to Σ|a||b| (the scale of the rounding error of any summation order). The
fallback kernels (and, with "avx512", the widening bfloat16 path on CPUs that have
AVX512_BF16) are checked in a subprocess with STEEPEST_GEMM_ISA capping the kernel.
"""

import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import steepest as st

ops = st.ops

# |C - C_ref| <= TOL · (|A|·|B|): float32 rounding grows with the depth; these hold with
# a wide margin for k up to a few thousand.
TOL = {"float32": 2e-6, "float64": 1e-14}


def operand(rng, shape, dtype, layout):
    """(steepest tensor, numpy values) whose matrix axes are stored as `layout`:
    "N" row-major, "T" a .T view of the transposed array, "P" st.ops.transpose of it,
    "S" a slice of wider rows (row stride > columns, non-zero offset)."""
    values = rng.standard_normal(shape).astype(dtype)
    if layout == "N":
        return st.tensor(values, dtype=dtype), values
    if layout in "TP":
        stored = st.tensor(np.ascontiguousarray(np.swapaxes(values, -1, -2)), dtype=dtype)
        if layout == "T":
            assert len(shape) == 2
            return stored.T, values
        return ops.transpose(stored, -1, -2), values
    wide = np.zeros(shape[:-1] + (shape[-1] + 5,), dtype=dtype)
    wide[..., 2:2 + shape[-1]] = values
    return st.tensor(wide, dtype=dtype)[..., 2:2 + shape[-1]], values


def check_close(got, a, b, dtype):
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ref = np.matmul(a64, b64)
    scale = np.matmul(np.abs(a64), np.abs(b64))
    assert got.shape == ref.shape
    err = np.abs(got.astype(np.float64) - ref)
    bound = TOL[dtype] * scale + np.finfo(np.float64).tiny
    worst = np.unravel_index(np.argmax(err / bound), err.shape) if err.size else None
    assert np.all(err <= bound), f"max error {err[worst]} at {worst}, bound {bound[worst]}"


# (m, k, n): degenerate, odd, one past and one short of the micro-tile (8×32 float32,
# 8×16 float64 with AVX-512; 6×16 / 6×8 with AVX2), of the rows for which B is read in
# place (32), of the depth block (512 float32, 256 float64) and of the row block (144
# bfloat16, 192 float32 and float64 with AVX-512), and a size with several row blocks and
# ragged edges everywhere.
SHAPES = [
    (1, 1, 1), (7, 7, 7), (1, 65, 1), (63, 65, 257), (65, 63, 7), (11, 1, 33),
    (9, 257, 31), (33, 511, 17), (32, 513, 48), (145, 255, 65), (192, 600, 97),
    (193, 255, 65), (257, 129, 65), (1029, 917, 63),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("la, lb", list(itertools.product("NTS", "NTS")))
def test_transposes_and_edges(rng, dtype, la, lb):
    for m, k, n in SHAPES:
        a, a_np = operand(rng, (m, k), dtype, la)
        b, b_np = operand(rng, (k, n), dtype, lb)
        check_close(ops.matmul(a, b).numpy(), a_np, b_np, dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_large_all_transposes_and_threads(rng, dtype):
    # Several row blocks and column panels, split over threads and run on one. Two threads
    # split rows, each packing its own B panels; four form a 2 × 2 grid sharing them.
    threads = st.get_num_threads()
    try:
        for t in sorted({1, 2, 4, threads}):
            st.set_num_threads(t)
            for la, lb in itertools.product("NT", "NT"):
                a, a_np = operand(rng, (1029, 917), dtype, la)
                b, b_np = operand(rng, (917, 531), dtype, lb)
                check_close(ops.matmul(a, b).numpy(), a_np, b_np, dtype)
    finally:
        st.set_num_threads(threads)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_wide_and_deep(rng, dtype):
    # More columns than one packed B panel holds, and a depth of many blocks.
    for (m, k, n) in [(3, 5, 4500), (5, 3000, 9), (40, 1300, 700)]:
        a, a_np = operand(rng, (m, k), dtype, "N")
        b, b_np = operand(rng, (k, n), dtype, "T")
        check_close(ops.matmul(a, b).numpy(), a_np, b_np, dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("a_shape, b_shape, la, lb", [
    ((3, 17, 33), (3, 33, 19), "N", "N"),
    ((4, 25, 70), (4, 70, 40), "P", "P"),
    ((2, 1, 17, 33), (4, 33, 19), "N", "P"),   # broadcast batch axes
    ((17, 33), (5, 33, 19), "P", "N"),          # one A for every B (batch stride 0)
    ((5, 17, 33), (33, 19), "N", "N"),          # folded into one tall product
    ((64, 8, 8), (64, 8, 8), "N", "P"),         # many tiny products: one thread each
])
def test_batched(rng, dtype, a_shape, b_shape, la, lb):
    a, a_np = operand(rng, a_shape, dtype, la)
    b, b_np = operand(rng, b_shape, dtype, lb)
    check_close(ops.matmul(a, b).numpy(), a_np, b_np, dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("x_shape, w_shape", [
    ((37, 70), (70, 45)),
    ((3, 29, 40), (40, 33)),       # dW sums over the folded batch
    ((3, 29, 40), (3, 40, 33)),
])
def test_matmul_backward(rng, dtype, x_shape, w_shape):
    x_np = rng.standard_normal(x_shape).astype(dtype)
    w_np = rng.standard_normal(w_shape).astype(dtype)
    x = st.tensor(x_np, dtype=dtype, requires_grad=True)
    w = st.tensor(w_np, dtype=dtype, requires_grad=True)
    y = ops.matmul(x, w)
    g_np = rng.standard_normal(y.shape).astype(dtype)
    y.backward(st.tensor(g_np, dtype=dtype))
    check_close(x.grad.numpy(), g_np, np.swapaxes(w_np, -1, -2), dtype)
    if len(w_shape) == 2:
        k, n = w_shape
        check_close(w.grad.numpy(), x_np.reshape(-1, k).T, g_np.reshape(-1, n), dtype)
    else:
        check_close(w.grad.numpy(), np.swapaxes(x_np, -1, -2), g_np, dtype)


# float16/bfloat16 operands are widened while the GEMM packs them and C is rounded once
# from a float32 block: float16 results are the float32 product of the widened operands,
# rounded to 16 bits, bit for bit (same packed values, same kernel, same order). On CPUs
# with AVX512_BF16, bfloat16 products run its pair-wise dot-product kernel instead: still
# exact products summed in float32, in another order, so they are checked against the
# exact product with float32's summation bound plus the final rounding to bfloat16.
def half_operand(rng, shape, dtype, layout):
    """A 16-bit (m, k) matrix stored as `layout` (operand()'s "N", "T" or "S")."""
    values = rng.standard_normal(shape).astype(np.float32)
    if layout == "N":
        return st.tensor(values).astype(dtype)
    if layout == "T":
        return st.tensor(np.ascontiguousarray(values.T)).astype(dtype).T
    wide = np.zeros(shape[:-1] + (shape[-1] + 5,), dtype=np.float32)
    wide[..., 2:2 + shape[-1]] = values
    return st.tensor(wide).astype(dtype)[..., 2:2 + shape[-1]]


def check_half_product(got, a16, b16):
    dtype = a16.dtype
    assert got.dtype == dtype
    a32, b32 = a16.astype("float32"), b16.astype("float32")
    if dtype == "float16":
        ref = ops.matmul(a32, b32).astype(dtype)
        assert got.shape == ref.shape
        g, r = got.astype("float32").numpy(), ref.astype("float32").numpy()
        assert np.array_equal(g, r), f"max diff {np.max(np.abs(g - r))}"
        return
    a64, b64 = a32.numpy().astype(np.float64), b32.numpy().astype(np.float64)
    ref = np.matmul(a64, b64)
    bound = 2.0**-8 * np.abs(ref) + TOL["float32"] * np.matmul(np.abs(a64), np.abs(b64))
    err = np.abs(got.astype("float32").numpy() - ref)
    assert got.shape == ref.shape and np.all(err <= bound), f"max excess {np.max(err - bound)}"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("la, lb", [("N", "N"), ("T", "N"), ("N", "T"), ("T", "T"), ("S", "S")])
def test_half_transposes_and_edges(rng, dtype, la, lb):
    for m, k, n in SHAPES:
        a = half_operand(rng, (m, k), dtype, la)
        b = half_operand(rng, (k, n), dtype, lb)
        check_half_product(ops.matmul(a, b), a, b)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("a_shape, b_shape", [
    ((3, 17, 33), (3, 33, 19)),
    ((2, 1, 17, 33), (4, 33, 19)),
    ((5, 17, 33), (33, 19)),
    ((64, 8, 8), (64, 8, 8)),      # one product per thread, one float32 block each
    ((3, 40, 1300), (1300, 700)),  # several depth blocks accumulate in float32
])
def test_half_batched_and_deep(rng, dtype, a_shape, b_shape):
    a = st.tensor(rng.standard_normal(a_shape).astype(np.float32)).astype(dtype)
    b = st.tensor(rng.standard_normal(b_shape).astype(np.float32)).astype(dtype)
    check_half_product(ops.matmul(a, b), a, b)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_backward_accumulates_in_float32(rng, dtype):
    # Products whose 16-bit partial sums would drift: k = 4096 ones. Float32 accumulation
    # gives exactly 4096 (representable in both 16-bit types); 16-bit accumulation stalls
    # at 2048 in float16 and at 256 in bfloat16.
    x = st.ones((8, 4096), dtype=dtype, requires_grad=True)
    w = st.ones((4096, 8), dtype=dtype, requires_grad=True)
    y = ops.matmul(x, w)
    assert np.all(y.astype("float32").numpy() == 4096.0)
    y.backward(st.ones((8, 8), dtype=dtype))
    assert x.grad.dtype == dtype and np.all(x.grad.astype("float32").numpy() == 8.0)
    assert np.all(w.grad.astype("float32").numpy() == 8.0)


def im2col(x, kh, kw, pad):
    """(N, C, H, W) -> (N, C·kh·kw, OH·OW) receptive-field columns, stride 1, in float64."""
    n, c, h, w = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = h + 2 * pad - kh + 1, w + 2 * pad - kw + 1
    cols = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
    return cols[:, :, :oh, :ow].transpose(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, oh * ow)


def col2im(cols, shape, kh, kw, pad):
    """The adjoint of im2col: adds every column entry back onto its pixel."""
    n, c, h, w = shape
    oh, ow = h + 2 * pad - kh + 1, w + 2 * pad - kw + 1
    cols = cols.reshape(n, c, kh, kw, oh, ow)
    out = np.zeros((n, c, h + 2 * pad, w + 2 * pad))
    for i in range(kh):
        for j in range(kw):
            out[:, :, i:i + oh, j:j + ow] += cols[:, :, i, j]
    return out[:, :, pad:pad + h, pad:pad + w]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("n, c, size, o, k, pad", [
    (5, 3, 7, 4, 3, 1),        # images side by side in one GEMM, ragged tiles
    (70, 1, 4, 4096, 3, 1),    # two groups of images: dW accumulates across GEMMs
    (3, 6, 5, 9, 1, 0),        # 1×1: no im2col
    (3, 256, 32, 5, 3, 1),     # one GEMM per image, partial dWs summed across threads
])
def test_conv(rng, dtype, n, c, size, o, k, pad):
    x_np = rng.standard_normal((n, c, size, size)).astype(dtype)
    w_np = rng.standard_normal((o, c, k, k)).astype(dtype)
    b_np = rng.standard_normal(o).astype(dtype)
    x = st.tensor(x_np, dtype=dtype, requires_grad=True)
    w = st.tensor(w_np, dtype=dtype, requires_grad=True)
    b = st.tensor(b_np, dtype=dtype, requires_grad=True)
    y = ops.conv2d(x, w, b, padding=pad)
    cols = im2col(x_np, k, k, pad)                     # (N, C·k·k, OH·OW)
    w_row = w_np.reshape(o, -1)
    # Y = W_row · X_col (+ b)
    y_np = y.numpy().reshape(n, o, -1) - b_np[:, None]
    for i in range(n):
        check_close(y_np[i], w_row, cols[i], dtype)

    g_np = rng.standard_normal(y.shape).astype(dtype)
    y.backward(st.tensor(g_np, dtype=dtype))
    g_rows = g_np.reshape(n, o, -1)
    # dL/dW_row = Σ_images G · X_colᵀ, accumulated over the images' columns
    check_close(w.grad.numpy().reshape(o, -1), np.concatenate(g_rows, axis=1),
                np.concatenate(cols, axis=1).T, dtype)
    # db = Σ G over images and pixels, to within the rounding of that sum
    g64 = g_np.astype(np.float64)
    db_err = np.abs(b.grad.numpy() - g64.sum(axis=(0, 2, 3)))
    assert np.all(db_err <= TOL[dtype] * np.abs(g64).sum(axis=(0, 2, 3)))
    # dL/dX = col2im(W_rowᵀ · G)
    w64, g64 = w_row.astype(np.float64), g_rows.astype(np.float64)
    ref = col2im(np.matmul(w64.T, g64), x_np.shape, k, k, pad)
    scale = col2im(np.matmul(np.abs(w64).T, np.abs(g64)), x_np.shape, k, k, pad)
    assert np.all(np.abs(x.grad.numpy() - ref) <= TOL[dtype] * scale + 1e-300)


@pytest.mark.parametrize("n, c, size, o, k, pad, stride", [
    (5, 3, 7, 4, 3, 1, 1),
    (70, 1, 4, 40, 3, 1, 1),
    (3, 6, 5, 9, 1, 0, 1),
    (3, 16, 32, 5, 3, 1, 1),
    (4, 5, 9, 6, 3, 1, 2),      # strided: dX through col2im
])
def test_bfloat16_conv(rng, n, c, size, o, k, pad, stride):
    # bfloat16 convolutions may multiply in bfloat16 (GemmArgs::bf16_products): exact
    # products, float32 sums, each result rounded once to bfloat16.
    def bf16(shape):
        return st.tensor(rng.standard_normal(shape).astype(np.float32)).astype("bfloat16")

    def widened(t):
        return t.astype("float32").numpy().astype(np.float64)

    def check(got, ref, scale):
        err = np.abs(got.astype("float32").numpy() - ref)
        bound = 2.0**-8 * np.abs(ref) + TOL["float32"] * scale + 1e-30
        assert np.all(err <= bound), f"max excess {np.max(err - bound)}"

    x, w = bf16((n, c, size, size)), bf16((o, c, k, k))
    x.requires_grad, w.requires_grad = True, True
    y = ops.conv2d(x, w, stride=stride, padding=pad)
    g = bf16(y.shape)
    y.backward(g)
    assert y.dtype == x.grad.dtype == w.grad.dtype == "bfloat16"
    x64, w64, g64 = widened(x), widened(w), widened(g)
    # The float64 reference of the same convolution, through float64 steepest ops.
    x_ref = st.tensor(x64, requires_grad=True)
    w_ref = st.tensor(w64, requires_grad=True)
    y_ref = ops.conv2d(x_ref, w_ref, stride=stride, padding=pad)
    y_ref.backward(st.tensor(g64))
    y_abs = ops.conv2d(st.tensor(np.abs(x64)), st.tensor(np.abs(w64)), stride=stride, padding=pad)
    check(y, y_ref.numpy(), y_abs.numpy())
    xa = st.tensor(np.abs(x64), requires_grad=True)
    wa = st.tensor(np.abs(w64), requires_grad=True)
    ops.conv2d(xa, wa, stride=stride, padding=pad).backward(st.tensor(np.abs(g64)))
    check(x.grad, x_ref.grad.numpy(), xa.grad.numpy())
    check(w.grad, w_ref.grad.numpy(), wa.grad.numpy())


FALLBACK_SCRIPT = textwrap.dedent("""
    import itertools, numpy as np, steepest as st
    rng = np.random.default_rng(0)
    for dtype, tol in (("float64", 1e-14), ("float32", 2e-6)):
        for (m, k, n), ta, tb in itertools.product(
                [(1, 1, 1), (7, 9, 5), (13, 300, 37), (65, 257, 129)], (0, 1), (0, 1)):
            a = rng.standard_normal((k, m) if ta else (m, k)).astype(dtype)
            b = rng.standard_normal((n, k) if tb else (k, n)).astype(dtype)
            at, bt = st.tensor(a, dtype=dtype), st.tensor(b, dtype=dtype)
            a, b = (a.T, at.T) if ta else (a, at), (b.T, bt.T) if tb else (b, bt)
            got = st.ops.matmul(a[1], b[1]).numpy()
            ref = a[0].astype(np.float64) @ b[0].astype(np.float64)
            bound = tol * (np.abs(a[0]).astype(np.float64) @ np.abs(b[0]))
            assert np.all(np.abs(got - ref) <= bound + 1e-300), (dtype, m, k, n, ta, tb)
            if dtype == "float32":
                got16 = st.ops.matmul(a[1].astype("bfloat16"), b[1].astype("bfloat16"))
                ref16 = st.ops.matmul(a[1].astype("bfloat16").astype("float32"),
                                      b[1].astype("bfloat16").astype("float32"))
                assert np.array_equal(got16.astype("float32").numpy(),
                                      ref16.astype("bfloat16").astype("float32").numpy())
    print("ok")
""")


@pytest.mark.parametrize("isa", ["avx512", "avx2", "scalar"])
def test_fallback_kernels(isa):
    env = dict(os.environ, STEEPEST_GEMM_ISA=isa, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT], env=env, check=False,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_bfloat16_pair_kernel():
    # The GEMM runs the AVX512_BF16 pair kernel only where VDPBF16PS outpaces FMA, so on
    # other AVX512_BF16 CPUs the bfloat16 tests above check the widening path: rerun them
    # with the pair kernel asked for (on CPUs without AVX512_BF16 they check widening again).
    env = dict(os.environ, STEEPEST_GEMM_ISA="avx512bf16", PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
         "-k", "bfloat16 and not pair_kernel"],
        env=env, check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and " passed" in result.stdout, result.stdout + result.stderr
