// The update rules: hyperparameter checks, the slots each rule keeps, and the scalars
// computed per step (bias-correction step, Lamb's trust ratio, Adafactor's step size)
// around the fused kernels of cpp/cpu/optim.cpp.
#include <algorithm>
#include <cmath>

#include "checks.h"
#include "steepest/autograd.h"
#include "steepest/common.h"
#include "steepest/kernels.h"
#include "steepest/ops.h"
#include "steepest/optim.h"

namespace steepest::optim {

using detail::check_non_negative;
using detail::check_decay_rate;
using detail::check_positive;

namespace {

void check_adam_family(const char* name, double beta_1, double beta_2, double epsilon) {
  check_decay_rate(name, "beta_1", beta_1);
  check_decay_rate(name, "beta_2", beta_2);
  check_positive(name, "epsilon", epsilon);
}

Tensor& slot(ParamState& state, size_t i) { return state.slots[i].second; }

// Adafactor's learning rate: the relative step's cap defaults to 1e-2; an absolute step
// needs a value.
std::shared_ptr<const Schedule> adafactor_learning_rate(std::shared_ptr<const Schedule> lr,
                                                        bool relative_step) {
  if (lr) return lr;
  if (!relative_step) fail("Adafactor", "relative_step=False needs a learning_rate, got None");
  return std::make_shared<const Constant>(Adafactor::kDefaultLearningRate);
}

}  // namespace

// ------------------------------------------------------------------------------- SGD

SGD::SGD(std::shared_ptr<const Schedule> learning_rate, double momentum, bool nesterov,
         std::optional<double> dampening, double weight_decay, std::optional<double> clipnorm)
    : Optimizer("SGD", std::move(learning_rate), weight_decay, clipnorm),
      momentum_(momentum),
      dampening_(dampening.value_or(momentum)),
      nesterov_(nesterov) {
  check_decay_rate("SGD", "momentum", momentum);
  if (!(dampening_ >= 0.0 && dampening_ <= 1.0))
    fail("SGD", "dampening must be in [0, 1], got ", dampening_);
  if (nesterov && momentum == 0.0)
    fail("SGD", "nesterov=True needs momentum > 0, got momentum=", momentum);
}

std::vector<SlotSpec> SGD::slot_specs(const Tensor& param) const {
  if (momentum_ == 0.0) return {};
  return {{"velocity", param.shape()}};
}

void SGD::update(Tensor& param, const Tensor& grad, ParamState& state, double lr,
                 double grad_scale, double weight_decay) {
  Tensor* velocity = momentum_ == 0.0 ? nullptr : &slot(state, 0);
  STEEPEST_KERNEL(param.device(), sgd_update)(param, grad, velocity, lr, momentum_, dampening_,
                                              nesterov_, weight_decay, grad_scale);
}

// --------------------------------------------------------------------------- RMSprop

RMSprop::RMSprop(std::shared_ptr<const Schedule> learning_rate, double rho, double epsilon,
                 double weight_decay, std::optional<double> clipnorm)
    : Optimizer("RMSprop", std::move(learning_rate), weight_decay, clipnorm),
      rho_(rho),
      epsilon_(epsilon) {
  check_decay_rate("RMSprop", "rho", rho);
  check_positive("RMSprop", "epsilon", epsilon);
}

std::vector<SlotSpec> RMSprop::slot_specs(const Tensor& param) const {
  return {{"mean_square", param.shape()}};
}

void RMSprop::update(Tensor& param, const Tensor& grad, ParamState& state, double lr,
                     double grad_scale, double weight_decay) {
  STEEPEST_KERNEL(param.device(), rmsprop_update)(param, grad, slot(state, 0), lr, rho_,
                                                  epsilon_, weight_decay, grad_scale);
}

// --------------------------------------------------------------------------- Adagrad

Adagrad::Adagrad(std::shared_ptr<const Schedule> learning_rate, double initial_accumulator_value,
                 double epsilon, double weight_decay, std::optional<double> clipnorm)
    : Optimizer("Adagrad", std::move(learning_rate), weight_decay, clipnorm),
      initial_accumulator_value_(initial_accumulator_value),
      epsilon_(epsilon) {
  check_non_negative("Adagrad", "initial_accumulator_value", initial_accumulator_value);
  check_positive("Adagrad", "epsilon", epsilon);
}

std::vector<SlotSpec> Adagrad::slot_specs(const Tensor& param) const {
  return {{"sum_square", param.shape(), initial_accumulator_value_}};
}

void Adagrad::update(Tensor& param, const Tensor& grad, ParamState& state, double lr,
                     double grad_scale, double weight_decay) {
  STEEPEST_KERNEL(param.device(), adagrad_update)(param, grad, slot(state, 0), lr, epsilon_,
                                                  weight_decay, grad_scale);
}

// ------------------------------------------------------------------------------ Lion

Lion::Lion(std::shared_ptr<const Schedule> learning_rate, double beta_1, double beta_2,
           double weight_decay, std::optional<double> clipnorm)
    : Optimizer("Lion", std::move(learning_rate), weight_decay, clipnorm),
      beta_1_(beta_1),
      beta_2_(beta_2) {
  check_decay_rate("Lion", "beta_1", beta_1);
  check_decay_rate("Lion", "beta_2", beta_2);
}

std::vector<SlotSpec> Lion::slot_specs(const Tensor& param) const {
  return {{"m", param.shape()}};
}

void Lion::update(Tensor& param, const Tensor& grad, ParamState& state, double lr,
                  double grad_scale, double weight_decay) {
  STEEPEST_KERNEL(param.device(), lion_update)(param, grad, slot(state, 0), lr, beta_1_, beta_2_,
                                               weight_decay, grad_scale);
}

// ---------------------------------------------------------------------------- Sophia

Sophia::Sophia(std::shared_ptr<const Schedule> learning_rate, double beta_1, double beta_2,
               double gamma, double epsilon, int64_t update_period, double weight_decay,
               std::optional<double> clipnorm)
    : Optimizer("Sophia", std::move(learning_rate), weight_decay, clipnorm),
      beta_1_(beta_1),
      beta_2_(beta_2),
      gamma_(gamma),
      epsilon_(epsilon),
      update_period_(update_period) {
  check_decay_rate("Sophia", "beta_1", beta_1);
  check_decay_rate("Sophia", "beta_2", beta_2);
  check_positive("Sophia", "gamma", gamma);
  check_positive("Sophia", "epsilon", epsilon);
  if (update_period < 1)
    fail("Sophia", "update_period (k, steps between Hessian estimates) must be >= 1, got ",
         update_period);
}

std::vector<SlotSpec> Sophia::slot_specs(const Tensor& param) const {
  return {{"m", param.shape()}, {"h", param.shape()}};
}

void Sophia::update_curvature(const std::vector<Tensor>& params,
                              const std::vector<Tensor>& estimates) {
  if (estimates.size() != params.size())
    fail("Sophia", "got ", estimates.size(), " Hessian estimates for ", params.size(),
         " parameters");
  for (size_t i = 0; i < params.size(); ++i) {  // all checked before any state changes
    if (!estimates[i].defined()) continue;
    if (!params[i].defined()) fail("Sophia", "parameter ", i, " is None");
    if (estimates[i].shape() != params[i].shape() || estimates[i].device() != params[i].device() ||
        !is_floating(estimates[i].dtype()))
      fail("Sophia", "the Hessian estimate of parameter ", i, " is ",
           dtype_name(estimates[i].dtype()), " ", estimates[i].shape(), " on ",
           estimates[i].device().str(), " but the parameter is ", params[i].shape(), " on ",
           params[i].device().str());
  }
  NoGradGuard no_grad;
  for (size_t i = 0; i < params.size(); ++i) {
    if (!estimates[i].defined()) continue;
    Tensor& h = slot(state_for(i, params[i]), 1);
    Tensor estimate = ops::astype(estimates[i].detach(), h.dtype());
    Tensor updated = ops::add(ops::mul_scalar(h, beta_2_), ops::mul_scalar(estimate, 1.0 - beta_2_));
    ops::copy_into(updated, h);
  }
}

void Sophia::update(Tensor& param, const Tensor& grad, ParamState& state, double lr,
                    double grad_scale, double weight_decay) {
  STEEPEST_KERNEL(param.device(), sophia_update)(param, grad, slot(state, 0), slot(state, 1), lr,
                                                 beta_1_, gamma_, epsilon_, weight_decay,
                                                 grad_scale);
}

std::vector<Tensor> hutchinson_hessian_diagonal(const std::vector<Tensor>& params,
                                                const std::vector<Tensor>& grads) {
  if (grads.size() != params.size())
    fail("hutchinson_hessian_diagonal", "got ", grads.size(), " gradients for ", params.size(),
         " parameters");
  // The products are recorded even when the caller runs under no_grad.
  struct GradMode {
    bool previous = grad_enabled();
    GradMode() { set_grad_enabled(true); }
    ~GradMode() { set_grad_enabled(previous); }
  } grad_mode;
  std::vector<Tensor> directions(params.size()), estimates(params.size());
  Tensor total;
  std::vector<Tensor> wrt;
  std::vector<size_t> positions;
  for (size_t i = 0; i < params.size(); ++i) {
    if (!grads[i].defined()) continue;
    const Tensor& g = grads[i];
    Tensor half = Tensor::full({}, 0.5, g.dtype(), g.device());
    Tensor heads = ops::compare(BinaryOp::Lt, ops::rand(g.shape(), std::nullopt, g.dtype(), g.device()), half);
    directions[i] = ops::where(heads, Tensor::full({}, 1.0, g.dtype(), g.device()),
                               Tensor::full({}, -1.0, g.dtype(), g.device()));
    estimates[i] = Tensor::zeros(g.shape(), g.dtype(), g.device());
    if (!g.requires_grad()) continue;  // a gradient that does not depend on the parameters
    Tensor term = ops::sum(ops::mul(g, directions[i]));
    total = total.defined() ? ops::add(total, term) : term;
    if (params[i].requires_grad()) {
      wrt.push_back(params[i]);
      positions.push_back(i);
    }
  }
  if (!total.defined() || wrt.empty()) return estimates;
  // The graph is kept: the loss's own backward may follow (Sophia's custom loop).
  BackwardOptions options;
  options.retain_graph = true;
  options.allow_unused = true;
  const std::vector<Tensor> products = steepest::grad({total}, {}, wrt, options);
  NoGradGuard no_grad;
  for (size_t j = 0; j < wrt.size(); ++j)
    if (products[j].defined())
      estimates[positions[j]] = ops::mul(directions[positions[j]], products[j].detach());
  return estimates;
}

// ------------------------------------------------------------------------------ Muon

Muon::Muon(std::shared_ptr<const Schedule> learning_rate, double momentum, bool nesterov,
           int64_t ns_steps, double epsilon, double adam_beta_1, double adam_beta_2,
           double adam_lr_ratio, double weight_decay, std::optional<double> clipnorm)
    : Optimizer("Muon", std::move(learning_rate), weight_decay, clipnorm),
      momentum_(momentum),
      nesterov_(nesterov),
      ns_steps_(ns_steps),
      epsilon_(epsilon),
      adam_beta_1_(adam_beta_1),
      adam_beta_2_(adam_beta_2),
      adam_lr_ratio_(adam_lr_ratio) {
  check_decay_rate("Muon", "momentum", momentum);
  detail::check_at_least("Muon", "ns_steps", ns_steps, 1);
  check_adam_family("Muon", adam_beta_1, adam_beta_2, epsilon);
  check_non_negative("Muon", "adam_lr_ratio", adam_lr_ratio);
}

std::vector<SlotSpec> Muon::slot_specs(const Tensor& param) const {
  if (param.ndim() == 2) return {{"momentum", param.shape()}};
  return {{"m", param.shape()}, {"v", param.shape()}};
}

Tensor Muon::orthogonalize(const Tensor& u) const {
  using namespace ops;
  const bool tall = u.shape()[0] > u.shape()[1];
  Tensor x = contiguous(tall ? transpose(u, 0, 1) : u);
  double square_norm = 0.0;
  STEEPEST_KERNEL(x.device(), sum_of_squares)(x, square_norm);
  x = mul_scalar(x, 1.0 / std::max(std::sqrt(square_norm), epsilon_));
  for (int64_t k = 0; k < ns_steps_; ++k) {
    const Tensor gram = matmul(x, transpose(x, 0, 1));
    const Tensor polynomial = add(mul_scalar(gram, kB), mul_scalar(matmul(gram, gram), kC));
    x = add(mul_scalar(x, kA), matmul(polynomial, x));
  }
  return tall ? transpose(x, 0, 1) : x;
}

void Muon::update(Tensor& param, const Tensor& grad, ParamState& state, double lr,
                  double grad_scale, double weight_decay) {
  if (param.ndim() != 2) {
    STEEPEST_KERNEL(param.device(), adam_update)(param, grad, slot(state, 0), slot(state, 1),
                                                 lr * adam_lr_ratio_, adam_beta_1_, adam_beta_2_,
                                                 epsilon_, state.step, weight_decay, true,
                                                 grad_scale);
    return;
  }
  using namespace ops;
  NoGradGuard no_grad;
  Tensor& buffer = slot(state, 0);
  const Tensor g = mul_scalar(grad, grad_scale);
  copy_into(add(mul_scalar(buffer, momentum_), mul_scalar(g, 1.0 - momentum_)), buffer);
  const Tensor direction =
      nesterov_ ? add(mul_scalar(g, 1.0 - momentum_), mul_scalar(buffer, momentum_)) : buffer;
  const double rows = static_cast<double>(param.shape()[0]);
  const double cols = static_cast<double>(param.shape()[1]);
  const double step = lr * std::sqrt(std::max(1.0, rows / cols));
  copy_into(sub(mul_scalar(param, 1.0 - lr * weight_decay), mul_scalar(orthogonalize(direction), step)),
            param);
}

// ------------------------------------------------------------------------ Adam, AdamW

Adam::Adam(std::shared_ptr<const Schedule> learning_rate, double beta_1, double beta_2,
           double epsilon, double weight_decay, std::optional<double> clipnorm)
    : Adam("Adam", std::move(learning_rate), beta_1, beta_2, epsilon, weight_decay, clipnorm,
           false) {}

Adam::Adam(std::string name, std::shared_ptr<const Schedule> learning_rate, double beta_1,
           double beta_2, double epsilon, double weight_decay, std::optional<double> clipnorm,
           bool decoupled)
    : Optimizer(std::move(name), std::move(learning_rate), weight_decay, clipnorm),
      beta_1_(beta_1),
      beta_2_(beta_2),
      epsilon_(epsilon),
      decoupled_(decoupled) {
  check_adam_family(this->name().c_str(), beta_1, beta_2, epsilon);
}

std::vector<SlotSpec> Adam::slot_specs(const Tensor& param) const {
  return {{"m", param.shape()}, {"v", param.shape()}};
}

void Adam::update(Tensor& param, const Tensor& grad, ParamState& state, double lr,
                  double grad_scale, double weight_decay) {
  STEEPEST_KERNEL(param.device(), adam_update)(param, grad, slot(state, 0), slot(state, 1), lr,
                                               beta_1_, beta_2_, epsilon_, state.step,
                                               weight_decay, decoupled_, grad_scale);
}

AdamW::AdamW(std::shared_ptr<const Schedule> learning_rate, double beta_1, double beta_2,
             double epsilon, double weight_decay, std::optional<double> clipnorm)
    : Adam("AdamW", std::move(learning_rate), beta_1, beta_2, epsilon, weight_decay, clipnorm,
           true) {}

// ------------------------------------------------------------------------------ Lamb

Lamb::Lamb(std::shared_ptr<const Schedule> learning_rate, double beta_1, double beta_2,
           double epsilon, double weight_decay, std::optional<double> clipnorm)
    : Optimizer("Lamb", std::move(learning_rate), weight_decay, clipnorm),
      beta_1_(beta_1),
      beta_2_(beta_2),
      epsilon_(epsilon) {
  check_adam_family("Lamb", beta_1, beta_2, epsilon);
}

std::vector<SlotSpec> Lamb::slot_specs(const Tensor& param) const {
  return {{"m", param.shape()}, {"v", param.shape()}};
}

void Lamb::update(Tensor& param, const Tensor& grad, ParamState& state, double lr,
                  double grad_scale, double weight_decay) {
  double param_sq = 0.0, update_sq = 0.0;
  STEEPEST_KERNEL(param.device(), lamb_moments)(param, grad, slot(state, 0), slot(state, 1),
                                                beta_1_, beta_2_, epsilon_, state.step,
                                                weight_decay, grad_scale, param_sq, update_sq);
  // The layer-wise trust ratio ‖θ‖/‖r + λθ‖; optax takes 1 when either norm is 0.
  const double ratio =
      param_sq > 0.0 && update_sq > 0.0 ? std::sqrt(param_sq) / std::sqrt(update_sq) : 1.0;
  STEEPEST_KERNEL(param.device(), lamb_apply)(param, slot(state, 0), slot(state, 1), lr * ratio,
                                              beta_1_, beta_2_, epsilon_, state.step,
                                              weight_decay);
}

// ------------------------------------------------------------------------- Adafactor

Adafactor::Adafactor(std::shared_ptr<const Schedule> learning_rate, double beta_2_decay,
                     double epsilon_1, double epsilon_2, double clip_threshold,
                     bool relative_step, double weight_decay, std::optional<double> clipnorm)
    : Optimizer("Adafactor", adafactor_learning_rate(std::move(learning_rate), relative_step),
                weight_decay, clipnorm),
      beta_2_decay_(beta_2_decay),
      epsilon_1_(epsilon_1),
      epsilon_2_(epsilon_2),
      clip_threshold_(clip_threshold),
      relative_step_(relative_step) {
  if (!(std::isfinite(beta_2_decay) && beta_2_decay <= 0.0))
    fail("Adafactor", "beta_2_decay must be a finite number <= 0, got ", beta_2_decay);
  check_positive("Adafactor", "epsilon_1", epsilon_1);
  check_positive("Adafactor", "epsilon_2", epsilon_2);
  check_positive("Adafactor", "clip_threshold", clip_threshold);
}

std::vector<SlotSpec> Adafactor::slot_specs(const Tensor& param) const {
  if (param.ndim() < 2) return {{"v", param.shape()}};
  // Row means drop the last axis, column means the second to last.
  Dims row = param.shape(), col = param.shape();
  row.pop_back();
  col.erase(param.ndim() - 2);
  return {{"v_row", row}, {"v_col", col}};
}

void Adafactor::update(Tensor& param, const Tensor& grad, ParamState& state, double lr,
                       double grad_scale, double weight_decay) {
  const double t = static_cast<double>(state.step);
  const double beta_2 = 1.0 - std::pow(t, beta_2_decay_);  // β̂₂ = 1 − t^decay
  Tensor* v_col = param.ndim() >= 2 ? &slot(state, 1) : nullptr;
  // α uses RMS(θ) before this step's decay, as torch.optim.Adafactor does.
  double alpha = lr;
  if (relative_step_) {
    double param_sq = 0.0;
    STEEPEST_KERNEL(param.device(), sum_of_squares)(param, param_sq);
    const double rms = std::sqrt(param_sq / static_cast<double>(param.numel()));
    alpha = std::max(epsilon_2_, rms) * std::min(lr, 1.0 / std::sqrt(t));
  }
  double update_sq = 0.0;
  STEEPEST_KERNEL(param.device(), adafactor_moments)(grad, slot(state, 0), v_col, beta_2,
                                                     epsilon_1_, grad_scale, update_sq);
  // Update clipping: Û = U / max(1, RMS(U)/d).
  const double rms_update = std::sqrt(update_sq / static_cast<double>(param.numel()));
  const double clip = std::max(1.0, rms_update / clip_threshold_);
  STEEPEST_KERNEL(param.device(), adafactor_apply)(param, grad, slot(state, 0), v_col,
                                                   grad_scale, alpha / clip,
                                                   1.0 - lr * weight_decay);
}

}  // namespace steepest::optim
