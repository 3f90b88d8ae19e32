// Data-parallel training: the global batch split into contiguous shares, replicas made
// equal before training, and the gradient synchronisation of each step — bucketed
// all-reduces overlapped with backward (PyTorch DDP), or reduce-scatter / all-gather
// around an optimizer whose state is sharded (ZeRO stage 1, llm.c).
#include <omp.h>
#include <sched.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "steepest/common.h"
#include "steepest/dist.h"
#include "steepest/kernels.h"
#include "steepest/ops.h"

namespace steepest::dist {

std::pair<int64_t, int64_t> local_share(int64_t count, int rank, int world) {
  const int64_t base = count / world, extra = count % world;
  const int64_t begin = rank * base + std::min<int64_t>(rank, extra);
  return {begin, begin + base + (rank < extra ? 1 : 0)};
}

namespace {

// FNV-1a over the layout: enough to tell replicas apart in a fixed-size record.
uint64_t layout_hash(const std::vector<Tensor>& weights) {
  uint64_t hash = 1469598103934665603ull;
  auto mix = [&](int64_t value) {
    for (int i = 0; i < 8; ++i) {
      hash ^= static_cast<uint64_t>(value >> (8 * i)) & 0xFF;
      hash *= 1099511628211ull;
    }
  };
  for (const Tensor& w : weights) {
    mix(static_cast<int64_t>(w.dtype()));
    mix(w.ndim());
    for (int64_t d : w.shape()) mix(d);
  }
  return hash;
}

// A flat view of `count` elements at `offset` of `flat`, shaped as `shape`.
Tensor slice_of(const Tensor& flat, int64_t offset, const Dims& shape) {
  return Tensor::view_of(flat.storage(), shape, contiguous_strides(shape), flat.offset() + offset,
                         flat.dtype());
}

void copy_into(const Tensor& src, Tensor dst) { STEEPEST_KERNEL(src.device(), copy)(src, dst); }

double env_number(const char* name, double fallback) {
  const char* value = std::getenv(name);
  if (!value || !*value) return fallback;
  char* end = nullptr;
  double parsed = std::strtod(value, &end);
  if (*end != '\0' || !(parsed >= 0.0))
    fail("fit", "the environment variable ", name, "='", value, "' is not a number >= 0");
  return parsed;
}

// Overlap pays only when the sender thread has a core of its own: a rank bound to as
// many cores as it runs compute threads (mpirun binds one rank per core) would only
// time-slice backward with it (measured: 1.48x the epoch time of sending after backward
// on 2 ranks of 1 core each).
bool spare_core() {
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) return false;
  return CPU_COUNT(&allowed) > omp_get_max_threads();
}

}  // namespace

void synchronize_replicas(Communicator& comm, const std::vector<Tensor>& weights) {
  int64_t elements = 0;
  for (const Tensor& w : weights) elements += w.numel();
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(layout_hash(weights)));
  comm.check_agreement("fit", cat("a model of ", weights.size(), " weight tensors, ", elements,
                                  " elements, layout ", hash),
                       "the replicas differ: every rank must build the same model, with the same "
                       "layers, weight shapes and dtypes");
  for (const Tensor& w : weights) {
    if (w.device() != comm.device() || !w.is_contiguous())
      fail("fit", "the '", comm.backend(), "' backend trains a model whose weights are contiguous ",
           comm.device().str(), " tensors on this rank, got a ", w.device().str(), " tensor of shape ",
           w.shape(), "; move the model with model.to('", comm.device().str(), "')");
    comm.transport().broadcast(w.data_ptr(), w.numel() * static_cast<int64_t>(itemsize(w.dtype())), 0);
  }
}

ShardLayout ShardLayout::of(const std::vector<Tensor>& params, int rank, int world) {
  ShardLayout layout;
  for (const Tensor& p : params) layout.total += p.numel();
  layout.chunk = (layout.total + world - 1) / world;
  const int64_t first = rank * layout.chunk, last = std::min(layout.total, first + layout.chunk);
  int64_t start = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const int64_t end = start + params[i].numel();
    const int64_t begin = std::max(first, start), stop = std::min(last, end);
    if (begin < stop) layout.pieces.push_back({i, begin - start, stop - begin, begin - first});
    start = end;
  }
  return layout;
}

