// Fused optimizer updates on the CPU. Each update is one pass over contiguous (param,
// grad, state) memory split across OpenMP threads, applying the per-element rules of
// steepest/update_rules.h (shared with the CUDA kernels). The rules that need a
// whole-tensor quantity (Lamb's trust ratio, Adafactor's RMS(U)) make the fewest passes
// it allows.
//
// NOTE: the per-element loops live in *_range functions that take __restrict pointers
// and their coefficients by value. Written inline in a parallel_for lambda, the loops
// read the coefficients through captured references that the stores might alias, and
// the compiler leaves them scalar. The sqrt loops also need -fno-math-errno to vectorise.
//
// Reductions accumulate in double, keep one partial sum per chunk and add the partials
// in chunk order, so a result is bit-identical from run to run at a given thread count.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "loops.h"
#include "steepest/kernels.h"
#include "steepest/update_rules.h"

namespace steepest::cpu {
inline namespace STEEPEST_ISA_NS {
namespace {

// The chunking of parallel_for, known before the threads start.
int64_t chunk_count(int64_t n, int64_t grain) {
  int threads = omp_get_max_threads();
  if (n < grain || threads <= 1 || omp_in_parallel()) return 1;
  return std::min<int64_t>(threads, (n + grain - 1) / grain);
}

// Σ fn(begin, end) over [0, n) in fixed chunks, added in chunk order. R is double or any
// type with += (several sums from one pass).
template <class R, class Fn>
R parallel_reduce(int64_t n, int64_t grain, Fn&& fn) {
  if (n <= 0) return R{};
  const int64_t chunks = chunk_count(n, grain);
  if (chunks == 1) return fn(int64_t{0}, n);
  std::vector<R> partial(static_cast<size_t>(chunks));
#pragma omp parallel for num_threads(static_cast<int>(chunks)) schedule(static, 1)
  for (int64_t c = 0; c < chunks; ++c)
    partial[static_cast<size_t>(c)] = fn(n * c / chunks, n * (c + 1) / chunks);
  R total{};
  for (const R& p : partial) total += p;
  return total;
}

// Lamb's two squared norms from one pass.
struct NormPair {
  double param = 0.0, update = 0.0;
  NormPair& operator+=(const NormPair& o) {
    param += o.param;
    update += o.update;
    return *this;
  }
};

// ------------------------------------------------------------------ SGD and RMSProp

template <class T>
void sgd_range(T* __restrict p, const T* __restrict g, T* __restrict v, rules::Sgd<T> c,
               int64_t begin, int64_t end) {
  if (!v) {
    for (int64_t i = begin; i < end; ++i) rules::sgd_step(p[i], g[i], c);
    return;
  }
  for (int64_t i = begin; i < end; ++i) rules::sgd_momentum_step(p[i], g[i], v[i], c);
}

template <class T>
void rmsprop_range(T* __restrict p, const T* __restrict g, T* __restrict e2, rules::Rmsprop<T> c,
                   int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) rules::rmsprop_step(p[i], g[i], e2[i], c);
}

template <class T>
void adagrad_range(T* __restrict p, const T* __restrict g, T* __restrict sum_square,
                   rules::Adagrad<T> c, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) rules::adagrad_step(p[i], g[i], sum_square[i], c);
}

template <class T>
void lion_range(T* __restrict p, const T* __restrict g, T* __restrict m, rules::Lion<T> c,
                int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) rules::lion_step(p[i], g[i], m[i], c);
}

template <class T>
void sophia_range(T* __restrict p, const T* __restrict g, T* __restrict m, const T* __restrict h,
                  rules::Sophia<T> c, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) rules::sophia_step(p[i], g[i], m[i], h[i], c);
}

// --------------------------------------------------------------------- Adam family

template <class T>
void adam_range(T* __restrict p, const T* __restrict g, T* __restrict m, T* __restrict v,
                rules::Adam<T> c, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) rules::adam_step(p[i], g[i], m[i], v[i], c);
}

template <class T>
NormPair lamb_moments_range(const T* __restrict p, const T* __restrict g, T* __restrict m,
                            T* __restrict v, rules::Adam<T> c, int64_t begin, int64_t end) {
  double param_sq = 0.0, update_sq = 0.0;
#pragma omp simd reduction(+ : param_sq, update_sq)
  for (int64_t i = begin; i < end; ++i) {
    const T u = rules::lamb_moments_step(p[i], g[i], m[i], v[i], c);
    update_sq += static_cast<double>(u) * u;
    param_sq += static_cast<double>(p[i]) * p[i];
  }
  return {param_sq, update_sq};
}

