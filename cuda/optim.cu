// Fused optimizer updates on the GPU: one launch per parameter for the elementwise rules
// (steepest/update_rules.h, shared with cpp/cpu/optim.cpp), and for the rules that need a
// whole-tensor quantity (clipping's Σg², Lamb's trust ratio, Adafactor's RMS(U)) a two-pass
// reduction in double whose result the host reads back (that read synchronises).
//
// Reductions use a fixed grid and add their per-block partials in block order, so a
// result is the same from run to run on a given GPU.
#include <algorithm>
#include <array>
#include <cmath>

#include "common.cuh"
#include "steepest/update_rules.h"

namespace steepest::cuda {
namespace {

template <int K>
struct Sums {
  double v[K];
};

// Block partials of Σ f(i): f adds into a Sums<K>; partial holds K rows of gridDim.x.
template <int K, class F>
__global__ void reduce_partials(int64_t n, F f, double* partial) {
  Sums<K> acc{};
  STEEPEST_GRID_STRIDE(i, n) f(i, acc);
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const double total = row_reduce<false>(acc.v[k], SumOp{}, 0.0);
    if (threadIdx.x == 0) partial[k * gridDim.x + blockIdx.x] = total;
  }
}

template <int K>
__global__ void reduce_finish(const double* partial, int blocks, double* out) {
#pragma unroll
  for (int k = 0; k < K; ++k) {
    double acc = 0.0;
    for (int b = threadIdx.x; b < blocks; b += blockDim.x) acc += partial[k * blocks + b];
    acc = row_reduce<false>(acc, SumOp{}, 0.0);
    if (threadIdx.x == 0) out[k] = acc;
  }
}

// Σ f(i) over [0, n), K sums at once, read back to the host.
template <int K, class F>
std::array<double, K> device_sum(const DeviceGuard& guard, int64_t n, F f) {
  std::array<double, K> result{};
  if (n == 0) return result;
  constexpr int64_t kMaxPartials = 1024;
  const auto blocks = static_cast<int>(std::min<int64_t>(blocks_for(n), kMaxPartials));
  Tensor buffer = Tensor::empty({K * (blocks + 1)}, DType::Float64,
                                Device{DeviceType::CUDA, guard.index()});
  double* partial = buffer.data<double>();
  reduce_partials<K><<<blocks, kThreads, 0, guard.stream()>>>(n, f, partial);
  STEEPEST_CUDA_CHECK_LAUNCH();
  reduce_finish<K><<<1, kThreads, 0, guard.stream()>>>(partial, blocks, partial + K * blocks);
  STEEPEST_CUDA_CHECK_LAUNCH();
  read_back(guard, result.data(), partial + K * blocks, sizeof(double) * K);
  return result;
}

template <class F>
__global__ void for_each_kernel(int64_t n, F f) {
  STEEPEST_GRID_STRIDE(i, n) f(i);
}

template <class F>
void for_each(const DeviceGuard& guard, int64_t n, F f) {
  if (n == 0) return;
  for_each_kernel<<<blocks_for(n), kThreads, 0, guard.stream()>>>(n, f);
  STEEPEST_CUDA_CHECK_LAUNCH();
}

// ------------------------------------------------------------------ SGD and RMSProp

template <class T>
struct SgdStep {
  T* p;
  const T* g;
  T* v;
  rules::Sgd<T> c;
  __device__ void operator()(int64_t i) const {
    if (v)
      rules::sgd_momentum_step(p[i], g[i], v[i], c);
    else
      rules::sgd_step(p[i], g[i], c);
  }
};

template <class T>
struct AdagradStep {
  T* p;
  const T* g;
  T* sum_square;
  rules::Adagrad<T> c;
  __device__ void operator()(int64_t i) const { rules::adagrad_step(p[i], g[i], sum_square[i], c); }
};

template <class T>
struct LionStep {
  T* p;
  const T* g;
  T* m;
  rules::Lion<T> c;
  __device__ void operator()(int64_t i) const { rules::lion_step(p[i], g[i], m[i], c); }
};

template <class T>
struct SophiaStep {
  T* p;
  const T* g;
  T* m;
  const T* h;
  rules::Sophia<T> c;
  __device__ void operator()(int64_t i) const { rules::sophia_step(p[i], g[i], m[i], h[i], c); }
};

template <class T>
struct RmspropStep {
  T* p;
  const T* g;
  T* e2;
  rules::Rmsprop<T> c;
  __device__ void operator()(int64_t i) const { rules::rmsprop_step(p[i], g[i], e2[i], c); }
};

// --------------------------------------------------------------------- Adam family

template <class T>
struct AdamStep {
  T* p;
  const T* g;
  T* m;
  T* v;
  rules::Adam<T> c;
  __device__ void operator()(int64_t i) const { rules::adam_step(p[i], g[i], m[i], v[i], c); }
};

// Moments, then Σθ² and Σ(r + λθ)² for the trust ratio.
template <class T>
struct LambMoments {
  const T* p;
  const T* g;
  T* m;
  T* v;
  rules::Adam<T> c;
  __device__ void operator()(int64_t i, Sums<2>& acc) const {
    const T u = rules::lamb_moments_step(p[i], g[i], m[i], v[i], c);
    acc.v[0] += static_cast<double>(p[i]) * p[i];
    acc.v[1] += static_cast<double>(u) * u;
  }
};

template <class T>
struct LambApply {
  T* p;
  const T* m;
  const T* v;
  rules::Adam<T> c;
  __device__ void operator()(int64_t i) const { rules::lamb_apply_step(p[i], m[i], v[i], c); }
};

template <class T>
struct SquareSum {
  const T* x;
  __device__ void operator()(int64_t i, Sums<1>& acc) const {
    const double value = x[i];
    acc.v[0] += value * value;
  }
};

// ------------------------------------------------------------------------ Adafactor

// R = β̂R + (1−β̂)·mean_j(g² + ε₁) for every row of every matrix.
template <bool kWarp, class T>
__global__ void adafactor_row_means(const T* g, T* row, int64_t all_rows, int64_t cols, T s,
                                    double beta, double eps1) {
  const int64_t r = STEEPEST_ROW_INDEX();
  if (r >= all_rows) return;
  double acc = 0.0;
  for (int64_t j = threadIdx.x; j < cols; j += blockDim.x)
    acc += rules::scaled_square(s, g[r * cols + j]);
  acc = row_reduce<kWarp>(acc, SumOp{}, 0.0);
  if (threadIdx.x == 0) row[r] = rules::factor_ema(row[r], acc / static_cast<double>(cols), beta, eps1);
}

// C = β̂C + (1−β̂)·mean_i(g² + ε₁): thread x owns column j of matrix blockIdx.y.
template <class T>
__global__ void adafactor_column_means(const T* g, T* col, Factored f, T s, double beta,
                                       double eps1) {
  __shared__ double shared[kThreads];
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (int64_t b = blockIdx.y; b < f.batch; b += gridDim.y) {
    double acc = 0.0;
    if (j < f.cols)
      for (int64_t i = threadIdx.y; i < f.rows; i += blockDim.y)
        acc += rules::scaled_square(s, g[(b * f.rows + i) * f.cols + j]);
    shared[threadIdx.y * blockDim.x + threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && j < f.cols) {
      for (unsigned y = 1; y < blockDim.y; ++y) acc += shared[y * blockDim.x + threadIdx.x];
      T& c = col[b * f.cols + j];
      c = rules::factor_ema(c, acc / static_cast<double>(f.rows), beta, eps1);
    }
    __syncthreads();
  }
}

// Adafactor's v̂_ij = R_i C_j / mean_i(R) as reciprocal square roots per row and column
// (cpp/cpu/optim.cpp's factored_inverses): a block per matrix for the rows.
template <class T>
__global__ void adafactor_row_inverses(const T* row, int64_t rows, T* inv_row) {
  const int64_t b = blockIdx.x;
  double mean = 0.0;
  for (int64_t i = threadIdx.x; i < rows; i += blockDim.x) mean += row[b * rows + i];
  mean = row_reduce<false>(mean, SumOp{}, 0.0) / static_cast<double>(rows);
  for (int64_t i = threadIdx.x; i < rows; i += blockDim.x)
    inv_row[b * rows + i] = static_cast<T>(rules::inverse_root(row[b * rows + i] / mean));
}

template <class T>
struct ColumnInverse {
  const T* col;
  T* inv_col;
  __device__ void operator()(int64_t j) const {
    inv_col[j] = static_cast<T>(rules::inverse_root(col[j]));
  }
};

template <class T>
struct FactoredUpdateSquares {
  const T* g;
  const T* inv_row;
  const T* inv_col;
  Factored f;
  T s;
  __device__ void operator()(int64_t e, Sums<1>& acc) const {
    const int64_t r = e / f.cols, j = e - r * f.cols;
    const double u = rules::factored_u(s, g[e], inv_row[r], inv_col[(r / f.rows) * f.cols + j]);
    acc.v[0] += u * u;
  }
};

template <class T>
struct FactoredApply {
  T* p;
  const T* g;
  const T* inv_row;
  const T* inv_col;
  Factored f;
  T s, keep, alpha;
  __device__ void operator()(int64_t e) const {
    const int64_t r = e / f.cols, j = e - r * f.cols;
    const T u = rules::factored_u(s, g[e], inv_row[r], inv_col[(r / f.rows) * f.cols + j]);
    p[e] = keep * p[e] - alpha * u;
  }
};

// The full (unfactored) second moment: v = β̂v + (1−β̂)(g² + ε₁), Σ (g/√v)².
template <class T>
struct FullMoments {
  const T* g;
  T* v;
  T beta, mix, eps1, s;
  __device__ void operator()(int64_t i, Sums<1>& acc) const {
    const T vi = rules::full_moment(s * g[i], v[i], beta, mix, eps1);
    v[i] = vi;
    const T u = rules::full_u(s, g[i], vi);
    acc.v[0] += static_cast<double>(u) * u;
  }
};

template <class T>
struct FullApply {
  T* p;
  const T* g;
  const T* v;
  T s, keep, alpha;
  __device__ void operator()(int64_t i) const {
    p[i] = keep * p[i] - alpha * rules::full_u(s, g[i], v[i]);
  }
};

// inv_row (batch·rows) and inv_col (batch·cols) from the factored moment.
template <class T>
void factored_inverses(const DeviceGuard& guard, const T* row, const T* col, const Factored& f,
                       T* inv_row, T* inv_col) {
  adafactor_row_inverses<<<static_cast<unsigned>(f.batch), kThreads, 0, guard.stream()>>>(
      row, f.rows, inv_row);
  STEEPEST_CUDA_CHECK_LAUNCH();
  for_each(guard, f.batch * f.cols, ColumnInverse<T>{col, inv_col});
}

struct Inverses {
  Tensor row, col;
};

Inverses inverse_buffers(const Tensor& grad, const Factored& f) {
  return {Tensor::empty({f.batch * f.rows}, grad.dtype(), grad.device()),
          Tensor::empty({f.batch * f.cols}, grad.dtype(), grad.device())};
}

}  // namespace

