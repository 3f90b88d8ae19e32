// AVX-512F GEMM micro-kernels (8×32 float32, 8×16 float64: 16 zmm accumulators) and
// the transposing pack (row-major A, transposed B) done as in-register 16×16 / 8×8
// transposes, which is several times faster than element-wise copies; and the bfloat16
// kernel and packs for CPUs with AVX512_BF16 (8×32, float32 accumulators).
// Built with -mavx512f -mfma (CMakeLists.txt; the bfloat16 functions add their own
// target attribute) and called only when the CPU reports the features at run time
// (gemm.cpp).
// NOTE: GCC 12 reports -Wmaybe-uninitialized (-Wuninitialized where inlined into a
// function with its own target attribute) inside its own AVX-512 shuffle intrinsics
// (GCC PR105593, the `_mm512_undefined_*` pass-through); the pragmas must precede the header.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <chrono>

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

// --- bfloat16 pairs (AVX512_BF16) ------------------------------------------------------
// VDPBF16PS multiplies the two bfloat16 halves of each 32-bit lane of two registers and
// adds both products to the float32 lane of an accumulator: per instruction, two steps of
// k for 16 columns. So both operands are packed as k-pairs: element (k, i) of a sliver of
// width w sits at [(k/2 · w + i) · 2 + k%2], with a zero partner for an odd depth.

#define STEEPEST_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

// The pairs of rows 2p and 2p+1 of a row-major block, interleaved column by column.
alignas(64) constexpr uint16_t kInterleaveLow[32] = {
    0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
    8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
alignas(64) constexpr uint16_t kInterleaveHigh[32] = {
    16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
    24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};

inline __mmask32 low_bits32(int64_t n) {
  return n >= 32 ? ~__mmask32{0} : static_cast<__mmask32>((uint32_t{1} << n) - 1);
}

}  // namespace

STEEPEST_BF16_TARGET void pack_pairs_across_rows_avx512(const uint16_t* src, int64_t ld,
                                                        int64_t cols, int64_t width, int64_t kc,
                                                        uint16_t* dst) {
  const __m512i low = _mm512_load_si512(kInterleaveLow);
  const __m512i high = _mm512_load_si512(kInterleaveHigh);
  for (int64_t k = 0; k < kc; k += 2, dst += 2 * width) {
    const uint16_t* row0 = src + k * ld;
    const bool has_partner = k + 1 < kc;
    for (int64_t i0 = 0; i0 < width; i0 += 32) {
      const __mmask32 valid = low_bits32(cols - i0 < 0 ? 0 : cols - i0);
      const __m512i v0 = _mm512_maskz_loadu_epi16(valid, row0 + i0);
      const __m512i v1 = has_partner ? _mm512_maskz_loadu_epi16(valid, row0 + ld + i0)
                                     : _mm512_setzero_si512();
      uint16_t* out = dst + 2 * i0;
      const int64_t columns = width - i0 < 32 ? width - i0 : 32;
      const __m512i first = _mm512_permutex2var_epi16(v0, low, v1);
      if (columns == 32) {
        _mm512_storeu_si512(out, first);
        _mm512_storeu_si512(out + 32, _mm512_permutex2var_epi16(v0, high, v1));
      } else {  // at most 16 columns: the first register holds them
        _mm512_mask_storeu_epi16(out, low_bits32(2 * columns), first);
      }
    }
  }
}

STEEPEST_BF16_TARGET void pack_pairs_along_rows_avx512(const uint16_t* src, int64_t ld,
                                                       int64_t rows, int64_t width, int64_t kc,
                                                       uint16_t* dst, int64_t dst_stride) {
  const __mmask16 lanes = static_cast<__mmask16>((1u << width) - 1);
  __m512 r[16];
  for (int64_t k0 = 0; k0 < kc; k0 += 32) {
    const int64_t depth = kc - k0 < 32 ? kc - k0 : 32;
    const __mmask32 in = low_bits32(depth);
    for (int i = 0; i < rows; ++i) __builtin_prefetch(src + i * ld + k0 + 128);
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i)
      r[i] = i < rows ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi16(in, src + i * ld + k0))
                      : _mm512_setzero_ps();
    // Each 32-bit lane is one k-pair, so the pair-wise transpose is a float transpose.
    transpose16(r);
    const int64_t pairs = (depth + 1) / 2;
    for (int64_t p = 0; p < pairs; ++p)
      _mm512_mask_storeu_epi32(dst + (k0 / 2 + p) * dst_stride * 2, lanes,
                               _mm512_castps_si512(r[p]));
  }
}

