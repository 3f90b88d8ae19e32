// Row-wise neural-network kernels on the GPU: softmax / log-softmax, fused softmax +
// cross-entropy, layer norm, batch norm and embedding. The formulas are those of
// cpp/cpu/nn.cpp; only the summation order differs (trees of warps instead of one
// running sum). float16/bfloat16 storage S is computed in float
// (C = compute_t<S>): sums, row statistics and the logsumexp/mean/rstd tensors stay in
// float, and each stored value is rounded once.
//
// Row kernels give a row to a warp when it has at most 1024 columns, else to a block
// (common.cuh's launch_rows); the column kernels (inner > 1, parameter gradients) give
// each thread a column and split the rows over threadIdx.y.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "common.cuh"
#include "steepest/elementwise_rules.h"

namespace steepest::cuda {
namespace {

// ---------------------------------------------------------------- softmax family

// The seed's log-softmax shift, kept apart as on the CPU: m = max x and log Σ exp(x − m).
template <bool kWarp, class S, class C = compute_t<S>>
__device__ void row_shifted_logsum(const S* x, int64_t n, C& max, C& log_sum) {
  C m = neg_inf<C>();
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const C v = to_compute(x[i]);
    m = v > m ? v : m;
  }
  m = row_reduce<kWarp>(m, MaxOp{}, neg_inf<C>());
  max = m;
  if (isinf(m)) {
    log_sum = C(0);
    return;
  }
  C s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += exp(to_compute(x[i]) - m);
  log_sum = log(row_reduce<kWarp>(s, SumOp{}, C(0)));
}

template <bool kWarp, class S>
__global__ void softmax_rows(const S* x, S* y, int64_t rows, int64_t cols, bool log_output) {
  using C = compute_t<S>;
  const int64_t row = STEEPEST_ROW_INDEX();
  if (row >= rows) return;
  const S* xr = x + row * cols;
  S* yr = y + row * cols;
  C m, ls;
  row_shifted_logsum<kWarp>(xr, cols, m, ls);
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const C v = to_compute(xr[i]);
    yr[i] = to_storage<S>(log_output ? (v - m) - ls : exp((v - m) - ls));
  }
}

// softmax: dL/dz = G ⊙ p − (G·pᵀ) p; log-softmax: dL/dz = G − p Σ G (p = exp(y)).
template <bool kWarp, class S>
__global__ void softmax_backward_rows(const S* gy, const S* y, S* gx, int64_t rows,
                                      int64_t cols, bool log_output) {
  using C = compute_t<S>;
  const int64_t row = STEEPEST_ROW_INDEX();
  if (row >= rows) return;
  const S* g = gy + row * cols;
  const S* yr = y + row * cols;
  S* out = gx + row * cols;
  C dot = 0;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x)
    dot += log_output ? to_compute(g[i]) : to_compute(g[i]) * to_compute(yr[i]);
  dot = row_reduce<kWarp>(dot, SumOp{}, C(0));
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const C gi = to_compute(g[i]), yi = to_compute(yr[i]);
    out[i] = to_storage<S>(log_output ? gi - exp(yi) * dot : yi * (gi - dot));
  }
}

// L = −log p_label with log p = (z − m) − log Σ; a label outside [0, classes) is
// recorded in `bad` and never used as an address.
template <bool kWarp, class S, class L>
__global__ void cross_entropy_index_rows(const S* z, const L* labels, S* loss, compute_t<S>* lse,
                                         int64_t rows, int64_t classes,
                                         unsigned long long* bad) {
  using C = compute_t<S>;
  const int64_t row = STEEPEST_ROW_INDEX();
  if (row >= rows) return;
  const S* zr = z + row * classes;
  C m, ls;
  row_shifted_logsum<kWarp>(zr, classes, m, ls);
  if (threadIdx.x != 0) return;
  lse[2 * row] = m;
  lse[2 * row + 1] = ls;
  const auto c = static_cast<int64_t>(labels[row]);
  if (c < 0 || c >= classes) {
    atomicMin(bad, static_cast<unsigned long long>(row));
    loss[row] = to_storage<S>(C(NAN));
    return;
  }
  loss[row] = to_storage<S>(ls - (to_compute(zr[c]) - m));
}

