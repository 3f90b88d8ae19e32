// Reductions and row-wise neural-network kernels on the GPU: sum/max over the middle axis
// of (outer, extent, inner), softmax / log-softmax, fused softmax + cross-entropy, layer
// norm, embedding, dropout masks and random fills. The formulas are those of
// cpp/cpu/reduce.cpp and cpp/cpu/nn.cpp; only the summation order differs (trees of
// warps instead of one running sum).
//
// Row kernels give a row to a warp when it has at most 1024 columns, else to a block
// (common.cuh's launch_rows); the column kernels (inner > 1, parameter gradients) give
// each thread a column and split the rows over threadIdx.y.
#include <algorithm>
#include <cmath>

#include "common.cuh"

namespace steepest::cuda {
namespace {

template <class T>
__device__ T neg_inf() {
  return -T(INFINITY);
}

// ----------------------------------------------------------------------- reduce

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

// Over the threads (x, y) of a block that share x: the rows' partial results in
// threadIdx.y are combined through shared memory; thread (x, 0) gets the result.
template <class T, class Combine>
__device__ T column_combine(T value, T* shared, Combine combine) {
  shared[threadIdx.y * blockDim.x + threadIdx.x] = value;
  __syncthreads();
  if (threadIdx.y == 0)
    for (unsigned y = 1; y < blockDim.y; ++y)
      value = combine(value, shared[y * blockDim.x + threadIdx.x]);
  return value;
}

// Sum of each row; rows are split into `chunks` segments when there are too few rows
// to fill the GPU: then out holds (rows, chunks) partials for a second pass.
template <bool kWarp, class T>
__global__ void sum_rows(const T* x, int64_t rows, int64_t cols, int64_t chunks, T* out) {
  const int64_t task = STEEPEST_ROW_INDEX();
  if (task >= rows * chunks) return;
  const int64_t row = task / chunks, chunk = task % chunks;
  const int64_t len = (cols + chunks - 1) / chunks;
  const int64_t begin = chunk * len, end = begin + len < cols ? begin + len : cols;
  const T* xr = x + row * cols;
  T acc = 0;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) acc += xr[i];
  acc = row_reduce<kWarp>(acc, SumOp{}, T(0));
  if (threadIdx.x == 0) out[task] = acc;
}

template <bool kWarp, class T>
__global__ void max_rows(const T* x, int64_t rows, int64_t cols, T* out, int64_t* argmax) {
  const int64_t row = STEEPEST_ROW_INDEX();
  if (row >= rows) return;
  const T* xr = x + row * cols;
  ArgMax<T> best{T(0), -1};
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) best = better(best, ArgMax<T>{xr[i], i});
  best = warp_argmax(best);
  if constexpr (!kWarp) {
    __shared__ T values[32];
    __shared__ int64_t indices[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) {
      values[warp] = best.value;
      indices[warp] = best.index;
    }
    __syncthreads();
    if (warp == 0) {
      best = lane < static_cast<int>(blockDim.x / 32) ? ArgMax<T>{values[lane], indices[lane]}
                                                       : ArgMax<T>{T(0), -1};
      best = warp_argmax(best);
    }
  }
  if (threadIdx.x == 0) {
    out[row] = best.value;
    if (argmax) argmax[row] = best.index;
  }
}

// inner > 1: thread x of a block owns column c of one outer slice.
template <class T>
__global__ void sum_columns(const T* x, int64_t outer, int64_t extent, int64_t inner, T* out) {
  __shared__ T shared[kThreads];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t o = blockIdx.y; o < outer; o += gridDim.y) {
    T acc = 0;
    if (c < inner)
      for (int64_t e = threadIdx.y; e < extent; e += blockDim.y) acc += x[(o * extent + e) * inner + c];
    acc = column_combine(acc, shared, SumOp{});
    if (threadIdx.y == 0 && c < inner) out[o * inner + c] = acc;
    __syncthreads();
  }
}

template <class T>
__global__ void max_columns(const T* x, int64_t outer, int64_t extent, int64_t inner, T* out,
                            int64_t* argmax) {
  __shared__ ArgMax<T> shared[kThreads];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t o = blockIdx.y; o < outer; o += gridDim.y) {
    ArgMax<T> best{T(0), -1};
    if (c < inner)
      for (int64_t e = threadIdx.y; e < extent; e += blockDim.y)
        best = better(best, ArgMax<T>{x[(o * extent + e) * inner + c], e});
    best = column_combine(best, shared, [](ArgMax<T> a, ArgMax<T> b) { return better(a, b); });
    if (threadIdx.y == 0 && c < inner) {
      out[o * inner + c] = best.value;
      if (argmax) argmax[o * inner + c] = best.index;
    }
    __syncthreads();
  }
}

