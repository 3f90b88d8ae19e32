// K-FAC: the factor statistics the layers collect, the host eigensolver, and the
// preconditioned step (see kfac.h). The per-step work is tensor ops, so it runs wherever
// the parameters live; only the eigendecompositions, every inverse_update_interval steps,
// go through the host.
#include "steepest/kfac.h"

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "checks.h"
#include "steepest/autograd.h"
#include "steepest/common.h"
#include "steepest/kernels.h"
#include "steepest/ops.h"

namespace steepest::optim {

namespace {

// Statistics accumulate in float32, or float64 for float64 layers (a float16 layer's
// products would overflow).
Tensor stats_precision(const Tensor& t) {
  const DType dtype = t.dtype() == DType::Float64 ? DType::Float64 : DType::Float32;
  return t.dtype() == dtype ? t : ops::astype(t, dtype);
}

// scale · xᵀx of a (rows, k) matrix.
Tensor scaled_gram(const Tensor& x, double scale) {
  const Tensor rows = stats_precision(x);
  return ops::mul_scalar(ops::matmul(ops::transpose(rows, 0, 1), rows), scale);
}

void accumulate(Tensor& sum, int64_t& batches, const Tensor& term) {
  sum = sum.defined() ? ops::add(sum, term) : term;
  ++batches;
}

Tensor mean_of(const Tensor& sum, int64_t batches) {
  return batches == 1 ? sum : ops::mul_scalar(sum, 1.0 / static_cast<double>(batches));
}

// Identity forward; the backward records G from the gradient and passes it on. It keeps
// no tensors, and its formula (the identity) holds under create_graph too.
class KfacTapBackward final : public Node {
 public:
  KfacTapBackward(std::shared_ptr<KfacFactors> factors, int64_t channel_axis, int64_t batch)
      : factors_(std::move(factors)), channel_axis_(channel_axis), batch_(batch) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override {
    {
      NoGradGuard no_grad;
      const Tensor moved = ops::transpose(g.detach(), channel_axis_, g.ndim() - 1);
      const int64_t units = g.shape()[channel_axis_];
      factors_->add_output_grads(ops::reshape(ops::contiguous(moved), {-1, units}), batch_);
    }
    out[0] = g;
  }
  const char* name() const override { return "KfacTapBackward"; }
  bool supports_create_graph() const override { return true; }

