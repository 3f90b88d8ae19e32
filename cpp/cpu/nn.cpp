// Row-wise neural-network kernels: softmax / log-softmax (max-shifted, as the seed's
// log-softmax section derives), fused softmax + cross-entropy, layer norm, batch norm and
// embedding. float16/bfloat16 rows are widened to float, computed
// by the same code and rounded back (RowView in loops.h).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "loops.h"
#include "steepest/kernels.h"
#include "vmath.h"

namespace steepest::cpu {
inline namespace STEEPEST_ISA_NS {
namespace {

// Row reductions keep one 64-byte vector of independent partial results (GCC vector
// extensions: AVX-512, AVX2 or SSE registers, whatever the build targets); a single
// running sum or max is a serial chain the compiler may not reorder. The order is
// fixed, so the results are deterministic.
typedef float FloatLanes __attribute__((vector_size(64)));
typedef double DoubleLanes __attribute__((vector_size(64)));
template <class T>
using Lanes = std::conditional_t<std::is_same_v<T, float>, FloatLanes, DoubleLanes>;
template <class T>
constexpr int kLanes = 64 / sizeof(T);

template <class T>
Lanes<T> load_lanes(const T* p) {
  Lanes<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Ignores NaN (`x > m ? x : m` never picks it), as the softmax shift always has.
template <class T>
T row_max(const T* x, int64_t n) {
  constexpr T kLowest = -std::numeric_limits<T>::infinity();
  Lanes<T> lanes = Lanes<T>{} + kLowest;
  int64_t i = 0;
  for (; i + kLanes<T> <= n; i += kLanes<T>) {
    const Lanes<T> v = load_lanes(x + i);
    lanes = v > lanes ? v : lanes;
  }
  T m = kLowest;
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  for (int k = 0; k < kLanes<T>; ++k) m = lanes[k] > m ? lanes[k] : m;
  return m;
}

// Σ term(i) for i < n, the terms computed in blocks so that their loop vectorises
// (vmath.h), then added in lanes.
template <class T, class Term>
T sum_over(int64_t n, Term term) {
  constexpr int64_t kBlock = 256;
  T block[kBlock];
  Lanes<T> lanes = {};
  T rest = 0;
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t len = std::min(kBlock, n - i0);
    for (int64_t j = 0; j < len; ++j) block[j] = term(i0 + j);
    int64_t j = 0;
    for (; j + kLanes<T> <= len; j += kLanes<T>) lanes += load_lanes(block + j);
    for (; j < len; ++j) rest += block[j];
  }
  for (int k = 0; k < kLanes<T>; ++k) rest += lanes[k];
  return rest;
}

// Σ f(x[i]) over a row.
template <class T, class F>
T row_sum(const T* x, int64_t n, F f) {
  return sum_over<T>(n, [x, f](int64_t i) { return f(x[i]); });
}

// The seed's log-softmax shift: log Σ exp(x) = m + log Σ exp(x − m) with m = max x.
// m and log Σ exp(x − m) are kept apart so that (x − m) − log Σ stays exact in float32
// when |x| is large (adding m back first would round away the small part).
template <class T>
struct ShiftedLogSum {
  T max;
  T log_sum;
};

template <class T>
ShiftedLogSum<T> row_shifted_logsum(const T* x, int64_t n) {
  T m = row_max(x, n);
  if (std::isinf(m)) return {m, T(0)};
  const T s = row_sum(x, n, [m](T v) { return math::exp(v - m); });
  return {m, math::log(s)};
}

int64_t rows_grain(int64_t cols) {
  return std::max<int64_t>(1, kParallelGrain / 8 / std::max<int64_t>(cols, 1));
}

// Rows per block of a column sum: each block's partial sums are kept and added in block
// order, so the sums do not depend on the thread count.
constexpr int64_t kColumnSumRows = 64;

// A row pass that also sums columns: rows(begin, end, acc) runs over the rows of one block,
// adding into acc, `sums` zeroed arrays of cols values each (acc + s·cols). Returns the
// sums of all rows, the same arrays laid out the same way. The row work and the column
// sums share one read of each row.
template <class C, class Rows>
std::vector<C> rows_and_column_sums(int64_t rows, int64_t cols, int64_t sums, Rows rows_fn) {
  const int64_t blocks = (rows + kColumnSumRows - 1) / kColumnSumRows;
  const int64_t width = sums * cols;
  std::vector<C> partial(static_cast<size_t>(blocks * width), C(0));
  const int64_t grain = std::max<int64_t>(1, rows_grain(cols) / kColumnSumRows);
  parallel_for(blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k)
      rows_fn(k * kColumnSumRows, std::min(rows, (k + 1) * kColumnSumRows),
              partial.data() + k * width);
  });
  std::vector<C> total(static_cast<size_t>(width), C(0));
  for (int64_t k = 0; k < blocks; ++k)
    for (int64_t i = 0; i < width; ++i) total[i] += partial[k * width + i];
  return total;
}

}  // namespace