// Column kernels: 32 columns by 8 row-splitters per block.
constexpr int kColumnTile = 32;
constexpr int kColumnSplit = kThreads / kColumnTile;

dim3 column_grid(int64_t outer, int64_t inner) {
  const int64_t tiles = (inner + kColumnTile - 1) / kColumnTile;
  return dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(outer < 65535 ? outer : 65535));
}

// ---------------------------------------------------------------- softmax family

// The seed's log-softmax shift, kept apart as on the CPU: m = max x and log Σ exp(x − m).
template <bool kWarp, class T>
__device__ void row_shifted_logsum(const T* x, int64_t n, T& max, T& log_sum) {
  T m = neg_inf<T>();
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) m = x[i] > m ? x[i] : m;
  m = row_reduce<kWarp>(m, MaxOp{}, neg_inf<T>());
  max = m;
  if (isinf(m)) {
    log_sum = T(0);
    return;
  }
  T s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += exp(x[i] - m);
  log_sum = log(row_reduce<kWarp>(s, SumOp{}, T(0)));
}

template <bool kWarp, class T>
__global__ void softmax_rows(const T* x, T* y, int64_t rows, int64_t cols, bool log_output) {
  const int64_t row = STEEPEST_ROW_INDEX();
  if (row >= rows) return;
  const T* xr = x + row * cols;
  T* yr = y + row * cols;
  T m, ls;
  row_shifted_logsum<kWarp>(xr, cols, m, ls);
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x)
    yr[i] = log_output ? (xr[i] - m) - ls : exp((xr[i] - m) - ls);
}

// softmax: dL/dz = G ⊙ p − (G·pᵀ) p; log-softmax: dL/dz = G − p Σ G (p = exp(y)).
template <bool kWarp, class T>
__global__ void softmax_backward_rows(const T* gy, const T* y, T* gx, int64_t rows,
                                      int64_t cols, bool log_output) {
  const int64_t row = STEEPEST_ROW_INDEX();
  if (row >= rows) return;
  const T* g = gy + row * cols;
  const T* yr = y + row * cols;
  T* out = gx + row * cols;
  T dot = 0;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) dot += log_output ? g[i] : g[i] * yr[i];
  dot = row_reduce<kWarp>(dot, SumOp{}, T(0));
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x)
    out[i] = log_output ? g[i] - exp(yr[i]) * dot : yr[i] * (g[i] - dot);
}

// L = −log p_label with log p = (z − m) − log Σ; a label outside [0, classes) is
// recorded in `bad` and never used as an address.
template <bool kWarp, class T, class L>
__global__ void cross_entropy_index_rows(const T* z, const L* labels, T* loss, T* lse,
                                         int64_t rows, int64_t classes,
                                         unsigned long long* bad) {
  const int64_t row = STEEPEST_ROW_INDEX();
  if (row >= rows) return;
  const T* zr = z + row * classes;
  T m, ls;
  row_shifted_logsum<kWarp>(zr, classes, m, ls);
  if (threadIdx.x != 0) return;
  lse[2 * row] = m;
  lse[2 * row + 1] = ls;
  const auto c = static_cast<int64_t>(labels[row]);
  if (c < 0 || c >= classes) {
    atomicMin(bad, static_cast<unsigned long long>(row));
    loss[row] = T(NAN);
    return;
  }
  loss[row] = ls - (zr[c] - m);
}

// L = −Σ y_i log p_i over the nonzero targets.
template <bool kWarp, class T>
__global__ void cross_entropy_prob_rows(const T* z, const T* y, T* loss, T* lse, int64_t rows,
                                        int64_t classes) {
  const int64_t row = STEEPEST_ROW_INDEX();
  if (row >= rows) return;
  const T* zr = z + row * classes;
  const T* yr = y + row * classes;
  T m, ls;
  row_shifted_logsum<kWarp>(zr, classes, m, ls);
  T acc = 0;
  for (int64_t i = threadIdx.x; i < classes; i += blockDim.x)
    if (yr[i] != T(0)) acc -= yr[i] * ((zr[i] - m) - ls);
  acc = row_reduce<kWarp>(acc, SumOp{}, T(0));
  if (threadIdx.x == 0) {
    lse[2 * row] = m;
    lse[2 * row + 1] = ls;
    loss[row] = acc;
  }
}

