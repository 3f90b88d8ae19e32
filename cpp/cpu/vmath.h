// float32 exp, log, log1p, sigmoid, tanh and erf without branches or tables, so that the
// compiler vectorises the elementwise loops that call them (libm's scalar calls do not
// vectorise). Each reduces its argument to short intervals and evaluates minimax
// polynomials fitted for this file (Remez exchange on the relative error); where a
// function has two regions both are computed and one is selected. Measured over all
// 2^32 floats against float64 libm, with and without FMA contraction: every result
// within 1 ulp of the correctly rounded one.
// Specials follow C: NaN propagates, exp overflows to inf and underflows through the
// subnormals to 0, log(±0) = -inf, log(x < 0) = NaN, and tanh, erf and sigmoid saturate
// to exactly ±1, ±1 and 0 or 1.
// NOTE: the compensated sums (hi/lo pairs) need IEEE evaluation: no -ffast-math.
// isa_begin.h reads this header before it switches the level's instructions on: these
// functions are inlined into the shared formulas of steepest/elementwise_rules.h, which
// are compiled for the baseline CPU (a function may inline only what needs no more
// instructions than itself), and both are then inlined into the level's loops.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "isa_level.h"

// Forced inline, here and on the functors that call these: a loop vectorises only with
// the whole body in it, and in a unit as large as elementwise.cpp GCC's inliner otherwise
// stops at its growth limit and leaves calls (GELU's gradient stayed scalar: 16 ns an
// element instead of 0.8).
#define STEEPEST_VMATH_INLINE inline __attribute__((always_inline))

