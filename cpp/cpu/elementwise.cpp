// Elementwise CPU kernels: one small functor per operation, one generic strided loop.
// The inner loops are specialised for the layouts that dominate training (all
// contiguous, and a broadcast operand with stride 0 as in a bias add) so the compiler
// vectorises them. float16/bfloat16 run the same float functors on converted blocks.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "loops.h"
#include "steepest/kernels.h"
#include "vmath.h"

namespace steepest::cpu {
inline namespace STEEPEST_ISA_NS {
namespace {

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

// Unary functors: f(x, scalar).
struct Neg { template <class T> T operator()(T x, T) const { return -x; } };
struct Exp {
  template <class T> STEEPEST_VMATH_INLINE T operator()(T x, T) const { return math::exp(x); }
};
struct Log {
  template <class T> STEEPEST_VMATH_INLINE T operator()(T x, T) const { return math::log(x); }
};
struct Sqrt { template <class T> T operator()(T x, T) const { return std::sqrt(x); } };
struct Abs { template <class T> T operator()(T x, T) const { return x < T(0) ? -x : x; } };
// NOTE: the gradient of relu at 0 is taken as 0 (ReluGrad uses x > 0), as in PyTorch.
// NaN passes through (x < 0 is false for it), as in torch and NumPy.
struct Relu { template <class T> T operator()(T x, T) const { return x < T(0) ? T(0) : x; } };
struct Sigmoid {
  template <class T> STEEPEST_VMATH_INLINE T operator()(T x, T) const { return math::sigmoid(x); }
};
struct Tanh {
  template <class T> STEEPEST_VMATH_INLINE T operator()(T x, T) const { return math::tanh(x); }
};
struct Gelu {
  template <class T> STEEPEST_VMATH_INLINE T operator()(T x, T) const {
    return T(0.5) * x * (T(1) + math::erf(x * T(kInvSqrt2)));
  }
};
struct PowScalar { template <class T> T operator()(T x, T s) const { return std::pow(x, s); } };
struct MulScalar { template <class T> T operator()(T x, T s) const { return x * s; } };
struct AddScalar { template <class T> T operator()(T x, T s) const { return x + s; } };
struct Sign { template <class T> T operator()(T x, T) const { return T((x > T(0)) - (x < T(0))); } };
// NaN stays NaN (a clamp must not hide a diverged value).
struct ClampMin { template <class T> T operator()(T x, T lo) const { return x < lo ? lo : x; } };

// Binary functors: f(a, b, scalar). The *Grad functors take (G, saved) and return the
// input gradient of the seed's activation table.
struct Add { template <class T> T operator()(T a, T b, T) const { return a + b; } };
struct Sub { template <class T> T operator()(T a, T b, T) const { return a - b; } };
struct Mul { template <class T> T operator()(T a, T b, T) const { return a * b; } };
struct Div { template <class T> T operator()(T a, T b, T) const { return a / b; } };
struct Eq { template <class T> bool operator()(T a, T b, T) const { return a == b; } };
struct Ne { template <class T> bool operator()(T a, T b, T) const { return a != b; } };
struct Lt { template <class T> bool operator()(T a, T b, T) const { return a < b; } };
struct Le { template <class T> bool operator()(T a, T b, T) const { return a <= b; } };
struct Gt { template <class T> bool operator()(T a, T b, T) const { return a > b; } };
struct Ge { template <class T> bool operator()(T a, T b, T) const { return a >= b; } };
// ReLU: G ⊙ 1{X>0}
struct ReluGrad { template <class T> T operator()(T g, T x, T) const { return x > T(0) ? g : T(0); } };
// Sigmoid: G ⊙ Z ⊙ (1 − Z), from the output Z
struct SigmoidGrad { template <class T> T operator()(T g, T z, T) const { return g * z * (T(1) - z); } };
// Tanh: G ⊙ (1 − Z²), from the output Z
struct TanhGrad { template <class T> T operator()(T g, T z, T) const { return g * (T(1) - z * z); } };
// GELU(x) = x Φ(x): G ⊙ (Φ(x) + x φ(x))
struct GeluGrad {
  template <class T> STEEPEST_VMATH_INLINE T operator()(T g, T x, T) const {
    T cdf = T(0.5) * (T(1) + math::erf(x * T(kInvSqrt2)));
    T pdf = T(kInvSqrt2Pi) * math::exp(T(-0.5) * x * x);
    return g * (cdf + x * pdf);
  }
};
// Power: G ⊙ k·Y^(k−1)
struct PowScalarGrad {
  template <class T> T operator()(T g, T x, T k) const { return g * k * std::pow(x, k - T(1)); }
};
// sqrt: G / (2·Z), from the output Z
struct SqrtGrad { template <class T> T operator()(T g, T z, T) const { return g / (T(2) * z); } };
// Clamped values get no gradient.
struct ClampMinGrad { template <class T> T operator()(T g, T x, T lo) const { return x < lo ? T(0) : g; } };
// Binary cross-entropy on logits z against targets y, in the overflow-free form
// max(z, 0) − z·y + log(1 + e^(−|z|)).
struct BceWithLogits {
  template <class T> STEEPEST_VMATH_INLINE T operator()(T z, T y, T) const {
    T abs_z = z < T(0) ? -z : z;
    return (z > T(0) ? z : T(0)) - z * y + math::log1p(math::exp(-abs_z));
  }
};
// d/dz of the above: sigmoid(z) − y (the seed's a − y).
struct BceWithLogitsGrad {
  template <class T> STEEPEST_VMATH_INLINE T operator()(T z, T y, T) const {
    return math::sigmoid(z) - y;
  }
};

// Elements per thread worth a parallel region (one costs 2-5 µs, loops.h). libm calls
// (the float64 transcendentals, pow) cost 3-26 ns an element here, so they split long
// before the arithmetic ones; the vectorised float code of vmath.h costs 0.2-0.8 ns.
constexpr int64_t kLibmGrain = 2048;
constexpr int64_t kVmathGrain = 8192;
template <class F>
constexpr bool kTranscendental =
    std::is_same_v<F, Exp> || std::is_same_v<F, Log> || std::is_same_v<F, Sigmoid> ||
    std::is_same_v<F, Tanh> || std::is_same_v<F, Gelu> || std::is_same_v<F, GeluGrad> ||
    std::is_same_v<F, BceWithLogits> || std::is_same_v<F, BceWithLogitsGrad>;
template <class F>
constexpr bool kCallsPow = std::is_same_v<F, PowScalar> || std::is_same_v<F, PowScalarGrad>;
template <class F, class C>
constexpr int64_t grain_of() {
  if constexpr (kCallsPow<F> || (kTranscendental<F> && std::is_same_v<C, double>))
    return kLibmGrain;
  else if constexpr (kTranscendental<F>)
    return kVmathGrain;
  else
    return kParallelGrain;
}

// out = f(x) over storage S computed in C. 16-bit storage goes through float buffers
// of kConvertBlock values (loops.h), so the functor is the float32 one and vectorises.
template <class S, class C, class F>
void unary_loop(const Tensor& x, Tensor& out, C scalar, F f) {
  const S* in = x.data<S>();
  S* o = out.data<S>();
  StridedLoop<2> loop(out.shape(), {&out.strides(), &x.strides()});
  loop.run([&](const std::array<int64_t, 2>& off, int64_t n, const std::array<int64_t, 2>& st) {
    S* po = o + off[0];
    const S* pi = in + off[1];
    if constexpr (std::is_same_v<S, C>) {
      if (st[0] == 1 && st[1] == 1) {
        for (int64_t i = 0; i < n; ++i) po[i] = f(pi[i], scalar);
      } else {
        for (int64_t i = 0; i < n; ++i) po[i * st[0]] = f(pi[i * st[1]], scalar);
      }
    } else if (st[0] == 1 && st[1] == 1) {
      C buffer[kConvertBlock];
      for (int64_t i0 = 0; i0 < n; i0 += kConvertBlock) {
        const int64_t m = std::min(kConvertBlock, n - i0);
        load_compute(pi + i0, buffer, m);
        for (int64_t i = 0; i < m; ++i) buffer[i] = f(buffer[i], scalar);
        store_compute(buffer, po + i0, m);
      }
    } else {
      for (int64_t i = 0; i < n; ++i) po[i * st[0]] = S(f(C(pi[i * st[1]]), scalar));
    }
  }, grain_of<F, C>());
}

// out = f(a, b) over storage S computed in C; R is S, or bool for comparisons.
template <class S, class C, class R, class F>
void binary_loop(const Tensor& a, const Tensor& b, Tensor& out, C scalar, F f) {
  const S* pa0 = a.data<S>();
  const S* pb0 = b.data<S>();
  R* po0 = out.data<R>();
  StridedLoop<3> loop(out.shape(), {&out.strides(), &a.strides(), &b.strides()});
  loop.run([&](const std::array<int64_t, 3>& off, int64_t n, const std::array<int64_t, 3>& st) {
    R* po = po0 + off[0];
    const S* pa = pa0 + off[1];
    const S* pb = pb0 + off[2];
    if constexpr (std::is_same_v<S, C>) {
      if (st[0] == 1 && st[1] == 1 && st[2] == 1) {
        for (int64_t i = 0; i < n; ++i) po[i] = f(pa[i], pb[i], scalar);
      } else if (st[0] == 1 && st[1] == 1 && st[2] == 0) {
        const C bv = *pb;
        for (int64_t i = 0; i < n; ++i) po[i] = f(pa[i], bv, scalar);
      } else if (st[0] == 1 && st[1] == 0 && st[2] == 1) {
        const C av = *pa;
        for (int64_t i = 0; i < n; ++i) po[i] = f(av, pb[i], scalar);
      } else {
        for (int64_t i = 0; i < n; ++i) po[i * st[0]] = f(pa[i * st[1]], pb[i * st[2]], scalar);
      }
    } else if (st[0] == 1 && (st[1] == 1 || st[1] == 0) && (st[2] == 1 || st[2] == 0)) {
      // Contiguous runs, a broadcast operand read once.
      C ab[kConvertBlock], bb[kConvertBlock];
      using Out = std::conditional_t<std::is_same_v<R, bool>, bool, C>;
      Out ob[kConvertBlock];
      const C av = C(*pa), bv = C(*pb);
      for (int64_t i0 = 0; i0 < n; i0 += kConvertBlock) {
        const int64_t m = std::min(kConvertBlock, n - i0);
        if (st[1]) load_compute(pa + i0, ab, m);
        if (st[2]) load_compute(pb + i0, bb, m);
        for (int64_t i = 0; i < m; ++i) ob[i] = f(st[1] ? ab[i] : av, st[2] ? bb[i] : bv, scalar);
        if constexpr (std::is_same_v<R, bool>)
          std::copy(ob, ob + m, po + i0);
        else
          store_compute(ob, po + i0, m);
      }
    } else {
      for (int64_t i = 0; i < n; ++i) {
        auto v = f(C(pa[i * st[1]]), C(pb[i * st[2]]), scalar);
        if constexpr (std::is_same_v<R, bool>)
          po[i * st[0]] = v;
        else
          po[i * st[0]] = S(v);
      }
    }
  }, grain_of<F, C>());
}

// One value converted between any two storage types. Into 16 bits, from a double (or
// an integer through double) in one rounding step: exact like numpy's astype.
template <class Dst, class Src>
Dst convert(Src v) {
  if constexpr (kIsHalf<Dst>) {
    if constexpr (std::is_same_v<Src, float> || kIsHalf<Src>)
      return Dst(static_cast<float>(v));
    else
      return Dst(static_cast<double>(v));
  } else {
    return static_cast<Dst>(v);
  }
}

// A transposing copy: dst runs along its last collapsed dimension, src along the one
// before. Element by element, one side would touch a new cache line at every step; in
// 16×16 tiles both sides reuse each line they load. Larger tiles lose to cache-set
// conflicts when the strides are powers of two (measured: 32×32 was 6x slower).
// Returns false for other layouts.
template <class Src, class Dst>
bool copy_transposed(const StridedLoop<2>& loop, const Src* ps, Dst* pd) {
  const int nd = loop.ndim();
  if (loop.numel() == 0 || nd < 2) return false;
  const int r = nd - 2, c = nd - 1;
  if (loop.stride(0, c) != 1 || loop.stride(1, r) != 1 || loop.stride(1, c) == 1) return false;
  constexpr int64_t kTile = 16;
  const int64_t rows = loop.extent(r), cols = loop.extent(c);
  const int64_t row_tiles = (rows + kTile - 1) / kTile, col_tiles = (cols + kTile - 1) / kTile;
  int64_t outer = 1;
  for (int d = 0; d < r; ++d) outer *= loop.extent(d);
  const int64_t dst_row = loop.stride(0, r), src_col = loop.stride(1, c);
  const int64_t grain = std::max<int64_t>(1, kParallelGrain / (kTile * kTile));
  parallel_for(outer * row_tiles * col_tiles, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      int64_t rest = t / (row_tiles * col_tiles), dst_off = 0, src_off = 0;
      for (int d = r - 1; d >= 0; --d) {
        const int64_t index = rest % loop.extent(d);
        rest /= loop.extent(d);
        dst_off += index * loop.stride(0, d);
        src_off += index * loop.stride(1, d);
      }
      const int64_t i0 = (t / col_tiles) % row_tiles * kTile;
      const int64_t j0 = t % col_tiles * kTile;
      const int64_t i1 = std::min(rows, i0 + kTile), j1 = std::min(cols, j0 + kTile);
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = j0; j < j1; ++j)
          pd[dst_off + i * dst_row + j] = convert<Dst>(ps[src_off + i + j * src_col]);
    }
  });
  return true;
}