// grad = g_row · (p − onehot(label)): the seed's p − y.
template <class T, class L>
__global__ void cross_entropy_index_backward(const T* z, const L* labels, const T* lse,
                                             const T* grad_loss, T* grad, int64_t rows,
                                             int64_t classes) {
  STEEPEST_GRID_STRIDE(e, rows * classes) {
    const int64_t row = e / classes, i = e - row * classes;
    const T g = grad_loss[row];
    const T p = exp((z[e] - lse[2 * row]) - lse[2 * row + 1]);
    grad[e] = g * p - (static_cast<int64_t>(labels[row]) == i ? g : T(0));
  }
}

// −y + p Σy: the seed's derivation before assuming Σy = 1.
template <bool kWarp, class T>
__global__ void cross_entropy_prob_backward(const T* z, const T* y, const T* lse,
                                            const T* grad_loss, T* grad, int64_t rows,
                                            int64_t classes) {
  const int64_t row = STEEPEST_ROW_INDEX();
  if (row >= rows) return;
  const T* zr = z + row * classes;
  const T* yr = y + row * classes;
  T* out = grad + row * classes;
  T total = 0;
  for (int64_t i = threadIdx.x; i < classes; i += blockDim.x) total += yr[i];
  total = row_reduce<kWarp>(total, SumOp{}, T(0));
  const T g = grad_loss[row], m = lse[2 * row], ls = lse[2 * row + 1];
  for (int64_t i = threadIdx.x; i < classes; i += blockDim.x)
    out[i] = g * (exp((zr[i] - m) - ls) * total - yr[i]);
}

// ------------------------------------------------------------------- layer norm

template <bool kWarp, class T>
__global__ void layer_norm_rows(const T* x, const T* w, const T* b, T eps, T* y, T* mean,
                                T* rstd, int64_t rows, int64_t cols) {
  const int64_t row = STEEPEST_ROW_INDEX();
  if (row >= rows) return;
  const T* xr = x + row * cols;
  T* yr = y + row * cols;
  T mu = 0;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) mu += xr[i];
  mu = row_reduce<kWarp>(mu, SumOp{}, T(0)) / static_cast<T>(cols);
  T var = 0;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) var += (xr[i] - mu) * (xr[i] - mu);
  var = row_reduce<kWarp>(var, SumOp{}, T(0)) / static_cast<T>(cols);
  const T rs = T(1) / sqrt(var + eps);
  if (threadIdx.x == 0) {
    mean[row] = mu;
    rstd[row] = rs;
  }
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    T v = (xr[i] - mu) * rs;
    if (w) v *= w[i];
    if (b) v += b[i];
    yr[i] = v;
  }
}

// dx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂)) with x̂ = (x − μ)·rstd and ĝ = G ⊙ w.
template <bool kWarp, class T>
__global__ void layer_norm_backward_rows(const T* gy, const T* x, const T* w, const T* mean,
                                         const T* rstd, T* gx, int64_t rows, int64_t cols) {
  const int64_t row = STEEPEST_ROW_INDEX();
  if (row >= rows) return;
  const T* g = gy + row * cols;
  const T* xr = x + row * cols;
  T* out = gx + row * cols;
  const T mu = mean[row], rs = rstd[row];
  T mean_g = 0, mean_gx = 0;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const T gh = w ? g[i] * w[i] : g[i];
    mean_g += gh;
    mean_gx += gh * ((xr[i] - mu) * rs);
  }
  mean_g = row_reduce<kWarp>(mean_g, SumOp{}, T(0)) / static_cast<T>(cols);
  mean_gx = row_reduce<kWarp>(mean_gx, SumOp{}, T(0)) / static_cast<T>(cols);
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const T gh = w ? g[i] * w[i] : g[i];
    out[i] = rs * (gh - mean_g - (xr[i] - mu) * rs * mean_gx);
  }
}

// dw = Σ_rows G ⊙ x̂, db = Σ_rows G: column sums, a thread per column.
template <class T>
__global__ void layer_norm_param_grads(const T* gy, const T* x, const T* mean, const T* rstd,
                                       T* gw, T* gb, int64_t rows, int64_t cols) {
  __shared__ T shared[kThreads];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  T acc_w = 0, acc_b = 0;
  if (c < cols)
    for (int64_t r = threadIdx.y; r < rows; r += blockDim.y) {
      const T g = gy[r * cols + c];
      acc_w += g * (x[r * cols + c] - mean[r]) * rstd[r];
      acc_b += g;
    }
  acc_w = column_combine(acc_w, shared, SumOp{});
  __syncthreads();
  acc_b = column_combine(acc_b, shared, SumOp{});
  if (threadIdx.y == 0 && c < cols) {
    if (gw) gw[c] = acc_w;
    if (gb) gb[c] = acc_b;
  }
}