 private:
  std::shared_ptr<KfacFactors> factors_;
  int64_t channel_axis_, batch_;
};

// The symmetric eigensolver of EISPACK as JAMA transcribes it (public domain): tred2
// reduces v (n×n, row-major, holding the matrix) to tridiagonal form by Householder
// reflections, accumulating them in v; tql2 diagonalises the tridiagonal matrix by implicit
// QL steps with Wilkinson-like shifts, rotating v along. About 3n³ flops — a cyclic Jacobi
// solver needs several times that for the 256-wide factors of a small MLP. On return d holds
// the eigenvalues and v's columns the eigenvectors.
void tred2(std::vector<double>& v, std::vector<double>& d, std::vector<double>& e, int64_t n) {
  auto V = [&](int64_t i, int64_t j) -> double& { return v[i * n + j]; };
  for (int64_t j = 0; j < n; ++j) d[j] = V(n - 1, j);
  for (int64_t i = n - 1; i > 0; --i) {
    // Scaled to avoid under/overflow.
    double scale = 0.0, h = 0.0;
    for (int64_t k = 0; k < i; ++k) scale += std::abs(d[k]);
    if (scale == 0.0) {
      e[i] = d[i - 1];
      for (int64_t j = 0; j < i; ++j) {
        d[j] = V(i - 1, j);
        V(i, j) = 0.0;
        V(j, i) = 0.0;
      }
    } else {
      for (int64_t k = 0; k < i; ++k) {
        d[k] /= scale;
        h += d[k] * d[k];
      }
      double f = d[i - 1];
      double g = std::sqrt(h);
      if (f > 0) g = -g;
      e[i] = scale * g;
      h -= f * g;
      d[i - 1] = f - g;
      for (int64_t j = 0; j < i; ++j) e[j] = 0.0;
      for (int64_t j = 0; j < i; ++j) {
        f = d[j];
        V(j, i) = f;
        g = e[j] + V(j, j) * f;
        for (int64_t k = j + 1; k <= i - 1; ++k) {
          g += V(k, j) * d[k];
          e[k] += V(k, j) * f;
        }
        e[j] = g;
      }
      f = 0.0;
      for (int64_t j = 0; j < i; ++j) {
        e[j] /= h;
        f += e[j] * d[j];
      }
      const double hh = f / (h + h);
      for (int64_t j = 0; j < i; ++j) e[j] -= hh * d[j];
      for (int64_t j = 0; j < i; ++j) {
        f = d[j];
        g = e[j];
        for (int64_t k = j; k <= i - 1; ++k) V(k, j) -= (f * e[k] + g * d[k]);
        d[j] = V(i - 1, j);
        V(i, j) = 0.0;
      }
    }
    d[i] = h;
  }
  for (int64_t i = 0; i < n - 1; ++i) {
    V(n - 1, i) = V(i, i);
    V(i, i) = 1.0;
    const double h = d[i + 1];
    if (h != 0.0) {
      for (int64_t k = 0; k <= i; ++k) d[k] = V(k, i + 1) / h;
      for (int64_t j = 0; j <= i; ++j) {
        double g = 0.0;
        for (int64_t k = 0; k <= i; ++k) g += V(k, i + 1) * V(k, j);
        for (int64_t k = 0; k <= i; ++k) V(k, j) -= g * d[k];
      }
    }
    for (int64_t k = 0; k <= i; ++k) V(k, i + 1) = 0.0;
  }
  for (int64_t j = 0; j < n; ++j) {
    d[j] = V(n - 1, j);
    V(n - 1, j) = 0.0;
  }
  V(n - 1, n - 1) = 1.0;
  e[0] = 0.0;
}

void tql2(std::vector<double>& v, std::vector<double>& d, std::vector<double>& e, int64_t n) {
  auto V = [&](int64_t i, int64_t j) -> double& { return v[i * n + j]; };
  for (int64_t i = 1; i < n; ++i) e[i - 1] = e[i];
  e[n - 1] = 0.0;
  double f = 0.0, tst1 = 0.0;
  const double eps = std::ldexp(1.0, -52);
  // QL converges in about two iterations per eigenvalue; far more means NaNs came in.
  const int64_t max_iterations = 60 * n + 60;
  int64_t iterations = 0;
  for (int64_t l = 0; l < n; ++l) {
    tst1 = std::max(tst1, std::abs(d[l]) + std::abs(e[l]));
    int64_t m = l;
    while (m < n && !(std::abs(e[m]) <= eps * tst1)) ++m;
    if (m == n) m = n - 1;
    if (m > l) {
      do {
        if (++iterations > max_iterations)
          fail("KFAC", "the eigendecomposition of a Kronecker factor did not converge; "
               "the factor holds non-finite values");
        double g = d[l];
        double p = (d[l + 1] - g) / (2.0 * e[l]);
        double r = std::hypot(p, 1.0);
        if (p < 0) r = -r;
        d[l] = e[l] / (p + r);
        d[l + 1] = e[l] * (p + r);
        const double dl1 = d[l + 1];
        double h = g - d[l];
        for (int64_t i = l + 2; i < n; ++i) d[i] -= h;
        f += h;
        p = d[m];
        double c = 1.0, c2 = c, c3 = c, s = 0.0, s2 = 0.0;
        const double el1 = e[l + 1];
        for (int64_t i = m - 1; i >= l; --i) {
          c3 = c2;
          c2 = c;
          s2 = s;
          g = c * e[i];
          h = c * p;
          r = std::hypot(p, e[i]);
          e[i + 1] = s * r;
          s = e[i] / r;
          c = p / r;
          p = c * d[i] - s * g;
          d[i + 1] = h + s * (c * g + s * d[i]);
          for (int64_t k = 0; k < n; ++k) {
            h = V(k, i + 1);
            V(k, i + 1) = s * V(k, i) + c * h;
            V(k, i) = c * V(k, i) - s * h;
          }
        }
        p = -s * s2 * c3 * el1 * e[l] / dl1;
        e[l] = s * p;
        d[l] = c * p;
      } while (std::abs(e[l]) > eps * tst1);
    }
    d[l] += f;
    e[l] = 0.0;
  }
}

}  // namespace

// ------------------------------------------------------------------------ the factors

void KfacFactors::add_inputs(const Tensor& a, int64_t batch) {
  accumulate(a_sum_, a_batches_, scaled_gram(a, 1.0 / static_cast<double>(batch)));
}

void KfacFactors::add_output_grads(const Tensor& g, int64_t batch) {
  // (1/(N·T)) Σ (N·g)(N·g)ᵀ = (N/T) gᵀg with N·T = the rows.
  const double n = static_cast<double>(batch), rows = static_cast<double>(g.shape()[0]);
  accumulate(g_sum_, g_batches_, scaled_gram(g, rows > 0 ? n * n / rows : 0.0));
}

std::pair<Tensor, Tensor> KfacFactors::take() {
  std::pair<Tensor, Tensor> means{a_batches_ ? mean_of(a_sum_, a_batches_) : Tensor(),
                                  g_batches_ ? mean_of(g_sum_, g_batches_) : Tensor()};
  a_sum_ = g_sum_ = Tensor();
  a_batches_ = g_batches_ = 0;
  return means;
}

Tensor kfac_output_tap(const Tensor& output, std::shared_ptr<KfacFactors> factors,
                       int64_t channel_axis) {
  if (!any_requires_grad({&output})) return output;
  Tensor tapped = output.detach();
  attach(tapped, std::make_shared<KfacTapBackward>(std::move(factors), channel_axis, output.shape()[0]),
         {&output});
  return tapped;
}

Tensor im2col_rows(const Tensor& x, std::pair<int64_t, int64_t> kernel,
                   std::pair<int64_t, int64_t> stride, std::pair<int64_t, int64_t> dilation,
                   const std::vector<int64_t>& padding) {
  using namespace ops;
  const Tensor padded = pad(x, {{0, 0}, {0, 0}, {padding[0], padding[1]}, {padding[2], padding[3]}},
                            PadMode::Constant);
  const int64_t n = x.shape()[0], channels = x.shape()[1];
  const int64_t out_h = (padded.shape()[2] - dilation.first * (kernel.first - 1) - 1) / stride.first + 1;
  const int64_t out_w = (padded.shape()[3] - dilation.second * (kernel.second - 1) - 1) / stride.second + 1;
  std::vector<Tensor> taps;
  for (int64_t i = 0; i < kernel.first; ++i) {
    for (int64_t j = 0; j < kernel.second; ++j) {
      const int64_t top = i * dilation.first, left = j * dilation.second;
      const Tensor rows = slice(padded, 2, top, top + stride.first * (out_h - 1) + 1, stride.first);
      taps.push_back(slice(rows, 3, left, left + stride.second * (out_w - 1) + 1, stride.second));
    }
  }
  // (N, C, kh·kw, H', W') → (N, C·kh·kw, H'·W') → one row per (example, pixel).
  const Tensor patches = reshape(contiguous(stack(taps, 2)),
                                 {n, channels * kernel.first * kernel.second, out_h * out_w});
  return reshape(contiguous(transpose(patches, 1, 2)), {-1, channels * kernel.first * kernel.second});
}

std::pair<Tensor, Tensor> symmetric_eigen(const Tensor& m) {
  const int64_t n = m.shape()[0];
  const Tensor host = ops::contiguous(ops::astype(ops::to_device(m, Device{}), DType::Float64));
  std::vector<double> v(host.data<double>(), host.data<double>() + n * n), d(n), e(n);
  if (!std::all_of(v.begin(), v.end(), [](double x) { return std::isfinite(x); }))
    fail("KFAC", "a Kronecker factor of size ", n, " holds non-finite values (the loss diverged?)");
  // Symmetrised: the factors are symmetric up to rounding; tred2 reads one triangle.
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) v[i * n + j] = v[j * n + i] = 0.5 * (v[i * n + j] + v[j * n + i]);
  if (n > 0) {
    tred2(v, d, e, n);
    tql2(v, d, e, n);
  }
  Tensor basis = Tensor::empty({n, n}, DType::Float64), values = Tensor::empty({n}, DType::Float64);
  std::copy(v.begin(), v.end(), basis.data<double>());
  // A and G are positive semidefinite; a rounding-negative eigenvalue is a zero.
  for (int64_t i = 0; i < n; ++i) values.data<double>()[i] = std::max(d[i], 0.0);
  return {ops::to_device(ops::astype(basis, m.dtype()), m.device()),
          ops::to_device(ops::astype(values, m.dtype()), m.device())};
}