template <class Src, class Dst>
void copy_loop(const Tensor& src, Tensor& dst) {
  const Src* ps0 = src.data<Src>();
  Dst* pd0 = dst.data<Dst>();
  // float <-> 16-bit runs take the bulk conversions (F16C for float16).
  constexpr bool kBulk = (std::is_same_v<Src, float> && kIsHalf<Dst>) ||
                         (std::is_same_v<Dst, float> && kIsHalf<Src>);
  StridedLoop<2> loop(dst.shape(), {&dst.strides(), &src.strides()});
  if (copy_transposed(loop, ps0, pd0)) return;
  loop.run([&](const std::array<int64_t, 2>& off, int64_t n, const std::array<int64_t, 2>& st) {
    Dst* pd = pd0 + off[0];
    const Src* ps = ps0 + off[1];
    if (st[0] == 1 && st[1] == 1) {
      if constexpr (kBulk && std::is_same_v<Src, float>)
        store_compute(ps, pd, n);
      else if constexpr (kBulk)
        load_compute(ps, pd, n);
      else
        for (int64_t i = 0; i < n; ++i) pd[i] = convert<Dst>(ps[i]);
    } else {
      for (int64_t i = 0; i < n; ++i) pd[i * st[0]] = convert<Dst>(ps[i * st[1]]);
    }
  });
}

}  // namespace