namespace {

// Elements [begin, begin + count) of a contiguous tensor, as a 1-D view.
Tensor piece_of(const Tensor& t, const ShardPiece& piece) {
  return Tensor::view_of(t.storage(), {piece.count}, {1}, t.offset() + piece.begin, t.dtype());
}

}  // namespace

optim::DecayMask GradientReducer::step_decay_mask(const optim::DecayMask& per_parameter) const {
  if (!sharded_) return per_parameter;
  optim::DecayMask mask;
  for (const ShardPiece& piece : layout_.pieces) mask.push_back(per_parameter[piece.param]);
  return mask;
}

void shard_optimizer_state(Communicator& comm, optim::Optimizer& optimizer, const std::vector<Tensor>& params) {
  const ShardLayout layout = ShardLayout::of(params, comm.rank(), comm.world_size());
  const std::vector<optim::ParamState>& full = optimizer.state();
  std::vector<optim::ParamState> pieces;
  for (const ShardPiece& piece : layout.pieces) {
    optim::ParamState state;
    if (piece.param < full.size() && !full[piece.param].empty()) {
      state.step = full[piece.param].step;
      for (const auto& [name, slot] : full[piece.param].slots) {
        if (slot.numel() != params[piece.param].numel() || !slot.is_contiguous())
          fail("fit", "slot '", name, "' of parameter ", piece.param, " has shape ", slot.shape(),
               "; sharding needs slots of the parameter's shape ", params[piece.param].shape());
        state.slots.emplace_back(name, ops::clone(piece_of(slot, piece)));
      }
    }
    pieces.push_back(std::move(state));
  }
  optimizer.load_state(std::move(pieces), optimizer.iterations());
}

void gather_optimizer_state(Communicator& comm, optim::Optimizer& optimizer, const std::vector<Tensor>& params) {
  const int world = comm.world_size();
  const ShardLayout layout = ShardLayout::of(params, comm.rank(), world);
  const std::vector<optim::ParamState>& mine = optimizer.state();
  if (!mine.empty() && mine.size() != layout.pieces.size())
    fail("distributed", "the sharded optimizer state has ", mine.size(), " entries for ",
         layout.pieces.size(), " pieces of this rank's shard");
  // A parameter's step count is its pieces' (they step together); 0 where never stepped.
  std::vector<int64_t> steps(params.size(), 0);
  for (size_t j = 0; j < mine.size(); ++j) steps[layout.pieces[j].param] = mine[j].step;
  comm.control().all_reduce(steps.data(), static_cast<int64_t>(steps.size()), DType::Int64, ReduceOp::Max);
  std::vector<optim::ParamState> full(params.size());
  for (size_t i = 0; i < params.size(); ++i) full[i].step = steps[i];
  if (!params.empty()) {
    const DType dtype = params[0].dtype();
    const int64_t item = static_cast<int64_t>(itemsize(dtype));
    // Elementwise optimizers keep the same slots for every parameter.
    for (const optim::SlotSpec& spec : optimizer.slot_specs(params[0])) {
      Tensor chunk = Tensor::zeros({layout.chunk}, dtype, comm.device());
      for (size_t j = 0; j < mine.size(); ++j)
        for (const auto& [name, slot] : mine[j].slots)
          if (name == spec.name) copy_into(slot, slice_of(chunk, layout.pieces[j].offset, slot.shape()));
      Tensor all = Tensor::empty({layout.chunk * world}, dtype, comm.device());
      comm.transport().all_gather(chunk.data_ptr(), all.data_ptr(),
                                  std::vector<int64_t>(world, layout.chunk * item));
      int64_t offset = 0;
      for (size_t i = 0; i < params.size(); ++i) {
        if (steps[i] > 0)
          full[i].slots.emplace_back(spec.name, ops::clone(slice_of(all, offset, params[i].shape())));
        offset += params[i].numel();
      }
    }
  }
  optimizer.load_state(std::move(full), optimizer.iterations());
}

struct GradientReducer::Bucket {
  DType dtype;
  std::vector<size_t> members;
  std::vector<int64_t> offsets;
  int64_t numel = 0;
  size_t ready = 0;
  Tensor flat;
};

