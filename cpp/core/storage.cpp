// The CPU caching allocator: 64-byte aligned blocks from the system, cached by
// BlockCache (steepest/block_cache.h) up to 1 GiB.
#include "steepest/storage.h"

#include <cstdlib>
#include <new>

#include "steepest/block_cache.h"
#include "steepest/common.h"
#include "steepest/cuda_runtime.h"

namespace steepest {
namespace {

constexpr size_t kAlignment = 64;
// Above this many cached bytes, freed blocks go back to the system.
constexpr size_t kMaxCachedBytes = size_t{1} << 30;

class CpuCachingAllocator {
 public:
  void* allocate(size_t nbytes) {
    const size_t cls = BlockCache::size_class(nbytes, 256, kAlignment);
    if (void* p = cache_.take(cls)) return p;
    void* p = std::aligned_alloc(kAlignment, cls);
    if (p == nullptr) {
      empty_cache();
      p = std::aligned_alloc(kAlignment, cls);
      if (p == nullptr) throw MemoryError(cat("[allocate] out of memory: cannot allocate ", cls, " bytes on the cpu"));
    }
    cache_.note_allocated(cls);
    return p;
  }

  void deallocate(void* p, size_t nbytes) {
    if (!cache_.keep(p, BlockCache::size_class(nbytes, 256, kAlignment), kMaxCachedBytes))
      std::free(p);
  }

  void empty_cache() {
    for (void* p : cache_.drain()) std::free(p);
  }

  AllocatorStats stats() { return cache_.stats(); }
  void reset_peak() { cache_.reset_peak(); }

 private:
  BlockCache cache_;
};

// Leaked on purpose: tensors held by Python objects may die during interpreter
// shutdown, after static destructors would have run.
CpuCachingAllocator& cpu_allocator() {
  static auto* allocator = new CpuCachingAllocator();
  return *allocator;
}

}  // namespace

Storage::Storage(void* data, size_t nbytes, Device device, std::shared_ptr<void> owner)
    : data_(data), nbytes_(nbytes), device_(device), owner_(std::move(owner)) {}

Storage::~Storage() {
  if (owner_) return;  // the owner's deleter releases borrowed memory
  if (device_.is_cpu())
    cpu_allocator().deallocate(data_, nbytes_);
  else
    cuda_deallocate(data_, nbytes_, device_.index);
}

std::shared_ptr<Storage> Storage::allocate(size_t nbytes, Device device) {
  void* p = device.is_cpu() ? cpu_allocator().allocate(nbytes)
                            : cuda_allocate(nbytes, device.index);
  return std::make_shared<Storage>(p, nbytes, device, nullptr);
}

std::shared_ptr<Storage> Storage::borrow(void* data, size_t nbytes, Device device,
                                         std::shared_ptr<void> owner) {
  if (!owner) fail("storage", "borrowed memory needs an owner that keeps it alive");
  return std::make_shared<Storage>(data, nbytes, device, std::move(owner));
}

AllocatorStats cpu_allocator_stats() { return cpu_allocator().stats(); }
void cpu_allocator_empty_cache() { cpu_allocator().empty_cache(); }
void cpu_allocator_reset_peak() { cpu_allocator().reset_peak(); }

}  // namespace steepest
