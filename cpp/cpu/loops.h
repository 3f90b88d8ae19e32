// Generic loops for CPU kernels: an N-operand strided iterator that collapses
// contiguous dimensions and hands the innermost run to a callback, and a parallel-for
// that only starts OpenMP threads when the work is large enough to pay for them.
#pragma once

#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdint>

#include "steepest/common.h"

namespace steepest::cpu {

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
  StridedLoop(const Dims& shape, const std::array<const Dims*, N>& strides) {
    for (int d = 0; d < shape.size(); ++d) {
      if (shape[d] == 1) continue;
      if (shape[d] == 0) {
        empty_ = true;
        return;
      }
      // Merge with the previous kept dimension when every operand is contiguous across.
      if (ndim_ > 0) {
        bool mergeable = true;
        for (int k = 0; k < N; ++k)
          if (strides_[k][ndim_ - 1] != (*strides[k])[d] * shape[d]) mergeable = false;
        if (mergeable) {
          shape_[ndim_ - 1] *= shape[d];
          for (int k = 0; k < N; ++k) strides_[k][ndim_ - 1] = (*strides[k])[d];
          continue;
        }
      }
      shape_[ndim_] = shape[d];
      for (int k = 0; k < N; ++k) strides_[k][ndim_] = (*strides[k])[d];
      ++ndim_;
    }
    if (ndim_ == 0) {  // a single element
      shape_[0] = 1;
      for (int k = 0; k < N; ++k) strides_[k][0] = 0;
      ndim_ = 1;
    }
  }

  int64_t numel() const {
    if (empty_) return 0;
    int64_t n = 1;
    for (int d = 0; d < ndim_; ++d) n *= shape_[d];
    return n;
  }

  template <class Inner>
  void run(Inner&& inner, int64_t grain = kParallelGrain) const {
    if (empty_) return;
    parallel_for(numel(), grain, [&](int64_t begin, int64_t end) { run_range(begin, end, inner); });
  }

  template <class Inner>
  void run_range(int64_t begin, int64_t end, Inner& inner) const {
    const int last = ndim_ - 1;
    std::array<int64_t, kMaxDims> index{};
    std::array<int64_t, N> offsets{};
    int64_t rem = begin;
    for (int d = last; d >= 0; --d) {
      index[static_cast<size_t>(d)] = rem % shape_[d];
      rem /= shape_[d];
      for (int k = 0; k < N; ++k) offsets[k] += index[static_cast<size_t>(d)] * strides_[k][d];
    }
    std::array<int64_t, N> inner_strides;
    for (int k = 0; k < N; ++k) inner_strides[k] = strides_[k][last];
    int64_t pos = begin;
    while (pos < end) {
      int64_t count = std::min(shape_[last] - index[static_cast<size_t>(last)], end - pos);
      inner(offsets, count, inner_strides);
      pos += count;
      index[static_cast<size_t>(last)] += count;
      for (int k = 0; k < N; ++k) offsets[k] += count * strides_[k][last];
      for (int d = last; d > 0 && index[static_cast<size_t>(d)] == shape_[d]; --d) {
        index[static_cast<size_t>(d)] = 0;
        ++index[static_cast<size_t>(d - 1)];
        for (int k = 0; k < N; ++k)
          offsets[k] += strides_[k][d - 1] - shape_[d] * strides_[k][d];
      }
    }
  }

 private:
  int ndim_ = 0;
  bool empty_ = false;
  std::array<int64_t, kMaxDims> shape_{};
  std::array<std::array<int64_t, kMaxDims>, N> strides_{};
};

}  // namespace steepest::cpu
