// The loss scaler of float16 mixed precision: PyTorch GradScaler's state machine
// (scale, unscale and check, step or skip, update) over the kernels every backend has.
#include <cmath>

#include "checks.h"
#include "steepest/dist.h"
#include "steepest/kernels.h"
#include "steepest/ops.h"
#include "steepest/optim.h"

namespace steepest::optim {

namespace {
constexpr const char* kOwner = "LossScaler";
}

LossScaler::LossScaler(double initial_scale, double growth_factor, double backoff_factor,
                       int64_t growth_interval)
    : scale_(static_cast<float>(initial_scale)), growth_factor_(growth_factor),
      backoff_factor_(backoff_factor), growth_interval_(growth_interval) {
  detail::check_positive(kOwner, "initial_scale", initial_scale);
  if (!std::isfinite(scale_) || !(scale_ > 0.0f))
    fail(kOwner, "initial_scale must be a positive float32 number, got ", initial_scale);
  if (!(std::isfinite(growth_factor) && growth_factor > 1.0))
    fail(kOwner, "growth_factor must be a finite number > 1, got ", growth_factor);
  if (!(backoff_factor > 0.0 && backoff_factor < 1.0))
    fail(kOwner, "backoff_factor must be in (0, 1), got ", backoff_factor);
  detail::check_at_least(kOwner, "growth_interval", growth_interval, 1);
}

Tensor LossScaler::scale(const Tensor& loss) const {
  if (!loss.defined()) fail(kOwner, "the loss is None");
  if (!is_floating(loss.dtype()))
    fail<TypeError>(kOwner, "the loss must be a floating-point tensor, got ", dtype_name(loss.dtype()));
  // A float16 loss times 2¹⁶ would overflow: the scaled loss is float32, as in torch.
  return ops::mul_scalar(ops::astype(loss, compute_dtype(loss.dtype())), static_cast<double>(scale_));
}

bool LossScaler::unscale(const std::vector<Tensor>& params, dist::Communicator* shards) {
  if (stage_ == Stage::Unscaled)
    fail<StateError>(kOwner, "unscale() was already called since the last update()");
  if (stage_ == Stage::Stepped)
    fail<StateError>(kOwner, "unscale() must come before step(); call update() to finish the step");
  const double inverse = 1.0 / static_cast<double>(scale_);
  bool finite = true;
  for (const Tensor& param : params) {
    if (!param.defined()) fail(kOwner, "a parameter is None");
    Tensor grad = param.grad();
    if (!grad.defined()) continue;
    // In place, as clip_grad_norm: every holder of the grad sees the true gradient.
    Tensor values = grad.is_contiguous() ? grad : Tensor::empty(grad.shape(), grad.dtype(), grad.device());
    STEEPEST_KERNEL(grad.device(), unary)(UnaryOp::MulScalar, grad, values, inverse);
    if (!grad.is_contiguous()) STEEPEST_KERNEL(grad.device(), copy)(values, grad);
    // Σg² is finite exactly when every g is (float32 squares cannot overflow a double sum).
    double squares = 0.0;
    STEEPEST_KERNEL(grad.device(), sum_of_squares)(ops::astype(values, compute_dtype(values.dtype())),
                                                   squares);
    if (!std::isfinite(squares)) finite = false;
  }
  if (shards) {
    int32_t all_finite = finite ? 1 : 0;
    shards->control().all_reduce(&all_finite, 1, DType::Int32, dist::ReduceOp::Min);
    finite = all_finite != 0;
  }
  found_inf_ = !finite;
  stage_ = Stage::Unscaled;
  return finite;
}

bool LossScaler::step(Optimizer& optimizer, const std::vector<Tensor>& params,
                      dist::Communicator* shards, const DecayMask& decay) {
  if (stage_ == Stage::Stepped)
    fail<StateError>(kOwner, "step() was already called since the last update()");
  if (stage_ == Stage::Ready) unscale(params, shards);
  // A skipped step leaves everything as it was: no update, no step count, no schedule.
  if (!found_inf_) optimizer.step(params, shards, decay);
  stage_ = Stage::Stepped;
  return !found_inf_;
}

void LossScaler::update() {
  if (stage_ == Stage::Ready)
    fail<StateError>(kOwner, "update() needs a step() (or unscale()) since the last update(): "
                             "no gradients were checked");
  if (found_inf_) {
    scale_ = static_cast<float>(static_cast<double>(scale_) * backoff_factor_);
    growth_tracker_ = 0;
  } else if (++growth_tracker_ == growth_interval_) {
    const auto grown = static_cast<float>(static_cast<double>(scale_) * growth_factor_);
    if (std::isfinite(grown)) scale_ = grown;
    growth_tracker_ = 0;
  }
  stage_ = Stage::Ready;
  found_inf_ = false;
}

void LossScaler::load_state(double scale, int64_t growth_tracker) {
  const auto value = static_cast<float>(scale);
  if (!(std::isfinite(value) && value > 0.0f))
    fail(kOwner, "scale must be a positive float32 number, got ", scale);
  if (growth_tracker < 0 || growth_tracker >= growth_interval_)
    fail(kOwner, "growth_tracker must be in [0, ", growth_interval_, "), got ", growth_tracker);
  scale_ = value;
  growth_tracker_ = growth_tracker;
  stage_ = Stage::Ready;
  found_inf_ = false;
}

}  // namespace steepest::optim