namespace steepest::cpu {
inline namespace STEEPEST_ISA_NS {
namespace vmath {

namespace detail {

STEEPEST_VMATH_INLINE uint32_t bits_of(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

STEEPEST_VMATH_INLINE float float_of(uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// c ? a : b as a bit blend. A ?: on floats is a branch until the optimiser turns it back
// into a select, and it may first move the computation of an operand under that branch;
// a floating-point operation under a condition may trap, so the loop then stays scalar.
STEEPEST_VMATH_INLINE float select(bool c, float a, float b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(c);
  return float_of((bits_of(a) & mask) | (bits_of(b) & ~mask));
}

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
// ln 2 split so that n·kLn2Hi is exact for |n| < 2^9: x − n·ln 2 then loses nothing to
// cancellation, with or without FMA.
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = -2.12194440e-4f;

// e^x = (hi + lo)·scale1·scale2, with |lo| < 0.1 and hi + lo within 2^-25.5 of e^x/2^n
// relative (a float: 2^-24). x = n·ln 2 + r with |r| <= ln2/2, r kept to twice float
// precision; e^r = 1 + r + r²·P(r), P of degree 4. 2^n comes as two normal factors
// 2^⌊n/2⌋ and 2^(n−⌊n/2⌋) so that results in the subnormal range are rounded once.
struct ExpParts {
  float hi, lo, scale1, scale2;
};

STEEPEST_VMATH_INLINE ExpParts exp_parts(float x) {
  // Beyond these bounds e^x is inf or rounds to 0 anyway; they keep n within
  // [-151, 129], where both factors of 2^n are normal. NaN fails both tests and stays.
  x = select(x > 89.0f, 89.0f, x);
  x = select(x < -104.0f, -104.0f, x);
  // Adding 1.5·2^23 rounds x·log2(e) to an integer n, held in the low mantissa bits.
  constexpr float kShift = 12582912.0f;
  const float t = x * 1.44269504f + kShift;
  const float n = t - kShift;
  const float r_hi = x - n * kLn2Hi;
  const float r = r_hi - n * kLn2Lo;
  const float r_lo = (r_hi - r) - n * kLn2Lo;  // what rounding r dropped
  float p = 0.00138144672f;
  p = p * r + 0.00836878084f;
  p = p * r + 0.0416683927f;
  p = p * r + 0.166665196f;
  p = p * r + 0.49999994f;
  ExpParts e;
  e.hi = 1.0f + r;
  e.lo = ((1.0f - e.hi) + r) + ((r * r) * p + r_lo);  // the first sum is exact
  // n + 256 as an unsigned number: no signed overflow, no shifts of negative values.
  const uint32_t biased = bits_of(t) + 256u - bits_of(kShift);
  const uint32_t half = biased >> 1;
  e.scale1 = float_of((half - 1u) << 23);
  e.scale2 = float_of((biased - half - 1u) << 23);
  return e;
}

}  // namespace detail

// e^x: inf above ≈ 88.72, subnormal below ≈ -87.34, 0 below ≈ -103.97.
STEEPEST_VMATH_INLINE float exp(float x) {
  const detail::ExpParts e = detail::exp_parts(x);
  return (e.hi + e.lo) * e.scale1 * e.scale2;
}

// Natural logarithm. x = 2^k·m with m in [√½, √2), log(m) = f − f²/2 + f³·P(f) with
// f = m − 1 (exact) and P of degree 7; subnormal x is scaled by 2^23 first.
STEEPEST_VMATH_INLINE float log(float x) {
  using namespace detail;
  const bool subnormal = x < 1.17549435e-38f;
  const float xs = select(subnormal, x * 8388608.0f, x);
  // Offsetting the bits by those of √½ (rounded down) makes the exponent field count
  // from √½ instead of 1, and leaves the mantissa of m in the low 23 bits.
  constexpr uint32_t kSqrtHalf = 0x3f3504f3u;
  const uint32_t u = bits_of(xs) + (0x3f800000u - kSqrtHalf);
  const float k =
      static_cast<float>(static_cast<int32_t>(u >> 23) - 127) - select(subnormal, 23.0f, 0.0f);
  const float f = float_of((u & 0x007fffffu) + kSqrtHalf) - 1.0f;
  float p = -0.0763451084f;
  p = p * f + 0.127615958f;
  p = p * f + -0.131601855f;
  p = p * f + 0.142017558f;
  p = p * f + -0.166233569f;
  p = p * f + 0.200012267f;
  p = p * f + -0.250008196f;
  p = p * f + 0.333333313f;
  float r = (f * f) * (f * p - 0.5f) + k * kLn2Lo;
  r = r + f;
  r = r + k * kLn2Hi;
  // log(+inf) = +inf and NaN stay themselves; log(±0) = -inf; log(x < 0) = NaN.
  float special = select(x < 0.0f, kNaN, x);
  special = select(x == 0.0f, -kInf, special);
  return select((x > 0.0f) & (x < kInf), r, special);
}

// log(1 + x). u = 1 + x is rounded; log(u) + (x − (u − 1))/u puts back the part of x the
// rounding dropped (u − 1 is exact), so that small x keeps full relative accuracy.
STEEPEST_VMATH_INLINE float log1p(float x) {
  using namespace detail;
  const float u = 1.0f + x;
  const float log_u = log(u);
  // The correction is 0/0 at x = -1 and inf − inf at x = inf, where log(u) is right.
  const float r = select((u == 0.0f) | (x == kInf), log_u, log_u + (x - (u - 1.0f)) / u);
  // Where u rounds to 1, log1p(x) rounds to x itself; this also keeps the sign of ±0.
  return select(u == 1.0f, x, r);
}

// 1/(1 + e^−x), as e^x/(1 + e^x) for x < 0: one exponential e = e^−|x| <= 1, which cannot
// overflow, and no 1 − small cancellation (for very negative x the result is e^x, down
// through the subnormals). e and 1 + e are kept to about twice float precision so that
// the quotient is rounded about once: a rounded e would cost up to 2.4 ulp where the
// result and e lie in different binades.
STEEPEST_VMATH_INLINE float sigmoid(float x) {
  using namespace detail;
  const ExpParts e = exp_parts(-std::fabs(x));
  const float hi = e.hi + e.lo;  // renormalised: lo below half an ulp of hi
  const float lo = (e.hi - hi) + e.lo;
  const float e_hi = hi * e.scale1 * e.scale2;
  const float e_lo = lo * e.scale1 * e.scale2;
  const float den = 1.0f + e_hi;
  const float den_lo = ((1.0f - den) + e_hi) + e_lo;
  const bool positive = x >= 0.0f;
  const float num = select(positive, 1.0f, e_hi);
  const float num_lo = select(positive, 0.0f, e_lo);
  // (num + num_lo)/(den + den_lo) to first order in the small parts; 1/den, needed to
  // a few bits only, is q for x >= 0 and 1 − q = 1/(1 + e) below.
  const float q = num / den;
  return q + (num_lo - q * den_lo) * select(positive, q, 1.0f - q);
}

// tanh, computed on |x| and given the sign of x. |x| < 0.625: |x| + |x|³·P(x²), P of
// degree 4 (x itself for tiny x, and tanh(±0) = ±0). Above: 1 − 2/(e^{2|x|} + 1), which
// loses under a bit to the subtraction and is exactly 1 from |x| ≈ 9.01 on.
STEEPEST_VMATH_INLINE float tanh(float x) {
  using namespace detail;
  const float a = std::fabs(x);
  const float x2 = x * x;
  float p = -0.00570498733f;
  p = p * x2 + 0.020639088f;
  p = p * x2 + -0.0537397154f;
  p = p * x2 + 0.133314416f;
  p = p * x2 + -0.333332807f;
  const float small = a + a * (x2 * p);
  const float large = 1.0f - 2.0f / (exp(2.0f * a) + 1.0f);
  return std::copysign(select(a < 0.625f, small, large), x);
}

// Error function. |x| < 1: x + x·P(x²), P of degree 6. Above: ±(1 − Q(|x| − 2.5)), Q of
// degree 15 fitted to erfc on [1, 4] (its error weighted by 1/erf). erfc(4) is below
// 2^-25, so |x| is clamped at 4, where the result rounds to exactly ±1.
STEEPEST_VMATH_INLINE float erf(float x) {
  using namespace detail;
  const float a = std::fabs(x);
  const float x2 = x * x;
  float p = 7.85386146e-05f;
  p = p * x2 + -0.000801019371f;
  p = p * x2 + 0.00518832775f;
  p = p * x2 + -0.0268538129f;
  p = p * x2 + 0.112835854f;
  p = p * x2 + -0.37612626f;
  p = p * x2 + 0.128379166f;
  const float small = x + x * p;
  const float t = select(a > 4.0f, 4.0f, a) - 2.5f;  // NaN stays
  float q = 3.49587793e-07f;
  q = q * t + -8.88240777e-07f;
  q = q * t + -3.44939758e-06f;
  q = q * t + 1.5705129e-05f;
  q = q * t + -7.79707989e-06f;
  q = q * t + -8.10592173e-05f;
  q = q * t + 0.000253486738f;
  q = q * t + -0.000258789485f;
  q = q * t + -0.000544584473f;
  q = q * t + 0.00279759825f;
  q = q * t + -0.00611656718f;
  q = q * t + 0.00862258952f;
  q = q * t + -0.00835021492f;
  q = q * t + 0.00544569083f;
  q = q * t + -0.00217827829f;
  q = q * t + 0.000406952313f;
  const float large = std::copysign(1.0f - q, x);
  return select(a < 1.0f, small, large);
}

}  // namespace vmath

// The transcendental functions the CPU kernels call: float (and float16/bfloat16,
// computed in float) takes the branch-free code above, which vectorises; double keeps
// libm, whose accuracy the float64 gradient checks rely on.
namespace math {
STEEPEST_VMATH_INLINE float exp(float x) { return vmath::exp(x); }
STEEPEST_VMATH_INLINE double exp(double x) { return std::exp(x); }
STEEPEST_VMATH_INLINE float log(float x) { return vmath::log(x); }
STEEPEST_VMATH_INLINE double log(double x) { return std::log(x); }
STEEPEST_VMATH_INLINE float log1p(float x) { return vmath::log1p(x); }
STEEPEST_VMATH_INLINE double log1p(double x) { return std::log1p(x); }
STEEPEST_VMATH_INLINE float tanh(float x) { return vmath::tanh(x); }
STEEPEST_VMATH_INLINE double tanh(double x) { return std::tanh(x); }
STEEPEST_VMATH_INLINE float erf(float x) { return vmath::erf(x); }
STEEPEST_VMATH_INLINE double erf(double x) { return std::erf(x); }
STEEPEST_VMATH_INLINE float sigmoid(float x) { return vmath::sigmoid(x); }
STEEPEST_VMATH_INLINE double sigmoid(double x) {
  if (x >= 0.0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}
}  // namespace math

// The math policy the CPU passes to the shared elementwise formulas
// (steepest/elementwise_rules.h).
struct VMath {
  template <class T> STEEPEST_VMATH_INLINE static T exp(T x) { return math::exp(x); }
  template <class T> STEEPEST_VMATH_INLINE static T log(T x) { return math::log(x); }
  template <class T> STEEPEST_VMATH_INLINE static T log1p(T x) { return math::log1p(x); }
  template <class T> STEEPEST_VMATH_INLINE static T tanh(T x) { return math::tanh(x); }
  template <class T> STEEPEST_VMATH_INLINE static T erf(T x) { return math::erf(x); }
  template <class T> STEEPEST_VMATH_INLINE static T sigmoid(T x) { return math::sigmoid(x); }
};

}  // namespace STEEPEST_ISA_NS
}  // namespace steepest::cpu
