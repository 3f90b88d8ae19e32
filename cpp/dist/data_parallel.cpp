// Data-parallel training: the global batch split into contiguous shares, replicas made
// equal before training, and the gradient synchronisation of each step — bucketed
// all-reduces overlapped with backward (PyTorch DDP), or reduce-scatter / all-gather
// around an optimizer whose state is sharded (ZeRO stage 1, llm.c).
#include <omp.h>
#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <utility>
#include <cstring>
#include <numeric>

#include "steepest/common.h"
#include "steepest/dist.h"
#include "steepest/kernels.h"

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
    if (!w.device().is_cpu() || !w.is_contiguous())
      fail("fit", "data-parallel training over MPI needs contiguous CPU weights, got a ",
           w.device().str(), " tensor of shape ", w.shape());
    comm.transport().broadcast(w.data_ptr(), w.numel() * static_cast<int64_t>(itemsize(w.dtype())), 0);
  }
}

struct GradientReducer::Bucket {
  DType dtype;
  std::vector<size_t> members;
  std::vector<int64_t> offsets;
  int64_t numel = 0;
  size_t ready = 0;
  Tensor flat;
};

GradientReducer::GradientReducer(Communicator& comm, std::vector<Tensor> params, bool shard_optimizer_state)
    : comm_(comm), params_(std::move(params)), sharded_(shard_optimizer_state) {
  for (size_t i = 0; i < params_.size(); ++i)
    if (!params_[i].device().is_cpu() || !params_[i].is_contiguous())
      fail("fit", "data-parallel training over MPI needs contiguous CPU parameters; parameter ", i,
           " is a ", params_[i].device().str(), " tensor of shape ", params_[i].shape());
  if (sharded_) {
    for (size_t i = 1; i < params_.size(); ++i)
      if (params_[i].dtype() != params_[0].dtype())
        fail<TypeError>("compile", "shard_optimizer_state=True needs parameters of one dtype, got ",
                        dtype_name(params_[0].dtype()), " and ", dtype_name(params_[i].dtype()));
    // Largest first onto the least loaded rank: shares within one parameter of 1/world.
    std::vector<size_t> by_size(params_.size());
    std::iota(by_size.begin(), by_size.end(), size_t{0});
    std::stable_sort(by_size.begin(), by_size.end(),
                     [&](size_t a, size_t b) { return params_[a].numel() > params_[b].numel(); });
    owned_.assign(static_cast<size_t>(comm_.world_size()), {});
    std::vector<int64_t> load(owned_.size(), 0);
    for (size_t i : by_size) {
      size_t rank = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
      owned_[rank].push_back(i);
      load[rank] += params_[i].numel();
    }
    for (auto& list : owned_) std::sort(list.begin(), list.end());
    return;
  }
  overlap_ = env_number("STEEPEST_DDP_OVERLAP", spare_core() ? 1.0 : 0.0) != 0.0;
  const double bucket_bytes = env_number("STEEPEST_DDP_BUCKET_MB", 4.0) * 1024.0 * 1024.0;
  slot_of_.assign(params_.size(), {0, 0});
  // Reverse order: backward produces the last layers' gradients first.
  for (size_t k = params_.size(); k-- > 0;) {
    const Tensor& p = params_[k];
    const double bytes = static_cast<double>(p.numel() * static_cast<int64_t>(itemsize(p.dtype())));
    bool fits = !buckets_.empty() && buckets_.back().dtype == p.dtype() &&
                static_cast<double>(buckets_.back().numel) * static_cast<double>(itemsize(p.dtype())) + bytes <=
                    std::max(bucket_bytes, 1.0);
    if (!fits) buckets_.push_back(Bucket{p.dtype(), {}, {}, 0, 0, {}});
    Bucket& bucket = buckets_.back();
    slot_of_[k] = {buckets_.size() - 1, bucket.members.size()};
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
  for (size_t i = 0; i < params_.size(); ++i) {
    if (params_[i].impl() != leaf.impl()) continue;
    ++buckets_[slot_of_[i].first].ready;
    break;
  }
  // Collectives must come in the same order on every rank, whatever order backward
  // finishes buckets in (a rank without samples runs no backward at all): bucket order.
  while (next_launch_ < buckets_.size() &&
         buckets_[next_launch_].ready == buckets_[next_launch_].members.size())
    launch(buckets_[next_launch_++]);
}

void GradientReducer::launch(Bucket& bucket) {
  bool complete = true;
  for (size_t i : bucket.members) complete = complete && params_[i].grad().defined();
  bucket.flat = complete ? Tensor::empty({bucket.numel}, bucket.dtype) : Tensor::zeros({bucket.numel}, bucket.dtype);
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
  const DType dtype = params_.empty() ? DType::Float32 : params_[0].dtype();
  std::vector<int64_t> counts;
  int64_t total = 0;
  for (const auto& list : owned_) {
    int64_t count = 0;
    for (size_t i : list) count += params_[i].numel();
    counts.push_back(count);
    total += count;
  }
  Tensor send = Tensor::zeros({total}, dtype);
  int64_t offset = 0;
  for (const auto& list : owned_)
    for (size_t i : list) {
      const Tensor& p = params_[i];
      if (p.grad().defined()) copy_into(p.grad(), slice_of(send, offset, p.shape()));
      offset += p.numel();
    }
  const size_t me = static_cast<size_t>(comm_.rank());
  received_ = Tensor::empty({counts[me]}, dtype);
  comm_.transport().reduce_scatter(send.data_ptr(), received_.data_ptr(), counts, dtype, ReduceOp::Sum);
  for (Tensor& p : params_) p.set_grad(Tensor());
  offset = 0;
  for (size_t i : owned_[me]) {
    params_[i].set_grad(slice_of(received_, offset, params_[i].shape()));
    offset += params_[i].numel();
  }
}

void GradientReducer::gather_parameters() {
  if (!sharded_ || params_.empty()) return;
  const DType dtype = params_[0].dtype();
  const int64_t item = static_cast<int64_t>(itemsize(dtype));
  std::vector<int64_t> bytes;
  int64_t total = 0;
  for (const auto& list : owned_) {
    int64_t count = 0;
    for (size_t i : list) count += params_[i].numel();
    bytes.push_back(count * item);
    total += count;
  }
  const size_t me = static_cast<size_t>(comm_.rank());
  Tensor mine = Tensor::empty({bytes[me] / item}, dtype);
  int64_t offset = 0;
  for (size_t i : owned_[me]) {
    copy_into(params_[i], slice_of(mine, offset, params_[i].shape()));
    offset += params_[i].numel();
  }
  Tensor all = Tensor::empty({total}, dtype);
  comm_.transport().all_gather(mine.data_ptr(), all.data_ptr(), bytes);
  offset = 0;
  for (size_t rank = 0; rank < owned_.size(); ++rank)
    for (size_t i : owned_[rank]) {
      if (rank != me) copy_into(slice_of(all, offset, params_[i].shape()), params_[i]);
      offset += params_[i].numel();
    }
}

}  // namespace steepest::dist
