// The CUDA runtime side of steepest: device discovery, one stream per device, the caching
// device allocator and the error helpers of common.cuh. cudart is linked statically, so
// a CUDA build imports and runs on the CPU on a machine without a GPU driver:
// cuda_available() is then false and the first device allocation names the reason.
//
// The allocator keeps freed blocks in size classes (512 bytes at least, then eighths of
// the next power of two: at most 12.5% waste; steepest/block_cache.h) and hands them out
// again, so an eager step stops calling cudaMalloc after the first iteration. Reuse needs no events: every
// kernel of a device runs on its one stream, so a block freed by the host is only
// touched again by work queued after the work that used it. Cached blocks go back to
// the driver on empty_cache, or when cudaMalloc fails. STEEPEST_CUDA_NO_CACHING=1 turns
// the cache off (exact sizes, cudaFree at once), as compute-sanitizer's memcheck needs
// to see every overrun and every use after free.
#include <dlfcn.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "common.cuh"
#include "steepest/block_cache.h"
#include "steepest/cuda_arch.h"
#include "steepest/storage.h"

namespace steepest {
namespace {

struct Discovery {
  int count = 0;
  cudaError_t error = cudaSuccess;
};

// Asked once: without a driver the call fails, and the error says why.
const Discovery& discovery() {
  static const Discovery result = [] {
    Discovery d;
    d.error = cudaGetDeviceCount(&d.count);
    if (d.error != cudaSuccess) {
      d.count = 0;
      cudaGetLastError();  // a failed probe must not surface in the next launch check
    }
    return d;
  }();
  return result;
}

void check_device(int index) {
  const Discovery& d = discovery();
  if (d.count == 0)
    throw StateError(std::string("[cuda] no CUDA device is available: ") +
                     (d.error != cudaSuccess ? cudaGetErrorString(d.error)
                                             : "the driver reports 0 devices"));
  if (index < 0 || index >= d.count)
    fail<StateError>("cuda", "device cuda:", index, " does not exist (", d.count,
                     d.count == 1 ? " device is" : " devices are", " visible)");
}

bool caching_enabled() {
  static const bool enabled = [] {
    const char* env = std::getenv("STEEPEST_CUDA_NO_CACHING");
    return env == nullptr || std::strcmp(env, "1") != 0;
  }();
  return enabled;
}

size_t size_class(size_t nbytes) {
  if (!caching_enabled()) return nbytes == 0 ? 1 : nbytes;
  constexpr size_t kMinimum = 512;  // cudaMalloc's own granularity is at least this
  return BlockCache::size_class(nbytes, kMinimum, kMinimum);
}

// Per-device state: the stream, its properties and the cache of free blocks.
class DeviceState {
 public:
  explicit DeviceState(int index) : index_(index) {}

  cudaStream_t stream() {
    check_arch();
    std::call_once(init_, [this] {
      cuda::CurrentDevice current(index_);
      // A blocking stream (not cudaStreamNonBlocking) orders itself with the legacy
      // default stream, which is where PyTorch's kernels run unless told otherwise: a
      // tensor exchanged through DLPack is then ready on either side without events.
      STEEPEST_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamDefault));
      STEEPEST_CUDA_CHECK(
          cudaDeviceGetAttribute(&multiprocessors_, cudaDevAttrMultiProcessorCount, index_));
    });
    return stream_;
  }
  int multiprocessors() {
    stream();
    return multiprocessors_;
  }

  // Asked at the device's first use (an allocation or its stream), so that a GPU the
  // build has no code for is named, with the fix, rather than failing at the first launch
  // with "no kernel image is available". A failure leaves the flag unset: every later use
  // raises the same error.
  void check_arch() {
    std::call_once(arch_checked_, [this] {
      cudaDeviceProp prop;
      STEEPEST_CUDA_CHECK(cudaGetDeviceProperties(&prop, index_));
      const std::string device = "cuda:" + std::to_string(index_) + " (" + prop.name + ")";
      const std::string error =
          cuda_arch_mismatch(device, prop.major, prop.minor, STEEPEST_CUDA_ARCHS);
      if (!error.empty()) throw StateError(error);
    });
  }

  void* allocate(size_t nbytes) {
    check_arch();
    const size_t cls = size_class(nbytes);
    if (void* p = cache_.take(cls)) return p;
    cuda::CurrentDevice current(index_);
    void* p = nullptr;
    cudaError_t error = cudaMalloc(&p, cls);
    if (error == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      empty_cache();
      error = cudaMalloc(&p, cls);
    }
    if (error != cudaSuccess) {
      cudaGetLastError();
      const AllocatorStats s = stats();
      fail<StateError>("cuda", "cannot allocate ", nbytes, " bytes on cuda:", index_, " (",
                       s.allocated_bytes, " bytes in use by tensors): ",
                       cudaGetErrorString(error));
    }
    cache_.note_allocated(cls);
    return p;
  }

  // Runs in Storage's destructor: nothing here throws, and with caching on (the default)
  // nothing calls CUDA.
  void deallocate(void* p, size_t nbytes) {
    const size_t max_cached = caching_enabled() ? SIZE_MAX : 0;
    // A destructor must not throw: an error is dropped, and cleared so that the next
    // launch check does not report it.
    if (!cache_.keep(p, size_class(nbytes), max_cached) && cudaFree(p) != cudaSuccess)
      cudaGetLastError();
  }

