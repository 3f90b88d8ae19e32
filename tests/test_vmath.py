"""float32 transcendentals (cpp/cpu/vmath.h): ulp error over the whole float range, specials,
layouts.

Errors are counted in representable floats between the result and the correctly rounded
one (the float64 reference rounded to float32), over a strided sweep of all 2^32 bit
patterns (every sign and binade, subnormals, ±0, ±inf, NaN), a dense sweep of [-30, 30]
and random bit patterns and normals. The bounds are the engine's promise: 2 ulp for exp,
log, sigmoid and tanh, 3 for erf (measured over all 2^32 floats: 1 for each, vmath.h).
erf and log1p have no op of their own, so a small driver compiled against vmath.h
checks them (and the others), with and without -march=native: the portable build has
no FMA, so it rounds differently.
"""

import math
import os
import shutil
import subprocess

import numpy as np
import pytest

import steepest as st

ops = st.ops

ULP_BOUND = {"exp": 2, "log": 2, "log1p": 2, "sigmoid": 2, "tanh": 2, "erf": 3}
VMATH_H = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "cpp", "cpu", "vmath.h")


def _special64(name):
    """scipy.special's erf or erfc on float64 arrays, else math's, element by element."""
    try:
        from scipy import special
    except ImportError:  # pragma: no cover - exercised on machines without scipy
        return lambda x: np.frompyfunc(getattr(math, name), 1, 1)(x).astype(np.float64)
    return getattr(special, name)


def _erf64(x):
    return _special64("erf")(x)


def _sigmoid64(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0, e) / (1.0 + e)


REFERENCE = {
    "exp": np.exp,
    "log": np.log,
    "log1p": np.log1p,
    "sigmoid": _sigmoid64,
    "tanh": np.tanh,
    "erf": _erf64,
}


def _sweep_values():
    """float32 test inputs: strided bit patterns, a dense sweep, random values."""
    rng = np.random.default_rng(1234)
    patterns = np.arange(0, 2**32, 1021, dtype=np.uint64).astype(np.uint32).view(np.float32)
    dense = np.linspace(-30.0, 30.0, 1_000_001, dtype=np.float32)
    random_bits = rng.integers(0, 2**32, 1_000_000, dtype=np.uint64).astype(np.uint32)
    normals = (4 * rng.standard_normal(1_000_000)).astype(np.float32)
    return np.concatenate([patterns, dense, random_bits.view(np.float32), normals])


@pytest.fixture(scope="module")
def sweep():
    return _sweep_values()


def ulp_distance(got, ref64):
    """Representable float32 values between got and float32(ref64); NaN where either is NaN."""
    with np.errstate(over="ignore"):
        ref = ref64.astype(np.float32)

    def ordered(v):
        bits = v.view(np.int32).astype(np.int64)
        return np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)

    dist = np.abs(ordered(got) - ordered(ref)).astype(np.float64)
    dist[np.isnan(got) | np.isnan(ref)] = np.nan
    return dist


def assert_ulp_bound(name, x, got, bound):
    with np.errstate(all="ignore"):
        ref = REFERENCE[name](x.astype(np.float64))
    nan_got, nan_ref = np.isnan(got), np.isnan(ref)
    wrong_nan = np.flatnonzero(nan_got != nan_ref)
    assert wrong_nan.size == 0, (
        f"{name}: NaN mismatch at x={x[wrong_nan[:5]]}: got {got[wrong_nan[:5]]}")
    dist = ulp_distance(got, ref)
    worst = int(np.nanargmax(dist))
    assert dist[worst] <= bound, (
        f"{name}({x[worst]!r}) = {got[worst]!r}, correctly rounded {np.float32(ref[worst])!r}: "
        f"{dist[worst]:.0f} ulp > {bound}")


# ------------------------------------------------------------------ through the engine

ENGINE_OPS = {"exp": ops.exp, "log": ops.log, "sigmoid": ops.sigmoid, "tanh": ops.tanh}