// L = −Σ y_i log p_i over the nonzero targets.
template <bool kWarp, class S>
__global__ void cross_entropy_prob_rows(const S* z, const S* y, S* loss, compute_t<S>* lse,
                                        int64_t rows, int64_t classes) {
  using C = compute_t<S>;
  const int64_t row = STEEPEST_ROW_INDEX();
  if (row >= rows) return;
  const S* zr = z + row * classes;
  const S* yr = y + row * classes;
  C m, ls;
  row_shifted_logsum<kWarp>(zr, classes, m, ls);
  C acc = 0;
  for (int64_t i = threadIdx.x; i < classes; i += blockDim.x) {
    const C yi = to_compute(yr[i]);
    if (yi != C(0)) acc -= yi * ((to_compute(zr[i]) - m) - ls);
  }
  acc = row_reduce<kWarp>(acc, SumOp{}, C(0));
  if (threadIdx.x == 0) {
    lse[2 * row] = m;
    lse[2 * row + 1] = ls;
    loss[row] = to_storage<S>(acc);
  }
}

// grad = g_row · (p − onehot(label)): the seed's p − y.
template <class S, class L>
__global__ void cross_entropy_index_backward(const S* z, const L* labels, const compute_t<S>* lse,
                                             const S* grad_loss, S* grad, int64_t rows,
                                             int64_t classes) {
  using C = compute_t<S>;
  STEEPEST_GRID_STRIDE(e, rows * classes) {
    const int64_t row = e / classes, i = e - row * classes;
    const C g = to_compute(grad_loss[row]);
    const C p = exp((to_compute(z[e]) - lse[2 * row]) - lse[2 * row + 1]);
    grad[e] = to_storage<S>(g * p - (static_cast<int64_t>(labels[row]) == i ? g : C(0)));
  }
}

// −y + p Σy: the seed's derivation before assuming Σy = 1.
template <bool kWarp, class S>
__global__ void cross_entropy_prob_backward(const S* z, const S* y, const compute_t<S>* lse,
                                            const S* grad_loss, S* grad, int64_t rows,
                                            int64_t classes) {
  using C = compute_t<S>;
  const int64_t row = STEEPEST_ROW_INDEX();
  if (row >= rows) return;
  const S* zr = z + row * classes;
  const S* yr = y + row * classes;
  S* out = grad + row * classes;
  C total = 0;
  for (int64_t i = threadIdx.x; i < classes; i += blockDim.x) total += to_compute(yr[i]);
  total = row_reduce<kWarp>(total, SumOp{}, C(0));
  const C g = to_compute(grad_loss[row]), m = lse[2 * row], ls = lse[2 * row + 1];
  for (int64_t i = threadIdx.x; i < classes; i += blockDim.x)
    out[i] = to_storage<S>(g * (exp((to_compute(zr[i]) - m) - ls) * total - to_compute(yr[i])));
}

// ------------------------------------------------------------------- layer norm

// One row of layer norm, by the row's threads; w and b may be null. mean and rstd are C:
// the row statistics stay in float for 16-bit x.
template <bool kWarp, class S, class C = compute_t<S>>
__device__ void normalize_row(const S* xr, const S* w, const S* b, C eps, S* yr, C* mean,
                              C* rstd, int64_t row, int64_t cols) {
  C mu = 0;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) mu += to_compute(xr[i]);
  mu = row_reduce<kWarp>(mu, SumOp{}, C(0)) / static_cast<C>(cols);
  C var = 0;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const C d = to_compute(xr[i]) - mu;
    var += d * d;
  }
  var = row_reduce<kWarp>(var, SumOp{}, C(0)) / static_cast<C>(cols);
  const C rs = C(1) / sqrt(var + eps);
  if (threadIdx.x == 0) {
    mean[row] = mu;
    rstd[row] = rs;
  }
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    C v = (to_compute(xr[i]) - mu) * rs;
    if (w) v *= to_compute(w[i]);
    if (b) v += to_compute(b[i]);
    yr[i] = to_storage<S>(v);
  }
}