GradientReducer::GradientReducer(Communicator& comm, std::vector<Tensor> params,
                                 optim::Optimizer* shard_optimizer_state)
    : comm_(comm), params_(std::move(params)), sharded_(shard_optimizer_state != nullptr) {
  for (size_t i = 0; i < params_.size(); ++i)
    if (params_[i].device() != comm_.device() || !params_[i].is_contiguous())
      fail("fit", "the '", comm_.backend(), "' backend trains contiguous ", comm_.device().str(),
           " parameters on this rank; parameter ", i, " is a ", params_[i].device().str(),
           " tensor of shape ", params_[i].shape(), "; move the model with model.to('",
           comm_.device().str(), "')");
  if (sharded_) {
    if (!shard_optimizer_state->elementwise())
      fail("compile", "shard_optimizer_state=True splits parameters into flat shards, which needs "
                      "an elementwise optimizer (SGD, RMSprop, Adam, AdamW); ",
           shard_optimizer_state->name(), " updates whole tensors at once");
    for (size_t i = 1; i < params_.size(); ++i)
      if (params_[i].dtype() != params_[0].dtype())
        fail<TypeError>("compile", "shard_optimizer_state=True needs parameters of one dtype, got ",
                        dtype_name(params_[0].dtype()), " and ", dtype_name(params_[i].dtype()));
    layout_ = ShardLayout::of(params_, comm_.rank(), comm_.world_size());
    for (const ShardPiece& piece : layout_.pieces) pieces_.push_back(piece_of(params_[piece.param], piece));
    return;
  }
  // On a GPU the collectives queue on the compute stream behind the gradients' kernels.
  overlap_ = comm_.device().is_cpu() && env_number("STEEPEST_DDP_OVERLAP", spare_core() ? 1.0 : 0.0) != 0.0;
  const double bucket_bytes = env_number("STEEPEST_DDP_BUCKET_MB", 4.0) * 1024.0 * 1024.0;
  // Reverse order: backward produces the last layers' gradients first.
  for (size_t k = params_.size(); k-- > 0;) {
    const Tensor& p = params_[k];
    const double bytes = static_cast<double>(p.numel() * static_cast<int64_t>(itemsize(p.dtype())));
    bool fits = !buckets_.empty() && buckets_.back().dtype == p.dtype() &&
                static_cast<double>(buckets_.back().numel) * static_cast<double>(itemsize(p.dtype())) + bytes <=
                    std::max(bucket_bytes, 1.0);
    if (!fits) buckets_.push_back(Bucket{p.dtype(), {}, {}, 0, 0, {}});
    Bucket& bucket = buckets_.back();
    bucket_of_[p.impl()] = buckets_.size() - 1;
    bucket.members.push_back(k);
    bucket.offsets.push_back(bucket.numel);
    bucket.numel += p.numel();
  }
}

GradientReducer::~GradientReducer() {
  if (!sender_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closing_ = true;
  }
  wake_.notify_all();
  sender_.join();
}

void GradientReducer::send_buckets() {
  for (;;) {
    Bucket* bucket;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return closing_ || !queue_.empty(); });
      if (queue_.empty()) return;
      bucket = queue_.front();
      queue_.pop_front();
    }
    try {
      comm_.transport().all_reduce(bucket->flat.data_ptr(), bucket->numel, bucket->dtype, ReduceOp::Sum);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++sent_;
    }
    wake_.notify_all();
  }
}

GradientReadyHook GradientReducer::overlap_hook() {
  if (sharded_ || !overlap_) return {};
  return [this](const Tensor& leaf) { on_gradient_ready(leaf); };
}

void GradientReducer::on_gradient_ready(const Tensor& leaf) {
  auto it = bucket_of_.find(leaf.impl());
  if (it != bucket_of_.end()) ++buckets_[it->second].ready;
  // Collectives must come in the same order on every rank, whatever order backward
  // finishes buckets in (a rank without samples runs no backward at all): bucket order.
  while (next_launch_ < buckets_.size() &&
         buckets_[next_launch_].ready == buckets_[next_launch_].members.size())
    launch(buckets_[next_launch_++]);
}