void copy(const Tensor& src, Tensor& dst) {
  dispatch_all_storage("copy", src.dtype(), [&](auto src_tag) {
    using Src = typename decltype(src_tag)::type;
    dispatch_all_storage("copy", dst.dtype(), [&](auto dst_tag) {
      using Dst = typename decltype(dst_tag)::type;
      copy_loop<Src, Dst>(src, dst);
    });
  });
}

void fill(Tensor& dst, double value) {
  dispatch_all_storage("fill", dst.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* p = dst.data<T>();
    const T v = convert<T>(value);
    parallel_for(dst.numel(), kParallelGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) p[i] = v;
    });
  });
}

void unary(UnaryOp op, const Tensor& x, Tensor& out, double scalar) {
  dispatch_float_storage("unary", x.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    const C s = static_cast<C>(scalar);
    switch (op) {
#define STEEPEST_CASE(name)                 \
  case UnaryOp::name:                       \
    unary_loop<S, C>(x, out, s, name{}); \
    break;
      STEEPEST_UNARY_OPS(STEEPEST_CASE)
#undef STEEPEST_CASE
    }
  });
}

void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out, double scalar) {
  if (is_floating(a.dtype())) {
    dispatch_float_storage("binary", a.dtype(), [&](auto tag) {
      using S = typename decltype(tag)::type;
      using C = typename decltype(tag)::compute;
      const C s = static_cast<C>(scalar);
      switch (op) {
#define STEEPEST_CASE(name)                                                                  \
  case BinaryOp::name: {                                                                     \
    using R = std::conditional_t<std::is_same_v<decltype(name{}(C{}, C{}, C{})), bool>, bool, S>; \
    binary_loop<S, C, R>(a, b, out, s, name{});                                              \
    break;                                                                                   \
  }
        STEEPEST_BINARY_OPS(STEEPEST_CASE)
#undef STEEPEST_CASE
      }
    });
    return;
  }
  // Integer and bool tensors: exact arithmetic and comparisons only (integer division by
  // zero would be undefined behaviour).
  dispatch_all("binary", a.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    switch (op) {
#define STEEPEST_CASE(name, R)                     \
  case BinaryOp::name:                             \
    binary_loop<T, T, R>(a, b, out, T{}, name{}); \
    return;
      STEEPEST_CASE(Eq, bool)
      STEEPEST_CASE(Ne, bool)
      STEEPEST_CASE(Lt, bool)
      STEEPEST_CASE(Le, bool)
      STEEPEST_CASE(Gt, bool)
      STEEPEST_CASE(Ge, bool)
#undef STEEPEST_CASE
      default:
        break;
    }
    if constexpr (!std::is_same_v<T, bool>) {
      switch (op) {
        case BinaryOp::Add:
          binary_loop<T, T, T>(a, b, out, T{}, Add{});
          return;
        case BinaryOp::Sub:
          binary_loop<T, T, T>(a, b, out, T{}, Sub{});
          return;
        case BinaryOp::Mul:
          binary_loop<T, T, T>(a, b, out, T{}, Mul{});
          return;
        default:
          break;
      }
    }
    fail<TypeError>("binary", "this operation needs floating-point tensors, got ",
                    dtype_name(a.dtype()));
  });
}

}  // namespace STEEPEST_ISA_NS
}  // namespace steepest::cpu
