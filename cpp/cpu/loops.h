// Generic loops for CPU kernels: an N-operand strided iterator over collapsed
// dimensions (steepest/collapse.h) that hands the innermost run to a callback, a
// parallel-for that only starts OpenMP threads when the work is large enough to pay for
// them, and the bulk 16-bit <-> float conversions the kernels of float16/bfloat16 use.
#pragma once

#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "isa_level.h"
#include "steepest/collapse.h"
#include "steepest/common.h"
#include "steepest/half.h"

#if STEEPEST_ISA_F16C
#include <immintrin.h>
#endif

namespace steepest::cpu {
inline namespace STEEPEST_ISA_NS {

// --- 16-bit floats ---------------------------------------------------------------------
// Kernels of float16/bfloat16 convert runs of up to kConvertBlock values into a float
// buffer, compute there with the float code, and round the results back: the math is
// the float32 kernel's, only loads and stores differ.
inline constexpr int64_t kConvertBlock = 256;

#if STEEPEST_ISA_F16C
// F16C converts 8 values per instruction with round-to-nearest-even, bit-identical to
// half.h. Levels without it (isa_level.h) take the software path. bfloat16 has no such
// path: AVX512_BF16's rounding flushes subnormals, and the shifts and adds of the
// software path vectorise.
inline void f16c_half_to_float(const uint16_t* src, float* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = half_bits_to_float(src[i]);
}

inline void f16c_float_to_half(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
  for (; i < n; ++i) dst[i] = float_to_half_bits(src[i]);
}
#endif

// Widens n values to the compute type (a plain copy for float and double).
template <class S, class C>
inline void load_compute(const S* src, C* dst, int64_t n) {
  if constexpr (std::is_same_v<S, Half>) {
#if STEEPEST_ISA_F16C
    f16c_half_to_float(reinterpret_cast<const uint16_t*>(src), dst, n);
#else
    for (int64_t i = 0; i < n; ++i) dst[i] = half_bits_to_float(src[i].bits);
#endif
  } else if constexpr (std::is_same_v<S, BFloat16>) {
    for (int64_t i = 0; i < n; ++i) dst[i] = bfloat16_bits_to_float(src[i].bits);
  } else {
    std::copy(src, src + n, dst);
  }
}

// Rounds n compute-type values into storage (round-to-nearest-even for 16 bits).
template <class S, class C>
inline void store_compute(const C* src, S* dst, int64_t n) {
  if constexpr (std::is_same_v<S, Half>) {
#if STEEPEST_ISA_F16C
    f16c_float_to_half(src, reinterpret_cast<uint16_t*>(dst), n);
#else
    for (int64_t i = 0; i < n; ++i) dst[i].bits = float_to_half_bits(src[i]);
#endif
  } else if constexpr (std::is_same_v<S, BFloat16>) {
    for (int64_t i = 0; i < n; ++i) dst[i].bits = float_to_bfloat16_bits(src[i]);
  } else {
    std::copy(src, src + n, dst);
  }
}

// The n values rounded to S and widened back (dst may be src): what a cast to S and back
// gives, without the 16-bit copy (a float32 master weight read at the compute dtype).
template <class S, class C>
inline void round_compute(const C* src, C* dst, int64_t n) {
  if constexpr (std::is_same_v<S, Half>) {
    int64_t i = 0;
#if STEEPEST_ISA_F16C
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(src + i),
                                                                _MM_FROUND_TO_NEAREST_INT)));
#endif
    for (; i < n; ++i) dst[i] = half_bits_to_float(float_to_half_bits(src[i]));
  } else if constexpr (std::is_same_v<S, BFloat16>) {
    for (int64_t i = 0; i < n; ++i) dst[i] = bfloat16_bits_to_float(float_to_bfloat16_bits(src[i]));
  } else {
    std::copy(src, src + n, dst);
  }
}

// One contiguous row in the compute type: the row itself when storage and compute types
// agree, else a converted copy in a buffer the caller keeps per thread.
template <class S, class C>
class RowView {
 public:
  static constexpr bool kConverts = !std::is_same_v<S, C>;

