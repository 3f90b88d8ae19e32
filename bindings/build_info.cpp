#include <omp.h>

#include "common.h"

#include <nanobind/stl/string.h>

#include <limits>
#include <vector>

#include "steepest/storage.h"

namespace steepest {
bool cuda_available();
int cuda_device_count();
}  // namespace steepest

namespace steepest::bindings {

void init_build_info(nb::module_& m) {
  m.attr("__version__") = STEEPEST_VERSION;
  m.def(
      "backends",
      []() {
        nb::dict info;
        info["cpu"] = true;
        info["cuda"] = cuda_available();
        info["cuda_compiled"] = bool(STEEPEST_WITH_CUDA);
        info["cuda_devices"] = cuda_device_count();
        info["openmp"] = true;
        info["openmp_threads"] = omp_get_max_threads();
#if defined(__AVX512F__)
        info["simd"] = "avx512";
#elif defined(__AVX2__)
        info["simd"] = "avx2";
#else
        info["simd"] = "baseline";
#endif
#if defined(__SANITIZE_ADDRESS__)
        info["sanitizers"] = "address,undefined";
#else
        info["sanitizers"] = "";
#endif
        info["compiler"] = std::string(__VERSION__);
        return info;
      },
      "What this build of steepest has: cpu, cuda, openmp_threads, simd, ...");
  m.def(
      "set_num_threads",
      [](int n) {
        if (n < 1) throw ValueError("[set_num_threads] n must be at least 1, got " + std::to_string(n));
        omp_set_num_threads(n);
      },
      nb::arg("n"), "Sets the number of OpenMP threads used by CPU kernels.");
  m.def("get_num_threads", []() { return omp_get_max_threads(); });
  m.def(
      "memory_stats",
      []() {
        AllocatorStats s = cpu_allocator_stats();
        nb::dict d;
        d["allocated_bytes"] = s.allocated_bytes;
        d["cached_bytes"] = s.cached_bytes;
        d["peak_allocated_bytes"] = s.peak_allocated_bytes;
        return d;
      },
      "Bytes held by live CPU tensors, bytes cached for reuse, and the peak since reset.");
  m.def("empty_cache", &cpu_allocator_empty_cache,
        "Returns the CPU allocator's cached blocks to the system.");
  m.def("reset_peak_memory_stats", &cpu_allocator_reset_peak);
#if defined(STEEPEST_SANITIZED)
  // Deliberate faults for the CI test that proves the sanitizers are live in this build.
  m.def("_sanitizer_fault", [](const std::string& kind, int index) {
    if (kind == "heap-overflow") {
      std::vector<int> values(4, 1);
      return values.data()[index];  // index 4 reads past the end
    }
    int big = std::numeric_limits<int>::max() - 1 + index;  // index > 1 overflows
    return big + index;
  });
#endif
}

}  // namespace steepest::bindings