void softmax_forward(const Tensor& x, Tensor& y, bool log) {
  const int64_t cols = x.shape().back(), rows = rows_of(x);
  dispatch_float_storage("softmax", x.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    const S* px = x.data<S>();
    S* py = y.data<S>();
    parallel_for(rows, rows_grain(cols), [&](int64_t begin, int64_t end) {
      RowView<S, C> in, out;
      for (int64_t r = begin; r < end; ++r) {
        const C* xr = in.read(px + r * cols, cols);
        C* yr = out.write(py + r * cols, cols);
        if (log) {
          ShiftedLogSum<C> ls = row_shifted_logsum(xr, cols);
          for (int64_t i = 0; i < cols; ++i) yr[i] = (xr[i] - ls.max) - ls.log_sum;
        } else {
          // e^(x − m) once, then scaled by 1/Σ: one exp per element instead of two. An
          // infinite m leaves e^(x − m) as it is (NaN or 0/1), as the log form does.
          const C m = row_max(xr, cols);
          for (int64_t i = 0; i < cols; ++i) yr[i] = math::exp(xr[i] - m);
          if (!std::isinf(m)) {
            const C scale = C(1) / row_sum(yr, cols, [](C v) { return v; });
            for (int64_t i = 0; i < cols; ++i) yr[i] *= scale;
          }
        }
        out.publish(py + r * cols, cols);
      }
    });
  });
}

// softmax: dL/dz = G ⊙ p − (G·pᵀ) p; log-softmax: dL/dz = G − p Σ G (p = exp(y)).
void softmax_backward(const Tensor& grad_y, const Tensor& y, Tensor& grad_x, bool log) {
  const int64_t cols = y.shape().back(), rows = rows_of(y);
  dispatch_float_storage("softmax", y.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    const S* pg = grad_y.data<S>();
    const S* py = y.data<S>();
    S* pgx = grad_x.data<S>();
    parallel_for(rows, rows_grain(cols), [&](int64_t begin, int64_t end) {
      RowView<S, C> g_view, y_view, out;
      for (int64_t r = begin; r < end; ++r) {
        const C* g = g_view.read(pg + r * cols, cols);
        const C* yr = y_view.read(py + r * cols, cols);
        C* gx = out.write(pgx + r * cols, cols);
        if (log) {
          const C sum = row_sum(g, cols, [](C v) { return v; });
          for (int64_t i = 0; i < cols; ++i) gx[i] = g[i] - math::exp(yr[i]) * sum;
        } else {
          // G·p: the products go through gx, which is overwritten just after.
          for (int64_t i = 0; i < cols; ++i) gx[i] = g[i] * yr[i];
          const C dot = row_sum(gx, cols, [](C v) { return v; });
          for (int64_t i = 0; i < cols; ++i) gx[i] = yr[i] * (g[i] - dot);
        }
        out.publish(pgx + r * cols, cols);
      }
    });
  });
}