@pytest.mark.parametrize("name", list(ENGINE_OPS))
def test_ulp_error(name, sweep):
    got = ENGINE_OPS[name](st.tensor(sweep, dtype="float32")).numpy()
    assert_ulp_bound(name, sweep, got, ULP_BOUND[name])


def _normal_cdf64(x):
    return 0.5 * _special64("erfc")(-x / math.sqrt(2.0))  # no cancellation for x < 0


def _gelu64(x):
    return x * _normal_cdf64(x)


def _gelu_grad64(x):
    return _normal_cdf64(x) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def test_gelu_and_gradient_error():
    # x/2·(1 + erf(x/√2)) (PyTorch's formula) cancels where erf → -1: the error there is
    # absolute, a fraction of |x|·ulp(1), on top of the rounding of the result itself.
    rng = np.random.default_rng(5)
    x = np.concatenate([np.linspace(-20.0, 20.0, 400_001), 4 * rng.standard_normal(200_000)])
    x = x.astype(np.float32)
    t = st.tensor(x, requires_grad=True)
    y = ops.gelu(t)
    y.backward(st.ones_like(y))
    xd = x.astype(np.float64)
    cases = [("gelu", y.numpy(), _gelu64(xd)), ("gelu'", t.grad.numpy(), _gelu_grad64(xd))]
    for what, got, ref in cases:
        ulp = np.spacing(np.abs(ref).astype(np.float32)).astype(np.float64)
        err = np.abs(got - ref)
        bound = 3 * ulp + 2 * np.abs(xd) * 2.0**-24
        worst = int(np.argmax(err - bound))
        assert err[worst] <= bound[worst], (
            f"{what}({x[worst]!r}) = {got[worst]!r}, exact {ref[worst]!r}")


# ------------------------------------------------------------------------- specials

INF, NAN = np.inf, np.nan
FLT_MIN = np.float32(1.17549435e-38)
FLT_TRUE_MIN = np.float32(1.4e-45)


def _run(op, values):
    return op(st.tensor(np.array(values, dtype=np.float32), dtype="float32")).numpy()


def test_exp_specials():
    got = _run(ops.exp, [INF, -INF, NAN, 0.0, -0.0, 88.7229, 89.0, 1e30, -1e30])
    np.testing.assert_array_equal(got, [INF, 0.0, NAN, 1.0, 1.0, INF, INF, INF, 0.0])
    # The largest finite results (FLT_MAX = e^88.7228391...).
    x = np.array([88.0, 88.7228, 88.72283], dtype=np.float32)
    got = _run(ops.exp, x)
    assert np.all(np.isfinite(got))
    assert np.nanmax(ulp_distance(got, np.exp(x.astype(np.float64)))) <= 1
    # Results below FLT_MIN are subnormal (gradual underflow), then 0 below ≈ -103.97.
    x = np.array([-87.5, -95.0, -100.0, -103.0, -103.9], dtype=np.float32)
    got = _run(ops.exp, x)
    assert np.all((got > 0) & (got < FLT_MIN))
    assert np.nanmax(ulp_distance(got, np.exp(x.astype(np.float64)))) <= 1
    np.testing.assert_array_equal(_run(ops.exp, [-104.0, -150.0, -1000.0]), [0.0, 0.0, 0.0])


def test_log_specials():
    got = _run(ops.log, [0.0, -0.0, -1.0, -INF, -FLT_TRUE_MIN, INF, NAN, 1.0])
    np.testing.assert_array_equal(got, [-INF, -INF, NAN, NAN, NAN, INF, NAN, 0.0])
    # Subnormal and extreme normal inputs.
    x = np.array([FLT_TRUE_MIN, 1e-40, FLT_MIN, np.finfo(np.float32).max], dtype=np.float32)
    assert np.nanmax(ulp_distance(_run(ops.log, x), np.log(x.astype(np.float64)))) <= 1