// --------------------------------------------------------------------------- the optimizer

KFAC::KFAC(std::shared_ptr<const Schedule> learning_rate, double damping, double momentum,
           double weight_decay, double stats_decay, int64_t inverse_update_interval,
           std::optional<double> kl_clip, std::optional<double> clipnorm)
    : Optimizer("KFAC", std::move(learning_rate), weight_decay, clipnorm),
      damping_(damping),
      momentum_(momentum),
      stats_decay_(stats_decay),
      inverse_update_interval_(inverse_update_interval),
      kl_clip_(kl_clip) {
  if (kl_clip_) detail::check_positive("KFAC", "kl_clip", *kl_clip_);
  detail::check_positive("KFAC", "damping", damping);
  detail::check_decay_rate("KFAC", "momentum", momentum);
  detail::check_decay_rate("KFAC", "stats_decay", stats_decay);
  detail::check_at_least("KFAC", "inverse_update_interval", inverse_update_interval, 1);
}

const KFAC::Tracked* KFAC::find(const Tensor& param) const {
  for (const Tracked& t : tracked_)
    if (t.kernel.impl() == param.impl()) return &t;
  return nullptr;
}

KfacLayout KFAC::layout_of(const Tensor& param) const {
  const Tracked* t = find(param);
  return t ? t->layout : KfacLayout::None;
}

