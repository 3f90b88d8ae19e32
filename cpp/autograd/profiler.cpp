// The sums behind st.profiler: one table for the process under a mutex (taken only while
// profiling), and per thread the innermost open scope, so that a scope can hand its
// inclusive time to its parent's children total.
#include "steepest/profiler.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <mutex>
#include <utility>

namespace steepest::profiler {

namespace detail {
std::atomic<bool> g_enabled{false};
}  // namespace detail

namespace {

struct Sum {
  int64_t calls = 0;
  double total = 0, self = 0;
};

std::mutex g_mutex;
std::map<std::pair<std::string, Phase>, Sum> g_sums;
thread_local Scope* t_innermost = nullptr;
thread_local bool t_backward = false;

}  // namespace

void start() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_sums.clear();
  detail::g_enabled.store(true, std::memory_order_relaxed);
}

void stop() { detail::g_enabled.store(false, std::memory_order_relaxed); }

std::vector<OpStat> stats() {
  std::vector<OpStat> rows;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    for (const auto& [key, sum] : g_sums)
      rows.push_back({key.first, key.second, sum.calls, sum.total, sum.self});
  }
  std::stable_sort(rows.begin(), rows.end(),
                   [](const OpStat& a, const OpStat& b) { return a.self_seconds > b.self_seconds; });
  return rows;
}

BackwardPhase::BackwardPhase() : previous_(t_backward) { t_backward = true; }
BackwardPhase::~BackwardPhase() { t_backward = previous_; }

void Scope::open(const char* name) {
  // An op that calls itself (an overload, a dtype promotion) counts as one call.
  if (t_innermost && std::strcmp(t_innermost->name_, name) == 0) return;
  open_ = true;
  name_ = name;
  phase_ = t_backward ? Phase::Backward : Phase::Forward;
  parent_ = t_innermost;
  t_innermost = this;
  start_ = std::chrono::steady_clock::now();
}

void Scope::close() {
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  t_innermost = parent_;
  if (parent_) parent_->children_seconds_ += total;
  std::lock_guard<std::mutex> lock(g_mutex);
  Sum& sum = g_sums[{name_, phase_}];
  ++sum.calls;
  sum.total += total;
  sum.self += total - children_seconds_;
}

}  // namespace steepest::profiler
