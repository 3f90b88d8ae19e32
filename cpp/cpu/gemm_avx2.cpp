// AVX2+FMA GEMM micro-kernels (6×16 float32, 6×8 float64: 12 ymm accumulators), for
// CPUs without AVX-512. Built with -mavx2 -mfma (CMakeLists.txt) and called only when
// the CPU reports both at run time (gemm.cpp).
#include <immintrin.h>

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

}  // namespace

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