template <class T>
void lamb_apply_range(T* __restrict p, const T* __restrict m, const T* __restrict v,
                      rules::Adam<T> c, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) rules::lamb_apply_step(p[i], m[i], v[i], c);
}

// ------------------------------------------------------------------------ Adafactor

// Adafactor's v̂_ij = R_i C_j / mean_i(R) as two vectors of reciprocal square roots
// (rules::inverse_root), U_ij = g_ij · inv_row_i · inv_col_j.
template <class T>
void factored_inverses(const T* row, const T* col, const Factored& f, std::vector<T>& inv_row,
                       std::vector<T>& inv_col) {
  inv_row.resize(static_cast<size_t>(f.batch * f.rows));
  inv_col.resize(static_cast<size_t>(f.batch * f.cols));
  for (int64_t b = 0; b < f.batch; ++b) {
    double mean = 0.0;
    for (int64_t i = 0; i < f.rows; ++i) mean += row[b * f.rows + i];
    mean /= static_cast<double>(f.rows);
    for (int64_t i = 0; i < f.rows; ++i)
      inv_row[static_cast<size_t>(b * f.rows + i)] =
          static_cast<T>(rules::inverse_root(row[b * f.rows + i] / mean));
  }
  for (int64_t j = 0; j < f.batch * f.cols; ++j)
    inv_col[static_cast<size_t>(j)] = static_cast<T>(rules::inverse_root(col[j]));
}

// Σ_j (s·g_j)² over one row, in double.
template <class T>
double row_square_sum(const T* __restrict g, T s, int64_t n) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; ++j) acc += rules::scaled_square(s, g[j]);
  return acc;
}

// acc_j += (s·g_j)² over one row segment.
template <class T>
void add_squares(double* __restrict acc, const T* __restrict g, T s, int64_t n) {
  for (int64_t j = 0; j < n; ++j) acc[j] += rules::scaled_square(s, g[j]);
}

template <class T>
double row_update_sq(const T* __restrict g, const T* __restrict ic, T s, T ir, int64_t n) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; ++j) {
    const double u = rules::factored_u(s, g[j], ir, ic[j]);
    acc += u * u;
  }
  return acc;
}

template <class T>
void row_apply(T* __restrict p, const T* __restrict g, const T* __restrict ic, T s, T ir,
               T keep, T alpha, int64_t n) {
  for (int64_t j = 0; j < n; ++j)
    p[j] = keep * p[j] - alpha * rules::factored_u(s, g[j], ir, ic[j]);
}

// The full (unfactored) second moment: v = β̂v + (1−β̂)(g² + ε₁), Σ (g/√v)².
template <class T>
double full_moments_range(const T* __restrict g, T* __restrict v, T beta, T mix, T eps1, T s,
                          int64_t begin, int64_t end) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = begin; i < end; ++i) {
    const T vi = rules::full_moment(s * g[i], v[i], beta, mix, eps1);
    v[i] = vi;
    const T u = rules::full_u(s, g[i], vi);
    acc += static_cast<double>(u) * u;
  }
  return acc;
}

template <class T>
void full_apply_range(T* __restrict p, const T* __restrict g, const T* __restrict v, T s, T keep,
                      T alpha, int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) p[i] = keep * p[i] - alpha * rules::full_u(s, g[i], v[i]);
}

