// AVX-512F GEMM micro-kernels (8×32 float32, 8×16 float64: 16 zmm accumulators) and
// the transposing pack (row-major A, transposed B) done as in-register 16×16 / 8×8
// transposes, which is several times faster than element-wise copies.
// Built with -mavx512f -mfma (CMakeLists.txt) and called only when the CPU reports
// AVX-512F at run time (gemm.cpp).
// NOTE: GCC 12 reports -Wmaybe-uninitialized inside its own AVX-512 shuffle intrinsics
// (GCC PR105593, the `_mm512_undefined_*` pass-through); the pragma must precede the header.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "gemm_kernels.h"
#include "gemm_microkernel.h"

namespace steepest::cpu::gemm_detail {
namespace {

struct F32x16 {
  using T = float;
  using V = __m512;
  static constexpr int kLanes = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const T* p) { return _mm512_loadu_ps(p); }
  static void store(T* p, V v) { _mm512_storeu_ps(p, v); }
  static V broadcast(T x) { return _mm512_set1_ps(x); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
};

struct F64x8 {
  using T = double;
  using V = __m512d;
  static constexpr int kLanes = 8;
  static V zero() { return _mm512_setzero_pd(); }
  static V load(const T* p) { return _mm512_loadu_pd(p); }
  static void store(T* p, V v) { _mm512_storeu_pd(p, v); }
  static V broadcast(T x) { return _mm512_set1_pd(x); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V mul(V a, V b) { return _mm512_mul_pd(a, b); }
};

// r[i] (lane k) -> r[k] (lane i) for a 16×16 block of floats.
void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[4q + j] holds, for rows 4q..4q+3, columns j, j+4, j+8, j+12 (one per 128-bit lane).
#pragma GCC unroll 4
  for (int q = 0; q < 4; ++q) {
    const __m512d t0 = _mm512_castps_pd(t[4 * q]), t1 = _mm512_castps_pd(t[4 * q + 1]);
    const __m512d t2 = _mm512_castps_pd(t[4 * q + 2]), t3 = _mm512_castps_pd(t[4 * q + 3]);
    u[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
    u[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
    u[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
    u[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0x88);
    const __m512 v1 = _mm512_shuffle_f32x4(u[j], u[4 + j], 0xDD);
    const __m512 v2 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0x88);
    const __m512 v3 = _mm512_shuffle_f32x4(u[8 + j], u[12 + j], 0xDD);
    r[j] = _mm512_shuffle_f32x4(v0, v2, 0x88);
    r[j + 8] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
    r[j + 4] = _mm512_shuffle_f32x4(v1, v3, 0x88);
    r[j + 12] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
  }
}

// r[i] (lane k) -> r[k] (lane i) for an 8×8 block of doubles.
void transpose8(__m512d r[8]) {
  __m512d t[8];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm512_unpacklo_pd(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_pd(r[2 * i], r[2 * i + 1]);
  }
  // s[q][j] holds columns j and j+4 of rows 4q..4q+3.
  __m512d s[2][4];
#pragma GCC unroll 2
  for (int q = 0; q < 2; ++q) {
    s[q][0] = _mm512_shuffle_f64x2(t[4 * q], t[4 * q + 2], 0x88);
    s[q][2] = _mm512_shuffle_f64x2(t[4 * q], t[4 * q + 2], 0xDD);
    s[q][1] = _mm512_shuffle_f64x2(t[4 * q + 1], t[4 * q + 3], 0x88);
    s[q][3] = _mm512_shuffle_f64x2(t[4 * q + 1], t[4 * q + 3], 0xDD);
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm512_shuffle_f64x2(s[0][j], s[1][j], 0x88);
    r[j + 4] = _mm512_shuffle_f64x2(s[0][j], s[1][j], 0xDD);
  }
}

struct TransposeF32 {
  using T = float;
  using V = __m512;
  using Mask = __mmask16;
  static constexpr int kLanes = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(Mask m, const T* p) { return _mm512_maskz_loadu_ps(m, p); }
  static void store(T* p, Mask m, V v) { _mm512_mask_storeu_ps(p, m, v); }
  static void transpose(V* r) { transpose16(r); }
};

struct TransposeF64 {
  using T = double;
  using V = __m512d;
  using Mask = __mmask8;
  static constexpr int kLanes = 8;
  static V zero() { return _mm512_setzero_pd(); }
  static V load(Mask m, const T* p) { return _mm512_maskz_loadu_pd(m, p); }
  static void store(T* p, Mask m, V v) { _mm512_mask_storeu_pd(p, m, v); }
  static void transpose(V* r) { transpose8(r); }
};

template <class P>
void pack_transposed(const typename P::T* src, int64_t ld, int64_t rows, int64_t width,
                     int64_t kc, typename P::T* dst, int64_t dst_stride) {
  constexpr int L = P::kLanes;
  const typename P::Mask lanes = static_cast<typename P::Mask>((1u << width) - 1);
  typename P::V r[L];
  for (int64_t k0 = 0; k0 < kc; k0 += L) {
    const int64_t depth = kc - k0 < L ? kc - k0 : L;
    const typename P::Mask in = static_cast<typename P::Mask>((1u << depth) - 1);
    // The rows are far apart in memory, too many streams for the hardware prefetcher.
    for (int i = 0; i < rows; ++i) __builtin_prefetch(src + i * ld + k0 + 4 * L);
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i) r[i] = i < rows ? P::load(in, src + i * ld + k0) : P::zero();
    P::transpose(r);
    for (int64_t k = 0; k < depth; ++k) P::store(dst + (k0 + k) * dst_stride, lanes, r[k]);
  }
}

}  // namespace

void pack_transposed_avx512(const float* src, int64_t ld, int64_t rows, int64_t width,
                            int64_t kc, float* dst, int64_t dst_stride) {
  pack_transposed<TransposeF32>(src, ld, rows, width, kc, dst, dst_stride);
}

void pack_transposed_avx512(const double* src, int64_t ld, int64_t rows, int64_t width,
                            int64_t kc, double* dst, int64_t dst_stride) {
  pack_transposed<TransposeF64>(src, ld, rows, width, kc, dst, dst_stride);
}

void micro_kernel_avx512(int64_t kc, const float* a, const float* b, int64_t ldb, float* c,
                         int64_t ldc, float alpha, float beta) {
  using S = Shape<float, Isa::Avx512>;
  micro_kernel<F32x16, S::kMr, S::kNr / 16>(kc, a, b, ldb, c, ldc, alpha, beta);
}

void micro_kernel_avx512(int64_t kc, const double* a, const double* b, int64_t ldb, double* c,
                         int64_t ldc, double alpha, double beta) {
  using S = Shape<double, Isa::Avx512>;
  micro_kernel<F64x8, S::kMr, S::kNr / 8>(kc, a, b, ldb, c, ldc, alpha, beta);
}

}  // namespace steepest::cpu::gemm_detail
