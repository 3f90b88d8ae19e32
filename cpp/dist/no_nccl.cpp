// Built when the CUDA backend or NCCL's header is missing: asking for the NCCL backend
// says what the build lacked.
#include "steepest/common.h"
#include "steepest/dist.h"

namespace steepest::dist {

std::unique_ptr<Transport> make_nccl_transport(std::unique_ptr<Transport>) {
  fail<StateError>("distributed", "this build of steepest has no NCCL backend");
}

bool nccl_compiled() { return false; }

}  // namespace steepest::dist
