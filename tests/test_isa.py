"""The CPU kernels at every instruction-set level (cpp/cpu/dispatch.cpp) against the best.

The hot CPU kernels are compiled per level (baseline x86-64, avx2, avx512) and the best
level the CPU supports is chosen at import; STEEPEST_CPU_ISA caps it. Each level this
machine supports runs the same representative kernels in a subprocess (elementwise and
the vectorised math, reductions, softmax and cross-entropy, layer norm, convolution and
pooling, the GEMM in four dtypes, float16/bfloat16 conversion and math, the fused
optimizers, random draws), and must agree with the best level within the rounding of a
different summation order or FMA contraction; conversions and draws must be identical.
The caps and their report in st.backends() are checked too. A native build
(STEEPEST_NATIVE=ON) has one level, "native", and skips the comparisons.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import steepest as st

LEVELS = ("baseline", "avx2", "avx512")

PROBE = textwrap.dedent("""
    import sys
    import numpy as np
    import steepest as st

    out = {}
    rng = np.random.default_rng(0)
    # Odd sizes, so vector loops have tails.
    x = rng.standard_normal((67, 129)).astype(np.float32)
    t = st.tensor(x)
    pos = st.tensor(np.abs(x) + 0.1)
    for name in ("exp", "tanh", "sigmoid", "relu", "abs"):
        out[name] = getattr(t, name)().numpy()
    out["log"] = pos.log().numpy()
    out["sqrt"] = pos.sqrt().numpy()
    out["gelu"] = st.ops.gelu(t).numpy()
    out["pow"] = (t ** 3).numpy()
    row = st.tensor(rng.standard_normal((1, 129)).astype(np.float32))
    out["binary"] = ((t * row + row) / (pos + 1.0)).numpy()
    out["compare"] = (t > row).numpy()
    out["sum0"] = t.sum(axis=0).numpy()
    out["sum1"] = t.sum(axis=1).numpy()
    out["max1"] = t.max(axis=1).numpy()
    out["mean"] = np.array(t.mean().item())
    out["softmax"] = st.ops.softmax(t).numpy()
    out["log_softmax"] = st.ops.log_softmax(t, axis=0).numpy()

    logits = st.tensor(x, requires_grad=True)
    labels = st.tensor(rng.integers(0, 129, 67), dtype="int64")
    loss = st.ops.cross_entropy(logits, labels)
    loss.backward()
    out["ce"], out["ce_grad"] = loss.numpy(), logits.grad.numpy()

    xl = st.tensor(x, requires_grad=True)
    w = st.tensor(rng.standard_normal(129).astype(np.float32), requires_grad=True)
    b = st.tensor(rng.standard_normal(129).astype(np.float32), requires_grad=True)
    y = st.ops.layer_norm(xl, w, b)
    (y * y).sum().backward()
    out["ln"], out["ln_dx"], out["ln_dw"], out["ln_db"] = (
        y.numpy(), xl.grad.numpy(), w.grad.numpy(), b.grad.numpy())

    xi = st.tensor(rng.standard_normal((2, 3, 9, 9)).astype(np.float32), requires_grad=True)
    wk = st.tensor(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), requires_grad=True)
    bk = st.tensor(rng.standard_normal(4).astype(np.float32), requires_grad=True)
    for stride in (1, 2):
        y = st.ops.conv2d(xi, wk, bk, stride=stride, padding=1)
        (y * y).sum().backward()
        out[f"conv{stride}"] = y.numpy()
        out[f"conv{stride}_dx"] = xi.grad.numpy()
        out[f"conv{stride}_dw"] = wk.grad.numpy()
        out[f"conv{stride}_db"] = bk.grad.numpy()
        xi.grad = wk.grad = bk.grad = None
    out["maxpool"] = st.ops.max_pool2d(xi, 2).numpy()
    out["avgpool"] = st.ops.avg_pool2d(xi, 3, stride=2).numpy()

    # Products within one cache block, and over several with both transposes.
    for dtype in ("float32", "float64", "float16", "bfloat16"):
        for m, k, n in ((65, 70, 33), (200, 300, 250)):
            a = st.tensor(rng.standard_normal((m, k))).astype(dtype)
            b = st.tensor(rng.standard_normal((k, n))).astype(dtype)
            out[f"gemm_{dtype}_{m}"] = (a @ b).astype("float64").numpy()
            out[f"gemm_t_{dtype}_{m}"] = (b.T @ a.T).astype("float64").numpy()

    big = x * 3
    for dtype in ("float16", "bfloat16"):
        h = st.tensor(big).astype(dtype)
        out[f"convert_{dtype}"] = h.astype("float32").numpy()
        out[f"exp_{dtype}"] = h.exp().astype("float32").numpy()
        out[f"softmax_{dtype}"] = st.ops.softmax(h).astype("float32").numpy()
        out[f"sum_{dtype}"] = h.sum(axis=1).astype("float32").numpy()

    out["randn"] = st.randn((1000,), seed=3).numpy()
    out["dropout"] = st.ops.dropout(st.ones((1000,)), 0.5, True, seed=4).numpy()

    optimizers = {
        "sgd": lambda: st.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
        "rmsprop": lambda: st.optimizers.RMSprop(0.01),
        "adam": lambda: st.optimizers.Adam(0.01),
        "adamw": lambda: st.optimizers.AdamW(0.01),
        "lamb": lambda: st.optimizers.Lamb(0.01),
        "adafactor": lambda: st.optimizers.Adafactor(),
    }
    w0 = rng.standard_normal((37, 45)).astype(np.float32)
    target = st.tensor(rng.standard_normal((37, 45)).astype(np.float32))
    for name, make in optimizers.items():
        p = st.tensor(w0, requires_grad=True)
        opt = make()
        for _ in range(3):
            opt.zero_grad([p])
            ((p - target) * (p - target)).sum().backward()
            opt.step([p])
        out[f"opt_{name}"] = p.numpy()

    np.savez(sys.argv[1], **out)
    print(st.backends()["cpu_isa"])
