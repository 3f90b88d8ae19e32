// The optimizer base: step counting, per-parameter state, global-norm clipping and the
// hyperparameter checks every optimizer shares.
#include <algorithm>
#include <cmath>

#include "checks.h"
#include "steepest/common.h"
#include "steepest/dist.h"
#include "steepest/kernels.h"
#include "steepest/ops.h"
#include "steepest/optim.h"
#include "steepest/profiler.h"

namespace steepest::optim {
namespace detail {

void check_non_negative(const char* owner, const char* name, double value) {
  if (!(std::isfinite(value) && value >= 0.0))
    fail(owner, name, " must be a finite number >= 0, got ", value);
}

void check_positive(const char* owner, const char* name, double value) {
  if (!(std::isfinite(value) && value > 0.0))
    fail(owner, name, " must be a finite number > 0, got ", value);
}

void check_decay_rate(const char* owner, const char* name, double value) {
  if (!(value >= 0.0 && value < 1.0)) fail(owner, name, " must be in [0, 1), got ", value);
}

void check_at_least(const char* owner, const char* name, int64_t value, int64_t minimum) {
  if (value < minimum) fail(owner, name, " must be >= ", minimum, ", got ", value);
}

}  // namespace detail

namespace {

// torch.nn.utils.clip_grad_norm_'s guard against dividing by a zero norm.
constexpr double kClipEpsilon = 1e-6;

Tensor contiguous_data(const Tensor& t) {
  if (t.is_contiguous()) return t;
  Tensor out = Tensor::empty(t.shape(), t.dtype(), t.device());
  STEEPEST_KERNEL(t.device(), copy)(t, out);
  return out;
}

double sum_of_squares(const Tensor& t) {
  double result = 0.0;
  STEEPEST_KERNEL(t.device(), sum_of_squares)(contiguous_data(t), result);
  return result;
}

}  // namespace

Optimizer::Optimizer(std::string name, std::shared_ptr<const Schedule> learning_rate,
                     double weight_decay, std::optional<double> clipnorm)
    : weight_decay_(weight_decay), name_(std::move(name)), clipnorm_(clipnorm) {
  set_learning_rate(std::move(learning_rate));
  detail::check_non_negative(name_.c_str(), "weight_decay", weight_decay);
  if (clipnorm_) detail::check_positive(name_.c_str(), "clipnorm", *clipnorm_);
}

void Optimizer::set_learning_rate(std::shared_ptr<const Schedule> learning_rate) {
  if (!learning_rate) fail(name_.c_str(), "learning_rate is missing");
  schedule_ = std::move(learning_rate);
}

double Optimizer::learning_rate() const {
  const double lr = (*schedule_)(iterations_);
  if (!(std::isfinite(lr) && lr >= 0.0))
    fail(name_.c_str(), "the learning-rate schedule returned ", lr, " at step ", iterations_,
         "; learning rates must be finite and >= 0");
  return lr;
}

void Optimizer::exclude_from_weight_decay(std::vector<Tensor> var_list,
                                          std::vector<std::string> var_names) {
  for (const Tensor& t : var_list)
    if (!t.defined()) fail(name_.c_str(), "exclude_from_weight_decay: var_list holds None");
  for (const std::string& name : var_names)
    if (name.empty()) fail(name_.c_str(), "exclude_from_weight_decay: var_names holds an empty name");
  excluded_tensors_ = std::move(var_list);
  excluded_names_ = std::move(var_names);
}

bool Optimizer::excluded_by_identity(const Tensor& param) const {
  return std::any_of(excluded_tensors_.begin(), excluded_tensors_.end(),
                     [&](const Tensor& t) { return t.impl() == param.impl(); });
}

DecayMask Optimizer::decay_mask(const std::vector<Tensor>& params,
                                const std::vector<std::string>& names) const {
  if (params.size() != names.size())
    fail(name_.c_str(), "decay_mask: ", params.size(), " parameters but ", names.size(), " names");
  DecayMask mask(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    // Keras matches a pattern anywhere in the variable path.
    const bool named = std::any_of(excluded_names_.begin(), excluded_names_.end(), [&](const std::string& n) {
      return names[i].find(n) != std::string::npos;
    });
    mask[i] = !named && !excluded_by_identity(params[i]);
  }
  return mask;
}

void Optimizer::step(const std::vector<Tensor>& params, dist::Communicator* shards,
                     const DecayMask& decay) {
  STEEPEST_PROFILE_OP("optimizer_step");
  const char* op = name_.c_str();
  if (!decay.empty() && decay.size() != params.size())
    fail(op, "the weight-decay mask has ", decay.size(), " entries for ", params.size(), " parameters");
  const double lr = learning_rate();
  // Every parameter is checked before any is touched, so a bad input never leaves a
  // half-applied step behind.
  struct Work {
    size_t index;
    Tensor param, grad;
  };
  std::vector<Work> work;
  for (size_t i = 0; i < params.size(); ++i) {
    const Tensor& param = params[i];
    if (!param.defined()) fail(op, "parameter ", i, " is None");
    const Tensor grad = param.grad();
    if (!grad.defined()) continue;
    if (param.dtype() != DType::Float32 && param.dtype() != DType::Float64)
      fail<TypeError>(op, "parameter ", i, " is ", dtype_name(param.dtype()),
                      "; optimizers update float32 or float64 parameters");
    if (grad.dtype() != param.dtype() || grad.shape() != param.shape())
      fail(op, "the grad of parameter ", i, " is ", dtype_name(grad.dtype()), " ", grad.shape(),
           " but the parameter is ", dtype_name(param.dtype()), " ", param.shape());
    if (grad.device() != param.device())
      fail(op, "parameter ", i, " is on ", param.device().str(), " but its grad is on ",
           grad.device().str());
    if (!param.is_contiguous())
      fail(op, "parameter ", i, " of shape ", param.shape(),
           " is a non-contiguous view; optimizers update contiguous parameters in place");
    work.push_back({i, param, contiguous_data(grad)});
  }
  if (state_.size() < params.size()) state_.resize(params.size());
  for (const Work& w : work) prepare_state(w.index, w.param);

  double grad_scale = 1.0;
  if (clipnorm_) {
    double total = 0.0;
    for (const Work& w : work) total += sum_of_squares(w.grad);
    if (shards) shards->control().all_reduce(&total, 1, DType::Float64, dist::ReduceOp::Sum);
    const double norm = std::sqrt(total);
    if (norm > *clipnorm_) grad_scale = *clipnorm_ / (norm + kClipEpsilon);
  }
  for (Work& w : work) {
    ParamState& state = state_[w.index];
    ++state.step;
    const bool decays = decay.empty() ? !excluded_by_identity(w.param) : bool(decay[w.index]);
    if (w.param.numel() == 0) continue;
    update(w.param, w.grad, state, lr, grad_scale, decays ? weight_decay_ : 0.0);
    w.param.storage()->bump_version();
  }
  ++iterations_;
}

void Optimizer::update_curvature(const std::vector<Tensor>&, const std::vector<Tensor>&) {
  fail<StateError>(name_.c_str(), "keeps no curvature estimate (only Sophia does)");
}

ParamState& Optimizer::state_for(size_t index, const Tensor& param) {
  if (state_.size() <= index) state_.resize(index + 1);
  prepare_state(index, param);
  return state_[index];
}

void Optimizer::prepare_state(size_t index, const Tensor& param) {
  const char* op = name_.c_str();
  ParamState& state = state_[index];
  const std::vector<SlotSpec> specs = slot_specs(param);
  if (state.empty()) {
    for (const SlotSpec& spec : specs)
      state.slots.emplace_back(spec.name, Tensor::full(spec.shape, spec.initial_value, param.dtype(),
                                                       param.device()));
    return;
  }
  if (state.slots.size() != specs.size())
    fail(op, "the state of parameter ", index, " holds ", state.slots.size(),
         " slots but a parameter of shape ", param.shape(), " needs ", specs.size(),
         "; pass the parameters in the same order on every step");
  std::vector<std::pair<std::string, Tensor>> ordered;
  for (const SlotSpec& spec : specs) {
    auto it = std::find_if(state.slots.begin(), state.slots.end(),
                           [&](const auto& slot) { return slot.first == spec.name; });
    if (it == state.slots.end())
      fail(op, "the state of parameter ", index, " has no slot '", spec.name,
           "' for a parameter of shape ", param.shape(),
           "; pass the parameters in the same order on every step");
    if (it->second.shape() != spec.shape)
      fail(op, "the state of parameter ", index, " holds '", spec.name, "' of shape ",
           it->second.shape(), " but a parameter of shape ", param.shape(), " needs ",
           spec.shape, "; pass the parameters in the same order on every step");
    // Loaded state follows the parameter's device and dtype, as in torch's load_state_dict.
    Tensor slot = ops::astype(ops::to_device(it->second, param.device()), param.dtype());
    ordered.emplace_back(spec.name, contiguous_data(slot));
  }
  state.slots = std::move(ordered);
}

int64_t Optimizer::state_size_bytes(const std::vector<Tensor>& params) const {
  int64_t bytes = 0;
  for (const Tensor& param : params) {
    if (!param.defined()) fail(name_.c_str(), "a parameter is None");
    const DType dtype = param.dtype() == DType::Float64 ? DType::Float64 : DType::Float32;
    for (const SlotSpec& spec : slot_specs(param))
      bytes += spec.shape.product() * static_cast<int64_t>(itemsize(dtype));
  }
  return bytes;
}

void Optimizer::load_state(std::vector<ParamState> state, int64_t iterations) {
  const char* op = name_.c_str();
  detail::check_at_least(op, "iterations", iterations, 0);
  for (size_t i = 0; i < state.size(); ++i) {
    detail::check_at_least(op, "step", state[i].step, 0);
    for (const auto& slot : state[i].slots)
      if (!slot.second.defined()) fail(op, "slot '", slot.first, "' of parameter ", i, " is None");
  }
  state_ = std::move(state);
  iterations_ = iterations;
}

double global_grad_norm(const std::vector<Tensor>& params) {
  double total = 0.0;
  for (const Tensor& param : params) {
    if (!param.defined()) fail("clip_grad_norm", "a parameter is None");
    const Tensor grad = param.grad();
    if (grad.defined()) total += sum_of_squares(grad);
  }
  return std::sqrt(total);
}

double clip_grad_norm(const std::vector<Tensor>& params, double max_norm) {
  if (!(max_norm >= 0.0)) fail("clip_grad_norm", "max_norm must be >= 0, got ", max_norm);
  const double norm = global_grad_norm(params);
  if (!(norm > max_norm)) return norm;
  const double scale = max_norm / (norm + kClipEpsilon);
  for (const Tensor& param : params) {
    Tensor grad = param.grad();
    if (!grad.defined()) continue;
    // In place, so every holder of the grad sees the clipped values.
    Tensor scaled = grad.is_contiguous()
                        ? grad
                        : Tensor::empty(grad.shape(), grad.dtype(), grad.device());
    STEEPEST_KERNEL(grad.device(), unary)(UnaryOp::MulScalar, grad, scaled, scale);
    if (!grad.is_contiguous()) STEEPEST_KERNEL(grad.device(), copy)(scaled, grad);
  }
  return norm;
}

}  // namespace steepest::optim