void GradientReducer::launch(Bucket& bucket) {
  bool complete = true;
  for (size_t i : bucket.members) complete = complete && params_[i].grad().defined();
  const Device device = comm_.device();
  bucket.flat = complete ? Tensor::empty({bucket.numel}, bucket.dtype, device)
                         : Tensor::zeros({bucket.numel}, bucket.dtype, device);
  for (size_t m = 0; m < bucket.members.size(); ++m) {
    const Tensor& p = params_[bucket.members[m]];
    if (p.grad().defined()) copy_into(p.grad(), slice_of(bucket.flat, bucket.offsets[m], p.shape()));
  }
  if (!overlap_) return;
  if (!sender_.joinable()) sender_ = std::thread([this] { send_buckets(); });
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(&bucket);
  }
  wake_.notify_all();
}

void GradientReducer::reduce() {
  if (sharded_)
    reduce_sharded();
  else
    reduce_replicated();
}

void GradientReducer::reduce_replicated() {
  while (next_launch_ < buckets_.size()) launch(buckets_[next_launch_++]);
  next_launch_ = 0;
  if (overlap_) {
    std::unique_lock<std::mutex> lock(mutex_);
    wake_.wait(lock, [&] { return sent_ == buckets_.size(); });
    sent_ = 0;
    if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
  } else {
    for (Bucket& bucket : buckets_)
      comm_.transport().all_reduce(bucket.flat.data_ptr(), bucket.numel, bucket.dtype, ReduceOp::Sum);
  }
  for (Bucket& bucket : buckets_) {
    // The summed gradients stay in the bucket: each grad becomes a view of it.
    for (size_t m = 0; m < bucket.members.size(); ++m) {
      Tensor& p = params_[bucket.members[m]];
      p.set_grad(slice_of(bucket.flat, bucket.offsets[m], p.shape()));
    }
    bucket.flat = Tensor();
    bucket.ready = 0;
  }
}

void GradientReducer::reduce_sharded() {
  const int world = comm_.world_size();
  const DType dtype = params_.empty() ? DType::Float32 : params_[0].dtype();
  Tensor send = Tensor::empty({layout_.chunk * world}, dtype, comm_.device());
  int64_t offset = 0;
  for (const Tensor& p : params_) {
    Tensor slot = slice_of(send, offset, p.shape());
    if (p.grad().defined())
      copy_into(p.grad(), slot);
    else
      STEEPEST_KERNEL(slot.device(), fill)(slot, 0.0);
    offset += p.numel();
  }
  Tensor padding = slice_of(send, offset, {layout_.chunk * world - offset});
  STEEPEST_KERNEL(padding.device(), fill)(padding, 0.0);
  Tensor received = Tensor::empty({layout_.chunk}, dtype, comm_.device());
  comm_.transport().reduce_scatter(send.data_ptr(), received.data_ptr(),
                                   std::vector<int64_t>(world, layout_.chunk), dtype, ReduceOp::Sum);
  for (Tensor& p : params_) p.set_grad(Tensor());
  for (size_t j = 0; j < pieces_.size(); ++j)
    pieces_[j].set_grad(slice_of(received, layout_.pieces[j].offset, {layout_.pieces[j].count}));
}

void GradientReducer::gather_parameters() {
  if (!sharded_ || params_.empty()) return;
  const int world = comm_.world_size();
  const DType dtype = params_[0].dtype();
  Tensor mine = Tensor::zeros({layout_.chunk}, dtype, comm_.device());
  for (size_t j = 0; j < pieces_.size(); ++j)
    copy_into(pieces_[j], slice_of(mine, layout_.pieces[j].offset, {layout_.pieces[j].count}));
  Tensor all = Tensor::empty({layout_.chunk * world}, dtype, comm_.device());
  comm_.transport().all_gather(mine.data_ptr(), all.data_ptr(),
                               std::vector<int64_t>(world, layout_.chunk * static_cast<int64_t>(itemsize(dtype))));
  int64_t offset = 0;
  for (Tensor& p : params_) {
    copy_into(slice_of(all, offset, p.shape()), p);
    p.storage()->bump_version();
    offset += p.numel();
  }
}

}  // namespace steepest::dist
