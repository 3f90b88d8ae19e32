// Sum and max over the middle axis of a contiguous (outer, extent, inner) view on the
// GPU: the formulas of cpp/cpu/reduce.cpp; only the summation order differs (trees of
// warps instead of one running sum). float16/bfloat16 storage S is summed in float
// (C = compute_t<S>) and each stored value is rounded once.
//
// Rows (inner == 1) go to a warp when they have at most 1024 columns, else to a block
// (common.cuh's launch_rows); the column kernels (inner > 1) give each thread a column
// and split the rows over threadIdx.y.
#include <cmath>
#include <type_traits>

#include "common.cuh"

namespace steepest::cuda {
namespace {

// (value, index) of the first maximum; NaN wins (the first NaN), as on the CPU.
template <class T>
struct ArgMax {
  T value;
  int64_t index;
};

template <class T>
__device__ ArgMax<T> better(ArgMax<T> a, ArgMax<T> b) {
  if (a.index < 0) return b;
  if (b.index < 0) return a;
  const bool a_nan = isnan(a.value), b_nan = isnan(b.value);
  if (a_nan || b_nan) {
    if (a_nan && b_nan) return a.index < b.index ? a : b;
    return a_nan ? a : b;
  }
  if (a.value != b.value) return a.value > b.value ? a : b;
  return a.index < b.index ? a : b;
}

template <class T>
__device__ ArgMax<T> warp_argmax(ArgMax<T> v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    ArgMax<T> other{__shfl_xor_sync(0xffffffffu, v.value, offset),
                    __shfl_xor_sync(0xffffffffu, v.index, offset)};
    v = better(v, other);
  }
  return v;
}

// Sum of each row into O (S, or C when the op layer still scales the sums: a 16-bit
// mean rounds once, after dividing); rows are split into `chunks` segments when there
// are too few rows to fill the GPU: then out holds (rows, chunks) partials in C for a
// second pass.
template <bool kWarp, class S, class O>
__global__ void sum_rows(const S* x, int64_t rows, int64_t cols, int64_t chunks, O* out) {
  using C = compute_t<S>;
  const int64_t task = STEEPEST_ROW_INDEX();
  if (task >= rows * chunks) return;
  const int64_t row = task / chunks, chunk = task % chunks;
  const int64_t len = (cols + chunks - 1) / chunks;
  const int64_t begin = chunk * len, end = begin + len < cols ? begin + len : cols;
  const S* xr = x + row * cols;
  C acc = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) acc += to_compute(xr[i]);
  acc = row_reduce<kWarp>(acc, SumOp{}, C(0));
  if (threadIdx.x == 0) out[task] = to_storage<O>(acc);
}

// The maximum is one of the inputs, so storing it back into S is exact.
template <bool kWarp, class S>
__global__ void max_rows(const S* x, int64_t rows, int64_t cols, S* out, int64_t* argmax) {
  using C = compute_t<S>;
  const int64_t row = STEEPEST_ROW_INDEX();
  if (row >= rows) return;
  const S* xr = x + row * cols;
  ArgMax<C> best{C(0), -1};
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x)
    best = better(best, ArgMax<C>{to_compute(xr[i]), i});
  best = warp_argmax(best);
  if constexpr (!kWarp) {
    __shared__ C values[32];
    __shared__ int64_t indices[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) {
      values[warp] = best.value;
      indices[warp] = best.index;
    }
    __syncthreads();
    if (warp == 0) {
      best = lane < static_cast<int>(blockDim.x / 32) ? ArgMax<C>{values[lane], indices[lane]}
                                                       : ArgMax<C>{C(0), -1};
      best = warp_argmax(best);
    }
  }
  if (threadIdx.x == 0) {
    out[row] = to_storage<S>(best.value);
    if (argmax) argmax[row] = best.index;
  }
}

// Integer and bool tensors (no gradient, no argmax): one thread per output, exact int64
// sums and maxima in T, as the CPU's integer_reduce.
template <class T, class O>
__global__ void integer_reduce(ReduceOp op, const T* x, int64_t outer, int64_t extent,
                               int64_t inner, O* out) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= outer * inner) return;
  const T* p = x + (t / inner) * extent * inner + t % inner;
  out[t] = integer_reduce_column<T, O>(op, p, extent, inner);
}

// inner > 1: thread x of a block owns column c of one outer slice.
template <class S, class O>
__global__ void sum_columns(const S* x, int64_t outer, int64_t extent, int64_t inner, O* out) {
  using C = compute_t<S>;
  __shared__ C shared[kThreads];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t o = blockIdx.y; o < outer; o += gridDim.y) {
    C acc = 0;
    if (c < inner)
      for (int64_t e = threadIdx.y; e < extent; e += blockDim.y)
        acc += to_compute(x[(o * extent + e) * inner + c]);
    acc = column_combine(acc, shared, SumOp{});
    if (threadIdx.y == 0 && c < inner) out[o * inner + c] = to_storage<O>(acc);
    __syncthreads();
  }
}