template <bool kWarp, class S>
__global__ void layer_norm_rows(const S* x, const S* w, const S* b, compute_t<S> eps, S* y,
                                compute_t<S>* mean, compute_t<S>* rstd, int64_t rows,
                                int64_t cols) {
  const int64_t row = STEEPEST_ROW_INDEX();
  if (row >= rows) return;
  normalize_row<kWarp>(x + row * cols, w, b, eps, y + row * cols, mean, rstd, row, cols);
}

// sum = x + y + bias, then (out given) layer norm of the stored sum. Each thread reads back
// only the elements it wrote itself, so no barrier is needed between the two.
template <bool kWarp, class S>
__global__ void add_layer_norm_rows(const S* x, const S* y, const S* bias, const S* w,
                                    const S* b, compute_t<S> eps, S* sum, S* out,
                                    compute_t<S>* mean, compute_t<S>* rstd, int64_t rows,
                                    int64_t cols) {
  using C = compute_t<S>;
  const int64_t row = STEEPEST_ROW_INDEX();
  if (row >= rows) return;
  S* sr = sum + row * cols;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    C v = to_compute(x[row * cols + i]) + to_compute(y[row * cols + i]);
    if (bias) v += to_compute(bias[i]);
    sr[i] = to_storage<S>(v);
  }
  if (out) normalize_row<kWarp>(sr, w, b, eps, out + row * cols, mean, rstd, row, cols);
}

// ------------------------------------------------------------------- bias + GELU

template <class S>
__global__ void bias_gelu_kernel(const S* x, const S* bias, S* out, int64_t n, int64_t cols) {
  using C = compute_t<S>;
  const elementwise::Gelu<elementwise::Math> gelu;
  STEEPEST_GRID_STRIDE(e, n) {
    out[e] = to_storage<S>(gelu(to_compute(x[e]) + to_compute(bias[e % cols]), C(0)));
  }
}

template <class S>
__global__ void bias_gelu_backward_kernel(const S* g, const S* x, const S* bias, S* gx,
                                          int64_t n, int64_t cols) {
  using C = compute_t<S>;
  const elementwise::GeluGrad<elementwise::Math> gelu_grad;
  STEEPEST_GRID_STRIDE(e, n) {
    gx[e] = to_storage<S>(
        gelu_grad(to_compute(g[e]), to_compute(x[e]) + to_compute(bias[e % cols]), C(0)));
  }
}

// out[c] = Σ_rows a[r, c]: a thread per column, the rows split over threadIdx.y.
template <class S>
__global__ void column_sums(const S* a, S* out, int64_t rows, int64_t cols) {
  using C = compute_t<S>;
  __shared__ C shared[kThreads];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  C acc = 0;
  if (c < cols)
    for (int64_t r = threadIdx.y; r < rows; r += blockDim.y) acc += to_compute(a[r * cols + c]);
  acc = column_combine(acc, shared, SumOp{});
  if (threadIdx.y == 0 && c < cols) out[c] = to_storage<S>(acc);
}

// dx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂)) with x̂ = (x − μ)·rstd and ĝ = G ⊙ w.
template <bool kWarp, class S>
__global__ void layer_norm_backward_rows(const S* gy, const S* x, const S* w,
                                         const compute_t<S>* mean, const compute_t<S>* rstd,
                                         S* gx, int64_t rows, int64_t cols) {
  using C = compute_t<S>;
  const int64_t row = STEEPEST_ROW_INDEX();
  if (row >= rows) return;
  const S* g = gy + row * cols;
  const S* xr = x + row * cols;
  S* out = gx + row * cols;
  const C mu = mean[row], rs = rstd[row];
  C mean_g = 0, mean_gx = 0;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const C gh = w ? to_compute(g[i]) * to_compute(w[i]) : to_compute(g[i]);
    mean_g += gh;
    mean_gx += gh * ((to_compute(xr[i]) - mu) * rs);
  }
  mean_g = row_reduce<kWarp>(mean_g, SumOp{}, C(0)) / static_cast<C>(cols);
  mean_gx = row_reduce<kWarp>(mean_gx, SumOp{}, C(0)) / static_cast<C>(cols);
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    const C gh = w ? to_compute(g[i]) * to_compute(w[i]) : to_compute(g[i]);
    out[i] = to_storage<S>(rs * (gh - mean_g - (to_compute(xr[i]) - mu) * rs * mean_gx));
  }
}