void sum_of_squares(const Tensor& x, double& result) {
  DeviceGuard guard(x.device());
  dispatch_float("sum_of_squares", x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    result = device_sum<1>(guard, x.numel(), SquareSum<T>{x.data<T>()})[0];
  });
}

void sgd_update(Tensor& param, const Tensor& grad, Tensor* velocity, double lr, double momentum,
                double dampening, bool nesterov, double weight_decay, double grad_scale) {
  DeviceGuard guard(param.device());
  dispatch_float("sgd_update", param.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto c = rules::sgd_coefficients<T>(lr, momentum, dampening, nesterov, weight_decay,
                                              grad_scale);
    for_each(guard, param.numel(),
             SgdStep<T>{param.data<T>(), grad.data<T>(),
                        velocity ? velocity->data<T>() : nullptr, c});
  });
}

void rmsprop_update(Tensor& param, const Tensor& grad, Tensor& mean_square, double lr, double rho,
                    double eps, double weight_decay, double grad_scale) {
  DeviceGuard guard(param.device());
  dispatch_float("rmsprop_update", param.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    for_each(guard, param.numel(),
             RmspropStep<T>{param.data<T>(), grad.data<T>(), mean_square.data<T>(),
                            rules::rmsprop_coefficients<T>(lr, rho, eps, weight_decay,
                                                           grad_scale)});
  });
}