std::shared_ptr<KfacFactors> KFAC::track(const Tensor& kernel, KfacLayout layout) {
  if (layout == KfacLayout::None) fail("KFAC", "track: a kernel needs a layout");
  if (kernel.ndim() < 2)
    fail("KFAC", "track: a kernel has at least 2 axes, got shape ", kernel.shape());
  if (const Tracked* t = find(kernel)) return t->factors;
  tracked_.push_back({kernel, layout, std::make_shared<KfacFactors>()});
  return tracked_.back().factors;
}

namespace {

// (rows of A, rows of G) of a tracked kernel.
std::pair<int64_t, int64_t> factor_sizes(const Dims& shape, KfacLayout layout) {
  if (layout == KfacLayout::InputRows) return {shape[0], shape.product() / shape[0]};
  return {shape.product() / shape[0], shape[0]};
}

}  // namespace

// Slots: velocity; for a tracked kernel also A and G (running averages), and their
// eigenbases and eigenvalues from the last inverse update.
std::vector<SlotSpec> KFAC::slot_specs(const Tensor& param) const {
  std::vector<SlotSpec> specs{{"velocity", param.shape()}};
  const KfacLayout layout = layout_of(param);
  if (layout == KfacLayout::None) return specs;
  const auto [a, g] = factor_sizes(param.shape(), layout);
  specs.push_back({"A", {a, a}});
  specs.push_back({"G", {g, g}});
  specs.push_back({"A_basis", {a, a}});
  specs.push_back({"A_eigenvalues", {a}});
  specs.push_back({"G_basis", {g, g}});
  specs.push_back({"G_eigenvalues", {g}});
  return specs;
}