// L = −Σ y_i log p_i with log p = z − logsumexp(z) (log-softmax, never log of p). The
// per-row statistics (max, log Σ) are kept in the compute type: float for 16-bit logits.
void cross_entropy_forward(const Tensor& logits, const Tensor& labels, Tensor& loss,
                           Tensor& logsumexp) {
  const int64_t classes = logits.shape().back(), rows = rows_of(logits);
  bool indices = !is_floating(labels.dtype());
  dispatch_float_storage("cross_entropy", logits.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    const S* z = logits.data<S>();
    S* out = loss.data<S>();
    C* lse = logsumexp.data<C>();
    if (indices) {
      // Validate every label before touching memory with it.
      dispatch_all("cross_entropy", labels.dtype(), [&](auto label_tag) {
        using L = typename decltype(label_tag)::type;
        const L* lab = labels.data<L>();
        for (int64_t r = 0; r < rows; ++r) {
          int64_t c = static_cast<int64_t>(lab[r]);
          if (c < 0 || c >= classes)
            fail<IndexError>("cross_entropy", "class index ", c, " at labels[", r,
                             "] is out of range for ", classes, " classes");
        }
        parallel_for(rows, rows_grain(classes), [&](int64_t begin, int64_t end) {
          RowView<S, C> z_view;
          for (int64_t r = begin; r < end; ++r) {
            const C* zr = z_view.read(z + r * classes, classes);
            ShiftedLogSum<C> ls = row_shifted_logsum(zr, classes);
            lse[2 * r] = ls.max;
            lse[2 * r + 1] = ls.log_sum;
            out[r] = S(ls.log_sum - (zr[static_cast<int64_t>(lab[r])] - ls.max));
          }
        });
      });
      return;
    }
    const S* y = labels.data<S>();
    parallel_for(rows, rows_grain(classes), [&](int64_t begin, int64_t end) {
      RowView<S, C> z_view, y_view;
      for (int64_t r = begin; r < end; ++r) {
        const C* zr = z_view.read(z + r * classes, classes);
        const C* yr = y_view.read(y + r * classes, classes);
        ShiftedLogSum<C> ls = row_shifted_logsum(zr, classes);
        lse[2 * r] = ls.max;
        lse[2 * r + 1] = ls.log_sum;
        C acc = 0;
        for (int64_t i = 0; i < classes; ++i)
          if (yr[i] != C(0)) acc -= yr[i] * ((zr[i] - ls.max) - ls.log_sum);
        out[r] = S(acc);
      }
    });
  });
}

void cross_entropy_backward(const Tensor& logits, const Tensor& labels, const Tensor& logsumexp,
                            const Tensor& grad_loss, Tensor& grad_logits) {
  const int64_t classes = logits.shape().back(), rows = rows_of(logits);
  bool indices = !is_floating(labels.dtype());
  dispatch_float_storage("cross_entropy", logits.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    const S* z = logits.data<S>();
    const C* lse = logsumexp.data<C>();
    const S* g = grad_loss.data<S>();
    S* gz = grad_logits.data<S>();
    if (indices) {
      dispatch_all("cross_entropy", labels.dtype(), [&](auto label_tag) {
        using L = typename decltype(label_tag)::type;
        const L* lab = labels.data<L>();
        parallel_for(rows, rows_grain(classes), [&](int64_t begin, int64_t end) {
          RowView<S, C> z_view, out_view;
          for (int64_t r = begin; r < end; ++r) {
            const C* zr = z_view.read(z + r * classes, classes);
            C* out = out_view.write(gz + r * classes, classes);
            const C gr = C(g[r]);
            for (int64_t i = 0; i < classes; ++i)
              out[i] = gr * math::exp((zr[i] - lse[2 * r]) - lse[2 * r + 1]);
            out[static_cast<int64_t>(lab[r])] -= gr;  // p − y
            out_view.publish(gz + r * classes, classes);
          }
        });
      });
      return;
    }
    const S* y = labels.data<S>();
    parallel_for(rows, rows_grain(classes), [&](int64_t begin, int64_t end) {
      RowView<S, C> z_view, y_view, out_view;
      for (int64_t r = begin; r < end; ++r) {
        const C* zr = z_view.read(z + r * classes, classes);
        const C* yr = y_view.read(y + r * classes, classes);
        C* out = out_view.write(gz + r * classes, classes);
        const C gr = C(g[r]);
        const C total = row_sum(yr, classes, [](C v) { return v; });
        // −y + p Σy: the seed's derivation before assuming Σy = 1.
        for (int64_t i = 0; i < classes; ++i)
          out[i] = gr * (math::exp((zr[i] - lse[2 * r]) - lse[2 * r + 1]) * total - yr[i]);
        out_view.publish(gz + r * classes, classes);
      }
    });
  });
}

