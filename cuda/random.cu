// Dropout masks and random fills on the GPU: the counter-based generator of
// steepest/random.h, so that the GPU draws the CPU's numbers (cpp/cpu/random.cpp).
#include "common.cuh"
#include "steepest/random.h"

namespace steepest::cuda {
namespace {

// keep_scale and zero come rounded from the host, as the CPU rounds them.
template <class S>
__global__ void dropout_kernel(S* mask, int64_t n, double rate, S keep_scale, S zero,
                               uint64_t seed) {
  STEEPEST_GRID_STRIDE(i, n)
  mask[i] = counter_rng::dropped(seed, static_cast<uint64_t>(i), rate) ? zero : keep_scale;
}

template <class S>
__global__ void random_kernel(S* out, int64_t n, bool normal, double below_one, uint64_t seed) {
  STEEPEST_GRID_STRIDE(i, n) {
    out[i] = to_storage<S>(
        counter_rng::random_value(normal, below_one, seed, static_cast<uint64_t>(i)));
  }
}

}  // namespace

void dropout_mask(Tensor& mask, double rate, uint64_t seed) {
  const int64_t n = mask.numel();
  if (n == 0) return;
  DeviceGuard guard(mask.device());
  dispatch_float_storage("dropout", mask.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    dropout_kernel<<<blocks_for(n), kThreads, 0, guard.stream()>>>(
        mask.data<S>(), n, rate, static_cast<S>(1.0 / (1.0 - rate)), static_cast<S>(0.0), seed);
    STEEPEST_CUDA_CHECK_LAUNCH();
  });
}

void random_fill(Tensor& out, RandomKind kind, uint64_t seed) {
  const int64_t n = out.numel();
  if (n == 0) return;
  DeviceGuard guard(out.device());
  dispatch_float_storage("random", out.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    random_kernel<<<blocks_for(n), kThreads, 0, guard.stream()>>>(
        out.data<S>(), n, kind == RandomKind::Normal, counter_rng::below_one<S>(), seed);
    STEEPEST_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace steepest::cuda