void adagrad_update(Tensor& param, const Tensor& grad, Tensor& sum_square, double lr, double eps,
                    double weight_decay, double grad_scale) {
  DeviceGuard guard(param.device());
  dispatch_float("adagrad_update", param.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    for_each(guard, param.numel(),
             AdagradStep<T>{param.data<T>(), grad.data<T>(), sum_square.data<T>(),
                            rules::adagrad_coefficients<T>(lr, eps, weight_decay, grad_scale)});
  });
}

void lion_update(Tensor& param, const Tensor& grad, Tensor& m, double lr, double beta1,
                 double beta2, double weight_decay, double grad_scale) {
  DeviceGuard guard(param.device());
  dispatch_float("lion_update", param.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    for_each(guard, param.numel(),
             LionStep<T>{param.data<T>(), grad.data<T>(), m.data<T>(),
                         rules::lion_coefficients<T>(lr, beta1, beta2, weight_decay, grad_scale)});
  });
}

void sophia_update(Tensor& param, const Tensor& grad, Tensor& m, const Tensor& h, double lr,
                   double beta1, double gamma, double eps, double weight_decay, double grad_scale) {
  DeviceGuard guard(param.device());
  dispatch_float("sophia_update", param.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    for_each(guard, param.numel(),
             SophiaStep<T>{param.data<T>(), grad.data<T>(), m.data<T>(), h.data<T>(),
                           rules::sophia_coefficients<T>(lr, beta1, gamma, eps, weight_decay,
                                                         grad_scale)});
  });
}