template <class S>
__global__ void max_columns(const S* x, int64_t outer, int64_t extent, int64_t inner, S* out,
                            int64_t* argmax) {
  using C = compute_t<S>;
  __shared__ ArgMax<C> shared[kThreads];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t o = blockIdx.y; o < outer; o += gridDim.y) {
    ArgMax<C> best{C(0), -1};
    if (c < inner)
      for (int64_t e = threadIdx.y; e < extent; e += blockDim.y)
        best = better(best, ArgMax<C>{to_compute(x[(o * extent + e) * inner + c]), e});
    best = column_combine(best, shared, [](ArgMax<C> a, ArgMax<C> b) { return better(a, b); });
    if (threadIdx.y == 0 && c < inner) {
      out[o * inner + c] = to_storage<S>(best.value);
      if (argmax) argmax[o * inner + c] = best.index;
    }
    __syncthreads();
  }
}

}  // namespace

void reduce(ReduceOp op, const Tensor& x, int64_t outer, int64_t extent, int64_t inner,
            Tensor& out, Tensor* argmax) {
  if (outer * inner == 0) return;
  DeviceGuard guard(x.device());
  const cudaStream_t stream = guard.stream();
  if (!is_floating(x.dtype())) {
    dispatch_all("reduce", x.dtype(), [&](auto tag) {
      using T = typename decltype(tag)::type;
      const int64_t n = outer * inner;
      if (op == ReduceOp::Sum)
        integer_reduce<T, int64_t><<<blocks_for(n), kThreads, 0, stream>>>(
            op, x.data<T>(), outer, extent, inner, out.data<int64_t>());
      else
        integer_reduce<T, T><<<blocks_for(n), kThreads, 0, stream>>>(op, x.data<T>(), outer,
                                                                      extent, inner, out.data<T>());
      STEEPEST_CUDA_CHECK_LAUNCH();
    });
    return;
  }
  dispatch_float_storage("reduce", x.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    const S* px = x.data<S>();
    const dim3 grid = column_grid(outer, inner), block(kColumnTile, kColumnSplit);
    if (op == ReduceOp::Max) {
      S* po = out.data<S>();
      int64_t* pa = argmax ? argmax->data<int64_t>() : nullptr;
      if (inner > 1) {
        max_columns<<<grid, block, 0, stream>>>(px, outer, extent, inner, po, pa);
        STEEPEST_CUDA_CHECK_LAUNCH();
        return;
      }
      launch_rows(stream, outer, extent, max_rows<true, S>, max_rows<false, S>, px, outer, extent,
                  po, pa);
      return;
    }
    auto sum_into = [&](auto* po) {
      using O = std::remove_pointer_t<decltype(po)>;
      if (inner > 1) {
        sum_columns<<<grid, block, 0, stream>>>(px, outer, extent, inner, po);
        STEEPEST_CUDA_CHECK_LAUNCH();
        return;
      }
      // Few long rows (a full sum) would leave most of the GPU idle: split each row into
      // chunks and add the partial sums in a second pass.
      constexpr int64_t kChunkLength = 16384;
      const int64_t busy_rows = 4 * static_cast<int64_t>(multiprocessor_count(guard.index()));
      int64_t chunks = 1;
      if (outer < busy_rows && extent > 2 * kChunkLength)
        chunks = std::min<int64_t>((extent + kChunkLength - 1) / kChunkLength, 1024);
      if (chunks == 1) {
        launch_rows(stream, outer, extent, sum_rows<true, S, O>, sum_rows<false, S, O>, px,
                    outer, extent, int64_t{1}, po);
        return;
      }
      Tensor partial = Tensor::empty({outer, chunks}, compute_dtype(x.dtype()), x.device());
      C* pp = partial.data<C>();
      launch_rows(stream, outer * chunks, extent, sum_rows<true, S, C>, sum_rows<false, S, C>, px,
                  outer, extent, chunks, pp);
      launch_rows(stream, outer, chunks, sum_rows<true, C, O>, sum_rows<false, C, O>,
                  static_cast<const C*>(pp), outer, chunks, int64_t{1}, po);
    };
    // The op layer asks for float sums of a 16-bit mean by passing a float32 out.
    if (out.dtype() != x.dtype())
      sum_into(out.data<C>());
    else
      sum_into(out.data<S>());
  });
}

}  // namespace steepest::cuda
