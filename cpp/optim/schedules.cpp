// Learning-rate schedules: pure functions of the step count.
#include <algorithm>
#include <cmath>

#include "checks.h"
#include "steepest/common.h"
#include "steepest/optim.h"

namespace steepest::optim {

namespace {
constexpr double kPi = 3.14159265358979323846;

// ½(1 + cos(π·fraction)): 1 at the start of a decay, 0 at its end.
double half_cosine(double fraction) { return 0.5 * (1.0 + std::cos(kPi * fraction)); }
}  // namespace

using detail::check_at_least;
using detail::check_non_negative;

Constant::Constant(double learning_rate, const char* owner) : learning_rate(learning_rate) {
  check_non_negative(owner, "learning_rate", learning_rate);
}

WarmupCosine::WarmupCosine(double peak_learning_rate, int64_t warmup_steps, int64_t total_steps,
                           double final_learning_rate)
    : peak_learning_rate(peak_learning_rate),
      final_learning_rate(final_learning_rate),
      warmup_steps(warmup_steps),
      total_steps(total_steps) {
  check_non_negative("WarmupCosine", "peak_learning_rate", peak_learning_rate);
  check_non_negative("WarmupCosine", "final_learning_rate", final_learning_rate);
  check_at_least("WarmupCosine", "warmup_steps", warmup_steps, 0);
  check_at_least("WarmupCosine", "total_steps", total_steps, std::max<int64_t>(1, warmup_steps));
}

double WarmupCosine::operator()(int64_t step) const {
  step = std::max<int64_t>(step, 0);
  if (step < warmup_steps)
    return peak_learning_rate * static_cast<double>(step) / static_cast<double>(warmup_steps);
  const int64_t decay_steps = total_steps - warmup_steps;
  const double fraction =
      decay_steps == 0 ? 1.0
                       : std::min(1.0, static_cast<double>(step - warmup_steps) /
                                           static_cast<double>(decay_steps));
  return final_learning_rate + (peak_learning_rate - final_learning_rate) * half_cosine(fraction);
}

CosineDecay::CosineDecay(double initial_learning_rate, int64_t decay_steps, double alpha)
    : initial_learning_rate(initial_learning_rate), decay_steps(decay_steps), alpha(alpha) {
  check_non_negative("CosineDecay", "initial_learning_rate", initial_learning_rate);
  check_at_least("CosineDecay", "decay_steps", decay_steps, 1);
  if (!(alpha >= 0.0 && alpha <= 1.0)) fail("CosineDecay", "alpha must be in [0, 1], got ", alpha);
}

double CosineDecay::operator()(int64_t step) const {
  const double fraction = static_cast<double>(std::clamp<int64_t>(step, 0, decay_steps)) /
                          static_cast<double>(decay_steps);
  return initial_learning_rate * ((1.0 - alpha) * half_cosine(fraction) + alpha);
}

StepDecay::StepDecay(double initial_learning_rate, int64_t step_size, double gamma)
    : initial_learning_rate(initial_learning_rate), step_size(step_size), gamma(gamma) {
  check_non_negative("StepDecay", "initial_learning_rate", initial_learning_rate);
  check_at_least("StepDecay", "step_size", step_size, 1);
  check_non_negative("StepDecay", "gamma", gamma);
}

double StepDecay::operator()(int64_t step) const {
  return initial_learning_rate *
         std::pow(gamma, static_cast<double>(std::max<int64_t>(step, 0) / step_size));
}

}  // namespace steepest::optim
