// Ref-counted blocks of memory. Blocks owned by steepest come from a per-device caching
// allocator (eager training allocates the same sizes every step); blocks borrowed from
// elsewhere (a NumPy array, a DLPack capsule) keep their owner alive through `owner`.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "steepest/device.h"

namespace steepest {

class Storage {
 public:
  // Memory from the caching allocator of `device`, 64-byte aligned, uninitialised.
  static std::shared_ptr<Storage> allocate(size_t nbytes, Device device);
  // Memory that somebody else owns; `owner` is released when the storage dies.
  static std::shared_ptr<Storage> borrow(void* data, size_t nbytes, Device device,
                                         std::shared_ptr<void> owner);

  Storage(void* data, size_t nbytes, Device device, std::shared_ptr<void> owner);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

  // The version counter of PyTorch's autograd: every in-place write through steepest
  // (copy_, optimizer steps, collectives, gradient accumulation) bumps it, and a backward
  // node refuses to run when a tensor it saved has changed since (autograd.h).
  uint64_t version() const { return version_.load(std::memory_order_relaxed); }
  void bump_version() { version_.fetch_add(1, std::memory_order_relaxed); }
  // How many live graph nodes hold this memory for their backward: NumPy cannot report
  // its writes, so numpy() hands out read-only views while this is non-zero.
  bool saved_for_backward() const { return savers_.load(std::memory_order_relaxed) > 0; }
  void add_saver(int delta) { savers_.fetch_add(delta, std::memory_order_relaxed); }

 private:
  void* data_;
  size_t nbytes_;
  Device device_;
  std::shared_ptr<void> owner_;  // null when the allocator owns the block
  std::atomic<uint64_t> version_{0};
  std::atomic<int64_t> savers_{0};
};

// Statistics and control of the CPU caching allocator.
struct AllocatorStats {
  size_t allocated_bytes = 0;  // in live tensors
  size_t cached_bytes = 0;     // free blocks kept for reuse
  size_t peak_allocated_bytes = 0;
};
AllocatorStats cpu_allocator_stats();
void cpu_allocator_empty_cache();
void cpu_allocator_reset_peak();

}  // namespace steepest
