// Shared by the CUDA translation units: launch checking, the device guard and per-device
// stream, launch geometry, warp/block reductions, the strided indexer of the generic
// elementwise launcher and the 16-bit load/store helpers. Every kernel runs on its
// device's one stream, so work is ordered without events; host reads (copies to the CPU,
// reductions returned as doubles) synchronise that stream.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "steepest/collapse.h"
#include "steepest/cuda_runtime.h"
#include "steepest/kernels.h"

namespace steepest::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t error, const char* call, const char* file,
                                   int line);

// Throws StateError("[cuda] <call> failed at file:line: <cudaGetErrorString>").
#define STEEPEST_CUDA_CHECK(call)                                                     \
  do {                                                                                \
    const cudaError_t steepest_error_ = (call);                                       \
    if (steepest_error_ != cudaSuccess)                                               \
      ::steepest::cuda::throw_cuda_error(steepest_error_, #call, __FILE__, __LINE__); \
  } while (0)
// After a <<<...>>> launch: a bad configuration is reported here, a fault inside the
// kernel at the next synchronising call.
#define STEEPEST_CUDA_CHECK_LAUNCH() STEEPEST_CUDA_CHECK(cudaGetLastError())

// dlopen of the first library that loads among `names`, looked up on the default search
// path, then in each folder of the ':'-separated environment variable `folders_variable`.
// Returns null and lists every failed try in `error` when none loads.
void* open_library(const std::vector<std::string>& names, const char* folders_variable,
                   std::string& path, std::string& error);

// The stream every kernel of `device_index` runs on (created on first use).
cudaStream_t stream_for(int device_index);
// Streaming multiprocessors of the device (sizes grids of reductions).
int multiprocessor_count(int device_index);

// Makes a device current for a scope (kernels and cudaMalloc act on the current device).
class CurrentDevice {
 public:
  explicit CurrentDevice(int index);
  ~CurrentDevice();
  CurrentDevice(const CurrentDevice&) = delete;
  CurrentDevice& operator=(const CurrentDevice&) = delete;

 private:
  int index_;
  int previous_;
};

// The tensor's device made current for a scope, and its stream.
class DeviceGuard {
 public:
  explicit DeviceGuard(Device device);
  cudaStream_t stream() const { return stream_; }
  int index() const { return index_; }

 private:
  int index_;
  cudaStream_t stream_;  // first: creating it checks that the device exists
  CurrentDevice current_;
};

// Copies `bytes` from device memory to the host on the guard's stream and waits.
void read_back(const DeviceGuard& guard, void* host, const void* device_ptr, size_t bytes);

// Positions of out-of-range indices found by a kernel: the smallest one is kept with
// atomicMin. first_bad() synchronises, so an op checks once after its kernel, not per row.
class IndexCheck {
 public:
  explicit IndexCheck(const DeviceGuard& guard);
  unsigned long long* slot() const { return static_cast<unsigned long long*>(flag_.data_ptr()); }
  // The first bad position, or -1 when every index was in range.
  int64_t first_bad(const DeviceGuard& guard) const;

 private:
  Tensor flag_;
};

// Reads element `position` of an integer tensor on the device (for error messages).
int64_t read_index(const DeviceGuard& guard, const Tensor& indices, int64_t position);

// ------------------------------------------------------------------ 16-bit storage

// float16/bfloat16 kernels compute in float like the CPU's (dtype.h's StorageTag): they
// load with to_compute, which is exact, and round once with to_storage. Half and
// BFloat16 (half.h) hold only the bits; their conversions are host code.
template <class S>
using compute_t = typename ComputeTypeOf<S>::type;

template <class S>
__device__ __forceinline__ compute_t<S> to_compute(S v) {
  if constexpr (std::is_same_v<S, Half>)
    return __half2float(__ushort_as_half(v.bits));
  else if constexpr (std::is_same_v<S, BFloat16>)
    return __bfloat162float(__ushort_as_bfloat16(v.bits));
  else
    return v;
}

// half.h's round_to_odd: a double rounded to float this way, then to 16 bits to nearest
// even, is rounded once (double -> float -> 16 bits to nearest could round twice).
__device__ __forceinline__ float round_to_odd(double d) {
  const float f = __double2float_rn(d);
  if (isnan(d) || static_cast<double>(f) == d) return f;
  const unsigned u = __float_as_uint(f);
  if (u & 1u) return f;
  return __uint_as_float(fabs(d) > fabs(static_cast<double>(f)) ? u + 1 : u - 1);
}

// Rounds a float or double to 16-bit S, to nearest even; any other S is a static_cast.
template <class S, class V>
__device__ __forceinline__ S to_storage(V v) {
  if constexpr (kIsHalf<S>) {
    static_assert(std::is_same_v<V, float> || std::is_same_v<V, double>, "rounds floats only");
    float f;
    if constexpr (std::is_same_v<V, double>)
      f = round_to_odd(v);
    else
      f = v;
    S out;
    if constexpr (std::is_same_v<S, Half>)
      out.bits = __half_as_ushort(__float2half_rn(f));
    else
      out.bits = __bfloat16_as_ushort(__float2bfloat16_rn(f));
    return out;
  } else {
    return static_cast<S>(v);
  }
}

// ------------------------------------------------------------------- launch geometry

inline constexpr int kThreads = 256;
// Grid-stride loops cover the rest: more blocks than this only add scheduling cost.
inline constexpr int64_t kMaxBlocks = 65535;

inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

#define STEEPEST_GRID_STRIDE(i, n)                                                  \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

// ----------------------------------------------------------------------- reductions

struct SumOp {
  template <class T>
  __device__ T operator()(T a, T b) const { return a + b; }
};
// Ignores NaN like the CPU's `x > m ? x : m` scan (softmax's row max).
struct MaxOp {
  template <class T>
  __device__ T operator()(T a, T b) const { return b > a ? b : a; }
};

template <class T, class Op>
__device__ T warp_reduce(T value, Op op) {
  for (int offset = 16; offset > 0; offset >>= 1)
    value = op(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}

// Reduces across the threads that share a row: the warp (kWarp, blockDim.x == 32) or
// the whole block (blockDim.y == 1). Every thread gets the result.
template <bool kWarp, class T, class Op>
__device__ T row_reduce(T value, Op op, T identity) {
  value = warp_reduce(value, op);
  if constexpr (kWarp) {
    return value;
  } else {
    __shared__ T partial[32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    __syncthreads();  // a previous call may still be reading partial[0]
    if (lane == 0) partial[warp] = value;
    __syncthreads();
    if (warp == 0) {
      value = lane < static_cast<int>(blockDim.x / 32) ? partial[lane] : identity;
      value = warp_reduce(value, op);
      if (lane == 0) partial[0] = value;
    }
    __syncthreads();
    return partial[0];
  }
}

template <class T>
__device__ T neg_inf() {
  return -T(INFINITY);
}

// Over the threads (x, y) of a block that share x: the rows' partial results in
// threadIdx.y are combined through shared memory; thread (x, 0) gets the result.
template <class T, class Combine>
__device__ T column_combine(T value, T* shared, Combine combine) {
  shared[threadIdx.y * blockDim.x + threadIdx.x] = value;
  __syncthreads();
  if (threadIdx.y == 0)
    for (unsigned y = 1; y < blockDim.y; ++y)
      value = combine(value, shared[y * blockDim.x + threadIdx.x]);
  return value;
}

// Column kernels: 32 columns by 8 row-splitters per block.
inline constexpr int kColumnTile = 32;
inline constexpr int kColumnSplit = kThreads / kColumnTile;

inline dim3 column_grid(int64_t outer, int64_t inner) {
  const int64_t tiles = (inner + kColumnTile - 1) / kColumnTile;
  return dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(outer < 65535 ? outer : 65535));
}

// Rows of up to this many columns get one warp each; longer rows get a block.
inline constexpr int64_t kWarpRowLimit = 1024;
inline constexpr int kRowsPerBlock = 8;

// Launches kernel<kWarp> over `rows` rows: blockDim (32, 8) with one warp per row for
// short rows, else one 256-thread block per row. Inside, the row is
// blockIdx.x * blockDim.y + threadIdx.y and its threads are threadIdx.x of blockDim.x.
template <class WarpKernel, class BlockKernel, class... Args>
void launch_rows(cudaStream_t stream, int64_t rows, int64_t cols, WarpKernel warp_kernel,
                 BlockKernel block_kernel, Args... args) {
  if (rows == 0) return;
  if (cols <= kWarpRowLimit) {
    const auto blocks = static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock);
    warp_kernel<<<blocks, dim3(32, kRowsPerBlock), 0, stream>>>(args...);
  } else {
    block_kernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(args...);
  }
  STEEPEST_CUDA_CHECK_LAUNCH();
}

#define STEEPEST_ROW_INDEX() (static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y)

// ------------------------------------------------------------------ strided indexing

// The collapsed dimensions of N operands (steepest/collapse.h, as the CPU's StridedLoop)
// and the element offsets of a linear index in each.
template <int N>
struct Strided : CollapsedDims<N> {
  bool contiguous = true;  // one dimension, unit strides: index i is offset i

  // The element offsets of linear index i in each operand. The division runs in 32 bits
  // when the tensor allows: 64-bit division is emulated and dominates small kernels.
  __device__ void offsets(int64_t i, int64_t (&off)[N]) const {
#pragma unroll
    for (int k = 0; k < N; ++k) off[k] = 0;
    if (this->numel <= INT32_MAX) {
      auto rest = static_cast<uint32_t>(i);
      for (int d = this->ndim - 1; d >= 0; --d) {
        const auto extent = static_cast<uint32_t>(this->shape[d]);
        const uint32_t q = rest / extent, r = rest - q * extent;
        rest = q;
#pragma unroll
        for (int k = 0; k < N; ++k) off[k] += static_cast<int64_t>(r) * this->strides[k][d];
      }
      return;
    }
    for (int d = this->ndim - 1; d >= 0; --d) {
      const int64_t q = i / this->shape[d], r = i - q * this->shape[d];
      i = q;
#pragma unroll
      for (int k = 0; k < N; ++k) off[k] += r * this->strides[k][d];
    }
  }
};

template <int N>
Strided<N> make_strided(const Dims& shape, const std::array<const Dims*, N>& strides) {
  Strided<N> s;
  static_cast<CollapsedDims<N>&>(s) = collapse_dims<N>(shape, strides);
  s.contiguous = s.ndim == 1;
  for (int k = 0; k < N; ++k) s.contiguous = s.contiguous && s.strides[k][0] == 1;
  return s;
}

}  // namespace steepest::cuda