// --------------------------------------------------------------------- embedding

template <class T, class I>
__global__ void embedding_gather(const I* indices, const T* table, T* out, int64_t n,
                                 int64_t vocab, int64_t dim, unsigned long long* bad) {
  STEEPEST_GRID_STRIDE(e, n * dim) {
    const int64_t i = e / dim, d = e - i * dim;
    const auto v = static_cast<int64_t>(indices[i]);
    if (v < 0 || v >= vocab) {
      atomicMin(bad, static_cast<unsigned long long>(i));
      out[e] = T(0);
    } else {
      out[e] = table[v * dim + d];
    }
  }
}

// Scatter-add: repeated indices add up through atomics (order-dependent in the last
// bits, like PyTorch's embedding backward on CUDA).
template <class T, class I>
__global__ void embedding_scatter(const I* indices, const T* grad_out, T* grad_table, int64_t n,
                                  int64_t vocab, int64_t dim) {
  STEEPEST_GRID_STRIDE(e, n * dim) {
    const int64_t i = e / dim, d = e - i * dim;
    const auto v = static_cast<int64_t>(indices[i]);
    if (v >= 0 && v < vocab) atomicAdd(grad_table + v * dim + d, grad_out[e]);
  }
}

// ------------------------------------------------------------------------ random

// cpp/cpu/random.h on the device, bit for bit: element i of a draw keyed by `seed` is a
// hash of (seed, i), so the GPU draws the CPU's numbers.
__device__ uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__device__ double uniform_at(uint64_t seed, uint64_t index) {
  return static_cast<double>(splitmix64(seed ^ splitmix64(index)) >> 11) * 0x1.0p-53;
}

// NOTE: log1p and cos may differ from glibc's in the last bit of the double, which
// survives rounding to float only in rare ties.
__device__ double normal_at(uint64_t seed, uint64_t index) {
  const double u1 = uniform_at(seed, 2 * index);
  const double u2 = uniform_at(seed, 2 * index + 1);
  return sqrt(-2.0 * log1p(-u1)) * cos(6.283185307179586476925 * u2);
}

template <class T>
__global__ void dropout_kernel(T* mask, int64_t n, double rate, T keep_scale, uint64_t seed) {
  STEEPEST_GRID_STRIDE(i, n)
  mask[i] = uniform_at(seed, static_cast<uint64_t>(i)) < rate ? T(0) : keep_scale;
}

template <class T>
__global__ void random_kernel(T* out, int64_t n, bool normal, uint64_t seed) {
  STEEPEST_GRID_STRIDE(i, n) {
    const auto index = static_cast<uint64_t>(i);
    out[i] = static_cast<T>(normal ? normal_at(seed, index) : uniform_at(seed, index));
  }
}

int64_t rows_of(const Tensor& t) {
  const int64_t cols = t.shape().back();
  return cols ? t.numel() / cols : 0;
}

}  // namespace

void reduce(ReduceOp op, const Tensor& x, int64_t outer, int64_t extent, int64_t inner,
            Tensor& out, Tensor* argmax) {
  if (outer * inner == 0) return;
  DeviceGuard guard(x.device());
  const cudaStream_t stream = guard.stream();
  dispatch_float("reduce", x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* px = x.data<T>();
    T* po = out.data<T>();
    int64_t* pa = argmax ? argmax->data<int64_t>() : nullptr;
    if (inner > 1) {
      const dim3 grid = column_grid(outer, inner), block(kColumnTile, kColumnSplit);
      if (op == ReduceOp::Sum)
        sum_columns<<<grid, block, 0, stream>>>(px, outer, extent, inner, po);
      else
        max_columns<<<grid, block, 0, stream>>>(px, outer, extent, inner, po, pa);
      STEEPEST_CUDA_CHECK_LAUNCH();
      return;
    }
    if (op == ReduceOp::Max) {
      launch_rows(stream, outer, extent, max_rows<true, T>, max_rows<false, T>, px, outer, extent,
                  po, pa);
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
      launch_rows(stream, outer, extent, sum_rows<true, T>, sum_rows<false, T>, px, outer,
                  extent, int64_t{1}, po);
      return;
    }
    Tensor partial = Tensor::empty({outer, chunks}, x.dtype(), x.device());
    T* pp = partial.data<T>();
    launch_rows(stream, outer * chunks, extent, sum_rows<true, T>, sum_rows<false, T>, px,
                outer, extent, chunks, pp);
    launch_rows(stream, outer, chunks, sum_rows<true, T>, sum_rows<false, T>,
                static_cast<const T*>(pp), outer, chunks, int64_t{1}, po);
  });
}

