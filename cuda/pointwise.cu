// CUDA kernels of the everyday pointwise ops (formulas in steepest/pointwise.h, shared
// with cpp/cpu/pointwise.cpp) and of where, over common.cuh's strided indexer.
// float16/bfloat16 compute each element in float and round once.
#include "common.cuh"

namespace steepest::cuda {
namespace {

template <class S, class F>
__global__ void pointwise_kernel(int64_t n, Strided<3> s, S* out, const S* a, const S* b,
                                 compute_t<S> p0, compute_t<S> p1, F f) {
  STEEPEST_GRID_STRIDE(i, n) {
    int64_t off[3];
    s.offsets(i, off);
    out[off[0]] = to_storage<S>(f(to_compute(a[off[1]]), to_compute(b[off[2]]), p0, p1));
  }
}

template <class T>
__global__ void where_kernel(int64_t n, Strided<4> s, T* out, const bool* cond, const T* a,
                             const T* b) {
  STEEPEST_GRID_STRIDE(i, n) {
    int64_t off[4];
    s.offsets(i, off);
    out[off[0]] = cond[off[1]] ? a[off[2]] : b[off[3]];
  }
}

template <class S, class F>
void launch_pointwise(const Tensor& a, const Tensor* b, Tensor& out, double p0, double p1, F f) {
  const int64_t n = out.numel();
  if (n == 0) return;
  DeviceGuard guard(out.device());
  // A unary op walks a a second time in place of b (never read by the rule).
  const Tensor& bt = b ? *b : a;
  const Strided<3> s = make_strided<3>(out.shape(), {&out.strides(), &a.strides(), &bt.strides()});
  using C = compute_t<S>;
  pointwise_kernel<<<blocks_for(n), kThreads, 0, guard.stream()>>>(
      n, s, out.data<S>(), a.data<S>(), bt.data<S>(), static_cast<C>(p0), static_cast<C>(p1), f);
  STEEPEST_CUDA_CHECK_LAUNCH();
}

}  // namespace

void pointwise(PointwiseOp op, const Tensor& a, const Tensor* b, Tensor& out, double p0,
               double p1) {
  pointwise::dispatch(op, a.dtype(), [&](auto tag, auto f) {
    launch_pointwise<typename decltype(tag)::type>(a, b, out, p0, p1, f);
  });
}

void where(const Tensor& cond, const Tensor& a, const Tensor& b, Tensor& out) {
  const int64_t n = out.numel();
  if (n == 0) return;
  DeviceGuard guard(out.device());
  const Strided<4> s = make_strided<4>(
      out.shape(), {&out.strides(), &cond.strides(), &a.strides(), &b.strides()});
  dispatch_all_storage("where", a.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    where_kernel<<<blocks_for(n), kThreads, 0, guard.stream()>>>(
        n, s, out.data<T>(), cond.data<bool>(), a.data<T>(), b.data<T>());
    STEEPEST_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace steepest::cuda