// dw = Σ_rows G ⊙ x̂, db = Σ_rows G: column sums, a thread per column.
template <class S>
__global__ void layer_norm_param_grads(const S* gy, const S* x, const compute_t<S>* mean,
                                       const compute_t<S>* rstd, S* gw, S* gb, int64_t rows,
                                       int64_t cols) {
  using C = compute_t<S>;
  __shared__ C shared[kThreads];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  C acc_w = 0, acc_b = 0;
  if (c < cols)
    for (int64_t r = threadIdx.y; r < rows; r += blockDim.y) {
      const C g = to_compute(gy[r * cols + c]);
      acc_w += g * (to_compute(x[r * cols + c]) - mean[r]) * rstd[r];
      acc_b += g;
    }
  acc_w = column_combine(acc_w, shared, SumOp{});
  __syncthreads();
  acc_b = column_combine(acc_b, shared, SumOp{});
  if (threadIdx.y == 0 && c < cols) {
    if (gw) gw[c] = to_storage<S>(acc_w);
    if (gb) gb[c] = to_storage<S>(acc_b);
  }
}

// -------------------------------------------------------------------- batch norm

// x is (outer, channels, inner); a block per channel (grid-stride over channels) sums
// its outer·inner values in double: Σx, then Σ(x − μ)² (two passes, no cancellation).
template <class S>
__global__ void batch_norm_channel_stats(const S* x, int64_t outer, int64_t channels,
                                         int64_t inner, compute_t<S>* mean, compute_t<S>* var) {
  const int64_t count = outer * inner;
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    double s = 0.0;
    for (int64_t e = threadIdx.x; e < count; e += blockDim.x) {
      const int64_t o = e / inner, i = e - o * inner;
      s += static_cast<double>(to_compute(x[(o * channels + c) * inner + i]));
    }
    const double mu = row_reduce<false>(s, SumOp{}, 0.0) / static_cast<double>(count);
    double q = 0.0;
    for (int64_t e = threadIdx.x; e < count; e += blockDim.x) {
      const int64_t o = e / inner, i = e - o * inner;
      const double d = static_cast<double>(to_compute(x[(o * channels + c) * inner + i])) - mu;
      q += d * d;
    }
    q = row_reduce<false>(q, SumOp{}, 0.0);
    if (threadIdx.x == 0) {
      mean[c] = static_cast<compute_t<S>>(mu);
      var[c] = static_cast<compute_t<S>>(q / static_cast<double>(count));
    }
  }
}

template <class S>
__global__ void batch_norm_apply_kernel(const S* x, int64_t n, int64_t channels, int64_t inner,
                                        const compute_t<S>* mean, const compute_t<S>* rstd,
                                        const S* w, const S* b, S* y) {
  using C = compute_t<S>;
  STEEPEST_GRID_STRIDE(e, n) {
    const int64_t c = (e / inner) % channels;
    C v = (to_compute(x[e]) - mean[c]) * rstd[c];
    if (w) v *= to_compute(w[c]);
    if (b) v += to_compute(b[c]);
    y[e] = to_storage<S>(v);
  }
}