namespace {

// One row of layer norm: y = (x − μ)·rstd·w + b (w, b may be null), two-pass statistics.
template <class C>
void normalize_row(const C* xr, const C* w, const C* b, int64_t cols, C eps, C* yr, C& mean,
                   C& rstd) {
  const C mu = row_sum(xr, cols, [](C v) { return v; }) / static_cast<C>(cols);
  const C var =
      row_sum(xr, cols, [mu](C v) { return (v - mu) * (v - mu); }) / static_cast<C>(cols);
  const C rs = C(1) / std::sqrt(var + eps);
  mean = mu;
  rstd = rs;
  // One loop per case, so that each vectorises without a test per element.
  if (w && b) {
    for (int64_t i = 0; i < cols; ++i) yr[i] = (xr[i] - mu) * rs * w[i] + b[i];
  } else if (w) {
    for (int64_t i = 0; i < cols; ++i) yr[i] = (xr[i] - mu) * rs * w[i];
  } else {
    for (int64_t i = 0; i < cols; ++i) yr[i] = (xr[i] - mu) * rs + (b ? b[i] : C(0));
  }
}

}  // namespace

// Row statistics (mean, rstd) are kept in the compute type: float for 16-bit inputs.
void layer_norm_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps,
                        Tensor& y, Tensor& mean, Tensor& rstd) {
  const int64_t cols = x.shape().back(), rows = rows_of(x);
  dispatch_float_storage("layer_norm", x.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    const S* px = x.data<S>();
    RowView<S, C> w_view, b_view;
    const C* w = weight.defined() ? w_view.read(weight.data<S>(), cols) : nullptr;
    const C* b = bias.defined() ? b_view.read(bias.data<S>(), cols) : nullptr;
    S* py = y.data<S>();
    C* pm = mean.data<C>();
    C* pr = rstd.data<C>();
    parallel_for(rows, rows_grain(cols), [&](int64_t begin, int64_t end) {
      RowView<S, C> in, out;
      for (int64_t r = begin; r < end; ++r) {
        const C* xr = in.read(px + r * cols, cols);
        C* yr = out.write(py + r * cols, cols);
        normalize_row(xr, w, b, cols, static_cast<C>(eps), yr, pm[r], pr[r]);
        out.publish(py + r * cols, cols);
      }
    });
  });
}

// With x̂ = (x − μ)·rstd and ĝ = G ⊙ w:
// dx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂)), dw = Σ_rows G ⊙ x̂, db = Σ_rows G.
// One read of each row gives dx and the rows' shares of dw and db.
void layer_norm_backward(const Tensor& grad_y, const Tensor& x, const Tensor& weight,
                         const Tensor& mean, const Tensor& rstd, Tensor& grad_x,
                         Tensor* grad_weight, Tensor* grad_bias) {
  const int64_t cols = x.shape().back(), rows = rows_of(x);
  dispatch_float_storage("layer_norm", x.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    const S* pg = grad_y.data<S>();
    const S* px = x.data<S>();
    // Without a weight ĝ = G: multiplying by ones keeps one loop, exactly.
    RowView<S, C> w_view;
    std::vector<C> ones(weight.defined() ? 0 : static_cast<size_t>(cols), C(1));
    const C* w = weight.defined() ? w_view.read(weight.data<S>(), cols) : ones.data();
    const C* pm = mean.data<C>();
    const C* pr = rstd.data<C>();
    S* pgx = grad_x.data<S>();
    // The two column sums are cheap next to reading the rows: always made, kept if asked.
    const std::vector<C> sums = rows_and_column_sums<C>(rows, cols, 2, [&](int64_t begin,
                                                                          int64_t end, C* acc) {
      C* acc_w = acc;
      C* acc_b = acc + cols;
      RowView<S, C> g_view, x_view, out;
      for (int64_t r = begin; r < end; ++r) {
        const C* g = g_view.read(pg + r * cols, cols);
        const C* xr = x_view.read(px + r * cols, cols);
        C* gx = out.write(pgx + r * cols, cols);
        const C mu = pm[r], rs = pr[r];
        // x̂ goes through gx, which the last loop overwrites.
        for (int64_t i = 0; i < cols; ++i) {
          const C xhat = (xr[i] - mu) * rs;
          gx[i] = xhat;
          acc_w[i] += g[i] * xhat;
          acc_b[i] += g[i];
        }
        const C mean_g = sum_over<C>(cols, [&](int64_t i) { return g[i] * w[i]; }) /
                         static_cast<C>(cols);
        const C mean_gx = sum_over<C>(cols, [&](int64_t i) { return g[i] * w[i] * gx[i]; }) /
                          static_cast<C>(cols);
        for (int64_t i = 0; i < cols; ++i) gx[i] = rs * (g[i] * w[i] - mean_g - gx[i] * mean_gx);
        out.publish(pgx + r * cols, cols);
      }
    });
    if (grad_weight) store_compute(sums.data(), grad_weight->data<S>(), cols);
    if (grad_bias) store_compute(sums.data() + cols, grad_bias->data<S>(), cols);
  });
}

