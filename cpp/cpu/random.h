// Counter-based random numbers: element i of a draw with key `seed` is a hash of
// (seed, i), so results do not depend on the thread count or the backend.
#pragma once

#include <cmath>
#include <cstdint>

#include "isa_level.h"

namespace steepest::cpu {
inline namespace STEEPEST_ISA_NS {

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform in [0, 1) with 53 random bits.
inline double uniform_at(uint64_t seed, uint64_t index) {
  return static_cast<double>(splitmix64(seed ^ splitmix64(index)) >> 11) * 0x1.0p-53;
}

// Standard normal by Box-Muller over two uniforms of the same counter.
inline double normal_at(uint64_t seed, uint64_t index) {
  double u1 = uniform_at(seed, 2 * index);
  double u2 = uniform_at(seed, 2 * index + 1);
  return std::sqrt(-2.0 * std::log1p(-u1)) * std::cos(6.283185307179586476925 * u2);
}

}  // namespace STEEPEST_ISA_NS
}  // namespace steepest::cpu