def test_sigmoid_specials():
    got = _run(ops.sigmoid, [INF, -INF, NAN, 0.0, -0.0, 17.5, 30.0, 1e30, -1e30])
    np.testing.assert_array_equal(got, [1.0, 0.0, NAN, 0.5, 0.5, 1.0, 1.0, 1.0, 0.0])
    # Very negative inputs: e^x/(1 + e^x) without cancellation, down through subnormals.
    x = np.array([-17.0, -30.0, -60.0, -87.0, -90.0, -100.0, -103.0], dtype=np.float32)
    got = _run(ops.sigmoid, x)
    assert np.all(got > 0)
    assert np.nanmax(ulp_distance(got, _sigmoid64(x.astype(np.float64)))) <= 1
    np.testing.assert_array_equal(_run(ops.sigmoid, [-104.0, -200.0]), [0.0, 0.0])


def test_tanh_specials():
    got = _run(ops.tanh, [INF, -INF, NAN, 9.1, -9.1, 20.0, -1e30])
    np.testing.assert_array_equal(got, [1.0, -1.0, NAN, 1.0, -1.0, 1.0, -1.0])
    # Near 0, tanh(x) = x to float precision; the sign of zero is kept.
    tiny = np.array([0.0, -0.0, FLT_TRUE_MIN, -1e-40, 1e-30, -FLT_MIN, 1e-4], dtype=np.float32)
    got = _run(ops.tanh, tiny)
    np.testing.assert_array_equal(got[:6], tiny[:6])
    np.testing.assert_array_equal(np.signbit(got), np.signbit(tiny))
    assert np.nanmax(ulp_distance(got, np.tanh(tiny.astype(np.float64)))) <= 1


def test_gelu_specials():
    got = _run(ops.gelu, [INF, NAN, 0.0, 6.0, 100.0, -100.0])
    np.testing.assert_array_equal(got, [INF, NAN, 0.0, 6.0, 100.0, 0.0])


# -------------------------------------------------------------------------- layouts

LAYOUT_OPS = {
    "exp": ops.exp, "log": ops.log, "sigmoid": ops.sigmoid, "tanh": ops.tanh, "gelu": ops.gelu,
}


def _layout_values(rng):
    values = (6 * rng.standard_normal((5, 6, 40))).astype(np.float32)
    values.flat[:8] = [INF, -INF, NAN, 0.0, -0.0, 1e-40, 100.0, -100.0]
    return values


@pytest.mark.parametrize("name", list(LAYOUT_OPS))
def test_layouts_give_identical_bits(name, rng):
    # The contiguous loop is vectorised, the strided ones are not: they must agree bit for bit.
    op = LAYOUT_OPS[name]
    values = _layout_values(rng)
    if name == "log":
        values = np.abs(values)
    expected = op(st.tensor(values)).numpy()

    transposed = op(st.tensor(np.ascontiguousarray(values.transpose(0, 2, 1))).transpose(1, 2))
    np.testing.assert_array_equal(transposed.numpy(), expected)

    padded = np.zeros(values.shape[:-1] + (2 * values.shape[-1],), dtype=np.float32)
    padded[..., ::2] = values
    np.testing.assert_array_equal(op(st.tensor(padded)[..., ::2]).numpy(), expected)

    row = st.tensor(values[0, 0])  # broadcast: every row reads the same memory (stride 0)
    np.testing.assert_array_equal(op(row.expand(7, values.shape[-1])).numpy(),
                                  np.broadcast_to(expected[0, 0], (7, values.shape[-1])))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", list(LAYOUT_OPS))
def test_16_bit_types_compute_in_float(name, dtype, rng):
    # float16/bfloat16 run the float32 code on widened values and round the result once.
    op = LAYOUT_OPS[name]
    values = _layout_values(rng)
    if name == "log":
        values = np.abs(values)
    x = st.tensor(values, dtype=dtype)
    got = op(x).astype("float32").numpy()
    via_float = op(x.astype("float32")).astype(dtype).astype("float32").numpy()
    np.testing.assert_array_equal(got, via_float)


# ------------------------------------------------------------ vmath.h on its own

