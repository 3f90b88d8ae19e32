// The per-element formulas of the unary and binary kernels (UnaryOp, BinaryOp), forward
// and fused gradient, written once for the CPU loops (cpp/cpu/elementwise.cpp) and the
// CUDA kernels (cuda/elementwise.cu); the backends own only the loops and launches.
// Notation: X the input, Y the output, G the incoming gradient. A unary functor is
// f(X, scalar); a binary one f(a, b, scalar); a *Grad functor f(G, saved, scalar) returns
// dL/dX from the operand unary_ops.def says the node saves.
//
// The transcendental functions come from the math policy M: Math below (the C library on
// the host, CUDA's device overloads on the GPU), or the CPU's vectorising float code
// (cpp/cpu/vmath.h's VMath), which the CPU kernels pass.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "steepest/dtype.h"
#include "steepest/pointwise.h"

// Forced inline on the host: a CPU loop vectorises only with the whole formula in it
// (cpp/cpu/vmath.h).
#ifdef __CUDACC__
#define STEEPEST_ELEMENTWISE __host__ __device__ __forceinline__
#else
#define STEEPEST_ELEMENTWISE inline __attribute__((always_inline))
#endif

namespace steepest {

// What an elementwise autograd node keeps for its backward pass (unary_ops.def).
enum class Saves : uint8_t { Nothing, Input, Output };

#define STEEPEST_BINARY_BASE_OPS(X)                                                        \
  X(Add) X(Sub) X(Mul) X(Div) X(Eq) X(Ne) X(Lt) X(Le) X(Gt) X(Ge) X(BceWithLogits) \
  X(BceWithLogitsGrad)

#define STEEPEST_ENUM_ENTRY(name) name,
#define UNARY_OP(Name, Saves, Grad) Name,
#define UNARY_OP_NO_SAVE(Name) Name,
enum class UnaryOp : uint8_t {
#include "steepest/unary_ops.def"
};
// The binary entries, then one gradient entry per saving unary op.
#define UNARY_OP(Name, Saves, Grad) Grad,
enum class BinaryOp : uint8_t {
  STEEPEST_BINARY_BASE_OPS(STEEPEST_ENUM_ENTRY)
#include "steepest/unary_ops.def"
};
#undef STEEPEST_ENUM_ENTRY

inline bool is_comparison(BinaryOp op) {
  return op == BinaryOp::Eq || op == BinaryOp::Ne || op == BinaryOp::Lt || op == BinaryOp::Le ||
         op == BinaryOp::Gt || op == BinaryOp::Ge;
}

// What the node of `op` saves.
constexpr Saves saves_of(UnaryOp op) {
  switch (op) {
#define UNARY_OP(Name, Saved, Grad) \
  case UnaryOp::Name:               \
    return Saves::Saved;
#include "steepest/unary_ops.def"
    default:
      return Saves::Nothing;
  }
}

// The fused gradient of a saving op (saves_of(op) != Nothing).
constexpr BinaryOp gradient_of(UnaryOp op) {
  switch (op) {
#define UNARY_OP(Name, Saved, Grad) \
  case UnaryOp::Name:               \
    return BinaryOp::Grad;
#include "steepest/unary_ops.def"
    default:
      return BinaryOp::Add;
  }
}

namespace elementwise {

#ifdef __CUDA_ARCH__
#define STEEPEST_EW_MATH(fn) ::fn
#else
#define STEEPEST_EW_MATH(fn) std::fn
#endif

// The default math policy.
struct Math {
  template <class T> STEEPEST_ELEMENTWISE static T exp(T x) { return STEEPEST_EW_MATH(exp)(x); }
  template <class T> STEEPEST_ELEMENTWISE static T log(T x) { return STEEPEST_EW_MATH(log)(x); }
  template <class T> STEEPEST_ELEMENTWISE static T log1p(T x) { return STEEPEST_EW_MATH(log1p)(x); }
  template <class T> STEEPEST_ELEMENTWISE static T tanh(T x) { return STEEPEST_EW_MATH(tanh)(x); }
  template <class T> STEEPEST_ELEMENTWISE static T erf(T x) { return STEEPEST_EW_MATH(erf)(x); }
  template <class T> STEEPEST_ELEMENTWISE static T sigmoid(T x) { return pointwise::sigmoid(x); }
};

// How much a formula costs an element, for the CPU's thread split: plain arithmetic,
// transcendental functions of M, or a libm call at every type (pow).
enum class Cost : uint8_t { Arithmetic, Transcendental, Libm };

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

template <class T>
STEEPEST_ELEMENTWISE T sign(T x) { return T((x > T(0)) - (x < T(0))); }

// ------------------------------------------------------------------------ unary: f(X, s)

template <class M = Math> struct Neg {
  static constexpr Cost cost = Cost::Arithmetic;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T x, T) const { return -x; }
};
template <class M = Math> struct Exp {
  static constexpr Cost cost = Cost::Transcendental;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T x, T) const { return M::exp(x); }
};
template <class M = Math> struct Log {
  static constexpr Cost cost = Cost::Transcendental;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T x, T) const { return M::log(x); }
};
template <class M = Math> struct Sqrt {
  static constexpr Cost cost = Cost::Arithmetic;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T x, T) const {
    return STEEPEST_EW_MATH(sqrt)(x);
  }
};
template <class M = Math> struct Abs {
  static constexpr Cost cost = Cost::Arithmetic;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T x, T) const { return x < T(0) ? -x : x; }
};
// NaN passes through (X < 0 is false for it), as in torch and NumPy.
template <class M = Math> struct Relu {
  static constexpr Cost cost = Cost::Arithmetic;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T x, T) const { return x < T(0) ? T(0) : x; }
};
template <class M = Math> struct Sigmoid {
  static constexpr Cost cost = Cost::Transcendental;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T x, T) const { return M::sigmoid(x); }
};
template <class M = Math> struct Tanh {
  static constexpr Cost cost = Cost::Transcendental;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T x, T) const { return M::tanh(x); }
};
// GELU(X) = X·Φ(X), Φ(X) = ½(1 + erf(X/√2))
template <class M = Math> struct Gelu {
  static constexpr Cost cost = Cost::Transcendental;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T x, T) const {
    return T(0.5) * x * (T(1) + M::erf(x * T(kInvSqrt2)));
  }
};
template <class M = Math> struct PowScalar {
  static constexpr Cost cost = Cost::Libm;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T x, T s) const {
    return STEEPEST_EW_MATH(pow)(x, s);
  }
};
template <class M = Math> struct MulScalar {
  static constexpr Cost cost = Cost::Arithmetic;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T x, T s) const { return x * s; }
};
template <class M = Math> struct AddScalar {
  static constexpr Cost cost = Cost::Arithmetic;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T x, T s) const { return x + s; }
};
template <class M = Math> struct Sign {
  static constexpr Cost cost = Cost::Arithmetic;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T x, T) const { return sign(x); }
};
// NaN stays NaN (a clamp must not hide a diverged value).
template <class M = Math> struct ClampMin {
  static constexpr Cost cost = Cost::Arithmetic;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T x, T lo) const { return x < lo ? lo : x; }
};

