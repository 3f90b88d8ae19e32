// Data parallelism (the seed's LLM practice: 在数据并行中，需要跨设备同步梯度). A Communicator
// joins the processes of one job; its collectives act on whole tensors and are checked
// before they run, so ranks that disagree on a tensor's shape or dtype get an error on
// every rank instead of a hang or corrupt memory. The transport underneath is an existing
// engine — MPI for CPU tensors (cpp/dist/mpi.cpp, compiled when the build finds MPI) —
// or, for a process started without a launcher, a single-process stand-in of world size 1.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <string>
#include <vector>

#include "steepest/autograd.h"
#include "steepest/optim.h"
#include "steepest/tensor.h"

namespace steepest::dist {

enum class ReduceOp { Sum, Mean, Max, Min };
ReduceOp reduce_op_from_name(const std::string& name);
const char* reduce_op_name(ReduceOp op);

// What a backend provides, on contiguous buffers in memory of device() (host memory for
// MPI, the rank's GPU for NCCL). Reductions see float32, float64, int32 and int64 elements
// and ReduceOp Sum, Max or Min (Mean and the 16-bit types are built on top by
// Communicator); buffers may hold no elements.
class Transport {
 public:
  virtual ~Transport() = default;
  virtual const char* name() const = 0;
  virtual Device device() const { return {}; }
  // The transport for small exchanges in host memory (agreement checks, loss sums, a clip
  // norm): this one, or the MPI transport that bootstrapped a GPU one.
  virtual Transport& control() { return *this; }
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  virtual int local_rank() const = 0;
  virtual void all_reduce(void* data, int64_t count, DType dtype, ReduceOp op) = 0;
  virtual void broadcast(void* data, int64_t bytes, int root) = 0;
  // Rank r contributes bytes[r] bytes; recv receives them all in rank order.
  virtual void all_gather(const void* send, void* recv, const std::vector<int64_t>& bytes) = 0;
  // send holds Σcounts elements in rank order; rank r receives the reduction of its
  // counts[r] elements.
  virtual void reduce_scatter(const void* send, void* recv, const std::vector<int64_t>& counts,
                              DType dtype, ReduceOp op) = 0;
  virtual void barrier() = 0;
  // Ends every process of the job with `code` (an uncaught error on one rank must not
  // leave the others waiting in a collective); Communicator::abort exits should it return.
  virtual void abort(int code) = 0;
};

class Communicator {
 public:
  explicit Communicator(std::unique_ptr<Transport> transport);
  const char* backend() const { return transport_->name(); }
  // Where the tensors this communicator moves must live.
  Device device() const { return transport_->device(); }
  int rank() const { return transport_->rank(); }
  int world_size() const { return transport_->world_size(); }
  int local_rank() const { return transport_->local_rank(); }

  // In place on t (any dtype but bool; Mean only for floating tensors).
  void all_reduce(Tensor& t, ReduceOp op);
  void broadcast(Tensor& t, int root);
  // Every rank's t, concatenated along axis 0 (shapes must agree past axis 0).
  Tensor all_gather(const Tensor& t);
  // Reduces t over the ranks and gives rank r its r-th slice of axis 0, which must
  // divide evenly by the world size.
  Tensor reduce_scatter(const Tensor& t, ReduceOp op);
  void barrier();
  [[noreturn]] void abort(int code);

  // Checks that every rank calls the same thing: `what` describes this rank's side
  // (e.g. "all_reduce(sum) of float32 (3, 4)"); when the descriptions differ, every rank
  // raises a ValueError saying `expected` and listing them.
  void check_agreement(const char* op, const std::string& what,
                       const char* expected = "every rank must make the same call with tensors "
                                              "of the same shape and dtype");

  // Tensor data in device() memory, and small host-memory exchanges.
  Transport& transport() { return *transport_; }
  Transport& control() { return transport_->control(); }

