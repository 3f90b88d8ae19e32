// The bookkeeping of a caching allocator, shared by the CPU allocator (cpp/core/storage.cpp)
// and the CUDA one (cuda/runtime.cu): freed blocks are kept per size class and handed out
// again, so an eager training step that allocates the same tensors every iteration stops
// calling the system allocator after the first one. The cache never allocates or frees
// memory itself; its owner does, with the calls its memory needs. Thread-safe.
#pragma once

#include <cstddef>
#include <map>
#include <mutex>
#include <vector>

#include "steepest/storage.h"

namespace steepest {

class BlockCache {
 public:
  // Up to `small` bytes: a multiple of `granularity`; above, an eighth of the next power
  // of two (at most 12.5% waste).
  static size_t size_class(size_t nbytes, size_t small, size_t granularity);

  // A cached block of class cls, now counted as allocated, or null when there is none.
  void* take(size_t cls);
  // Counts a block of class cls that the owner has just allocated.
  void note_allocated(size_t cls);
  // Counts the block p of class cls as freed and keeps it while the cached bytes stay
  // within max_cached; false when it is not kept and the owner must free it.
  bool keep(void* p, size_t cls, size_t max_cached);
  // Empties the cache; the owner frees the blocks returned.
  std::vector<void*> drain();

  AllocatorStats stats();
  void reset_peak();

 private:
  void count_allocated(size_t cls);  // with mutex_ held

  std::mutex mutex_;
  std::map<size_t, std::vector<void*>> free_;
  AllocatorStats stats_;
};

}  // namespace steepest