DRIVER = r"""
#include <cstdio>
#include <cstring>
#include <vector>

#include "vmath.h"

using namespace steepest::cpu;

template <class F>
void apply(const std::vector<float>& x, std::vector<float>& y, F f) {
  for (size_t i = 0; i < x.size(); ++i) y[i] = f(x[i]);
}

int main(int argc, char** argv) {
  std::vector<float> x;
  float block[4096];
  size_t got;
  while ((got = std::fread(block, sizeof(float), 4096, stdin)) > 0)
    x.insert(x.end(), block, block + got);
  std::vector<float> y(x.size());
  const char* name = argc > 1 ? argv[1] : "";
  if (!std::strcmp(name, "exp")) apply(x, y, [](float v) { return vmath::exp(v); });
  else if (!std::strcmp(name, "log")) apply(x, y, [](float v) { return vmath::log(v); });
  else if (!std::strcmp(name, "log1p")) apply(x, y, [](float v) { return vmath::log1p(v); });
  else if (!std::strcmp(name, "sigmoid")) apply(x, y, [](float v) { return vmath::sigmoid(v); });
  else if (!std::strcmp(name, "tanh")) apply(x, y, [](float v) { return vmath::tanh(v); });
  else if (!std::strcmp(name, "erf")) apply(x, y, [](float v) { return vmath::erf(v); });
  else return 2;
  std::fwrite(y.data(), sizeof(float), y.size(), stdout);
  return 0;
}
"""


def _compiler():
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    return None


@pytest.fixture(scope="module", params=[["-march=native"], []], ids=["native", "portable"])
def vmath_driver(request, tmp_path_factory):
    compiler = _compiler()
    if compiler is None or not os.path.exists(VMATH_H):
        pytest.skip("needs a C++ compiler and the source tree's cpp/cpu/vmath.h")
    # The sanitizer run preloads libasan for Python; the compiler and the driver are
    # ordinary programs.
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    directory = tmp_path_factory.mktemp("vmath")
    source, binary = directory / "driver.cpp", directory / "driver"
    source.write_text(DRIVER)
    command = [compiler, "-std=c++17", "-O3", "-fno-math-errno", *request.param,
               "-I", os.path.dirname(VMATH_H), str(source), "-o", str(binary)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env)
    if result.returncode != 0 and request.param:
        pytest.skip(f"{compiler} {request.param[0]} is not supported here: {result.stderr[-300:]}")
    assert result.returncode == 0, result.stderr

    def run(name, x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = subprocess.run([str(binary), name], input=x.tobytes(), capture_output=True,
                             check=True, env=env).stdout
        return np.frombuffer(out, dtype=np.float32)

    return run


@pytest.mark.parametrize("name", list(ULP_BOUND))
def test_vmath_header_ulp_error(name, vmath_driver, sweep):
    assert_ulp_bound(name, sweep, vmath_driver(name, sweep), ULP_BOUND[name])


def test_vmath_header_erf_specials(vmath_driver):
    # erfc(3.95) < 2^-25: erf rounds to exactly 1 from about 3.916 on.
    x = np.array([INF, -INF, NAN, 0.0, -0.0, 3.95, -3.95, 4.0, 10.0, 1e30, FLT_TRUE_MIN, 1e-30],
                 dtype=np.float32)
    got = vmath_driver("erf", x)
    np.testing.assert_array_equal(got[:10], [1.0, -1.0, NAN, 0.0, -0.0, 1.0, -1.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(np.signbit(got[:10]), np.signbit(x[:10]))
    assert np.nanmax(ulp_distance(got[10:], _erf64(x[10:].astype(np.float64)))) <= 1


def test_vmath_header_log1p_specials(vmath_driver):
    x = np.array([-1.0, -2.0, -INF, INF, NAN, 0.0, -0.0, 1e-30, -1e-30, FLT_TRUE_MIN],
                 dtype=np.float32)
    got = vmath_driver("log1p", x)
    np.testing.assert_array_equal(got[:7], [-INF, NAN, NAN, INF, NAN, 0.0, -0.0])
    np.testing.assert_array_equal(got[7:], x[7:])  # log1p(x) = x to float precision
