// The NCCL transport (CUDA tensors), as llm.c and Horovod set it up: one GPU per rank —
// the rank's local rank among the processes of its machine — and an MPI job underneath,
// which carries NCCL's unique id to every rank and stays the control transport for the
// small host-memory exchanges (agreement checks, loss sums, a clip norm).
//
// libnccl is opened with dlopen when the backend is asked for, so importing steepest never
// needs it: "libnccl.so.2" from the default search path, then from the folders in
// STEEPEST_NCCL_PATH (python/steepest/__init__.py points it at the nvidia-nccl wheel).
// Collectives queue on the device's one stream (common.cuh), behind the kernels that
// produced their inputs and ahead of those that read the results; barrier() waits for the
// stream too. Vector all-gathers and reduce-scatters (unequal counts) are grouped
// broadcasts and reduces, which NCCL fuses.
#include <dlfcn.h>

#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

#include <nccl.h>

#include "common.cuh"
#include "steepest/dist.h"

namespace steepest::dist {
namespace {

struct NcclLibrary {
  void* handle = nullptr;
  std::string error;
  decltype(&ncclGetUniqueId) get_unique_id = nullptr;
  decltype(&ncclCommInitRank) init_rank = nullptr;
  decltype(&ncclCommDestroy) destroy = nullptr;
  decltype(&ncclCommAbort) abort = nullptr;
  decltype(&ncclGetErrorString) error_string = nullptr;
  decltype(&ncclAllReduce) all_reduce = nullptr;
  decltype(&ncclBroadcast) broadcast = nullptr;
  decltype(&ncclReduce) reduce = nullptr;
  decltype(&ncclAllGather) all_gather = nullptr;
  decltype(&ncclReduceScatter) reduce_scatter = nullptr;
  decltype(&ncclGroupStart) group_start = nullptr;
  decltype(&ncclGroupEnd) group_end = nullptr;
};

NcclLibrary load_nccl() {
  NcclLibrary lib;
  std::string path;
  lib.handle = cuda::open_library({"libnccl.so.2"}, "STEEPEST_NCCL_PATH", path, lib.error);
  if (!lib.handle) return lib;
  bool complete = true;
  auto symbol = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib.handle, name));
    if (!fn) {
      lib.error += std::string("\n  libnccl has no ") + name;
      complete = false;
    }
  };
  symbol(lib.get_unique_id, "ncclGetUniqueId");
  symbol(lib.init_rank, "ncclCommInitRank");
  symbol(lib.destroy, "ncclCommDestroy");
  symbol(lib.abort, "ncclCommAbort");
  symbol(lib.error_string, "ncclGetErrorString");
  symbol(lib.all_reduce, "ncclAllReduce");
  symbol(lib.broadcast, "ncclBroadcast");
  symbol(lib.reduce, "ncclReduce");
  symbol(lib.all_gather, "ncclAllGather");
  symbol(lib.reduce_scatter, "ncclReduceScatter");
  symbol(lib.group_start, "ncclGroupStart");
  symbol(lib.group_end, "ncclGroupEnd");
  if (!complete) lib.handle = nullptr;
  return lib;
}

const NcclLibrary& nccl() {
  static const NcclLibrary loaded = load_nccl();
  if (!loaded.handle)
    fail<StateError>("distributed", "could not load NCCL (pip install nvidia-nccl-cu13, or set "
                                    "STEEPEST_NCCL_PATH to the folder of libnccl.so.2):",
                     loaded.error);
  return loaded;
}

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::Float32:
      return ncclFloat32;
    case DType::Float64:
      return ncclFloat64;
    case DType::Int32:
      return ncclInt32;
    case DType::Int64:
      return ncclInt64;
    default:
      fail<TypeError>("distributed", "NCCL reduces float32, float64, int32 and int64 here, got ",
                      dtype_name(dtype));
  }
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return ncclSum;
    case ReduceOp::Max:
      return ncclMax;
    case ReduceOp::Min:
      return ncclMin;
    case ReduceOp::Mean:
      break;
  }
  fail("distributed", "the transport has no mean; the communicator divides a sum");
}