// ------------------------------------------------------------------- binary: f(a, b, s)

#define STEEPEST_EW_BINARY(Name, R, expression)                                   \
  template <class M = Math> struct Name {                                          \
    static constexpr Cost cost = Cost::Arithmetic;                                 \
    template <class T> STEEPEST_ELEMENTWISE R operator()(T a, T b, T) const { return expression; } \
  };
STEEPEST_EW_BINARY(Add, T, a + b)
STEEPEST_EW_BINARY(Sub, T, a - b)
STEEPEST_EW_BINARY(Mul, T, a * b)
STEEPEST_EW_BINARY(Div, T, a / b)
STEEPEST_EW_BINARY(Eq, bool, a == b)
STEEPEST_EW_BINARY(Ne, bool, a != b)
STEEPEST_EW_BINARY(Lt, bool, a < b)
STEEPEST_EW_BINARY(Le, bool, a <= b)
STEEPEST_EW_BINARY(Gt, bool, a > b)
STEEPEST_EW_BINARY(Ge, bool, a >= b)
#undef STEEPEST_EW_BINARY

// Binary cross-entropy on logits z against targets y, in the overflow-free form
// max(z, 0) − z·y + log(1 + e^(−|z|)).
template <class M = Math> struct BceWithLogits {
  static constexpr Cost cost = Cost::Transcendental;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T z, T y, T) const {
    const T abs_z = z < T(0) ? -z : z;
    return (z > T(0) ? z : T(0)) - z * y + M::log1p(M::exp(-abs_z));
  }
};
// d/dz of the above: σ(z) − y (the seed's a − y).
template <class M = Math> struct BceWithLogitsGrad {
  static constexpr Cost cost = Cost::Transcendental;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T z, T y, T) const {
    return M::sigmoid(z) - y;
  }
};