  void empty_cache() {
    const std::vector<void*> blocks = cache_.drain();
    if (blocks.empty()) return;
    cuda::CurrentDevice current(index_);
    // cudaFree waits for the device, so queued kernels that used a block finish first.
    for (void* p : blocks) STEEPEST_CUDA_CHECK(cudaFree(p));
  }

  AllocatorStats stats() { return cache_.stats(); }
  void reset_peak() { cache_.reset_peak(); }

 private:
  int index_;
  std::once_flag arch_checked_;
  std::once_flag init_;
  cudaStream_t stream_ = nullptr;
  int multiprocessors_ = 0;
  BlockCache cache_;
};

// Leaked on purpose, like the CPU allocator: tensors held by Python objects may die
// during interpreter shutdown, after static destructors would have run.
DeviceState& device_state(int index) {
  static auto* states = [] {
    auto* v = new std::vector<DeviceState*>();
    for (int i = 0; i < discovery().count; ++i) v->push_back(new DeviceState(i));
    return v;
  }();
  check_device(index);
  return *(*states)[static_cast<size_t>(index)];
}

}  // namespace

bool cuda_available() { return discovery().count > 0; }
int cuda_device_count() { return discovery().count; }

void* cuda_allocate(size_t nbytes, int device_index) {
  return device_state(device_index).allocate(nbytes);
}

void cuda_deallocate(void* p, size_t nbytes, int device_index) {
  device_state(device_index).deallocate(p, nbytes);
}

std::string cuda_device_name(int device_index) {
  if (device_index < 0 || device_index >= cuda_device_count()) return "";
  cudaDeviceProp prop;
  STEEPEST_CUDA_CHECK(cudaGetDeviceProperties(&prop, device_index));
  return prop.name;
}

AllocatorStats cuda_allocator_stats(int device_index) {
  return device_state(device_index).stats();
}
void cuda_allocator_empty_cache() {
  for (int i = 0; i < cuda_device_count(); ++i) device_state(i).empty_cache();
}
void cuda_allocator_reset_peak(int device_index) { device_state(device_index).reset_peak(); }

void cuda_synchronize(int device_index) {
  cuda::DeviceGuard guard(Device{DeviceType::CUDA, device_index});
  STEEPEST_CUDA_CHECK(cudaStreamSynchronize(guard.stream()));
}

namespace cuda {

void* open_library(const std::vector<std::string>& names, const char* folders_variable,
                   std::string& path, std::string& error) {
  std::vector<std::string> folders;
  if (const char* env = std::getenv(folders_variable)) {
    std::string list = env;
    for (size_t start = 0; start <= list.size();) {
      size_t end = list.find(':', start);
      if (end == std::string::npos) end = list.size();
      if (end > start) folders.push_back(list.substr(start, end - start));
      start = end + 1;
    }
  }
  for (const std::string& name : names) {
    std::vector<std::string> candidates{name};
    for (const std::string& folder : folders) candidates.push_back(folder + "/" + name);
    for (const std::string& candidate : candidates) {
      if (void* handle = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL)) {
        path = candidate;
        return handle;
      }
      const char* why = dlerror();
      error += "\n  " + (why ? std::string(why) : candidate + ": not found");
    }
  }
  return nullptr;
}

void throw_cuda_error(cudaError_t error, const char* call, const char* file, int line) {
  cudaGetLastError();  // clear a non-sticky error so later checks report their own
  fail<StateError>("cuda", call, " failed at ", file, ":", line, ": ", cudaGetErrorString(error));
}

cudaStream_t stream_for(int device_index) { return device_state(device_index).stream(); }
int multiprocessor_count(int device_index) {
  return device_state(device_index).multiprocessors();
}

CurrentDevice::CurrentDevice(int index) : index_(index), previous_(index) {
  STEEPEST_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != index) STEEPEST_CUDA_CHECK(cudaSetDevice(index));
}
CurrentDevice::~CurrentDevice() {
  if (previous_ != index_) cudaSetDevice(previous_);
}

DeviceGuard::DeviceGuard(Device device)
    : index_(device.index), stream_(stream_for(device.index)), current_(device.index) {}

void read_back(const DeviceGuard& guard, void* host, const void* device_ptr, size_t bytes) {
  STEEPEST_CUDA_CHECK(
      cudaMemcpyAsync(host, device_ptr, bytes, cudaMemcpyDeviceToHost, guard.stream()));
  STEEPEST_CUDA_CHECK(cudaStreamSynchronize(guard.stream()));
}

IndexCheck::IndexCheck(const DeviceGuard& guard)
    : flag_(Tensor::empty({1}, DType::Int64, Device{DeviceType::CUDA, guard.index()})) {
  // All bits set: the largest unsigned value, above any position atomicMin can store.
  STEEPEST_CUDA_CHECK(cudaMemsetAsync(flag_.data_ptr(), 0xFF, sizeof(uint64_t), guard.stream()));
}

int64_t IndexCheck::first_bad(const DeviceGuard& guard) const {
  unsigned long long position = 0;
  read_back(guard, &position, flag_.data_ptr(), sizeof(position));
  return position == ~0ull ? -1 : static_cast<int64_t>(position);
}

int64_t read_index(const DeviceGuard& guard, const Tensor& indices, int64_t position) {
  return dispatch_index("index", indices.dtype(), [&](auto tag) {
    using I = typename decltype(tag)::type;
    I value{};
    read_back(guard, &value, indices.data<I>() + position, sizeof(I));
    return static_cast<int64_t>(value);
  });
}

}  // namespace cuda
}  // namespace steepest
