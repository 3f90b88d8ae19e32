// A few engine ops checked against plain loops: CI builds it with the cross-compiled
// engine for aarch64 and runs it under qemu-aarch64 (.ci/run), so the kernels of a
// CPU other than x86 run, not only compile.
#include <cmath>
#include <cstdio>

#include "steepest/kernels.h"
#include "steepest/ops.h"

using steepest::DType;
using steepest::Tensor;

int main() {
  const int64_t m = 37, k = 53, n = 29;
  Tensor a = Tensor::empty({m, k}, DType::Float32), b = Tensor::empty({k, n}, DType::Float32);
  for (int64_t i = 0; i < m * k; ++i) a.data<float>()[i] = std::sin(0.1f * i);
  for (int64_t i = 0; i < k * n; ++i) b.data<float>()[i] = std::cos(0.07f * i);
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  const Tensor c = steepest::ops::matmul(a, b), s = steepest::ops::softmax(a);
  const Tensor e = steepest::ops::astype(
      steepest::ops::astype(steepest::ops::exp(a), DType::Float16), DType::Float32);
  const float* product = c.data<float>();
  const float* softmax = s.data<float>();
  const float* widened = e.data<float>();
  // Worst errors: absolute for the GEMM (|values| < k) and softmax, relative for exp
  // rounded to float16 (half an ulp is 2^-11).
  double gemm_error = 0, softmax_error = 0, exp_error = 0;
  for (int64_t i = 0; i < m; ++i) {
    double row_max = -INFINITY, row_sum = 0;
    for (int64_t p = 0; p < k; ++p) row_max = std::fmax(row_max, pa[i * k + p]);
    for (int64_t p = 0; p < k; ++p) row_sum += std::exp(pa[i * k + p] - row_max);
    for (int64_t p = 0; p < k; ++p) {
      const double x = pa[i * k + p];
      softmax_error = std::fmax(softmax_error,
                                std::fabs(softmax[i * k + p] - std::exp(x - row_max) / row_sum));
      exp_error = std::fmax(exp_error, std::fabs(widened[i * k + p] / std::exp(x) - 1));
    }
    for (int64_t j = 0; j < n; ++j) {
      double ref = 0;
      for (int64_t p = 0; p < k; ++p) ref += double(pa[i * k + p]) * pb[p * n + j];
      gemm_error = std::fmax(gemm_error, std::fabs(product[i * n + j] - ref));
    }
  }
  std::printf("cpu_isa %s: gemm %.2g, softmax %.2g, float16 exp %.2g\n",
              steepest::cpu::cpu_isa_name(), gemm_error, softmax_error, exp_error);
  return gemm_error < 1e-4 && softmax_error < 1e-6 && exp_error < 4.9e-4 ? 0 : 1;
}
