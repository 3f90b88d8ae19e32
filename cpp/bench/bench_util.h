// Helpers shared by the benchmark files: thread-count control and a FLOP/s counter.
#pragma once

#include <benchmark/benchmark.h>
#include <omp.h>

#include <cstdint>

namespace steepest::bench {

// The benchmarks take the OpenMP thread count as their last argument, so one run
// compares 1 and 2 threads on the same machine state.
inline void use_threads(const benchmark::State& state, int arg_index) {
  omp_set_num_threads(static_cast<int>(state.range(arg_index)));
}

// Reports `flops` floating-point operations per iteration as GFLOP/s.
inline void report_flops(benchmark::State& state, double flops) {
  state.counters["GFLOP/s"] = benchmark::Counter(
      flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

}  // namespace steepest::bench