template <class T>
double adafactor_factored_moments(const T* g, T* row, T* col, const Factored& f, double beta,
                                  double eps1, T s) {
  const int64_t all_rows = f.batch * f.rows;
  const int64_t row_grain = std::max<int64_t>(1, kParallelGrain / f.cols);
  // EMA of the row means: R = β̂R + (1−β̂)·mean_j(g² + ε₁)
  parallel_for(all_rows, row_grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const double mean = row_square_sum(g + r * f.cols, s, f.cols) / static_cast<double>(f.cols);
      row[r] = rules::factor_ema(row[r], mean, beta, eps1);
    }
  });
  // ... and of the column means, C = β̂C + (1−β̂)·mean_i(g² + ε₁), by column blocks so
  // that each task owns its outputs.
  constexpr int64_t kBlock = 256;
  const int64_t blocks = (f.cols + kBlock - 1) / kBlock;
  parallel_for(f.batch * blocks, std::max<int64_t>(1, kParallelGrain / (f.rows * kBlock)),
               [&](int64_t begin, int64_t end) {
                 double acc[kBlock];
                 for (int64_t task = begin; task < end; ++task) {
                   const int64_t b = task / blocks, j0 = (task % blocks) * kBlock;
                   const int64_t width = std::min(kBlock, f.cols - j0);
                   std::fill(acc, acc + width, 0.0);
                   for (int64_t i = 0; i < f.rows; ++i)
                     add_squares(acc, g + (b * f.rows + i) * f.cols + j0, s, width);
                   T* c = col + b * f.cols + j0;
                   for (int64_t j = 0; j < width; ++j)
                     c[j] = rules::factor_ema(c[j], acc[j] / static_cast<double>(f.rows), beta,
                                              eps1);
                 }
               });
  std::vector<T> inv_row, inv_col;
  factored_inverses(row, col, f, inv_row, inv_col);
  return parallel_reduce<double>(all_rows, row_grain, [&](int64_t begin, int64_t end) {
    double acc = 0.0;
    for (int64_t r = begin; r < end; ++r)
      acc += row_update_sq(g + r * f.cols, inv_col.data() + (r / f.rows) * f.cols, s,
                           inv_row[static_cast<size_t>(r)], f.cols);
    return acc;
  });
}

}  // namespace

void sum_of_squares(const Tensor& x, double& result) {
  dispatch_float("sum_of_squares", x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* p = x.data<T>();
    result = parallel_reduce<double>(x.numel(), kParallelGrain, [&](int64_t begin, int64_t end) {
      return row_square_sum(p + begin, T(1), end - begin);
    });
  });
}

void sgd_update(Tensor& param, const Tensor& grad, Tensor* velocity, double lr, double momentum,
                double dampening, bool nesterov, double weight_decay, double grad_scale) {
  dispatch_float("sgd_update", param.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* p = param.data<T>();
    const T* g = grad.data<T>();
    T* v = velocity ? velocity->data<T>() : nullptr;
    const auto c = rules::sgd_coefficients<T>(lr, momentum, dampening, nesterov, weight_decay,
                                              grad_scale);
    parallel_for(param.numel(), kParallelGrain,
                 [&](int64_t begin, int64_t end) { sgd_range(p, g, v, c, begin, end); });
  });
}

void rmsprop_update(Tensor& param, const Tensor& grad, Tensor& mean_square, double lr, double rho,
                    double eps, double weight_decay, double grad_scale) {
  dispatch_float("rmsprop_update", param.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* p = param.data<T>();
    const T* g = grad.data<T>();
    T* e2 = mean_square.data<T>();
    const auto c = rules::rmsprop_coefficients<T>(lr, rho, eps, weight_decay, grad_scale);
    parallel_for(param.numel(), kParallelGrain,
                 [&](int64_t begin, int64_t end) { rmsprop_range(p, g, e2, c, begin, end); });
  });
}

void adagrad_update(Tensor& param, const Tensor& grad, Tensor& sum_square, double lr, double eps,
                    double weight_decay, double grad_scale) {
  dispatch_float("adagrad_update", param.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* p = param.data<T>();
    const T* g = grad.data<T>();
    T* s = sum_square.data<T>();
    const auto c = rules::adagrad_coefficients<T>(lr, eps, weight_decay, grad_scale);
    parallel_for(param.numel(), kParallelGrain,
                 [&](int64_t begin, int64_t end) { adagrad_range(p, g, s, c, begin, end); });
  });
}

void lion_update(Tensor& param, const Tensor& grad, Tensor& m, double lr, double beta1,
                 double beta2, double weight_decay, double grad_scale) {
  dispatch_float("lion_update", param.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* p = param.data<T>();
    const T* g = grad.data<T>();
    T* mm = m.data<T>();
    const auto c = rules::lion_coefficients<T>(lr, beta1, beta2, weight_decay, grad_scale);
    parallel_for(param.numel(), kParallelGrain,
                 [&](int64_t begin, int64_t end) { lion_range(p, g, mm, c, begin, end); });
  });
}

void sophia_update(Tensor& param, const Tensor& grad, Tensor& m, const Tensor& h, double lr,
                   double beta1, double gamma, double eps, double weight_decay, double grad_scale) {
  dispatch_float("sophia_update", param.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* p = param.data<T>();
    const T* g = grad.data<T>();
    T* mm = m.data<T>();
    const T* hh = h.data<T>();
    const auto c = rules::sophia_coefficients<T>(lr, beta1, gamma, eps, weight_decay, grad_scale);
    parallel_for(param.numel(), kParallelGrain,
                 [&](int64_t begin, int64_t end) { sophia_range(p, g, mm, hh, c, begin, end); });
  });
}

