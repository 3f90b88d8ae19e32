// GEMM throughput of steepest::cpu::gemm in float32: square sizes 64…2048, then the
// products of one training step of the digits MLP (batch 32, 64→256→256→10): forward
// Y = X·W, backward dW = Xᵀ·G (trans_a) and dX = G·Wᵀ (trans_b), as cpp/ops calls them;
// then square float16 and bfloat16 products (float32 accumulation: bfloat16 through the
// AVX512_BF16 kernel where the CPU has it, float16 widened while packing).
// The last argument of every benchmark is the OpenMP thread count.
#include <random>
#include <vector>

#include "bench_util.h"
#include "steepest/half.h"
#include "steepest/kernels.h"

namespace steepest::bench {
namespace {

template <class T>
struct Operands {
  std::vector<T> a, b, c;
};

template <class T>
Operands<T> random_operands(int64_t m, int64_t n, int64_t k) {
  std::mt19937 gen(42);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  Operands<T> o{std::vector<T>(static_cast<size_t>(m * k)),
                std::vector<T>(static_cast<size_t>(k * n)),
                std::vector<T>(static_cast<size_t>(m * n))};
  for (T& x : o.a) x = T(dist(gen));
  for (T& x : o.b) x = T(dist(gen));
  return o;
}

// C (m×n) = op(A) · op(B) with op(A) m×k, op(B) k×n, both stored densely.
template <class T = float>
void run_gemm(benchmark::State& state, int64_t m, int64_t n, int64_t k, bool trans_a,
              bool trans_b) {
  Operands<T> o = random_operands<T>(m, n, k);
  GemmArgs args;
  args.dtype = DTypeOf<T>::value;
  args.trans_a = trans_a;
  args.trans_b = trans_b;
  args.m = m;
  args.n = n;
  args.k = k;
  args.a = o.a.data();
  args.lda = trans_a ? m : k;
  args.b = o.b.data();
  args.ldb = trans_b ? k : n;
  args.c = o.c.data();
  args.ldc = n;
  for (auto _ : state) {
    cpu::gemm(args);
    benchmark::DoNotOptimize(o.c.data());
    benchmark::ClobberMemory();
  }
  report_flops(state, 2.0 * double(m) * double(n) * double(k));
}

void Gemm(benchmark::State& state) {
  use_threads(state, 1);
  const int64_t n = state.range(0);
  run_gemm(state, n, n, n, false, false);
}
BENCHMARK(Gemm)
    ->ArgsProduct({{64, 128, 256, 512, 1024, 2048}, {1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

void GemmShape(benchmark::State& state, int64_t m, int64_t n, int64_t k, bool trans_a,
               bool trans_b) {
  use_threads(state, 0);
  run_gemm(state, m, n, k, trans_a, trans_b);
}
#define STEEPEST_GEMM_SHAPE(name, m, n, k, ta, tb) \
  BENCHMARK_CAPTURE(GemmShape, name, m, n, k, ta, tb) \
      ->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMicrosecond)
// Forward: Y (32×out) = X (32×in) · W (in×out).
STEEPEST_GEMM_SHAPE(fc1_fwd_32x64x256, 32, 256, 64, false, false);
STEEPEST_GEMM_SHAPE(fc2_fwd_32x256x256, 32, 256, 256, false, false);
STEEPEST_GEMM_SHAPE(fc3_fwd_32x256x10, 32, 10, 256, false, false);
// dW (in×out) = Xᵀ · G: X stored 32×in.
STEEPEST_GEMM_SHAPE(fc1_dW_64x32x256, 64, 256, 32, true, false);
STEEPEST_GEMM_SHAPE(fc2_dW_256x32x256, 256, 256, 32, true, false);
STEEPEST_GEMM_SHAPE(fc3_dW_256x32x10, 256, 10, 32, true, false);
// dX (32×in) = G · Wᵀ: W stored in×out.
STEEPEST_GEMM_SHAPE(fc2_dX_32x256x256, 32, 256, 256, false, true);
STEEPEST_GEMM_SHAPE(fc3_dX_32x10x256, 32, 256, 10, false, true);
// Tall-skinny training products at width 1024 (benchmarks/gemm_vs_numpy.py).
STEEPEST_GEMM_SHAPE(tall_32x1024x1024, 32, 1024, 1024, false, false);
STEEPEST_GEMM_SHAPE(tall_256x1024x1024, 256, 1024, 1024, false, false);
#undef STEEPEST_GEMM_SHAPE

template <class T>
void GemmHalf(benchmark::State& state) {
  use_threads(state, 1);
  const int64_t n = state.range(0);
  run_gemm<T>(state, n, n, n, false, false);
}
BENCHMARK(GemmHalf<BFloat16>)
    ->Name("GemmBfloat16")
    ->ArgsProduct({{256, 1024, 2048}, {1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(GemmHalf<Half>)
    ->Name("GemmFloat16")
    ->ArgsProduct({{256, 1024}, {1, 2}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace steepest::bench
