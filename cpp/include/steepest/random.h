// Counter-based random numbers, written once for the CPU kernels (cpp/cpu/random.cpp) and
// the CUDA kernels (cuda/random.cu): element i of a draw with key `seed` is a hash of
// (seed, i), so results do not depend on the thread count or the backend.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "steepest/kernels.h"

namespace steepest::counter_rng {

STEEPEST_HOST_DEVICE inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform in [0, 1) with 53 random bits.
STEEPEST_HOST_DEVICE inline double uniform_at(uint64_t seed, uint64_t index) {
  return static_cast<double>(splitmix64(seed ^ splitmix64(index)) >> 11) * 0x1.0p-53;
}

// Standard normal by Box-Muller over two uniforms of the same counter.
// NOTE: CUDA's log1p and cos may differ from glibc's in the last bit of the double, which
// survives rounding to float only in rare ties.
STEEPEST_HOST_DEVICE inline double normal_at(uint64_t seed, uint64_t index) {
  const double u1 = uniform_at(seed, 2 * index);
  const double u2 = uniform_at(seed, 2 * index + 1);
#ifdef __CUDA_ARCH__
  return ::sqrt(-2.0 * ::log1p(-u1)) * ::cos(6.283185307179586476925 * u2);
#else
  return std::sqrt(-2.0 * std::log1p(-u1)) * std::cos(6.283185307179586476925 * u2);
#endif
}

// Rounded to S, a uniform draw above the largest S below 1 would become 1 (in float32
// about one draw in 2^25): uniform draws are clamped to that value (1 for double) so
// that the range stays [0, 1).
template <class S>
constexpr double below_one() {
  if constexpr (std::is_same_v<S, float>)
    return 1.0 - 0x1p-24;
  else if constexpr (std::is_same_v<S, Half>)
    return 1.0 - 0x1p-11;
  else if constexpr (std::is_same_v<S, BFloat16>)
    return 1.0 - 0x1p-8;
  else
    return 1.0;
}

// Element `index` of a random fill: standard normal, or uniform clamped to below_one.
STEEPEST_HOST_DEVICE inline double random_value(bool normal, double below_one, uint64_t seed,
                                                uint64_t index) {
  if (normal) return normal_at(seed, index);
  const double u = uniform_at(seed, index);
  return below_one < u ? below_one : u;
}

// Whether dropout drops element `index`.
STEEPEST_HOST_DEVICE inline bool dropped(uint64_t seed, uint64_t index, double rate) {
  return uniform_at(seed, index) < rate;
}

}  // namespace steepest::counter_rng
