// Reductions over the middle axis of a contiguous (outer, extent, inner) view. The op
// layer brings any axis set into that form, so one kernel serves sum, mean and max over
// any axes. inner == 1 reduces contiguous rows; inner > 1 combines whole rows of length
// inner, which vectorises (the bias gradient: a column sum over the batch).
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "loops.h"
#include "steepest/kernels.h"

namespace steepest::cpu {
inline namespace STEEPEST_ISA_NS {
namespace {

typedef float FloatLanes __attribute__((vector_size(64)));
typedef double DoubleLanes __attribute__((vector_size(64)));

// The position of the first maximum of a row, the first NaN if there is one. The value
// is found with 64-byte vector lanes (GCC vector extensions, whatever the target ISA),
// which ignore NaN; a NaN is caught by a second vector test, and the position is then a
// search for the first element equal to the value (or the first NaN).
template <class T>
int64_t first_max(const T* x, int64_t n) {
  using Lanes = std::conditional_t<std::is_same_v<T, float>, FloatLanes, DoubleLanes>;
  constexpr int64_t kLanes = 64 / sizeof(T);
  Lanes lanes = Lanes{} - std::numeric_limits<T>::infinity();
  Lanes unordered = Lanes{};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    Lanes v;
    std::memcpy(&v, x + i, sizeof v);
    lanes = v > lanes ? v : lanes;
    unordered = v != v ? v : unordered;
  }
  T m = -std::numeric_limits<T>::infinity();
  bool nan = false;
  for (; i < n; ++i) {
    m = x[i] > m ? x[i] : m;
    nan = nan || std::isnan(x[i]);
  }
  for (int64_t k = 0; k < kLanes; ++k) {
    m = lanes[k] > m ? lanes[k] : m;
    nan = nan || std::isnan(unordered[k]);
  }
  if (nan) {
    for (int64_t e = 0; e < n; ++e)
      if (std::isnan(x[e])) return e;
  }
  for (int64_t e = 0; e < n; ++e)
    if (x[e] == m) return e;
  return 0;  // unreachable: m is one of the elements (the op layer rejects empty rows)
}

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
  if (inner == 1) {
    // Per row, a vectorised pass for the value, then a search for its first position.
    parallel_for(outer, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(extent, 1)),
                 [&](int64_t begin, int64_t end) {
                   RowView<S, C> view;
                   for (int64_t o = begin; o < end; ++o) {
                     const S* base = x + o * extent;
                     const C* row = view.read(base, extent);
                     const int64_t at = first_max(row, extent);
                     out[o] = base[at];
                     if (argmax) argmax[o] = at;
                   }
                 });
    return;
  }
  // Columns: each task keeps the running maximum of a chunk of contiguous columns and
  // walks the rows in order, so memory is read sequentially and the compare vectorises.
  constexpr int64_t kChunk = 256;
  const int64_t chunks_per_row = (inner + kChunk - 1) / kChunk;
  parallel_for(outer * chunks_per_row,
               std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(extent * kChunk, 1)),
               [&](int64_t begin, int64_t end) {
                 C best[kChunk], values[kChunk];
                 int64_t index[kChunk];
                 for (int64_t t = begin; t < end; ++t) {
                   const int64_t o = t / chunks_per_row, c0 = (t % chunks_per_row) * kChunk;
                   const int64_t width = std::min(inner, c0 + kChunk) - c0;
                   const S* base = x + o * extent * inner + c0;
                   load_compute(base, best, width);
                   std::fill(index, index + width, int64_t{0});
                   for (int64_t e = 1; e < extent; ++e) {
                     load_compute(base + e * inner, values, width);
                     for (int64_t c = 0; c < width; ++c) {
                       const C v = values[c];
                       // The first NaN replaces a number and is never replaced itself.
                       const bool take = v > best[c] || (v != v && best[c] == best[c]);
                       best[c] = take ? v : best[c];
                       index[c] = take ? e : index[c];
                     }
                   }
                   for (int64_t c = 0; c < width; ++c) {
                     out[o * inner + c0 + c] = base[index[c] * inner + c];
                     if (argmax) argmax[o * inner + c0 + c] = index[c];
                   }
                 }
               });
}

// Integer and bool tensors (no gradient, so no argmax): exact int64 sums, maxima in T.
// A plain loop per output; the float kernels above are the tuned ones.
template <class T, class O>
void integer_reduce(ReduceOp op, const T* x, int64_t outer, int64_t extent, int64_t inner, O* out) {
  parallel_for(outer * inner, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(extent, 1)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t t = begin; t < end; ++t) {
                   const T* p = x + (t / inner) * extent * inner + t % inner;
                   out[t] = integer_reduce_column<T, O>(op, p, extent, inner);
                 }
               });
}

}  // namespace

void reduce(ReduceOp op, const Tensor& x, int64_t outer, int64_t extent, int64_t inner,
            Tensor& out, Tensor* argmax) {
  if (!is_floating(x.dtype())) {
    dispatch_all("reduce", x.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      if (op == ReduceOp::Sum)
        integer_reduce<T, int64_t>(op, x.data<T>(), outer, extent, inner, out.data<int64_t>());
      else
        integer_reduce<T, T>(op, x.data<T>(), outer, extent, inner, out.data<T>());
    });
    return;
  }
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

}  // namespace STEEPEST_ISA_NS
}  // namespace steepest::cpu
