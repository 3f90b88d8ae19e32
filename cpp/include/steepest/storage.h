// Ref-counted blocks of memory. Blocks owned by steepest come from a per-device caching
// allocator (eager training allocates the same sizes every step); blocks borrowed from
// elsewhere (a NumPy array, a DLPack capsule) keep their owner alive through `owner`.
#pragma once

#include <cstddef>
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

 private:
  void* data_;
  size_t nbytes_;
  Device device_;
  std::shared_ptr<void> owner_;  // null when the allocator owns the block
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
