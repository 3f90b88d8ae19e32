// Dropout masks and random fills: the counter-based generator of steepest/random.h, so
// that results depend neither on the thread count nor on the backend (cuda/random.cu).
#include "loops.h"
#include "steepest/kernels.h"

namespace steepest::cpu {
inline namespace STEEPEST_ISA_NS {

void dropout_mask(Tensor& mask, double rate, uint64_t seed) {
  dispatch_float_storage("dropout", mask.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    S* m = mask.data<S>();
    const S keep_scale = S(1.0 / (1.0 - rate)), zero = S(0.0);
    parallel_for(mask.numel(), kParallelGrain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        m[i] = counter_rng::dropped(seed, static_cast<uint64_t>(i), rate) ? zero : keep_scale;
    });
  });
}

void random_fill(Tensor& out, RandomKind kind, uint64_t seed) {
  dispatch_float_storage("random", out.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    S* p = out.data<S>();
    const double below_one = counter_rng::below_one<S>();
    const bool normal = kind == RandomKind::Normal;
    parallel_for(out.numel(), kParallelGrain / 8, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const double v =
            counter_rng::random_value(normal, below_one, seed, static_cast<uint64_t>(i));
        p[i] = S(v);
      }
    });
  });
}

}  // namespace STEEPEST_ISA_NS
}  // namespace steepest::cpu
