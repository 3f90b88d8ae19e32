#include "steepest/block_cache.h"

#include <limits>

#include "steepest/common.h"

namespace steepest {

size_t BlockCache::size_class(size_t nbytes, size_t small, size_t granularity) {
  if (nbytes == 0) nbytes = 1;
  // The doubling below would wrap to 0 and never end.
  if (nbytes > std::numeric_limits<size_t>::max() / 4)
    throw MemoryError(cat("[allocate] ", nbytes, " bytes exceed any memory"));
  if (nbytes <= small) return (nbytes + granularity - 1) / granularity * granularity;
  size_t power = small;
  while (power < nbytes) power <<= 1;
  const size_t eighth = power / 8;
  return (nbytes + eighth - 1) / eighth * eighth;
}

void* BlockCache::take(size_t cls) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = free_.find(cls);
  if (it == free_.end() || it->second.empty()) return nullptr;
  void* p = it->second.back();
  it->second.pop_back();
  stats_.cached_bytes -= cls;
  count_allocated(cls);
  return p;
}

void BlockCache::note_allocated(size_t cls) {
  std::lock_guard<std::mutex> lock(mutex_);
  count_allocated(cls);
}

bool BlockCache::keep(void* p, size_t cls, size_t max_cached) {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.allocated_bytes -= cls;
  if (stats_.cached_bytes + cls > max_cached) return false;
  free_[cls].push_back(p);
  stats_.cached_bytes += cls;
  return true;
}

std::vector<void*> BlockCache::drain() {
  std::map<size_t, std::vector<void*>> blocks;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    blocks.swap(free_);
    stats_.cached_bytes = 0;
  }
  std::vector<void*> all;
  for (auto& entry : blocks) all.insert(all.end(), entry.second.begin(), entry.second.end());
  return all;
}

AllocatorStats BlockCache::stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void BlockCache::reset_peak() {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.peak_allocated_bytes = stats_.allocated_bytes;
}

void BlockCache::count_allocated(size_t cls) {
  stats_.allocated_bytes += cls;
  if (stats_.allocated_bytes > stats_.peak_allocated_bytes)
    stats_.peak_allocated_bytes = stats_.allocated_bytes;
}

}  // namespace steepest