// --- fused Transformer pieces ------------------------------------------------------

void bias_gelu_forward(const Tensor& x, const Tensor& bias, Tensor& out) {
  const int64_t cols = x.shape().back(), rows = rows_of(x);
  dispatch_float_storage("bias_gelu", x.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    const S* px = x.data<S>();
    S* py = out.data<S>();
    RowView<S, C> b_view;
    const C* b = b_view.read(bias.data<S>(), cols);
    const elementwise::Gelu<VMath> gelu;
    parallel_for(rows, rows_grain(cols), [&](int64_t begin, int64_t end) {
      RowView<S, C> in, res;
      for (int64_t r = begin; r < end; ++r) {
        const C* xr = in.read(px + r * cols, cols);
        C* yr = res.write(py + r * cols, cols);
        for (int64_t i = 0; i < cols; ++i) yr[i] = gelu(xr[i] + b[i], C(0));
        res.publish(py + r * cols, cols);
      }
    });
  });
}

// grad_bias sums the compute-type rows of grad_x before they are rounded to storage, in the
// same pass.
void bias_gelu_backward(const Tensor& grad_out, const Tensor& x, const Tensor& bias,
                        Tensor& grad_x, Tensor* grad_bias) {
  const int64_t cols = x.shape().back(), rows = rows_of(x);
  dispatch_float_storage("bias_gelu", x.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    const S* pg = grad_out.data<S>();
    const S* px = x.data<S>();
    S* pgx = grad_x.data<S>();
    RowView<S, C> b_view;
    const C* b = b_view.read(bias.data<S>(), cols);
    const elementwise::GeluGrad<VMath> gelu_grad;
    // The column sum costs an add per element next to GELU's gradient: always made.
    const std::vector<C> sum = rows_and_column_sums<C>(rows, cols, 1, [&](int64_t begin,
                                                                         int64_t end, C* acc) {
      RowView<S, C> g_view, x_view, res;
      for (int64_t r = begin; r < end; ++r) {
        const C* g = g_view.read(pg + r * cols, cols);
        const C* xr = x_view.read(px + r * cols, cols);
        C* gx = res.write(pgx + r * cols, cols);
        for (int64_t i = 0; i < cols; ++i) {
          const C d = gelu_grad(g[i], xr[i] + b[i], C(0));
          gx[i] = d;
          acc[i] += d;
        }
        res.publish(pgx + r * cols, cols);
      }
    });
    if (grad_bias) store_compute(sum.data(), grad_bias->data<S>(), cols);
  });
}

void add_layer_norm_forward(const Tensor& x, const Tensor& y, const Tensor& bias,
                            const Tensor& weight, const Tensor& ln_bias, double eps,
                            Tensor& sum, Tensor* out, Tensor* mean, Tensor* rstd) {
  const int64_t cols = x.shape().back(), rows = rows_of(x);
  dispatch_float_storage("add_layer_norm", x.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    const S* px = x.data<S>();
    const S* py = y.data<S>();
    S* ps = sum.data<S>();
    S* po = out ? out->data<S>() : nullptr;
    RowView<S, C> b_view, w_view, lb_view;
    const C* b = bias.defined() ? b_view.read(bias.data<S>(), cols) : nullptr;
    const C* w = weight.defined() ? w_view.read(weight.data<S>(), cols) : nullptr;
    const C* lb = ln_bias.defined() ? lb_view.read(ln_bias.data<S>(), cols) : nullptr;
    C* pm = mean ? mean->data<C>() : nullptr;
    C* pr = rstd ? rstd->data<C>() : nullptr;
    parallel_for(rows, rows_grain(cols), [&](int64_t begin, int64_t end) {
      RowView<S, C> x_view, y_view, s_view, o_view;
      for (int64_t r = begin; r < end; ++r) {
        const C* xr = x_view.read(px + r * cols, cols);
        const C* yr = y_view.read(py + r * cols, cols);
        C* sr = s_view.write(ps + r * cols, cols);
        if (b) {
          for (int64_t i = 0; i < cols; ++i) sr[i] = xr[i] + yr[i] + b[i];
        } else {
          for (int64_t i = 0; i < cols; ++i) sr[i] = xr[i] + yr[i];
        }
        s_view.publish(ps + r * cols, cols);
        if (!po) continue;
        // Normalised from the stored sum, so that 16-bit results match layer_norm(sum).
        const C* stored = RowView<S, C>::kConverts ? x_view.read(ps + r * cols, cols) : sr;
        C* outr = o_view.write(po + r * cols, cols);
        normalize_row(stored, w, lb, cols, static_cast<C>(eps), outr, pm[r], pr[r]);
        o_view.publish(po + r * cols, cols);
      }
    });
  });
}

