// Reductions over the middle axis of a contiguous (outer, extent, inner) view. The op
// layer brings any axis set into that form, so one kernel serves sum, mean and max over
// any axes. inner == 1 reduces contiguous rows; inner > 1 adds whole rows of length
// inner, which vectorises (the bias gradient: a column sum over the batch).
#include <cmath>
#include <limits>

#include "loops.h"
#include "steepest/kernels.h"

namespace steepest::cpu {
namespace {

template <class T>
void sum_kernel(const T* x, int64_t outer, int64_t extent, int64_t inner, T* out) {
  if (inner == 1) {
    parallel_for(outer, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(extent, 1)),
                 [&](int64_t begin, int64_t end) {
                   for (int64_t o = begin; o < end; ++o) {
                     const T* row = x + o * extent;
                     T acc = 0;
#pragma omp simd reduction(+ : acc)
                     for (int64_t e = 0; e < extent; ++e) acc += row[e];
                     out[o] = acc;
                   }
                 });
    return;
  }
  // Split over outer × inner-chunks so that a single (1, N, C) reduction still uses all
  // threads.
  constexpr int64_t kChunk = 256;
  int64_t chunks_per_row = (inner + kChunk - 1) / kChunk;
  int64_t tasks = outer * chunks_per_row;
  int64_t work_per_task = extent * std::min(inner, kChunk);
  parallel_for(tasks, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(work_per_task, 1)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t t = begin; t < end; ++t) {
                   int64_t o = t / chunks_per_row;
                   int64_t c0 = (t % chunks_per_row) * kChunk;
                   int64_t c1 = std::min(inner, c0 + kChunk);
                   T* dst = out + o * inner;
                   for (int64_t c = c0; c < c1; ++c) dst[c] = 0;
                   for (int64_t e = 0; e < extent; ++e) {
                     const T* row = x + (o * extent + e) * inner;
                     for (int64_t c = c0; c < c1; ++c) dst[c] += row[c];
                   }
                 }
               });
}

// Max with the index of the first maximum (the seed routes max's gradient to argmax).
// NaN wins, so a NaN input propagates to the output as in NumPy.
template <class T>
void max_kernel(const T* x, int64_t outer, int64_t extent, int64_t inner, T* out,
                int64_t* argmax) {
  parallel_for(outer * inner, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(extent, 1)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t t = begin; t < end; ++t) {
                   int64_t o = t / inner, c = t % inner;
                   const T* base = x + o * extent * inner + c;
                   T best = base[0];
                   int64_t best_index = 0;
                   for (int64_t e = 1; e < extent && !std::isnan(best); ++e) {
                     T v = base[e * inner];
                     if (v > best || std::isnan(v)) {
                       best = v;
                       best_index = e;
                     }
                   }
                   out[t] = best;
                   if (argmax) argmax[t] = best_index;
                 }
               });
}

}  // namespace

void reduce(ReduceOp op, const Tensor& x, int64_t outer, int64_t extent, int64_t inner,
            Tensor& out, Tensor* argmax) {
  dispatch_float("reduce", x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (op == ReduceOp::Sum)
      sum_kernel<T>(x.data<T>(), outer, extent, inner, out.data<T>());
    else
      max_kernel<T>(x.data<T>(), outer, extent, inner, out.data<T>(),
                    argmax ? argmax->data<int64_t>() : nullptr);
  });
}

}  // namespace steepest::cpu