// ------------------------------------------- fused gradients: f(G, saved, s) = dL/dX
// The seed's activation table (激活函数): G ⊙ δ'(X), in one pass.

// (e^X)' = e^X = Y: G ⊙ Y
template <class M = Math> struct ExpGrad {
  static constexpr Cost cost = Cost::Arithmetic;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T g, T y, T) const { return g * y; }
};
// (log X)' = 1/X: G / X
template <class M = Math> struct LogGrad {
  static constexpr Cost cost = Cost::Arithmetic;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T g, T x, T) const { return g / x; }
};
// (√X)' = 1/(2√X): G / (2Y)
template <class M = Math> struct SqrtGrad {
  static constexpr Cost cost = Cost::Arithmetic;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T g, T y, T) const { return g / (T(2) * y); }
};
// |X|' = sign(X) (0 at 0): G ⊙ sign(X)
template <class M = Math> struct AbsGrad {
  static constexpr Cost cost = Cost::Arithmetic;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T g, T x, T) const { return g * sign(x); }
};
// ReLU: G ⊙ 1{Y>0}; Y > 0 exactly where X > 0. The gradient at 0 is 0, as in PyTorch.
template <class M = Math> struct ReluGrad {
  static constexpr Cost cost = Cost::Arithmetic;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T g, T y, T) const {
    return y > T(0) ? g : T(0);
  }
};
// Sigmoid: G ⊙ Y ⊙ (1 − Y)
template <class M = Math> struct SigmoidGrad {
  static constexpr Cost cost = Cost::Arithmetic;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T g, T y, T) const {
    return g * y * (T(1) - y);
  }
};
// Tanh: G ⊙ (1 − Y²)
template <class M = Math> struct TanhGrad {
  static constexpr Cost cost = Cost::Arithmetic;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T g, T y, T) const {
    return g * (T(1) - y * y);
  }
};
// GELU: G ⊙ (Φ(X) + X·φ(X)), φ(X) = e^(−X²/2)/√(2π)
template <class M = Math> struct GeluGrad {
  static constexpr Cost cost = Cost::Transcendental;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T g, T x, T) const {
    const T cdf = T(0.5) * (T(1) + M::erf(x * T(kInvSqrt2)));
    const T pdf = T(kInvSqrt2Pi) * M::exp(T(-0.5) * x * x);
    return g * (cdf + x * pdf);
  }
};
// Power X^k: G ⊙ k·X^(k−1); X⁰ is constant, so 0 for k = 0 even at X = 0.
template <class M = Math> struct PowScalarGrad {
  static constexpr Cost cost = Cost::Libm;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T g, T x, T k) const {
    return k == T(0) ? T(0) : g * k * STEEPEST_EW_MATH(pow)(x, k - T(1));
  }
};
// max(X, lo): clamped values get no gradient: G ⊙ 1{X ≥ lo}
template <class M = Math> struct ClampMinGrad {
  static constexpr Cost cost = Cost::Arithmetic;
  template <class T> STEEPEST_ELEMENTWISE T operator()(T g, T x, T lo) const {
    return x < lo ? T(0) : g;
  }
};