// --- batch norm -------------------------------------------------------------------
// x is contiguous (outer, channels, inner): the channels [c0, c1) of one outer index are
// one contiguous block of (c1 − c0)·inner values, which the per-channel sums walk outer
// index by outer index. Each thread owns whole channels and sums them in double, in a
// fixed order: the statistics do not depend on the thread count or the ISA.
namespace {

int64_t channels_grain(int64_t outer, int64_t inner) {
  return std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(outer * inner, 1));
}

// Calls visit(k, segment) for the channel b + k's segment of every outer index, where
// segment is its `inner` values in the compute type.
template <class S, class C, class Visit>
void for_each_segment(const S* data, int64_t outer, int64_t channels, int64_t inner, int64_t b,
                      int64_t e, RowView<S, C>& view, Visit visit) {
  const int64_t width = (e - b) * inner;
  for (int64_t o = 0; o < outer; ++o) {
    const C* block = view.read(data + (o * channels + b) * inner, width);
    for (int64_t k = 0; k < e - b; ++k) visit(k, o, block + k * inner);
  }
}

}  // namespace

void batch_norm_stats(const Tensor& x, int64_t outer, int64_t channels, int64_t inner,
                      Tensor& mean, Tensor& var) {
  const double count = static_cast<double>(outer * inner);
  dispatch_float_storage("batch_norm", x.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    const S* px = x.data<S>();
    C* pm = mean.data<C>();
    C* pv = var.data<C>();
    parallel_for(channels, channels_grain(outer, inner), [&](int64_t b, int64_t e) {
      RowView<S, C> view;
      std::vector<double> acc(static_cast<size_t>(e - b), 0.0);
      for_each_segment(px, outer, channels, inner, b, e, view, [&](int64_t k, int64_t, const C* seg) {
        double s = 0.0;
        for (int64_t i = 0; i < inner; ++i) s += static_cast<double>(seg[i]);
        acc[static_cast<size_t>(k)] += s;
      });
      std::vector<double> mu(acc.size());
      for (size_t k = 0; k < acc.size(); ++k) {
        mu[k] = acc[k] / count;
        acc[k] = 0.0;
      }
      // Two passes: Σ(x − μ)² does not cancel as E[x²] − μ² does.
      for_each_segment(px, outer, channels, inner, b, e, view, [&](int64_t k, int64_t, const C* seg) {
        const double m = mu[static_cast<size_t>(k)];
        double s = 0.0;
        for (int64_t i = 0; i < inner; ++i) {
          const double d = static_cast<double>(seg[i]) - m;
          s += d * d;
        }
        acc[static_cast<size_t>(k)] += s;
      });
      for (int64_t k = 0; k < e - b; ++k) {
        pm[b + k] = static_cast<C>(mu[static_cast<size_t>(k)]);
        pv[b + k] = static_cast<C>(acc[static_cast<size_t>(k)] / count);
      }
    });
  });
}

