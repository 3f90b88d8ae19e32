// 16-bit floating-point storage types for mixed precision (the seed's 混合精度训练：使用
// FP16/BF16进行前向和反向传播…同时保留FP32的权重主副本): Half (IEEE binary16) and
// BFloat16 hold only the 16 bits; kernels load them into float, compute there and round
// the result back. Every conversion here is exact software code with round-to-nearest-
// even, the reference for the F16C bulk path of the CPU kernels (cpp/cpu/loops.h).
// Plain C++17 without intrinsics, so nvcc's host pass can read it too.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace steepest {

namespace half_detail {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Rounds a double to float towards the odd neighbour when inexact. Rounding that result
// to nearest-even in 16 bits equals rounding the double directly (float keeps more than
// two extra bits), whereas double -> float -> 16 bits with two nearest-even steps can
// round a value twice in the same direction.
inline float round_to_odd(double d) {
  float f = static_cast<float>(d);
  if (std::isnan(d) || static_cast<double>(f) == d) return f;
  uint32_t u = float_bits(f);
  if (u & 1u) return f;
  // f is the even neighbour; the odd one lies one step towards d.
  bool towards_larger_magnitude = std::fabs(d) > std::fabs(static_cast<double>(f));
  return bits_float(towards_larger_magnitude ? u + 1 : u - 1);
}

}  // namespace half_detail

// IEEE binary16 <-> binary32. Every half value is exact in float.
inline float half_bits_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu;
  if (exponent == 0x1F) return half_detail::bits_float(sign | 0x7F800000u | (mantissa << 13));
  if (exponent != 0)
    return half_detail::bits_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
  float subnormal = static_cast<float>(mantissa) * 0x1p-24f;  // m·2⁻²⁴, exact
  return sign ? -subnormal : subnormal;
}

// Rounds to nearest, ties to even; overflow gives ±inf, NaN stays a (quiet) NaN.
inline uint16_t float_to_half_bits(float f) {
  uint32_t x = half_detail::float_bits(f);
  auto sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  uint32_t magnitude = x & 0x7FFFFFFFu;
  if (magnitude >= 0x7F800000u)  // inf, NaN
    return sign | (magnitude > 0x7F800000u ? 0x7E00u | ((magnitude >> 13) & 0x3FFu) : 0x7C00u);
  if (magnitude >= 0x477FF000u) return sign | 0x7C00u;  // ≥ 65520 rounds past 65504
  if (magnitude >= 0x38800000u) {                       // normal: ≥ 2⁻¹⁴
    uint32_t h = (magnitude >> 13) - (112u << 10);
    uint32_t rest = magnitude & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry moves the exponent
    return static_cast<uint16_t>(sign | h);
  }
  if (magnitude <= 0x33000000u) return sign;  // ≤ 2⁻²⁵: ties to the even 0
  // Subnormal: m = |f|/2⁻²⁴ rounded; the carry out of m = 0x3FF is the smallest normal.
  uint32_t mantissa = (magnitude & 0x7FFFFFu) | 0x800000u;
  uint32_t shift = 126 - (magnitude >> 23);
  uint32_t h = mantissa >> shift;
  uint32_t rest = mantissa & ((1u << shift) - 1), halfway = 1u << (shift - 1);
  if (rest > halfway || (rest == halfway && (h & 1u))) ++h;
  return static_cast<uint16_t>(sign | h);
}

// bfloat16 is the upper half of a float: widening is a shift.
inline float bfloat16_bits_to_float(uint16_t b) {
  return half_detail::bits_float(static_cast<uint32_t>(b) << 16);
}

// Rounds to nearest, ties to even (as ml_dtypes and PyTorch); NaN stays a quiet NaN.
inline uint16_t float_to_bfloat16_bits(float f) {
  uint32_t u = half_detail::float_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// Storage-only types: no arithmetic operators, so 16-bit arithmetic cannot happen by
// accident; reading gives a float, writing rounds.
struct Half {
  uint16_t bits;
  Half() = default;
  explicit Half(float f) : bits(float_to_half_bits(f)) {}
  explicit Half(double d) : bits(float_to_half_bits(half_detail::round_to_odd(d))) {}
  operator float() const { return half_bits_to_float(bits); }
};

struct BFloat16 {
  uint16_t bits;
  BFloat16() = default;
  explicit BFloat16(float f) : bits(float_to_bfloat16_bits(f)) {}
  explicit BFloat16(double d) : bits(float_to_bfloat16_bits(half_detail::round_to_odd(d))) {}
  operator float() const { return bfloat16_bits_to_float(bits); }
};

static_assert(sizeof(Half) == 2 && sizeof(BFloat16) == 2, "16-bit storage types");

template <class T>
inline constexpr bool kIsHalf = std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>;

// The type kernels compute in for a storage type: float for the 16-bit types.
template <class T>
struct ComputeTypeOf {
  using type = T;
};
template <>
struct ComputeTypeOf<Half> {
  using type = float;
};
template <>
struct ComputeTypeOf<BFloat16> {
  using type = float;
};

}  // namespace steepest