// Per channel Σg and Σg·x̂ (sums: 2 per channel, C), and dγ = Σg·x̂, dβ = Σg.
template <class S>
__global__ void batch_norm_channel_grads(const S* gy, const S* x, int64_t outer, int64_t channels,
                                         int64_t inner, const compute_t<S>* mean,
                                         const compute_t<S>* rstd, compute_t<S>* sums, S* gw,
                                         S* gb) {
  using C = compute_t<S>;
  const int64_t count = outer * inner;
  for (int64_t c = blockIdx.x; c < channels; c += gridDim.x) {
    double sg = 0.0, sgx = 0.0;
    const double m = mean[c], r = rstd[c];
    for (int64_t e = threadIdx.x; e < count; e += blockDim.x) {
      const int64_t o = e / inner, i = e - o * inner;
      const int64_t at = (o * channels + c) * inner + i;
      const double g = static_cast<double>(to_compute(gy[at]));
      sg += g;
      sgx += g * ((static_cast<double>(to_compute(x[at])) - m) * r);
    }
    sg = row_reduce<false>(sg, SumOp{}, 0.0);
    sgx = row_reduce<false>(sgx, SumOp{}, 0.0);
    if (threadIdx.x == 0) {
      sums[2 * c] = static_cast<C>(sg);
      sums[2 * c + 1] = static_cast<C>(sgx);
      if (gw) gw[c] = to_storage<S>(static_cast<C>(sgx));
      if (gb) gb[c] = to_storage<S>(static_cast<C>(sg));
    }
  }
}

// dx = γ·rstd·(g − mean(g) − x̂·mean(g·x̂)) with batch statistics, γ·rstd·g without
// (sums null): see cpp/cpu/nn.cpp's batch_norm_backward.
template <class S>
__global__ void batch_norm_grad_input(const S* gy, const S* x, int64_t n, int64_t channels,
                                      int64_t inner, int64_t count, const compute_t<S>* mean,
                                      const compute_t<S>* rstd, const S* w,
                                      const compute_t<S>* sums, S* gx) {
  using C = compute_t<S>;
  STEEPEST_GRID_STRIDE(e, n) {
    const int64_t c = (e / inner) % channels;
    const C r = rstd[c], a = w ? to_compute(w[c]) * r : r;
    C v = to_compute(gy[e]);
    if (sums) {
      const C inv = C(1) / static_cast<C>(count);
      v -= sums[2 * c] * inv + (to_compute(x[e]) - mean[c]) * r * (sums[2 * c + 1] * inv);
    }
    gx[e] = to_storage<S>(a * v);
  }
}

// --------------------------------------------------------------------- embedding

// Rows are copied as stored.
template <class S, class I>
__global__ void embedding_gather(const I* indices, const S* table, S* out, int64_t n,
                                 int64_t vocab, int64_t dim, unsigned long long* bad) {
  STEEPEST_GRID_STRIDE(e, n * dim) {
    const int64_t i = e / dim, d = e - i * dim;
    const auto v = static_cast<int64_t>(indices[i]);
    if (v < 0 || v >= vocab) {
      atomicMin(bad, static_cast<unsigned long long>(i));
      out[e] = to_storage<S>(compute_t<S>(0));
    } else {
      out[e] = table[v * dim + d];
    }
  }
}

// Scatter-add into a table of the compute type: repeated indices add up through
// atomics (order-dependent in the last bits, like PyTorch's embedding backward on CUDA).
template <class S, class I>
__global__ void embedding_scatter(const I* indices, const S* grad_out, compute_t<S>* grad_table,
                                  int64_t n, int64_t vocab, int64_t dim) {
  STEEPEST_GRID_STRIDE(e, n * dim) {
    const int64_t i = e / dim, d = e - i * dim;
    const auto v = static_cast<int64_t>(indices[i]);
    if (v >= 0 && v < vocab) atomicAdd(grad_table + v * dim + d, to_compute(grad_out[e]));
  }
}

}  // namespace