 private:
  std::unique_ptr<Transport> transport_;
};

// The number of processes the launcher (mpirun, mpiexec, srun) started this one among;
// 1 without a launcher.
int launcher_world_size();

// Joins the job: backend "mpi" (CPU tensors), "nccl" (CUDA tensors, bootstrapped over
// MPI, one GPU per rank: the local rank's), or "" to choose (MPI under a launcher, else a
// single process). Calling it again with the same backend does nothing.
void init(const std::string& backend);
bool is_initialized();
// The job's communicator, or null before init().
Communicator* world();
// Leaves the job (MPI_Finalize). MPI joins a process once, so init() afterwards fails.
void finalize();

// ------------------------------------------------------------ data-parallel training

// This rank's contiguous share [begin, end) of `count` samples: the first count % world
// ranks take one sample more.
std::pair<int64_t, int64_t> local_share(int64_t count, int rank, int world);

// Checks that every rank holds a model of the same layout (weight count, shapes and
// dtypes), then gives every rank rank 0's weights.
void synchronize_replicas(Communicator& comm, const std::vector<Tensor>& weights);

// ZeRO stage 1's split of the parameters, as llm.c does it: all parameters laid end to
// end (in parameter order) and cut into world equal chunks (the last padded); rank r owns
// chunk r, which may cover pieces of several parameters.
struct ShardPiece {
  size_t param;          // index into the parameter list
  int64_t begin, count;  // elements [begin, begin + count) of that parameter
  int64_t offset;        // where they start inside the chunk
};
struct ShardLayout {
  int64_t total = 0, chunk = 0;
  std::vector<ShardPiece> pieces;  // this rank's
  static ShardLayout of(const std::vector<Tensor>& params, int rank, int world);
};

// Optimizer state kept per piece of this rank's chunk (one entry per ShardLayout piece)
// instead of per parameter: shard_optimizer_state() slices the per-parameter state into
// pieces, gather_optimizer_state() gives every rank the whole per-parameter state again
// (a collective; before saving, or training unsharded).
void shard_optimizer_state(Communicator& comm, optim::Optimizer& optimizer,
                           const std::vector<Tensor>& params);
void gather_optimizer_state(Communicator& comm, optim::Optimizer& optimizer,
                            const std::vector<Tensor>& params);

// The gradient synchronisation of fit. Each rank back-propagates its share of the global
// batch with the loss weighted by share / global count; reduce() then sums the gradients
// over the ranks, so the optimizer sees the gradient of the mean loss over the global
// batch (parameters without a gradient count as zero).
// - Replicated optimizer state (PyTorch DDP): gradients travel in buckets of about
//   STEEPEST_DDP_BUCKET_MB MiB (default 4), in reverse parameter order; overlap_hook() hands
//   a bucket to a sender thread as soon as backward has produced all its gradients, so it
//   travels while backward goes on — when the rank has a core beyond its compute threads
//   for that thread; else every bucket goes after backward (STEEPEST_DDP_OVERLAP=1 or 0
//   forces either, to measure what overlap gains).
// - Sharded optimizer state (ZeRO stage 1): reduce() reduce-scatters the gradients, so
//   that a rank receives the summed gradients of its chunk only; the optimizer steps the
//   chunk's pieces (step_parameters()), keeping state for 1/world of the elements; then
//   gather_parameters() all-gathers the updated chunks into every replica.
class GradientReducer {
 public:
  // shard_optimizer_state: the optimizer whose state to shard, or null to replicate it.
  GradientReducer(Communicator& comm, std::vector<Tensor> params,
                  optim::Optimizer* shard_optimizer_state);
  ~GradientReducer();
  // The hook to pass to the step's last backward, or an empty one.
  GradientReadyHook overlap_hook();
  void reduce();
  // What the optimizer steps: the parameters, or views of this rank's pieces of them.
  const std::vector<Tensor>& step_parameters() const { return sharded_ ? pieces_ : params_; }
  // The weight-decay mask of step_parameters() from that of the parameters: each piece
  // carries its parameter's choice.
  optim::DecayMask step_decay_mask(const optim::DecayMask& per_parameter) const;
  void gather_parameters();
  // The group whose ranks each hold part of the gradients (for a global clip norm and a
  // global overflow check), or null when every rank holds all of them.
  Communicator* shard_group() { return sharded_ ? &comm_ : nullptr; }

 private:
  struct Bucket;
  void on_gradient_ready(const Tensor& leaf);
  void launch(Bucket& bucket);
  void reduce_replicated();
  void reduce_sharded();
  // The sender thread all-reduces the buckets queued by launch(), in order, with blocking
  // calls (faster than MPI's non-blocking collectives, which progress only inside MPI calls).
  void send_buckets();

  Communicator& comm_;
  std::vector<Tensor> params_;
  bool sharded_;
  bool overlap_ = true;
  std::vector<Bucket> buckets_;
  size_t next_launch_ = 0;
  std::thread sender_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Bucket*> queue_;
  size_t sent_ = 0;
  bool closing_ = false;
  std::exception_ptr error_;
  std::unordered_map<const TensorImpl*, size_t> bucket_of_;  // parameter -> its bucket
  ShardLayout layout_;                              // ZeRO
  std::vector<Tensor> pieces_;                      // ZeRO: views of this rank's pieces
};

// The backends' constructors (cpp/dist/mpi.cpp or cpp/dist/no_mpi.cpp; cuda/nccl.cu or
// cpp/dist/no_nccl.cpp).
std::unique_ptr<Transport> make_mpi_transport();
bool mpi_compiled();
std::unique_ptr<Transport> make_nccl_transport(std::unique_ptr<Transport> bootstrap);
bool nccl_compiled();

}  // namespace steepest::dist