// y = x·scale + shift with scale = rstd·w and shift = b − mean·scale per channel.
void batch_norm_apply(const Tensor& x, int64_t outer, int64_t channels, int64_t inner,
                      const Tensor& mean, const Tensor& rstd, const Tensor& weight,
                      const Tensor& bias, Tensor& y) {
  dispatch_float_storage("batch_norm", x.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    RowView<S, C> w_view, b_view;
    const C* w = weight.defined() ? w_view.read(weight.data<S>(), channels) : nullptr;
    const C* bb = bias.defined() ? b_view.read(bias.data<S>(), channels) : nullptr;
    const C* pm = mean.data<C>();
    const C* pr = rstd.data<C>();
    std::vector<C> scale(static_cast<size_t>(channels)), shift(static_cast<size_t>(channels));
    for (int64_t c = 0; c < channels; ++c) {
      const C sc = w ? pr[c] * w[c] : pr[c];
      scale[static_cast<size_t>(c)] = sc;
      shift[static_cast<size_t>(c)] = (bb ? bb[c] : C(0)) - pm[c] * sc;
    }
    const S* px = x.data<S>();
    S* py = y.data<S>();
    const int64_t row = channels * inner;
    parallel_for(outer, rows_grain(row), [&](int64_t begin, int64_t end) {
      RowView<S, C> in, out;
      for (int64_t o = begin; o < end; ++o) {
        const C* xr = in.read(px + o * row, row);
        C* yr = out.write(py + o * row, row);
        for (int64_t c = 0; c < channels; ++c) {
          const C sc = scale[static_cast<size_t>(c)], sh = shift[static_cast<size_t>(c)];
          const C* xs = xr + c * inner;
          C* ys = yr + c * inner;
          for (int64_t i = 0; i < inner; ++i) ys[i] = xs[i] * sc + sh;
        }
        out.publish(py + o * row, row);
      }
    });
  });
}

// With x̂ = (x − μ)·rstd, M = outer·inner values per channel, and batch statistics
// (Ioffe & Szegedy 2015, §3; the layer-norm derivation with rows and columns swapped):
//   dx = γ·rstd·(g − mean(g) − x̂·mean(g·x̂)),  dγ = Σ g·x̂,  dβ = Σ g.
// With fixed (moving) statistics μ and rstd are constants: dx = γ·rstd·g.
void batch_norm_backward(const Tensor& grad_y, const Tensor& x, int64_t outer, int64_t channels,
                         int64_t inner, const Tensor& mean, const Tensor& rstd,
                         const Tensor& weight, bool batch_stats, Tensor* grad_x,
                         Tensor* grad_weight, Tensor* grad_bias) {
  const double count = static_cast<double>(outer * inner);
  dispatch_float_storage("batch_norm", x.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    const S* pg = grad_y.data<S>();
    const S* px = x.data<S>();
    const C* pm = mean.data<C>();
    const C* pr = rstd.data<C>();
    RowView<S, C> w_view;
    const C* w = weight.defined() ? w_view.read(weight.data<S>(), channels) : nullptr;
    // Per channel Σg and Σg·x̂, the only reductions; everything else is pointwise.
    std::vector<C> sum_g(static_cast<size_t>(channels)), sum_gx(static_cast<size_t>(channels));
    const bool need_sums = grad_weight || grad_bias || (grad_x && batch_stats);
    if (need_sums)
      parallel_for(channels, channels_grain(outer, inner), [&](int64_t b, int64_t e) {
        RowView<S, C> g_view, x_view;
        const int64_t width = (e - b) * inner;
        std::vector<double> acc_g(static_cast<size_t>(e - b), 0.0), acc_gx(acc_g.size(), 0.0);
        for (int64_t o = 0; o < outer; ++o) {
          const C* gb = g_view.read(pg + (o * channels + b) * inner, width);
          const C* xb = x_view.read(px + (o * channels + b) * inner, width);
          for (int64_t k = 0; k < e - b; ++k) {
            const C m = pm[b + k], r = pr[b + k];
            double sg = 0.0, sgx = 0.0;
            for (int64_t i = 0; i < inner; ++i) {
              const double g = static_cast<double>(gb[k * inner + i]);
              sg += g;
              sgx += g * static_cast<double>((xb[k * inner + i] - m) * r);
            }
            acc_g[static_cast<size_t>(k)] += sg;
            acc_gx[static_cast<size_t>(k)] += sgx;
          }
        }
        for (int64_t k = 0; k < e - b; ++k) {
          sum_g[static_cast<size_t>(b + k)] = static_cast<C>(acc_g[static_cast<size_t>(k)]);
          sum_gx[static_cast<size_t>(b + k)] = static_cast<C>(acc_gx[static_cast<size_t>(k)]);
        }
      });
    if (grad_weight) store_compute(sum_gx.data(), grad_weight->data<S>(), channels);
    if (grad_bias) store_compute(sum_g.data(), grad_bias->data<S>(), channels);
    if (!grad_x) return;
    S* pgx = grad_x->data<S>();
    const int64_t row = channels * inner;
    const C inv_count = static_cast<C>(1.0 / count);
    parallel_for(outer, rows_grain(row), [&](int64_t begin, int64_t end) {
      RowView<S, C> g_view, x_view, out;
      for (int64_t o = begin; o < end; ++o) {
        const C* gr = g_view.read(pg + o * row, row);
        const C* xr = x_view.read(px + o * row, row);
        C* dx = out.write(pgx + o * row, row);
        for (int64_t c = 0; c < channels; ++c) {
          const size_t cc = static_cast<size_t>(c);
          const C m = pm[c], r = pr[c], a = w ? w[c] * r : r;
          const C mean_g = batch_stats ? sum_g[cc] * inv_count : C(0);
          const C mean_gx = batch_stats ? sum_gx[cc] * inv_count : C(0);
          const C* gs = gr + c * inner;
          const C* xs = xr + c * inner;
          C* ds = dx + c * inner;
          for (int64_t i = 0; i < inner; ++i) ds[i] = a * (gs[i] - mean_g - (xs[i] - m) * r * mean_gx);
        }
        out.publish(pgx + o * row, row);
      }
    });
  });
}