#undef STEEPEST_EW_MATH

// The type a binary formula stores for storage type S: bool for comparisons, else S.
template <class F, class S, class C>
using binary_result_t =
    std::conditional_t<std::is_same_v<decltype(F{}(C{}, C{}, C{})), bool>, bool, S>;

// fn(functor) with the functor of `op` under math policy M.
template <class M, class Fn>
void visit_unary(UnaryOp op, Fn&& fn) {
  switch (op) {
#define UNARY_OP(Name, Saves, Grad) \
  case UnaryOp::Name:               \
    fn(Name<M>{});                  \
    break;
#define UNARY_OP_NO_SAVE(Name) UNARY_OP(Name, Nothing, None)
#include "steepest/unary_ops.def"
  }
}

template <class M, class Fn>
void visit_binary(BinaryOp op, Fn&& fn) {
  switch (op) {
#define STEEPEST_CASE(Name) \
  case BinaryOp::Name:      \
    fn(Name<M>{});          \
    break;
    STEEPEST_BINARY_BASE_OPS(STEEPEST_CASE)
#define UNARY_OP(Name, Saves, Grad) STEEPEST_CASE(Grad)
#include "steepest/unary_ops.def"
#undef STEEPEST_CASE
  }
}

// The binary ops defined on integer storage T, exact: comparisons on every integer type
// and bool, add, sub and mul on the integers but bool (integer division by zero would be
// undefined behaviour). fn(functor); returns false for any other op.
template <class T, class Fn>
bool visit_integer_binary(BinaryOp op, Fn&& fn) {
  switch (op) {
    case BinaryOp::Eq: fn(Eq<>{}); return true;
    case BinaryOp::Ne: fn(Ne<>{}); return true;
    case BinaryOp::Lt: fn(Lt<>{}); return true;
    case BinaryOp::Le: fn(Le<>{}); return true;
    case BinaryOp::Gt: fn(Gt<>{}); return true;
    case BinaryOp::Ge: fn(Ge<>{}); return true;
    default: break;
  }
  if constexpr (!std::is_same_v<T, bool>) {
    switch (op) {
      case BinaryOp::Add: fn(Add<>{}); return true;
      case BinaryOp::Sub: fn(Sub<>{}); return true;
      case BinaryOp::Mul: fn(Mul<>{}); return true;
      default: break;
    }
  }
  return false;
}

// The dispatch of the unary and binary kernels, shared by the backends: fn(tag, functor,
// scalar) with tag a StorageTag (tag::type the storage type S, tag::compute the type C
// the functor runs in) and the scalar in C. Floating storage runs any op; integer and
// bool storage only the exact binary ops of visit_integer_binary.
template <class M, class Fn>
void dispatch_unary(UnaryOp op, DType dtype, double scalar, Fn&& fn) {
  dispatch_float_storage("unary", dtype, [&](auto tag) {
    using C = typename decltype(tag)::compute;
    visit_unary<M>(op, [&](auto f) { fn(tag, f, static_cast<C>(scalar)); });
  });
}

template <class M, class Fn>
void dispatch_binary(BinaryOp op, DType dtype, double scalar, Fn&& fn) {
  if (is_floating(dtype)) {
    dispatch_float_storage("binary", dtype, [&](auto tag) {
      using C = typename decltype(tag)::compute;
      visit_binary<M>(op, [&](auto f) { fn(tag, f, static_cast<C>(scalar)); });
    });
    return;
  }
  dispatch_all("binary", dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (!visit_integer_binary<T>(op, [&](auto f) { fn(StorageTag<T>{}, f, T{}); }))
      fail<TypeError>("binary", "this operation needs floating-point tensors, got ",
                      dtype_name(dtype));
  });
}

}  // namespace elementwise
}  // namespace steepest
