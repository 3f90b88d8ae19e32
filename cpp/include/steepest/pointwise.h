// The per-element formulas of the pointwise ops added for everyday use (activations,
// maximum/minimum, clip, a tensor exponent), forward and derivative, written once for
// the CPU loops (cpp/cpu/pointwise.cpp) and the CUDA kernels (cuda/pointwise.cu). Each
// rule is f(a, b, p0, p1) in the compute type T: a unary rule reads a only, a *Grad rule
// takes (G, x) and returns the input gradient, a *Weight rule returns the factor the
// gradient G is multiplied by (it depends on both operands of a binary op).
#pragma once

#include <cmath>
#include <cstdint>

#include "steepest/dtype.h"

#ifdef __CUDACC__
#define STEEPEST_POINTWISE __host__ __device__ inline
#else
#define STEEPEST_POINTWISE inline
#endif

#ifdef __CUDA_ARCH__
#define STEEPEST_PW_MATH(fn) ::fn
#else
#define STEEPEST_PW_MATH(fn) std::fn
#endif

namespace steepest {

#define STEEPEST_POINTWISE_OPS(X)                                                          \
  X(Erf) X(ErfGrad) X(Silu) X(SiluGrad) X(Softplus) X(SoftplusGrad) X(Elu) X(EluGrad)      \
  X(LeakyRelu) X(LeakyReluGrad) X(Clip) X(ClipGrad) X(Maximum) X(Minimum) X(MaximumWeight) \
  X(MinimumWeight) X(Pow) X(PowBaseWeight) X(PowExponentWeight)

#define STEEPEST_ENUM_ENTRY(name) name,
enum class PointwiseOp : uint8_t { STEEPEST_POINTWISE_OPS(STEEPEST_ENUM_ENTRY) };
#undef STEEPEST_ENUM_ENTRY

namespace pointwise {

template <class T>
STEEPEST_POINTWISE T sigmoid(T x) {  // no overflow for large |x|
  if (x >= T(0)) return T(1) / (T(1) + STEEPEST_PW_MATH(exp)(-x));
  const T e = STEEPEST_PW_MATH(exp)(x);
  return e / (T(1) + e);
}

struct Erf {
  template <class T> STEEPEST_POINTWISE T operator()(T x, T, T, T) const { return STEEPEST_PW_MATH(erf)(x); }
};
// erf'(x) = 2/√π · e^(−x²)
struct ErfGrad {
  template <class T> STEEPEST_POINTWISE T operator()(T g, T x, T, T) const {
    return g * T(1.12837916709551257390) * STEEPEST_PW_MATH(exp)(-x * x);
  }
};
// silu(x) = x·σ(x)
struct Silu {
  template <class T> STEEPEST_POINTWISE T operator()(T x, T, T, T) const { return x * sigmoid(x); }
};
// silu'(x) = σ(x) + x·σ(x)(1 − σ(x)) = σ(x)(1 + x(1 − σ(x)))
struct SiluGrad {
  template <class T> STEEPEST_POINTWISE T operator()(T g, T x, T, T) const {
    const T s = sigmoid(x);
    return g * s * (T(1) + x * (T(1) - s));
  }
};
// softplus(x) = log(1 + e^(βx))/β, as torch: x itself where βx > threshold. Below it the
// overflow-free form (max(βx, 0) + log1p(e^(−|βx|)))/β.
struct Softplus {
  template <class T> STEEPEST_POINTWISE T operator()(T x, T, T beta, T threshold) const {
    const T bx = beta * x;
    if (bx > threshold) return x;
    const T abs_bx = bx < T(0) ? -bx : bx;
    return ((bx > T(0) ? bx : T(0)) + STEEPEST_PW_MATH(log1p)(STEEPEST_PW_MATH(exp)(-abs_bx))) / beta;
  }
};
// softplus'(x) = σ(βx), 1 above the threshold
struct SoftplusGrad {
  template <class T> STEEPEST_POINTWISE T operator()(T g, T x, T beta, T threshold) const {
    const T bx = beta * x;
    return bx > threshold ? g : g * sigmoid(bx);
  }
};
// elu(x) = x for x > 0, α(e^x − 1) otherwise
struct Elu {
  template <class T> STEEPEST_POINTWISE T operator()(T x, T, T alpha, T) const {
    return x > T(0) ? x : alpha * STEEPEST_PW_MATH(expm1)(x);
  }
};
// NOTE: elu'(0) is taken from the left branch, α, as torch does.
struct EluGrad {
  template <class T> STEEPEST_POINTWISE T operator()(T g, T x, T alpha, T) const {
    return x > T(0) ? g : g * alpha * STEEPEST_PW_MATH(exp)(x);
  }
};
struct LeakyRelu {
  template <class T> STEEPEST_POINTWISE T operator()(T x, T, T slope, T) const {
    return x > T(0) ? x : x * slope;
  }
};
// NOTE: the slope at 0 is the negative side's, as torch.
struct LeakyReluGrad {
  template <class T> STEEPEST_POINTWISE T operator()(T g, T x, T slope, T) const {
    return x > T(0) ? g : g * slope;
  }
};
// NaN stays NaN (a clamp must not hide a diverged value); lo > hi gives hi, as torch.
struct Clip {
  template <class T> STEEPEST_POINTWISE T operator()(T x, T, T lo, T hi) const {
    const T low = x < lo ? lo : x;
    return low > hi ? hi : low;
  }
};
// Clipped values get no gradient; the bounds themselves do, as torch.
struct ClipGrad {
  template <class T> STEEPEST_POINTWISE T operator()(T g, T x, T lo, T hi) const {
    return x >= lo && x <= hi ? g : T(0);
  }
};
// NaN in either operand gives NaN, as torch.maximum.
struct Maximum {
  template <class T> STEEPEST_POINTWISE T operator()(T a, T b, T, T) const {
    return a != a || a > b ? a : b;
  }
};
struct Minimum {
  template <class T> STEEPEST_POINTWISE T operator()(T a, T b, T, T) const {
    return a != a || a < b ? a : b;
  }
};
// The share of dL/d max(a, b) that goes to a: 1 where a is larger, 0 where smaller, ½ at
// a tie (the tie rule of steepest's max reductions, and torch's). b's share is
// MaximumWeight(b, a).
struct MaximumWeight {
  template <class T> STEEPEST_POINTWISE T operator()(T a, T b, T, T) const {
    return a < b ? T(0) : (a == b ? T(0.5) : T(1));
  }
};
struct MinimumWeight {
  template <class T> STEEPEST_POINTWISE T operator()(T a, T b, T, T) const {
    return a > b ? T(0) : (a == b ? T(0.5) : T(1));
  }
};
struct Pow {
  template <class T> STEEPEST_POINTWISE T operator()(T x, T y, T, T) const {
    return STEEPEST_PW_MATH(pow)(x, y);
  }
};
// ∂x^y/∂x = y·x^(y−1), taken as 0 where y = 0 (torch's convention: x^0 = 1 everywhere).
struct PowBaseWeight {
  template <class T> STEEPEST_POINTWISE T operator()(T x, T y, T, T) const {
    return y == T(0) ? T(0) : y * STEEPEST_PW_MATH(pow)(x, y - T(1));
  }
};
// ∂x^y/∂y = x^y·ln x, taken as 0 where x = 0 and y ≥ 0 (torch's convention: 0^y is
// constant in y there).
struct PowExponentWeight {
  template <class T> STEEPEST_POINTWISE T operator()(T x, T y, T, T) const {
    if (x == T(0) && y >= T(0)) return T(0);
    return STEEPEST_PW_MATH(pow)(x, y) * STEEPEST_PW_MATH(log)(x);
  }
};

// fn(functor) with the functor of `op`: the backends' dispatch.
template <class Fn>
void visit(PointwiseOp op, Fn&& fn) {
  switch (op) {
#define STEEPEST_CASE(name) \
  case PointwiseOp::name:   \
    fn(name{});             \
    break;
    STEEPEST_POINTWISE_OPS(STEEPEST_CASE)
#undef STEEPEST_CASE
  }
}

// fn(tag, functor) for floating storage tag::type (a StorageTag): the backends' dispatch.
template <class Fn>
void dispatch(PointwiseOp op, DType dtype, Fn&& fn) {
  dispatch_float_storage("pointwise", dtype,
                         [&](auto tag) { visit(op, [&](auto f) { fn(tag, f); }); });
}

}  // namespace pointwise
}  // namespace steepest
