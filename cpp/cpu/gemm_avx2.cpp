// AVX2+FMA GEMM micro-kernels (6×16 float32, 6×8 float64: 12 ymm accumulators) with
// edge kernels for the last 1-5 rows of C, and the transposing pack done as in-register
// 8×8 / 4×4 transposes, for CPUs without AVX-512. Built with -mavx2 -mfma
// (CMakeLists.txt) and called only when the CPU reports both at run time (gemm.cpp).
#include <immintrin.h>

#include <utility>

#include "gemm_kernels.h"
#include "gemm_microkernel.h"

namespace steepest::cpu::gemm_detail {
namespace {

struct F32x8 {
  using T = float;
  using V = __m256;
  static constexpr int kLanes = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const T* p) { return _mm256_loadu_ps(p); }
  static void store(T* p, V v) { _mm256_storeu_ps(p, v); }
  static V broadcast(T x) { return _mm256_set1_ps(x); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
};

struct F64x4 {
  using T = double;
  using V = __m256d;
  static constexpr int kLanes = 4;
  static V zero() { return _mm256_setzero_pd(); }
  static V load(const T* p) { return _mm256_loadu_pd(p); }
  static void store(T* p, V v) { _mm256_storeu_pd(p, v); }
  static V broadcast(T x) { return _mm256_set1_pd(x); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V mul(V a, V b) { return _mm256_mul_pd(a, b); }
};

// r[i] (lane k) -> r[k] (lane i) for an 8×8 block of floats.
void transpose8(__m256 r[8]) {
  __m256 t[8], u[8];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[4q + j] holds column j (low 128 bits) and j + 4 (high) of rows 4q..4q+3.
#pragma GCC unroll 2
  for (int q = 0; q < 2; ++q) {
    u[4 * q] = _mm256_shuffle_ps(t[4 * q], t[4 * q + 2], 0x44);
    u[4 * q + 1] = _mm256_shuffle_ps(t[4 * q], t[4 * q + 2], 0xEE);
    u[4 * q + 2] = _mm256_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0x44);
    u[4 * q + 3] = _mm256_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0xEE);
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x20);
    r[j + 4] = _mm256_permute2f128_ps(u[j], u[4 + j], 0x31);
  }
}

// r[i] (lane k) -> r[k] (lane i) for a 4×4 block of doubles.
void transpose4(__m256d r[4]) {
  const __m256d t0 = _mm256_unpacklo_pd(r[0], r[1]), t1 = _mm256_unpackhi_pd(r[0], r[1]);
  const __m256d t2 = _mm256_unpacklo_pd(r[2], r[3]), t3 = _mm256_unpackhi_pd(r[2], r[3]);
  r[0] = _mm256_permute2f128_pd(t0, t2, 0x20);
  r[1] = _mm256_permute2f128_pd(t1, t3, 0x20);
  r[2] = _mm256_permute2f128_pd(t0, t2, 0x31);
  r[3] = _mm256_permute2f128_pd(t1, t3, 0x31);
}

// Lane masks for maskload: kLaneMask + 8 - n enables the first n of 8 lanes,
// kLaneMask64 + 4 - n the first n of 4.
alignas(32) constexpr int32_t kLaneMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                               0,  0,  0,  0,  0,  0,  0,  0};
alignas(32) constexpr int64_t kLaneMask64[8] = {-1, -1, -1, -1, 0, 0, 0, 0};

struct TransposeF32 {
  using T = float;
  using V = __m256;
  using Mask = __m256i;
  static constexpr int kLanes = 8;
  static Mask mask(int64_t n) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneMask + 8 - n));
  }
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const T* p) { return _mm256_loadu_ps(p); }
  static V load(Mask m, const T* p) { return _mm256_maskload_ps(p, m); }
  static void store(T* p, V v) { _mm256_storeu_ps(p, v); }
  // The first n < 8 lanes.
  static void store(T* p, int64_t n, V v) {
    __m128 part = _mm256_castps256_ps128(v);
    if (n & 4) {
      _mm_storeu_ps(p, part);
      p += 4;
      part = _mm256_extractf128_ps(v, 1);
    }
    if (n & 2) {
      _mm_storel_pi(reinterpret_cast<__m64*>(p), part);
      p += 2;
      part = _mm_movehl_ps(part, part);
    }
    if (n & 1) _mm_store_ss(p, part);
  }
  static void transpose(V* r) { transpose8(r); }
};