  // The row's values for reading.
  const C* read(const S* row, int64_t n) {
    if constexpr (kConverts) {
      buffer_.resize(static_cast<size_t>(n));
      load_compute(row, buffer_.data(), n);
      return buffer_.data();
    } else {
      return row;
    }
  }
  // Where to write the row; publish() stores it when the row is a buffer.
  C* write(S* row, int64_t n) {
    if constexpr (kConverts) {
      buffer_.resize(static_cast<size_t>(n));
      return buffer_.data();
    } else {
      return row;
    }
  }
  void publish(S* row, int64_t n) {
    if constexpr (kConverts) store_compute(buffer_.data(), row, n);
  }

 private:
  std::vector<C> buffer_;
};

// Below this many elements a cheap elementwise kernel runs on one thread: waking the
// OpenMP team costs more than the work (measured: ~2-5 µs per region on this machine).
inline constexpr int64_t kParallelGrain = 32768;

// Runs fn(begin, end) over [0, n) split into contiguous chunks, one per thread, or
// serially when n < grain.
template <class Fn>
void parallel_for(int64_t n, int64_t grain, Fn&& fn) {
  if (n <= 0) return;
  int threads = omp_get_max_threads();
  if (n < grain || threads <= 1 || omp_in_parallel()) {
    fn(int64_t{0}, n);
    return;
  }
  int64_t chunks = std::min<int64_t>(threads, (n + grain - 1) / grain);
#pragma omp parallel num_threads(static_cast<int>(chunks))
  {
    int64_t t = omp_get_thread_num();
    int64_t nt = omp_get_num_threads();
    int64_t begin = n * t / nt, end = n * (t + 1) / nt;
    if (begin < end) fn(begin, end);
  }
}

// Iterates over `shape` for N operands with the given element strides. For every
// innermost run it calls inner(offsets, count, inner_strides), where offsets are the
// element offsets of the run's first element in each operand.
template <int N>
class StridedLoop {
 public:
  StridedLoop(const Dims& shape, const std::array<const Dims*, N>& strides)
      : dims_(collapse_dims<N>(shape, strides)) {}

  // The collapsed dimensions (empty tensors have none worth walking: check numel).
  int ndim() const { return dims_.ndim; }
  int64_t extent(int d) const { return dims_.shape[d]; }
  int64_t stride(int operand, int d) const { return dims_.strides[operand][d]; }
  int64_t numel() const { return dims_.numel; }

  template <class Inner>
  void run(Inner&& inner, int64_t grain = kParallelGrain) const {
    if (dims_.numel == 0) return;
    parallel_for(numel(), grain, [&](int64_t begin, int64_t end) { run_range(begin, end, inner); });
  }

  template <class Inner>
  void run_range(int64_t begin, int64_t end, Inner& inner) const {
    const int last = dims_.ndim - 1;
    std::array<int64_t, kMaxDims> index{};
    std::array<int64_t, N> offsets{};
    int64_t rem = begin;
    for (int d = last; d >= 0; --d) {
      index[static_cast<size_t>(d)] = rem % dims_.shape[d];
      rem /= dims_.shape[d];
      for (int k = 0; k < N; ++k) offsets[k] += index[static_cast<size_t>(d)] * dims_.strides[k][d];
    }
    std::array<int64_t, N> inner_strides;
    for (int k = 0; k < N; ++k) inner_strides[k] = dims_.strides[k][last];
    int64_t pos = begin;
    while (pos < end) {
      int64_t count = std::min(dims_.shape[last] - index[static_cast<size_t>(last)], end - pos);
      inner(offsets, count, inner_strides);
      pos += count;
      index[static_cast<size_t>(last)] += count;
      for (int k = 0; k < N; ++k) offsets[k] += count * dims_.strides[k][last];
      for (int d = last; d > 0 && index[static_cast<size_t>(d)] == dims_.shape[d]; --d) {
        index[static_cast<size_t>(d)] = 0;
        ++index[static_cast<size_t>(d - 1)];
        for (int k = 0; k < N; ++k)
          offsets[k] += dims_.strides[k][d - 1] - dims_.shape[d] * dims_.strides[k][d];
      }
    }
  }

 private:
  CollapsedDims<N> dims_;
};

}  // namespace STEEPEST_ISA_NS
}  // namespace steepest::cpu
