// Elementwise CPU kernels: the formulas of steepest/elementwise_rules.h (with vmath.h's
// vectorising float math) over one generic strided loop. The inner loops are specialised
// for the layouts that dominate training (all contiguous, and a broadcast operand with
// stride 0 as in a bias add) so the compiler vectorises them. float16/bfloat16 run the
// same float functors on converted blocks.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "loops.h"
#include "steepest/kernels.h"

namespace steepest::cpu {
inline namespace STEEPEST_ISA_NS {
namespace {

// Elements per thread worth a parallel region (one costs 2-5 µs, loops.h). libm calls
// (the float64 transcendentals, pow) cost 3-26 ns an element here, so they split long
// before the arithmetic ones; the vectorised float code of vmath.h costs 0.2-0.8 ns.
constexpr int64_t kLibmGrain = 2048;
constexpr int64_t kVmathGrain = 8192;
template <class F, class C>
constexpr int64_t grain_of() {
  if constexpr (F::cost == elementwise::Cost::Libm ||
                (F::cost == elementwise::Cost::Transcendental && std::is_same_v<C, double>))
    return kLibmGrain;
  else if constexpr (F::cost == elementwise::Cost::Transcendental)
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
  elementwise::dispatch_unary<VMath>(op, x.dtype(), scalar, [&](auto tag, auto f, auto s) {
    unary_loop<typename decltype(tag)::type>(x, out, s, f);
  });
}

void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out, double scalar) {
  elementwise::dispatch_binary<VMath>(op, a.dtype(), scalar, [&](auto tag, auto f, auto s) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    binary_loop<S, C, elementwise::binary_result_t<decltype(f), S, C>>(a, b, out, s, f);
  });
}

}  // namespace STEEPEST_ISA_NS
}  // namespace steepest::cpu