class Nccl final : public Transport {
 public:
  explicit Nccl(std::unique_ptr<Transport> bootstrap) : mpi_(std::move(bootstrap)), lib_(nccl()) {
    int devices = 0;
    STEEPEST_CUDA_CHECK(cudaGetDeviceCount(&devices));
    if (mpi_->local_rank() >= devices)
      fail<StateError>("distributed", "the NCCL backend runs one rank per GPU, but local rank ",
                       mpi_->local_rank(), " finds ", devices,
                       " GPU(s) on its machine; launch at most that many ranks per machine");
    device_ = Device{DeviceType::CUDA, mpi_->local_rank()};
    cuda::DeviceGuard guard(device_);
    ncclUniqueId id;
    if (mpi_->rank() == 0) check(lib_.get_unique_id(&id), "ncclGetUniqueId");
    mpi_->broadcast(&id, sizeof id, 0);
    check(lib_.init_rank(&comm_, mpi_->world_size(), id, mpi_->rank()), "ncclCommInitRank");
  }
  ~Nccl() override {
    if (comm_) lib_.destroy(comm_);
  }

  const char* name() const override { return "nccl"; }
  Device device() const override { return device_; }
  Transport& control() override { return *mpi_; }
  int rank() const override { return mpi_->rank(); }
  int world_size() const override { return mpi_->world_size(); }
  int local_rank() const override { return mpi_->local_rank(); }

  void all_reduce(void* data, int64_t count, DType dtype, ReduceOp op) override {
    cuda::DeviceGuard guard(device_);
    check(lib_.all_reduce(data, data, static_cast<size_t>(count), nccl_type(dtype), nccl_op(op), comm_,
                          guard.stream()),
          "ncclAllReduce");
  }

  void broadcast(void* data, int64_t bytes, int root) override {
    cuda::DeviceGuard guard(device_);
    check(lib_.broadcast(data, data, static_cast<size_t>(bytes), ncclUint8, root, comm_, guard.stream()),
          "ncclBroadcast");
  }

  void all_gather(const void* send, void* recv, const std::vector<int64_t>& bytes) override {
    cuda::DeviceGuard guard(device_);
    if (std::all_of(bytes.begin(), bytes.end(), [&](int64_t b) { return b == bytes[0]; })) {
      check(lib_.all_gather(send, recv, static_cast<size_t>(bytes[0]), ncclUint8, comm_, guard.stream()),
            "ncclAllGather");
      return;
    }
    check(lib_.group_start(), "ncclGroupStart");
    int64_t offset = 0;
    for (size_t r = 0; r < bytes.size(); ++r) {
      char* slot = static_cast<char*>(recv) + offset;
      const void* from = static_cast<int>(r) == rank() ? send : slot;
      check(lib_.broadcast(from, slot, static_cast<size_t>(bytes[r]), ncclUint8, static_cast<int>(r), comm_,
                           guard.stream()),
            "ncclBroadcast");
      offset += bytes[r];
    }
    check(lib_.group_end(), "ncclGroupEnd");
  }

  void reduce_scatter(const void* send, void* recv, const std::vector<int64_t>& counts, DType dtype,
                      ReduceOp op) override {
    cuda::DeviceGuard guard(device_);
    if (std::all_of(counts.begin(), counts.end(), [&](int64_t c) { return c == counts[0]; })) {
      check(lib_.reduce_scatter(send, recv, static_cast<size_t>(counts[0]), nccl_type(dtype), nccl_op(op),
                                comm_, guard.stream()),
            "ncclReduceScatter");
      return;
    }
    const size_t item = itemsize(dtype);
    check(lib_.group_start(), "ncclGroupStart");
    int64_t offset = 0;
    for (size_t r = 0; r < counts.size(); ++r) {
      check(lib_.reduce(static_cast<const char*>(send) + offset * item, recv, static_cast<size_t>(counts[r]),
                        nccl_type(dtype), nccl_op(op), static_cast<int>(r), comm_, guard.stream()),
            "ncclReduce");
      offset += counts[r];
    }
    check(lib_.group_end(), "ncclGroupEnd");
  }

  void barrier() override {
    cuda::DeviceGuard guard(device_);
    STEEPEST_CUDA_CHECK(cudaStreamSynchronize(guard.stream()));
    mpi_->barrier();
  }

  void abort(int code) override {
    if (comm_) lib_.abort(comm_);
    mpi_->abort(code);
  }

 private:
  void check(ncclResult_t result, const char* call) const {
    if (result != ncclSuccess)
      fail<StateError>("distributed", call, " failed: ", lib_.error_string(result));
  }

  std::unique_ptr<Transport> mpi_;
  const NcclLibrary& lib_;
  Device device_;
  ncclComm_t comm_ = nullptr;
};

}  // namespace

std::unique_ptr<Transport> make_nccl_transport(std::unique_ptr<Transport> bootstrap) {
  return std::make_unique<Nccl>(std::move(bootstrap));
}

bool nccl_compiled() { return true; }

}  // namespace steepest::dist