void softmax_forward(const Tensor& x, Tensor& y, bool log) {
  const int64_t rows = rows_of(x), cols = x.shape().back();
  if (rows == 0) return;
  DeviceGuard guard(x.device());
  dispatch_float_storage("softmax", x.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    launch_rows(guard.stream(), rows, cols, softmax_rows<true, S>, softmax_rows<false, S>,
                x.data<S>(), y.data<S>(), rows, cols, log);
  });
}

void softmax_backward(const Tensor& grad_y, const Tensor& y, Tensor& grad_x, bool log) {
  const int64_t rows = rows_of(y), cols = y.shape().back();
  if (rows == 0) return;
  DeviceGuard guard(y.device());
  dispatch_float_storage("softmax", y.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    launch_rows(guard.stream(), rows, cols, softmax_backward_rows<true, S>,
                softmax_backward_rows<false, S>, grad_y.data<S>(), y.data<S>(), grad_x.data<S>(),
                rows, cols, log);
  });
}

void cross_entropy_forward(const Tensor& logits, const Tensor& labels, Tensor& loss,
                           Tensor& logsumexp) {
  const int64_t classes = logits.shape().back();
  const int64_t rows = rows_of(logits);
  if (rows == 0) return;
  DeviceGuard guard(logits.device());
  const cudaStream_t stream = guard.stream();
  dispatch_float_storage("cross_entropy", logits.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    const S* z = logits.data<S>();
    S* out = loss.data<S>();
    C* lse = logsumexp.data<C>();
    if (is_floating(labels.dtype())) {
      launch_rows(stream, rows, classes, cross_entropy_prob_rows<true, S>,
                  cross_entropy_prob_rows<false, S>, z, labels.data<S>(), out, lse, rows, classes);
      return;
    }
    dispatch_index("cross_entropy", labels.dtype(), [&](auto label_tag) {
      using L = typename decltype(label_tag)::type;
      IndexCheck check(guard);
      launch_rows(stream, rows, classes, cross_entropy_index_rows<true, S, L>,
                  cross_entropy_index_rows<false, S, L>, z, labels.data<L>(), out, lse, rows,
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
  const int64_t rows = rows_of(logits);
  if (rows == 0) return;
  DeviceGuard guard(logits.device());
  const cudaStream_t stream = guard.stream();
  dispatch_float_storage("cross_entropy", logits.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    const S* z = logits.data<S>();
    const C* lse = logsumexp.data<C>();
    const S* g = grad_loss.data<S>();
    S* gz = grad_logits.data<S>();
    if (is_floating(labels.dtype())) {
      launch_rows(stream, rows, classes, cross_entropy_prob_backward<true, S>,
                  cross_entropy_prob_backward<false, S>, z, labels.data<S>(), lse, g, gz, rows,
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
  dispatch_float_storage("layer_norm", x.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    const S* w = weight.defined() ? weight.data<S>() : nullptr;
    const S* b = bias.defined() ? bias.data<S>() : nullptr;
    launch_rows(guard.stream(), rows, cols, layer_norm_rows<true, S>, layer_norm_rows<false, S>,
                x.data<S>(), w, b, static_cast<C>(eps), y.data<S>(), mean.data<C>(),
                rstd.data<C>(), rows, cols);
  });
}

void layer_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight,
                         const Tensor& mean, const Tensor& rstd, Tensor& grad_x,
                         Tensor* grad_weight, Tensor* grad_bias) {
  const int64_t rows = rows_of(x), cols = x.shape().back();
  DeviceGuard guard(x.device());
  dispatch_float_storage("layer_norm", x.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    const S* w = weight.defined() ? weight.data<S>() : nullptr;
    if (rows > 0)
      launch_rows(guard.stream(), rows, cols, layer_norm_backward_rows<true, S>,
                  layer_norm_backward_rows<false, S>, grad_y.data<S>(), x.data<S>(), w,
                  mean.data<C>(), rstd.data<C>(), grad_x.data<S>(), rows, cols);
    if ((grad_weight || grad_bias) && cols > 0) {
      const auto tiles = static_cast<unsigned>((cols + kColumnTile - 1) / kColumnTile);
      layer_norm_param_grads<<<tiles, dim3(kColumnTile, kColumnSplit), 0, guard.stream()>>>(
          grad_y.data<S>(), x.data<S>(), mean.data<C>(), rstd.data<C>(),
          grad_weight ? grad_weight->data<S>() : nullptr,
          grad_bias ? grad_bias->data<S>() : nullptr, rows, cols);
      STEEPEST_CUDA_CHECK_LAUNCH();
    }
  });
}

void bias_gelu_forward(const Tensor& x, const Tensor& bias, Tensor& out) {
  const int64_t n = x.numel(), cols = x.shape().back();
  if (n == 0) return;
  DeviceGuard guard(x.device());
  dispatch_float_storage("bias_gelu", x.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    bias_gelu_kernel<<<blocks_for(n), kThreads, 0, guard.stream()>>>(
        x.data<S>(), bias.data<S>(), out.data<S>(), n, cols);
    STEEPEST_CUDA_CHECK_LAUNCH();
  });
}

void bias_gelu_backward(const Tensor& grad_out, const Tensor& x, const Tensor& bias,
                        Tensor& grad_x, Tensor* grad_bias) {
  const int64_t n = x.numel(), cols = x.shape().back(), rows = rows_of(x);
  DeviceGuard guard(x.device());
  dispatch_float_storage("bias_gelu", x.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    if (n > 0) {
      bias_gelu_backward_kernel<<<blocks_for(n), kThreads, 0, guard.stream()>>>(
          grad_out.data<S>(), x.data<S>(), bias.data<S>(), grad_x.data<S>(), n, cols);
      STEEPEST_CUDA_CHECK_LAUNCH();
    }
    if (grad_bias && cols > 0) {
      const auto tiles = static_cast<unsigned>((cols + kColumnTile - 1) / kColumnTile);
      column_sums<<<tiles, dim3(kColumnTile, kColumnSplit), 0, guard.stream()>>>(
          grad_x.data<S>(), grad_bias->data<S>(), rows, cols);
      STEEPEST_CUDA_CHECK_LAUNCH();
    }
  });
}

void add_layer_norm_forward(const Tensor& x, const Tensor& y, const Tensor& bias,
                            const Tensor& weight, const Tensor& ln_bias, double eps,
                            Tensor& sum, Tensor* out, Tensor* mean, Tensor* rstd) {
  const int64_t rows = rows_of(x), cols = x.shape().back();
  if (rows == 0) return;
  DeviceGuard guard(x.device());
  dispatch_float_storage("add_layer_norm", x.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    auto data = [](const Tensor& t) { return t.defined() ? t.data<S>() : nullptr; };
    launch_rows(guard.stream(), rows, cols, add_layer_norm_rows<true, S>,
                add_layer_norm_rows<false, S>, x.data<S>(), y.data<S>(), data(bias),
                data(weight), data(ln_bias), static_cast<C>(eps), sum.data<S>(),
                out ? out->data<S>() : nullptr, mean ? mean->data<C>() : nullptr,
                rstd ? rstd->data<C>() : nullptr, rows, cols);
  });
}

namespace {

unsigned channel_blocks(int64_t channels) {
  return static_cast<unsigned>(std::min<int64_t>(channels, kMaxBlocks));
}

}  // namespace

void batch_norm_stats(const Tensor& x, int64_t outer, int64_t channels, int64_t inner,
                      Tensor& mean, Tensor& var) {
  if (channels == 0) return;
  DeviceGuard guard(x.device());
  dispatch_float_storage("batch_norm", x.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    batch_norm_channel_stats<<<channel_blocks(channels), kThreads, 0, guard.stream()>>>(
        x.data<S>(), outer, channels, inner, mean.data<C>(), var.data<C>());
    STEEPEST_CUDA_CHECK_LAUNCH();
  });
}

