// Per-op wall-clock profiling (st.profiler): op front-ends and the autograd engine open a
// Scope named after the op or backward node; while profiling is on, each scope's inclusive
// time, and its self time (minus the scopes it encloses), are summed per (name, phase).
// Off by default: a closed profiler costs each op one relaxed atomic load and a branch.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace steepest::profiler {

// Where an op ran: in a forward computation, or inside backward() (the nodes themselves
// and the ops their formulas call).
enum class Phase { Forward, Backward };

struct OpStat {
  std::string name;
  Phase phase;
  int64_t calls;
  double total_seconds;  // inclusive of the ops it called
  double self_seconds;   // exclusive
};

namespace detail {
extern std::atomic<bool> g_enabled;
}  // namespace detail

inline bool enabled() { return detail::g_enabled.load(std::memory_order_relaxed); }
// Starts recording (clearing what an earlier session summed) or stops it; stats() reads
// the sums of the latest session, sorted by self time, largest first.
void start();
void stop();
std::vector<OpStat> stats();

// Marks the calling thread as running backward for its lifetime (the engine's pass).
class BackwardPhase {
 public:
  BackwardPhase();
  ~BackwardPhase();
  BackwardPhase(const BackwardPhase&) = delete;
  BackwardPhase& operator=(const BackwardPhase&) = delete;

 private:
  bool previous_;
};

class Scope {
 public:
  explicit Scope(const char* name) {
    if (enabled()) open(name);
  }
  ~Scope() {
    if (open_) close();
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  void open(const char* name);
  void close();
  bool open_ = false;
  const char* name_ = nullptr;
  Phase phase_ = Phase::Forward;
  std::chrono::steady_clock::time_point start_;
  double children_seconds_ = 0;
  Scope* parent_ = nullptr;
};

}  // namespace steepest::profiler

// One per op front-end, first statement: the op's row in the profile.
#define STEEPEST_PROFILE_OP(name) ::steepest::profiler::Scope steepest_profile_scope_(name)