void embedding_forward(const Tensor& indices, const Tensor& table, Tensor& out) {
  int64_t vocab = table.shape()[0], dim = table.shape()[1], n = indices.numel();
  dispatch_float_storage("embedding", table.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;  // rows are copied as stored
    dispatch_all("embedding", indices.dtype(), [&](auto index_tag) {
      using I = typename decltype(index_tag)::type;
      const I* idx = indices.data<I>();
      for (int64_t i = 0; i < n; ++i) {
        int64_t v = static_cast<int64_t>(idx[i]);
        if (v < 0 || v >= vocab)
          fail<IndexError>("embedding", "index ", v, " at position ", i,
                           " is out of range for a table of ", vocab, " rows");
      }
      const T* src = table.data<T>();
      T* dst = out.data<T>();
      parallel_for(n, rows_grain(dim), [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
          std::copy(src + static_cast<int64_t>(idx[i]) * dim,
                    src + (static_cast<int64_t>(idx[i]) + 1) * dim, dst + i * dim);
      });
    });
  });
}

// Scatter-add of the output gradient into the rows that were read (repeated indices add).
// A 16-bit table sums each thread's columns in float and rounds once, so a row read many
// times does not lose its small contributions.
void embedding_backward(const Tensor& indices, const Tensor& grad_out, Tensor& grad_table) {
  int64_t vocab = grad_table.shape()[0], dim = grad_table.shape()[1], n = indices.numel();
  dispatch_float_storage("embedding", grad_table.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    dispatch_all("embedding", indices.dtype(), [&](auto index_tag) {
      using I = typename decltype(index_tag)::type;
      const I* idx = indices.data<I>();
      const S* g = grad_out.data<S>();
      S* gt = grad_table.data<S>();
      // Split over the embedding dimension: each thread owns a column range, so repeated
      // indices never race.
      parallel_for(dim, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(n, 1)),
                   [&](int64_t begin, int64_t end) {
                     const int64_t width = end - begin;
                     if constexpr (std::is_same_v<S, C>) {
                       for (int64_t i = 0; i < n; ++i) {
                         S* row = gt + static_cast<int64_t>(idx[i]) * dim + begin;
                         const S* gr = g + i * dim + begin;
                         for (int64_t d = 0; d < width; ++d) row[d] += gr[d];
                       }
                     } else {
                       std::vector<C> acc(static_cast<size_t>(vocab * width));
                       for (int64_t v = 0; v < vocab; ++v)
                         load_compute(gt + v * dim + begin, acc.data() + v * width, width);
                       RowView<S, C> g_view;
                       for (int64_t i = 0; i < n; ++i) {
                         C* row = acc.data() + static_cast<int64_t>(idx[i]) * width;
                         const C* gr = g_view.read(g + i * dim + begin, width);
                         for (int64_t d = 0; d < width; ++d) row[d] += gr[d];
                       }
                       for (int64_t v = 0; v < vocab; ++v)
                         store_compute(acc.data() + v * width, gt + v * dim + begin, width);
                     }
                   });
    });
  });
}

}  // namespace STEEPEST_ISA_NS
}  // namespace steepest::cpu
