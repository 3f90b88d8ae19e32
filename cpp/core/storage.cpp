// The CPU caching allocator: freed blocks are kept in size classes and handed out again,
// so an eager training step that allocates the same activations every iteration stops
// calling malloc after the first step. Size classes are powers of two split in four,
// which bounds the waste at 25%.
#include "steepest/storage.h"

#include <cstdlib>
#include <map>
#include <mutex>
#include <new>
#include <vector>

#include "steepest/common.h"

namespace steepest {
namespace {

constexpr size_t kAlignment = 64;
// Above this many cached bytes, freed blocks go back to the system.
constexpr size_t kMaxCachedBytes = size_t{1} << 30;

size_t size_class(size_t nbytes) {
  if (nbytes <= 256) return (nbytes + kAlignment - 1) / kAlignment * kAlignment;
  size_t power = 256;
  while (power < nbytes) power <<= 1;
  size_t quarter = power / 8;  // classes: 5/8, 6/8, 7/8, 8/8 of the power
  size_t rounded = (nbytes + quarter - 1) / quarter * quarter;
  return rounded;
}

class CpuCachingAllocator {
 public:
  void* allocate(size_t nbytes) {
    size_t cls = size_class(nbytes == 0 ? 1 : nbytes);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(cls);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        stats_.cached_bytes -= cls;
        note_allocated(cls);
        return p;
      }
    }
    void* p = std::aligned_alloc(kAlignment, cls);
    if (p == nullptr) {
      empty_cache();
      p = std::aligned_alloc(kAlignment, cls);
      if (p == nullptr) throw std::bad_alloc();
    }
    std::lock_guard<std::mutex> lock(mutex_);
    note_allocated(cls);
    return p;
  }

  void deallocate(void* p, size_t nbytes) {
    size_t cls = size_class(nbytes == 0 ? 1 : nbytes);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stats_.allocated_bytes -= cls;
      if (stats_.cached_bytes + cls <= kMaxCachedBytes) {
        free_[cls].push_back(p);
        stats_.cached_bytes += cls;
        return;
      }
    }
    std::free(p);
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& entry : free_)
      for (void* p : entry.second) std::free(p);
    free_.clear();
    stats_.cached_bytes = 0;
  }

  AllocatorStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

  void reset_peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.peak_allocated_bytes = stats_.allocated_bytes;
  }

 private:
  void note_allocated(size_t cls) {
    stats_.allocated_bytes += cls;
    if (stats_.allocated_bytes > stats_.peak_allocated_bytes)
      stats_.peak_allocated_bytes = stats_.allocated_bytes;
  }

  std::mutex mutex_;
  std::map<size_t, std::vector<void*>> free_;
  AllocatorStats stats_;
};

// Leaked on purpose: tensors held by Python objects may die during interpreter
// shutdown, after static destructors would have run.
CpuCachingAllocator& cpu_allocator() {
  static auto* allocator = new CpuCachingAllocator();
  return *allocator;
}

}  // namespace

void* cuda_allocate(size_t nbytes, int device_index);
void cuda_deallocate(void* p, size_t nbytes, int device_index);

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