void softmax_forward(const Tensor& x, Tensor& y, bool log) {
  const int64_t rows = rows_of(x), cols = x.shape().back();
  if (rows == 0) return;
  DeviceGuard guard(x.device());
  dispatch_float("softmax", x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_rows(guard.stream(), rows, cols, softmax_rows<true, T>, softmax_rows<false, T>,
                x.data<T>(), y.data<T>(), rows, cols, log);
  });
}

void softmax_backward(const Tensor& grad_y, const Tensor& y, Tensor& grad_x, bool log) {
  const int64_t rows = rows_of(y), cols = y.shape().back();
  if (rows == 0) return;
  DeviceGuard guard(y.device());
  dispatch_float("softmax", y.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_rows(guard.stream(), rows, cols, softmax_backward_rows<true, T>,
                softmax_backward_rows<false, T>, grad_y.data<T>(), y.data<T>(), grad_x.data<T>(),
                rows, cols, log);
  });
}

void cross_entropy_forward(const Tensor& logits, const Tensor& labels, Tensor& loss,
                           Tensor& logsumexp) {
  const int64_t classes = logits.shape().back();
  const int64_t rows = logits.numel() / std::max<int64_t>(classes, 1);
  if (rows == 0) return;
  DeviceGuard guard(logits.device());
  const cudaStream_t stream = guard.stream();
  dispatch_float("cross_entropy", logits.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* z = logits.data<T>();
    T* out = loss.data<T>();
    T* lse = logsumexp.data<T>();
    if (is_floating(labels.dtype())) {
      launch_rows(stream, rows, classes, cross_entropy_prob_rows<true, T>,
                  cross_entropy_prob_rows<false, T>, z, labels.data<T>(), out, lse, rows, classes);
      return;
    }
    dispatch_index("cross_entropy", labels.dtype(), [&](auto label_tag) {
      using L = typename decltype(label_tag)::type;
      IndexCheck check(guard);
      launch_rows(stream, rows, classes, cross_entropy_index_rows<true, T, L>,
                  cross_entropy_index_rows<false, T, L>, z, labels.data<L>(), out, lse, rows,
                  classes, check.slot());
      const int64_t r = check.first_bad(guard);
      if (r >= 0)
        fail<IndexError>("cross_entropy", "class index ", read_index(guard, labels, r),
                         " at labels[", r, "] is out of range for ", classes, " classes");
    });
  });
}

void cross_entropy_backward(const Tensor& logits, const Tensor& labels, const Tensor& logsumexp,
                            const Tensor& grad_loss, Tensor& grad_logits) {
  const int64_t classes = logits.shape().back();
  const int64_t rows = logits.numel() / std::max<int64_t>(classes, 1);
  if (rows == 0) return;
  DeviceGuard guard(logits.device());
  const cudaStream_t stream = guard.stream();
  dispatch_float("cross_entropy", logits.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* z = logits.data<T>();
    const T* lse = logsumexp.data<T>();
    const T* g = grad_loss.data<T>();
    T* gz = grad_logits.data<T>();
    if (is_floating(labels.dtype())) {
      launch_rows(stream, rows, classes, cross_entropy_prob_backward<true, T>,
                  cross_entropy_prob_backward<false, T>, z, labels.data<T>(), lse, g, gz, rows,
                  classes);
      return;
    }
    dispatch_index("cross_entropy", labels.dtype(), [&](auto label_tag) {
      using L = typename decltype(label_tag)::type;
      cross_entropy_index_backward<<<blocks_for(rows * classes), kThreads, 0, stream>>>(
          z, labels.data<L>(), lse, g, gz, rows, classes);
      STEEPEST_CUDA_CHECK_LAUNCH();
    });
  });
}

void layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                        Tensor& y, Tensor& mean, Tensor& rstd) {
  const int64_t rows = rows_of(x), cols = x.shape().back();
  if (rows == 0) return;
  DeviceGuard guard(x.device());
  dispatch_float("layer_norm", x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* w = weight.defined() ? weight.data<T>() : nullptr;
    const T* b = bias.defined() ? bias.data<T>() : nullptr;
    launch_rows(guard.stream(), rows, cols, layer_norm_rows<true, T>, layer_norm_rows<false, T>,
                x.data<T>(), w, b, static_cast<T>(eps), y.data<T>(), mean.data<T>(),
                rstd.data<T>(), rows, cols);
  });
}

void layer_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight,
                         const Tensor& mean, const Tensor& rstd, Tensor& grad_x,
                         Tensor* grad_weight, Tensor* grad_bias) {
  const int64_t rows = rows_of(x), cols = x.shape().back();
  DeviceGuard guard(x.device());
  dispatch_float("layer_norm", x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* w = weight.defined() ? weight.data<T>() : nullptr;
    if (rows > 0)
      launch_rows(guard.stream(), rows, cols, layer_norm_backward_rows<true, T>,
                  layer_norm_backward_rows<false, T>, grad_y.data<T>(), x.data<T>(), w,
                  mean.data<T>(), rstd.data<T>(), grad_x.data<T>(), rows, cols);
    if ((grad_weight || grad_bias) && cols > 0) {
      const auto tiles = static_cast<unsigned>((cols + kColumnTile - 1) / kColumnTile);
      layer_norm_param_grads<<<tiles, dim3(kColumnTile, kColumnSplit), 0, guard.stream()>>>(
          grad_y.data<T>(), x.data<T>(), mean.data<T>(), rstd.data<T>(),
          grad_weight ? grad_weight->data<T>() : nullptr,
          grad_bias ? grad_bias->data<T>() : nullptr, rows, cols);
      STEEPEST_CUDA_CHECK_LAUNCH();
    }
  });
}

void embedding_forward(const Tensor& indices, const Tensor& table, Tensor& out) {
  const int64_t vocab = table.shape()[0], dim = table.shape()[1], n = indices.numel();
  if (n * dim == 0) return;
  DeviceGuard guard(table.device());
  dispatch_float("embedding", table.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_index("embedding", indices.dtype(), [&](auto index_tag) {
      using I = typename decltype(index_tag)::type;
      IndexCheck check(guard);
      embedding_gather<<<blocks_for(n * dim), kThreads, 0, guard.stream()>>>(
          indices.data<I>(), table.data<T>(), out.data<T>(), n, vocab, dim, check.slot());
      STEEPEST_CUDA_CHECK_LAUNCH();
      const int64_t i = check.first_bad(guard);
      if (i >= 0)
        fail<IndexError>("embedding", "index ", read_index(guard, indices, i), " at position ", i,
                         " is out of range for a table of ", vocab, " rows");
    });
  });
}

void embedding_backward(const Tensor& indices, const Tensor& grad_out, Tensor& grad_table) {
  const int64_t vocab = grad_table.shape()[0], dim = grad_table.shape()[1], n = indices.numel();
  if (n * dim == 0) return;
  DeviceGuard guard(grad_table.device());
  dispatch_float("embedding", grad_table.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    dispatch_index("embedding", indices.dtype(), [&](auto index_tag) {
      using I = typename decltype(index_tag)::type;
      embedding_scatter<<<blocks_for(n * dim), kThreads, 0, guard.stream()>>>(
          indices.data<I>(), grad_out.data<T>(), grad_table.data<T>(), n, vocab, dim);
      STEEPEST_CUDA_CHECK_LAUNCH();
    });
  });
}

void dropout_mask(Tensor& mask, double rate, uint64_t seed) {
  const int64_t n = mask.numel();
  if (n == 0) return;
  DeviceGuard guard(mask.device());
  dispatch_float("dropout", mask.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    dropout_kernel<<<blocks_for(n), kThreads, 0, guard.stream()>>>(
        mask.data<T>(), n, rate, static_cast<T>(1.0 / (1.0 - rate)), seed);
    STEEPEST_CUDA_CHECK_LAUNCH();
  });
}

void random_fill(Tensor& out, RandomKind kind, uint64_t seed) {
  const int64_t n = out.numel();
  if (n == 0) return;
  DeviceGuard guard(out.device());
  dispatch_float("random", out.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    random_kernel<<<blocks_for(n), kThreads, 0, guard.stream()>>>(
        out.data<T>(), n, kind == RandomKind::Normal, seed);
    STEEPEST_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace steepest::cuda