void adam_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, double lr, double beta1,
                 double beta2, double eps, int64_t step, double weight_decay, bool decoupled,
                 double grad_scale) {
  dispatch_float("adam_update", param.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* p = param.data<T>();
    const T* g = grad.data<T>();
    T* m1 = m.data<T>();
    T* m2 = v.data<T>();
    const auto c = rules::adam_coefficients<T>(lr, beta1, beta2, eps, step, decoupled ? 0.0 : weight_decay,
                                        decoupled ? weight_decay : 0.0, grad_scale);
    parallel_for(param.numel(), kParallelGrain,
                 [&](int64_t begin, int64_t end) { adam_range(p, g, m1, m2, c, begin, end); });
  });
}

void lamb_moments(const Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, double beta1,
                  double beta2, double eps, int64_t step, double weight_decay, double grad_scale,
                  double& param_sq, double& update_sq) {
  dispatch_float("lamb_moments", param.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* p = param.data<T>();
    const T* g = grad.data<T>();
    T* m1 = m.data<T>();
    T* m2 = v.data<T>();
    const auto c =
        rules::adam_coefficients<T>(0.0, beta1, beta2, eps, step, 0.0, weight_decay, grad_scale);
    const NormPair norms =
        parallel_reduce<NormPair>(param.numel(), kParallelGrain, [&](int64_t begin, int64_t end) {
          return lamb_moments_range(p, g, m1, m2, c, begin, end);
        });
    param_sq = norms.param;
    update_sq = norms.update;
  });
}

void lamb_apply(Tensor& param, const Tensor& m, const Tensor& v, double lr, double beta1,
                double beta2, double eps, int64_t step, double weight_decay) {
  dispatch_float("lamb_apply", param.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* p = param.data<T>();
    const T* m1 = m.data<T>();
    const T* m2 = v.data<T>();
    const auto c = rules::adam_coefficients<T>(lr, beta1, beta2, eps, step, 0.0, weight_decay, 1.0);
    parallel_for(param.numel(), kParallelGrain,
                 [&](int64_t begin, int64_t end) { lamb_apply_range(p, m1, m2, c, begin, end); });
  });
}

void adafactor_moments(const Tensor& grad, Tensor& v, Tensor* v_col, double beta2, double eps1,
                       double grad_scale, double& update_sq) {
  dispatch_float("adafactor_moments", grad.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* g = grad.data<T>();
    const T s = static_cast<T>(grad_scale);
    if (v_col) {
      const Factored f = factored_shape(grad);
      update_sq = f.batch == 0 ? 0.0
                               : adafactor_factored_moments(g, v.data<T>(), v_col->data<T>(), f,
                                                            beta2, eps1, s);
      return;
    }
    T* second = v.data<T>();
    const T beta = beta2, mix = 1.0 - beta2, e1 = eps1;
    update_sq = parallel_reduce<double>(
        grad.numel(), kParallelGrain, [&](int64_t begin, int64_t end) {
          return full_moments_range(g, second, beta, mix, e1, s, begin, end);
        });
  });
}

void adafactor_apply(Tensor& param, const Tensor& grad, const Tensor& v, const Tensor* v_col,
                     double grad_scale, double step_size, double decay) {
  dispatch_float("adafactor_apply", param.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* p = param.data<T>();
    const T* g = grad.data<T>();
    const T s = grad_scale, alpha = step_size, keep = decay;
    if (!v_col) {
      const T* second = v.data<T>();
      parallel_for(param.numel(), kParallelGrain, [&](int64_t begin, int64_t end) {
        full_apply_range(p, g, second, s, keep, alpha, begin, end);
      });
      return;
    }
    const Factored f = factored_shape(grad);
    if (f.batch == 0) return;
    std::vector<T> inv_row, inv_col;
    factored_inverses(v.data<T>(), v_col->data<T>(), f, inv_row, inv_col);
    parallel_for(f.batch * f.rows, std::max<int64_t>(1, kParallelGrain / f.cols),
                 [&](int64_t begin, int64_t end) {
                   for (int64_t r = begin; r < end; ++r)
                     row_apply(p + r * f.cols, g + r * f.cols,
                               inv_col.data() + (r / f.rows) * f.cols, s,
                               inv_row[static_cast<size_t>(r)], keep, alpha, f.cols);
                 });
  });
}

}  // namespace STEEPEST_ISA_NS
}  // namespace steepest::cpu
