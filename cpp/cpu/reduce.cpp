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

// Sums in the compute type C (float for 16-bit storage S) into O: S, or C when the op
// layer still scales the sums (a 16-bit mean rounds once, after dividing).
template <class S, class C, class O>
void sum_kernel(const S* x, int64_t outer, int64_t extent, int64_t inner, O* out) {
  if (inner == 1) {
    parallel_for(outer, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(extent, 1)),
                 [&](int64_t begin, int64_t end) {
                   for (int64_t o = begin; o < end; ++o) {
                     const S* row = x + o * extent;
                     C acc = 0;
                     if constexpr (std::is_same_v<S, C>) {
#pragma omp simd reduction(+ : acc)
                       for (int64_t e = 0; e < extent; ++e) acc += row[e];
                     } else {
                       C block[kConvertBlock];
                       for (int64_t e0 = 0; e0 < extent; e0 += kConvertBlock) {
                         const int64_t m = std::min(kConvertBlock, extent - e0);
                         load_compute(row + e0, block, m);
#pragma omp simd reduction(+ : acc)
                         for (int64_t e = 0; e < m; ++e) acc += block[e];
                       }
                     }
                     out[o] = O(acc);
                   }
                 });
    return;
  }
  // Split over outer × inner-chunks so that a single (1, N, C) reduction still uses all
  // threads. Each task accumulates its chunk of columns in C.
  constexpr int64_t kChunk = 256;
  int64_t chunks_per_row = (inner + kChunk - 1) / kChunk;
  int64_t tasks = outer * chunks_per_row;
  int64_t work_per_task = extent * std::min(inner, kChunk);
  parallel_for(tasks, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(work_per_task, 1)),
               [&](int64_t begin, int64_t end) {
                 C acc[kChunk];
                 C row_block[kChunk];
                 for (int64_t t = begin; t < end; ++t) {
                   int64_t o = t / chunks_per_row;
                   int64_t c0 = (t % chunks_per_row) * kChunk;
                   int64_t width = std::min(inner, c0 + kChunk) - c0;
                   for (int64_t c = 0; c < width; ++c) acc[c] = 0;
                   for (int64_t e = 0; e < extent; ++e) {
                     const S* row = x + (o * extent + e) * inner + c0;
                     if constexpr (std::is_same_v<S, C>) {
                       for (int64_t c = 0; c < width; ++c) acc[c] += row[c];
                     } else {
                       load_compute(row, row_block, width);
                       for (int64_t c = 0; c < width; ++c) acc[c] += row_block[c];
                     }
                   }
                   store_compute(acc, out + o * inner + c0, width);
                 }
               });
}

// Max with the index of the first maximum (the seed routes max's gradient to argmax).
// NaN wins, so a NaN input propagates to the output as in NumPy. The maximum is one of
// the inputs, so 16-bit storage is compared as float and copied unrounded.
template <class S, class C>
void max_kernel(const S* x, int64_t outer, int64_t extent, int64_t inner, S* out,
                int64_t* argmax) {
  parallel_for(outer * inner, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(extent, 1)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t t = begin; t < end; ++t) {
                   int64_t o = t / inner, c = t % inner;
                   const S* base = x + o * extent * inner + c;
                   C best = C(base[0]);
                   int64_t best_index = 0;
                   for (int64_t e = 1; e < extent && !std::isnan(best); ++e) {
                     C v = C(base[e * inner]);
                     if (v > best || std::isnan(v)) {
                       best = v;
                       best_index = e;
                     }
                   }
                   out[t] = base[best_index * inner];
                   if (argmax) argmax[t] = best_index;
                 }
               });
}

}  // namespace

void reduce(ReduceOp op, const Tensor& x, int64_t outer, int64_t extent, int64_t inner,
            Tensor& out, Tensor* argmax) {
  dispatch_float_storage("reduce", x.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    if (op == ReduceOp::Sum && out.dtype() != x.dtype())
      sum_kernel<S, C, C>(x.data<S>(), outer, extent, inner, out.data<C>());
    else if (op == ReduceOp::Sum)
      sum_kernel<S, C, S>(x.data<S>(), outer, extent, inner, out.data<S>());
    else
      max_kernel<S, C>(x.data<S>(), outer, extent, inner, out.data<S>(),
                       argmax ? argmax->data<int64_t>() : nullptr);
  });
}

}  // namespace steepest::cpu