namespace {

// The rate probe: kChains independent accumulators, so each loop runs at its
// instruction's throughput rather than its latency; the empty asm makes an operand opaque
// so the loop is neither folded nor hoisted.
constexpr int kChains = 16;
constexpr int64_t kProbeSteps = 2048;

STEEPEST_BF16_TARGET float dot_chains() {
  __m512 acc[kChains];
  for (__m512& a : acc) a = _mm512_setzero_ps();
  __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80);
  const __m512bh y = (__m512bh)_mm512_setzero_si512();
  for (int64_t s = 0; s < kProbeSteps; ++s) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_dpbf16_ps(acc[c], x, y);
    __asm__ volatile("" : "+v"(x));
  }
  for (int c = 1; c < kChains; ++c) acc[0] = _mm512_add_ps(acc[0], acc[c]);
  return _mm512_reduce_add_ps(acc[0]);
}

float fma_chains() {
  __m512 acc[kChains];
  for (__m512& a : acc) a = _mm512_setzero_ps();
  __m512 x = _mm512_set1_ps(1.0f);
  const __m512 y = _mm512_setzero_ps();
  for (int64_t s = 0; s < kProbeSteps; ++s) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(x, y, acc[c]);
    __asm__ volatile("" : "+v"(x));
  }
  for (int c = 1; c < kChains; ++c) acc[0] = _mm512_add_ps(acc[0], acc[c]);
  return _mm512_reduce_add_ps(acc[0]);
}

// Shortest of several interleaved runs: the first ones also wake the 512-bit units.
template <class Loop>
double fastest_seconds(Loop loop, volatile float& sink) {
  double best = 1e30;
  for (int trial = 0; trial < 5; ++trial) {
    const auto start = std::chrono::steady_clock::now();
    sink = sink + loop();
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    best = std::min(best, elapsed.count());
  }
  return best;
}

}  // namespace

// A dot instruction does two products a lane, an FMA one. The 1.25 margin keeps the
// float32 kernel where the two are about even: the pair kernel would gain nothing there.
bool bf16_dot_outpaces_fma() {
  volatile float sink = 0.0f;
  const double dot = fastest_seconds(dot_chains, sink);
  const double fma = fastest_seconds(fma_chains, sink);
  return 2.0 / dot > 1.25 / fma;
}

STEEPEST_BF16_TARGET void micro_kernel_avx512_bf16(int64_t kc, const uint16_t* a,
                                                   const uint16_t* b, float* c, int64_t ldc,
                                                   float alpha, float beta) {
  constexpr int kMr = Shape<float, Isa::Avx512Bf16>::kMr;
  __m512 acc[kMr][2];
#pragma GCC unroll 8
  for (int i = 0; i < kMr; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
#pragma GCC unroll 8
  for (int i = 0; i < kMr; ++i) {
    __builtin_prefetch(c + i * ldc, 1);
    __builtin_prefetch(c + i * ldc + 31, 1);
  }
  const int64_t pairs = (kc + 1) / 2;
#pragma GCC unroll 2
  for (int64_t p = 0; p < pairs; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + 32);
#pragma GCC unroll 8
    for (int i = 0; i < kMr; ++i) {
      uint32_t pair;
      __builtin_memcpy(&pair, a + 2 * i, sizeof pair);
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
      acc[i][0] = _mm512_dpbf16_ps(acc[i][0], av, b0);
      acc[i][1] = _mm512_dpbf16_ps(acc[i][1], av, b1);
    }
    a += 2 * kMr;
    b += 64;
  }
  const __m512 va = _mm512_set1_ps(alpha);
#pragma GCC unroll 8
  for (int i = 0; i < kMr; ++i)
#pragma GCC unroll 2
    for (int j = 0; j < 2; ++j) {
      float* out = c + i * ldc + 16 * j;
      const __m512 scaled = _mm512_mul_ps(acc[i][j], va);
      _mm512_storeu_ps(out, beta == 0.0f ? scaled
                                         : _mm512_fmadd_ps(_mm512_loadu_ps(out),
                                                           _mm512_set1_ps(beta), scaled));
    }
}

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
