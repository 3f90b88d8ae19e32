// Built when steepest is compiled without CUDA: every CUDA kernel entry exists and
// raises a clear error, so op code dispatches by device without #ifdefs.
#include <string>

#include "steepest/kernels.h"

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

namespace cuda {
#define KERNEL(name, params) \
  void name params { no_cuda(#name); }
#include "steepest/kernels.def"
#undef KERNEL
}  // namespace cuda

}  // namespace steepest
