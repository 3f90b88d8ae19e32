// CUDA kernels along one axis of an (outer, extent, inner) view, as cpp/cpu/select.cpp:
// running sums and products (one thread per column, accumulating in double or int64),
// gather, and its scatter-add backward (atomicAdd: indices may repeat).
#include <type_traits>

#include "common.cuh"

namespace steepest::cuda {
namespace {

template <class T>
using Accumulator = std::conditional_t<std::is_integral_v<T>, int64_t, double>;

template <class T>
__global__ void scan_kernel(ScanArgs args, const T* x, T* out) {
  using A = Accumulator<T>;
  const int64_t columns = args.outer * args.inner;
  STEEPEST_GRID_STRIDE(c, columns) {
    const int64_t base = (c / args.inner) * args.extent * args.inner + c % args.inner;
    A acc = args.op == ScanOp::Sum ? A(0) : A(1);
    for (int64_t step = 0; step < args.extent; ++step) {
      const int64_t e = args.reverse ? args.extent - 1 - step : step;
      const int64_t at = base + e * args.inner;
      const A v = static_cast<A>(to_compute(x[at]));
      if (args.exclusive) out[at] = to_storage<T>(acc);
      acc = args.op == ScanOp::Sum ? acc + v : acc * v;
      if (!args.exclusive) out[at] = to_storage<T>(acc);
    }
  }
}

__device__ __forceinline__ int64_t wrap(int64_t index, int64_t n) {
  return index < 0 ? index + n : index;
}

template <class T>
__global__ void gather_kernel(int64_t total, int64_t k, int64_t inner, int64_t n, const T* x,
                              const int64_t* index, T* out) {
  STEEPEST_GRID_STRIDE(p, total) {
    const int64_t o = p / (k * inner), i = p % inner;
    out[p] = x[(o * n + wrap(index[p], n)) * inner + i];
  }
}

template <class T>
__global__ void scatter_add_kernel(int64_t total, int64_t k, int64_t inner, int64_t n,
                                   const T* grad_out, const int64_t* index, T* grad_x) {
  STEEPEST_GRID_STRIDE(p, total) {
    const int64_t o = p / (k * inner), i = p % inner;
    atomicAdd(grad_x + (o * n + wrap(index[p], n)) * inner + i, grad_out[p]);
  }
}

}  // namespace

void scan(const ScanArgs& args, const Tensor& x, Tensor& out) {
  const int64_t columns = args.outer * args.inner;
  if (columns == 0 || args.extent == 0) return;
  DeviceGuard guard(x.device());
  dispatch_all_storage("scan", x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same_v<T, bool>) {
      fail<TypeError>("scan", "bool tensors cannot be scanned; convert with astype");
    } else {
      scan_kernel<<<blocks_for(columns), kThreads, 0, guard.stream()>>>(args, x.data<T>(),
                                                                        out.data<T>());
      STEEPEST_CUDA_CHECK_LAUNCH();
    }
  });
}

void gather(const Tensor& x, const Tensor& index, Tensor& out) {
  const int64_t total = out.numel();
  if (total == 0) return;
  DeviceGuard guard(x.device());
  const int64_t k = out.shape()[1], inner = out.shape()[2], n = x.shape()[1];
  dispatch_all_storage("gather", x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    gather_kernel<<<blocks_for(total), kThreads, 0, guard.stream()>>>(
        total, k, inner, n, x.data<T>(), index.data<int64_t>(), out.data<T>());
    STEEPEST_CUDA_CHECK_LAUNCH();
  });
}

void scatter_add(const Tensor& grad_out, const Tensor& index, Tensor& grad_x) {
  const int64_t total = grad_out.numel();
  if (total == 0) return;
  DeviceGuard guard(grad_x.device());
  const int64_t k = grad_out.shape()[1], inner = grad_out.shape()[2], n = grad_x.shape()[1];
  dispatch_float("scatter_add", grad_x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    scatter_add_kernel<<<blocks_for(total), kThreads, 0, guard.stream()>>>(
        total, k, inner, n, grad_out.data<T>(), index.data<int64_t>(), grad_x.data<T>());
    STEEPEST_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace steepest::cuda