void adam_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, double lr, double beta1,
                 double beta2, double eps, int64_t step, double weight_decay, bool decoupled,
                 double grad_scale) {
  DeviceGuard guard(param.device());
  dispatch_float("adam_update", param.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto c = rules::adam_coefficients<T>(lr, beta1, beta2, eps, step, decoupled ? 0.0 : weight_decay,
                                        decoupled ? weight_decay : 0.0, grad_scale);
    for_each(guard, param.numel(),
             AdamStep<T>{param.data<T>(), grad.data<T>(), m.data<T>(), v.data<T>(), c});
  });
}

void lamb_moments(const Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, double beta1,
                  double beta2, double eps, int64_t step, double weight_decay, double grad_scale,
                  double& param_sq, double& update_sq) {
  DeviceGuard guard(param.device());
  dispatch_float("lamb_moments", param.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto c =
        rules::adam_coefficients<T>(0.0, beta1, beta2, eps, step, 0.0, weight_decay, grad_scale);
    const auto sums = device_sum<2>(
        guard, param.numel(),
        LambMoments<T>{param.data<T>(), grad.data<T>(), m.data<T>(), v.data<T>(), c});
    param_sq = sums[0];
    update_sq = sums[1];
  });
}

void lamb_apply(Tensor& param, const Tensor& m, const Tensor& v, double lr, double beta1,
                double beta2, double eps, int64_t step, double weight_decay) {
  DeviceGuard guard(param.device());
  dispatch_float("lamb_apply", param.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto c = rules::adam_coefficients<T>(lr, beta1, beta2, eps, step, 0.0, weight_decay, 1.0);
    for_each(guard, param.numel(), LambApply<T>{param.data<T>(), m.data<T>(), v.data<T>(), c});
  });
}

void adafactor_moments(const Tensor& grad, Tensor& v, Tensor* v_col, double beta2, double eps1,
                       double grad_scale, double& update_sq) {
  DeviceGuard guard(grad.device());
  dispatch_float("adafactor_moments", grad.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* g = grad.data<T>();
    const T s = static_cast<T>(grad_scale);
    if (!v_col) {
      update_sq = device_sum<1>(guard, grad.numel(),
                                FullMoments<T>{g, v.data<T>(), T(beta2), T(1.0 - beta2), T(eps1), s})[0];
      return;
    }
    const Factored f = factored_shape(grad);
    update_sq = 0.0;
    if (f.batch == 0) return;
    T* row = v.data<T>();
    T* col = v_col->data<T>();
    launch_rows(guard.stream(), f.batch * f.rows, f.cols, adafactor_row_means<true, T>,
                adafactor_row_means<false, T>, g, row, f.batch * f.rows, f.cols, s, beta2, eps1);
    const dim3 grid(static_cast<unsigned>((f.cols + 31) / 32),
                    static_cast<unsigned>(std::min<int64_t>(f.batch, 65535)));
    adafactor_column_means<<<grid, dim3(32, kThreads / 32), 0, guard.stream()>>>(g, col, f, s,
                                                                                 beta2, eps1);
    STEEPEST_CUDA_CHECK_LAUNCH();
    Inverses inv = inverse_buffers(grad, f);
    factored_inverses(guard, static_cast<const T*>(row), static_cast<const T*>(col), f,
                      inv.row.data<T>(), inv.col.data<T>());
    update_sq = device_sum<1>(guard, grad.numel(),
                              FactoredUpdateSquares<T>{g, inv.row.data<T>(),
                                                       inv.col.data<T>(), f, s})[0];
  });
}

void adafactor_apply(Tensor& param, const Tensor& grad, const Tensor& v, const Tensor* v_col,
                     double grad_scale, double step_size, double decay) {
  DeviceGuard guard(param.device());
  dispatch_float("adafactor_apply", param.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T s = static_cast<T>(grad_scale), alpha = static_cast<T>(step_size);
    const T keep = static_cast<T>(decay);
    if (!v_col) {
      for_each(guard, param.numel(),
               FullApply<T>{param.data<T>(), grad.data<T>(), v.data<T>(), s, keep, alpha});
      return;
    }
    const Factored f = factored_shape(grad);
    if (f.batch == 0) return;
    Inverses inv = inverse_buffers(grad, f);
    factored_inverses(guard, v.data<T>(), v_col->data<T>(), f, inv.row.data<T>(),
                      inv.col.data<T>());
    for_each(guard, param.numel(),
             FactoredApply<T>{param.data<T>(), grad.data<T>(), inv.row.data<T>(),
                              inv.col.data<T>(), f, s, keep, alpha});
  });
}

}  // namespace steepest::cuda