void KFAC::update(Tensor& param, const Tensor& grad, ParamState& state, double lr,
                  double grad_scale, double weight_decay) {
  Tensor& velocity = state.slots[0].second;
  const Tracked* tracked = find(param);
  if (!tracked) {
    STEEPEST_KERNEL(param.device(), sgd_update)(param, grad, &velocity, lr, momentum_, 0.0, false,
                                                weight_decay, grad_scale);
    return;
  }
  using namespace ops;
  NoGradGuard no_grad;
  auto slot = [&](size_t i) -> Tensor& { return state.slots[i].second; };
  Tensor &a_avg = slot(1), &g_avg = slot(2);
  auto [a, g] = tracked->factors->take();
  if (a.defined() && g.defined()) {
    a = astype(to_device(a, param.device()), param.dtype());
    g = astype(to_device(g, param.device()), param.dtype());
    // The first statistics start the running averages.
    const double keep = state.step == 1 ? 0.0 : stats_decay_;
    copy_into(add(mul_scalar(a_avg, keep), mul_scalar(a, 1.0 - keep)), a_avg);
    copy_into(add(mul_scalar(g_avg, keep), mul_scalar(g, 1.0 - keep)), g_avg);
  } else if (state.step == 1) {
    fail("KFAC", "no Kronecker factors were collected for the kernel of shape ", param.shape(),
         " before its first step; K-FAC preconditions the Dense and Conv2D layers of a model "
         "trained with compile(optimizer=KFAC(...)) and fit, whose forward and backward "
         "collect them");
  }
  if ((state.step - 1) % inverse_update_interval_ == 0) {
    std::tie(slot(3), slot(4)) = symmetric_eigen(a_avg);
    std::tie(slot(5), slot(6)) = symmetric_eigen(g_avg);
  }
  const Tensor &qa = slot(3), &sa = slot(4), &qg = slot(5), &sg = slot(6);
  // L2 weight decay joins the gradient before preconditioning, as SGD's does.
  Tensor v = mul_scalar(grad, grad_scale);
  if (weight_decay != 0.0) v = add(v, mul_scalar(param, weight_decay));
  // (A ⊗ G + λI)⁻¹ vec(V) in the eigenbases: with V's rows on the first factor's side
  // (Q₁, s₁) and its columns on the second's, Q₁[(Q₁ᵀ V Q₂) ⊘ (s₁ s₂ᵀ + λ)]Q₂ᵀ.
  const bool input_rows = tracked->layout == KfacLayout::InputRows;
  const Tensor &q1 = input_rows ? qa : qg, &s1 = input_rows ? sa : sg;
  const Tensor &q2 = input_rows ? qg : qa, &s2 = input_rows ? sg : sa;
  const int64_t rows = q1.shape()[0], cols = q2.shape()[0];
  const Tensor rotated = matmul(matmul(transpose(q1, 0, 1), reshape(v, {rows, cols})), q2);
  const Tensor scale = add_scalar(mul(reshape(s1, {rows, 1}), reshape(s2, {1, cols})), damping_);
  Tensor direction = reshape(matmul(matmul(q1, div(rotated, scale)), transpose(q2, 0, 1)), param.shape());
  double clip = 1.0;
  if (kl_clip_) {
    const double predicted = lr * lr * sum(mul(direction, v)).item();
    if (predicted > *kl_clip_) clip = std::sqrt(*kl_clip_ / predicted);
  }
  STEEPEST_KERNEL(param.device(), sgd_update)(param, contiguous(direction), &velocity, lr, momentum_,
                                              0.0, false, 0.0, clip);
}

}  // namespace steepest::optim