void batch_norm_apply(const Tensor& x, int64_t outer, int64_t channels, int64_t inner,
                      const Tensor& mean, const Tensor& rstd, const Tensor& weight,
                      const Tensor& bias, Tensor& y) {
  const int64_t n = outer * channels * inner;
  if (n == 0) return;
  DeviceGuard guard(x.device());
  dispatch_float_storage("batch_norm", x.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    batch_norm_apply_kernel<<<blocks_for(n), kThreads, 0, guard.stream()>>>(
        x.data<S>(), n, channels, inner, mean.data<C>(), rstd.data<C>(),
        weight.defined() ? weight.data<S>() : nullptr, bias.defined() ? bias.data<S>() : nullptr,
        y.data<S>());
    STEEPEST_CUDA_CHECK_LAUNCH();
  });
}

void batch_norm_backward(const Tensor& grad_y, const Tensor& x, int64_t outer, int64_t channels,
                         int64_t inner, const Tensor& mean, const Tensor& rstd,
                         const Tensor& weight, bool batch_stats, Tensor* grad_x,
                         Tensor* grad_weight, Tensor* grad_bias) {
  const int64_t n = outer * channels * inner;
  if (channels == 0) return;
  DeviceGuard guard(x.device());
  dispatch_float_storage("batch_norm", x.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    const bool need_sums = grad_weight || grad_bias || (grad_x && batch_stats);
    Tensor sums;
    if (need_sums) {
      sums = Tensor::empty({2 * channels}, compute_dtype(x.dtype()), x.device());
      batch_norm_channel_grads<<<channel_blocks(channels), kThreads, 0, guard.stream()>>>(
          grad_y.data<S>(), x.data<S>(), outer, channels, inner, mean.data<C>(), rstd.data<C>(),
          sums.data<C>(), grad_weight ? grad_weight->data<S>() : nullptr,
          grad_bias ? grad_bias->data<S>() : nullptr);
      STEEPEST_CUDA_CHECK_LAUNCH();
    }
    if (grad_x && n > 0) {
      batch_norm_grad_input<<<blocks_for(n), kThreads, 0, guard.stream()>>>(
          grad_y.data<S>(), x.data<S>(), n, channels, inner, outer * inner, mean.data<C>(),
          rstd.data<C>(), weight.defined() ? weight.data<S>() : nullptr,
          batch_stats ? sums.data<C>() : nullptr, grad_x->data<S>());
      STEEPEST_CUDA_CHECK_LAUNCH();
    }
  });
}

