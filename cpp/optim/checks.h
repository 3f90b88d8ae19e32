// Hyperparameter checks shared by the optimizers and schedules. Each throws a
// ValueError "[owner] name must be ..., got value" that names the offending value.
#pragma once

#include <cstdint>

namespace steepest::optim::detail {

// finite and ≥ 0
void check_non_negative(const char* owner, const char* name, double value);
// finite and > 0
void check_positive(const char* owner, const char* name, double value);
// in [0, 1): decay rates of moving averages
void check_decay_rate(const char* owner, const char* name, double value);
void check_at_least(const char* owner, const char* name, int64_t value, int64_t minimum);

}  // namespace steepest::optim::detail