struct TransposeF64 {
  using T = double;
  using V = __m256d;
  using Mask = __m256i;
  static constexpr int kLanes = 4;
  static Mask mask(int64_t n) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneMask64 + 4 - n));
  }
  static V zero() { return _mm256_setzero_pd(); }
  static V load(const T* p) { return _mm256_loadu_pd(p); }
  static V load(Mask m, const T* p) { return _mm256_maskload_pd(p, m); }
  static void store(T* p, V v) { _mm256_storeu_pd(p, v); }
  // The first n < 4 lanes.
  static void store(T* p, int64_t n, V v) {
    __m128d part = _mm256_castpd256_pd128(v);
    if (n & 2) {
      _mm_storeu_pd(p, part);
      p += 2;
      part = _mm256_extractf128_pd(v, 1);
    }
    if (n & 1) _mm_store_sd(p, part);
  }
  static void transpose(V* r) { transpose4(r); }
};

// Masked stores are slow on AMD cores (microcoded), so partial rows are stored in
// pieces; masked loads are fast and read only the last, short block of a row.
template <class P>
void pack_transposed(const typename P::T* src, int64_t ld, int64_t rows, int64_t width,
                     int64_t kc, typename P::T* dst, int64_t dst_stride) {
  constexpr int L = P::kLanes;
  typename P::V r[L];
  for (int64_t k0 = 0; k0 < kc; k0 += L) {
    const int64_t depth = kc - k0 < L ? kc - k0 : L;
    const typename P::Mask in = P::mask(depth);
    // The rows are far apart in memory, too many streams for the hardware prefetcher.
    if (k0 + 8 * L < kc)
      for (int i = 0; i < rows; ++i) __builtin_prefetch(src + i * ld + k0 + 8 * L);
#pragma GCC unroll 8
    for (int i = 0; i < L; ++i)
      r[i] = i >= rows        ? P::zero()
             : depth == L     ? P::load(src + i * ld + k0)
                              : P::load(in, src + i * ld + k0);
    P::transpose(r);
    for (int64_t k = 0; k < depth; ++k) {
      if (width == L)
        P::store(dst + (k0 + k) * dst_stride, r[k]);
      else
        P::store(dst + (k0 + k) * dst_stride, width, r[k]);
    }
  }
}

}  // namespace

void pack_transposed_avx2(const float* src, int64_t ld, int64_t rows, int64_t width,
                          int64_t kc, float* dst, int64_t dst_stride) {
  pack_transposed<TransposeF32>(src, ld, rows, width, kc, dst, dst_stride);
}

void pack_transposed_avx2(const double* src, int64_t ld, int64_t rows, int64_t width,
                          int64_t kc, double* dst, int64_t dst_stride) {
  pack_transposed<TransposeF64>(src, ld, rows, width, kc, dst, dst_stride);
}

// The edge kernels read the packed A sliver at its full height kMr.
template <class S, class T, int AS, int NV, int... R>
void micro_kernel_rows(int rows, int64_t kc, const T* a, const T* b, int64_t ldb, T* c,
                       int64_t ldc, T alpha, T beta, std::integer_sequence<int, R...>) {
  ((rows == R + 1 ? micro_kernel<S, R + 1, NV, AS>(kc, a, b, ldb, c, ldc, alpha, beta)
                  : void()),
   ...);
}

void micro_kernel_avx2_rows(int rows, int64_t kc, const float* a, const float* b, int64_t ldb,
                            float* c, int64_t ldc, float alpha, float beta) {
  using S = Shape<float, Isa::Avx2>;
  micro_kernel_rows<F32x8, float, S::kMr, S::kNr / 8>(
      rows, kc, a, b, ldb, c, ldc, alpha, beta, std::make_integer_sequence<int, S::kMr - 1>{});
}

void micro_kernel_avx2_rows(int rows, int64_t kc, const double* a, const double* b,
                            int64_t ldb, double* c, int64_t ldc, double alpha, double beta) {
  using S = Shape<double, Isa::Avx2>;
  micro_kernel_rows<F64x4, double, S::kMr, S::kNr / 4>(
      rows, kc, a, b, ldb, c, ldc, alpha, beta, std::make_integer_sequence<int, S::kMr - 1>{});
}

void micro_kernel_avx2(int64_t kc, const float* a, const float* b, int64_t ldb, float* c,
                       int64_t ldc, float alpha, float beta) {
  using S = Shape<float, Isa::Avx2>;
  micro_kernel<F32x8, S::kMr, S::kNr / 8>(kc, a, b, ldb, c, ldc, alpha, beta);
}

void micro_kernel_avx2(int64_t kc, const double* a, const double* b, int64_t ldb, double* c,
                       int64_t ldc, double alpha, double beta) {
  using S = Shape<double, Isa::Avx2>;
  micro_kernel<F64x4, S::kMr, S::kNr / 4>(kc, a, b, ldb, c, ldc, alpha, beta);
}

}  // namespace steepest::cpu::gemm_detail