void embedding_forward(const Tensor& indices, const Tensor& table, Tensor& out) {
  const int64_t vocab = table.shape()[0], dim = table.shape()[1], n = indices.numel();
  if (n * dim == 0) return;
  DeviceGuard guard(table.device());
  dispatch_float_storage("embedding", table.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    dispatch_index("embedding", indices.dtype(), [&](auto index_tag) {
      using I = typename decltype(index_tag)::type;
      IndexCheck check(guard);
      embedding_gather<<<blocks_for(n * dim), kThreads, 0, guard.stream()>>>(
          indices.data<I>(), table.data<S>(), out.data<S>(), n, vocab, dim, check.slot());
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
  dispatch_float_storage("embedding", grad_table.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    // A 16-bit table sums in a float copy and is rounded once at the end, as on the CPU:
    // 16-bit atomics would round every addition, losing a row's small contributions.
    constexpr bool kWiden = !std::is_same_v<S, C>;
    Tensor acc = grad_table;
    if constexpr (kWiden) {
      acc = Tensor::empty(grad_table.shape(), compute_dtype(grad_table.dtype()),
                          grad_table.device());
      cuda::copy(grad_table, acc);
    }
    dispatch_index("embedding", indices.dtype(), [&](auto index_tag) {
      using I = typename decltype(index_tag)::type;
      embedding_scatter<<<blocks_for(n * dim), kThreads, 0, guard.stream()>>>(
          indices.data<I>(), grad_out.data<S>(), acc.data<C>(), n, vocab, dim);
      STEEPEST_CUDA_CHECK_LAUNCH();
    });
    if constexpr (kWiden) cuda::copy(acc, grad_table);
  });
}

}  // namespace steepest::cuda