""")

# Results that must not depend on the level at all: exact conversions, comparisons,
# selections and the counter-based draws (double precision libm).
EXACT = ("relu", "abs", "compare", "max1", "maxpool", "convert_float16", "convert_bfloat16",
         "randn", "dropout")


def tolerance(key):
    """Relative tolerance (also applied to the largest magnitude as an absolute one): the
    rounding of another summation order or FMA contraction in the result's dtype."""
    if "bfloat16" in key:
        return 1e-2
    if "float16" in key:
        return 2e-3
    if "float64" in key:
        return 1e-12
    return 3e-5


def run(level, tmp_path, extra_env=None):
    """(reported level, results) of the probe under STEEPEST_CPU_ISA=level (None: no cap)."""
    env = {k: v for k, v in os.environ.items() if k != "STEEPEST_CPU_ISA"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    if level is not None:
        env["STEEPEST_CPU_ISA"] = level
    env.update(extra_env or {})
    path = tmp_path / f"{level}.npz"
    result = subprocess.run([sys.executable, "-c", PROBE, str(path)], env=env, check=False,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(path) as data:
        return result.stdout.split()[-1], dict(data)


@pytest.fixture(scope="module")
def best(tmp_path_factory):
    """The uncapped level and its results."""
    level, results = run(None, tmp_path_factory.mktemp("best"))
    if level not in LEVELS:
        pytest.skip(f"a {level} build has no levels to compare")
    return level, results


def test_backends_reports_the_level():
    info = st.backends()
    assert info["cpu_isa"] in LEVELS + ("native",)
    if "STEEPEST_CPU_ISA" not in os.environ:
        assert info["simd"] == info["cpu_isa"]


@pytest.mark.parametrize("level", LEVELS)
def test_level_agrees_with_best(level, best, tmp_path):
    best_level, expected = best
    reported, got = run(level, tmp_path)
    # A cap above what the CPU supports gives the CPU's best.
    assert reported == LEVELS[min(LEVELS.index(level), LEVELS.index(best_level))]
    if reported == best_level and level != best_level:
        return
    assert got.keys() == expected.keys()
    for key, ref in expected.items():
        if key in EXACT:
            np.testing.assert_array_equal(got[key], ref, err_msg=f"{key} at {level}")
        else:
            tol = tolerance(key)
            scale = max(1.0, float(np.max(np.abs(ref))))
            np.testing.assert_allclose(got[key], ref, rtol=tol, atol=tol * scale,
                                       err_msg=f"{key} at {level}")


def test_unknown_level_warns_and_uses_the_best(best):
    env = dict(os.environ, STEEPEST_CPU_ISA="sse9", PYTHONPATH=os.pathsep.join(sys.path))
    script = "import steepest as st; print(st.backends()['cpu_isa'])"
    result = subprocess.run([sys.executable, "-W", "always", "-c", script], env=env,
                            check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == best[0]
    assert "RuntimeWarning" in result.stderr
    assert "STEEPEST_CPU_ISA=sse9 is not one of baseline, avx2, avx512" in result.stderr
    # Warnings turned into errors make the import fail cleanly, not crash.
    result = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", script],
                            env=env, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert "sse9" in result.stderr
