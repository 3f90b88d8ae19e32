// steepest.backends() and the runtime controls beside it: threads, allocator statistics
// and caches (CPU and CUDA), device synchronisation, TF32.
#include <omp.h>

#include "common.h"

#include <nanobind/stl/string.h>

#include <limits>
#include <vector>

#include "steepest/cuda_arch.h"
#include "steepest/cuda_runtime.h"
#include "steepest/dist.h"
#include "steepest/kernels.h"
#include "steepest/storage.h"

namespace steepest::bindings {
namespace {

nb::dict stats_dict(const AllocatorStats& s) {
  nb::dict d;
  d["allocated_bytes"] = s.allocated_bytes;
  d["cached_bytes"] = s.cached_bytes;
  d["peak_allocated_bytes"] = s.peak_allocated_bytes;
  return d;
}

}  // namespace

void init_build_info(nb::module_& m) {
  m.attr("__version__") = STEEPEST_VERSION;
  // A STEEPEST_CPU_ISA that could not be applied as given is reported at import, once.
  if (*cpu::cpu_isa_warning() && PyErr_WarnEx(PyExc_RuntimeWarning, cpu::cpu_isa_warning(), 1) < 0)
    throw nb::python_error();
  m.def(
      "backends",
      []() {
        nb::dict info;
        info["cpu"] = true;
        info["cuda"] = cuda_available();
        info["cuda_compiled"] = bool(STEEPEST_WITH_CUDA);
        // CMake's CUDA_ARCHITECTURES entries the kernels were built for ("75-real", ...).
        nb::list archs;
        for (const std::string& entry : cuda_arch_entries(STEEPEST_CUDA_ARCHS)) archs.append(entry);
        info["cuda_archs"] = archs;
        info["cuda_devices"] = cuda_device_count();
        nb::list names;
        for (int i = 0; i < cuda_device_count(); ++i) names.append(cuda_device_name(i));
        info["cuda_device_names"] = names;
        info["cublas"] = cublas_info();
        info["cuda_allow_tf32"] = cuda_allow_tf32();
        info["mpi"] = dist::mpi_compiled();
        info["nccl"] = dist::nccl_compiled();
        info["openmp"] = true;
        info["openmp_threads"] = omp_get_max_threads();
        // The instruction-set level the CPU kernels run (kernels.h): the best this CPU
        // supports, capped by STEEPEST_CPU_ISA; "native" in a STEEPEST_NATIVE=ON build.
        // "simd" is its older name.
        info["cpu_isa"] = cpu::cpu_isa_name();
        info["simd"] = cpu::cpu_isa_name();
#if defined(__SANITIZE_ADDRESS__)
        info["sanitizers"] = "address,undefined";
#else
        info["sanitizers"] = "";
#endif
        info["compiler"] = std::string(__VERSION__);
        return info;
      },
      "What this build of steepest has: cpu, cuda, openmp_threads, simd, ...");
  // The device check of cuda/runtime.cu, callable without a GPU so that tests can reach it.
  m.def(
      "_cuda_arch_mismatch",
      [](const std::string& device, int major, int minor, const std::string& archs) {
        return cuda_arch_mismatch(device, major, minor, archs);
      },
      nb::arg("device"), nb::arg("major"), nb::arg("minor"), nb::arg("archs") = STEEPEST_CUDA_ARCHS,
      "The error a GPU of compute capability major.minor gets from a build for `archs` "
      "(comma-separated CMake CUDA_ARCHITECTURES entries; default: this build's), or \"\".");
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
      [](const std::string& device) {
        const Device d = parse_device(device);
        return stats_dict(d.is_cpu() ? cpu_allocator_stats() : cuda_allocator_stats(d.index));
      },
      nb::arg("device") = "cpu",
      "Bytes held by live tensors of the device, bytes cached for reuse, and the peak since "
      "reset.");
  m.def(
      "empty_cache",
      []() {
        nb::gil_scoped_release release;
        cpu_allocator_empty_cache();
        cuda_allocator_empty_cache();
      },
      "Returns the cached blocks of the CPU and CUDA allocators to the system.");
  m.def(
      "reset_peak_memory_stats",
      [](const std::string& device) {
        const Device d = parse_device(device);
        if (d.is_cpu())
          cpu_allocator_reset_peak();
        else
          cuda_allocator_reset_peak(d.index);
      },
      nb::arg("device") = "cpu");
  m.def(
      "synchronize",
      [](const std::string& device) {
        const Device d = parse_device(device);
        if (d.is_cpu()) return;
        nb::gil_scoped_release release;
        cuda_synchronize(d.index);
      },
      nb::arg("device") = "cuda",
      "Waits until every kernel queued on the device has finished (for timing).");
  m.def("set_allow_tf32", &cuda_set_allow_tf32, nb::arg("allow"),
        "Lets float32 GPU matrix products use TF32 tensor cores (inputs rounded to 10 "
        "mantissa bits); off by default. STEEPEST_ALLOW_TF32=1 turns it on at start.");
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
