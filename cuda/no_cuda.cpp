// Built when steepest is compiled without CUDA: every CUDA kernel entry exists and
// raises a clear error, so op code dispatches by device without #ifdefs. The runtime
// queries (backends(), memory_stats) answer "nothing there".
#include <string>

#include "steepest/cuda_runtime.h"
#include "steepest/kernels.h"
#include "steepest/storage.h"

namespace steepest {
namespace {
[[noreturn]] void no_cuda(const char* what) {
  throw StateError(std::string("[cuda] ") + what +
                   ": steepest was built without CUDA (rebuild with STEEPEST_CUDA=ON on a "
                   "machine with the CUDA toolkit)");
}
}  // namespace

void* cuda_allocate(size_t, int) { no_cuda("allocate"); }
void cuda_deallocate(void*, size_t, int) {}
bool cuda_available() { return false; }
int cuda_device_count() { return 0; }
std::string cuda_device_name(int) { return ""; }
AllocatorStats cuda_allocator_stats(int) { no_cuda("memory_stats"); }
void cuda_allocator_empty_cache() {}
void cuda_allocator_reset_peak(int) { no_cuda("reset_peak_memory_stats"); }
void cuda_synchronize(int) { no_cuda("synchronize"); }
void cuda_set_allow_tf32(bool) {}
bool cuda_allow_tf32() { return false; }
std::string cublas_info() { return "not built"; }

namespace cuda {
#define KERNEL(name, params) \
  void name params { no_cuda(#name); }
#include "steepest/kernels.def"
#undef KERNEL
}  // namespace cuda

}  // namespace steepest
