// Elementwise CUDA kernels: the formulas of steepest/elementwise_rules.h (the CPU's) over
// one generic strided launcher, plus fill and the copy entry point, which also moves
// data between the host and the devices. float16 and
// bfloat16 run the float functors: the adapters load each operand into float and round
// the result once.
//
// The launcher collapses the operands' dimensions (common.cuh's Strided); when every
// operand is contiguous it indexes linearly, else it decomposes each linear index
// (a broadcast operand reads with stride 0, as in a bias add).
#include <cmath>
#include <type_traits>

#include "common.cuh"

namespace steepest::cuda {
namespace {

// Adapters that bind the scalar, so every kernel below sees f(inputs...) on storage
// values of type S: the functor runs in S's compute type.
template <class F, class S>
struct BindUnary {
  compute_t<S> scalar;
  __device__ S operator()(S x) const { return to_storage<S>(F{}(to_compute(x), scalar)); }
};
template <class F, class S>
struct BindBinary {
  using C = compute_t<S>;
  // The type a kernel stores: bool for comparisons, else S.
  using Result = elementwise::binary_result_t<F, S, C>;
  C scalar;
  __device__ Result operator()(S a, S b) const {
    return to_storage<Result>(F{}(to_compute(a), to_compute(b), scalar));
  }
};
// As the CPU's convert: into 16 bits, an integer or double rounds once from double. A
// same-type copy moves the bits (a 16-bit NaN keeps its payload).
template <class Src, class Dst>
struct Convert {
  __device__ Dst operator()(Src x) const {
    if constexpr (std::is_same_v<Src, Dst>)
      return x;
    else if constexpr (kIsHalf<Dst> && !kIsHalf<Src> && !std::is_same_v<Src, float>)
      return to_storage<Dst>(static_cast<double>(x));
    else
      return to_storage<Dst>(to_compute(x));
  }
};

template <bool kContiguous, class Out, class In, class F>
__global__ void map1(int64_t n, Strided<2> s, Out* out, const In* in, F f) {
  STEEPEST_GRID_STRIDE(i, n) {
    if constexpr (kContiguous) {
      out[i] = f(in[i]);
    } else {
      int64_t off[2];
      s.offsets(i, off);
      out[off[0]] = f(in[off[1]]);
    }
  }
}

template <bool kContiguous, class Out, class In, class F>
__global__ void map2(int64_t n, Strided<3> s, Out* out, const In* a, const In* b, F f) {
  STEEPEST_GRID_STRIDE(i, n) {
    if constexpr (kContiguous) {
      out[i] = f(a[i], b[i]);
    } else {
      int64_t off[3];
      s.offsets(i, off);
      out[off[0]] = f(a[off[1]], b[off[2]]);
    }
  }
}

template <class T>
__global__ void fill_kernel(int64_t n, T* out, T value) {
  STEEPEST_GRID_STRIDE(i, n) out[i] = value;
}

// out = f(x) over out's shape; x and out may have any strides.
template <class Out, class In, class F>
void launch_map1(const Tensor& x, Tensor& out, F f) {
  const int64_t n = out.numel();
  if (n == 0) return;
  DeviceGuard guard(out.device());
  const Strided<2> s = make_strided<2>(out.shape(), {&out.strides(), &x.strides()});
  const unsigned blocks = blocks_for(n);
  if (s.contiguous)
    map1<true><<<blocks, kThreads, 0, guard.stream()>>>(n, s, out.data<Out>(), x.data<In>(), f);
  else
    map1<false><<<blocks, kThreads, 0, guard.stream()>>>(n, s, out.data<Out>(), x.data<In>(), f);
  STEEPEST_CUDA_CHECK_LAUNCH();
}

template <class Out, class In, class F>
void launch_map2(const Tensor& a, const Tensor& b, Tensor& out, F f) {
  const int64_t n = out.numel();
  if (n == 0) return;
  DeviceGuard guard(out.device());
  const Strided<3> s =
      make_strided<3>(out.shape(), {&out.strides(), &a.strides(), &b.strides()});
  const unsigned blocks = blocks_for(n);
  Out* o = out.data<Out>();
  if (s.contiguous)
    map2<true><<<blocks, kThreads, 0, guard.stream()>>>(n, s, o, a.data<In>(), b.data<In>(), f);
  else
    map2<false><<<blocks, kThreads, 0, guard.stream()>>>(n, s, o, a.data<In>(), b.data<In>(), f);
  STEEPEST_CUDA_CHECK_LAUNCH();
}

template <class S, class F>
void binary_typed(const Tensor& a, const Tensor& b, Tensor& out, compute_t<S> scalar) {
  using Bound = BindBinary<F, S>;
  launch_map2<typename Bound::Result, S>(a, b, out, Bound{scalar});
}

// Strided copy with dtype conversion within one device.
void device_copy(const Tensor& src, Tensor& dst) {
  dispatch_all_storage("copy", src.dtype(), [&](auto src_tag) {
    using Src = typename decltype(src_tag)::type;
    dispatch_all_storage("copy", dst.dtype(), [&](auto dst_tag) {
      using Dst = typename decltype(dst_tag)::type;
      launch_map1<Dst, Src>(src, dst, Convert<Src, Dst>{});
    });
  });
}

// A contiguous host tensor with src's values (src itself when it already is one).
Tensor contiguous_host(const Tensor& src) {
  if (src.is_contiguous()) return src;
  Tensor out = Tensor::empty(src.shape(), src.dtype());
  cpu::copy(src, out);
  return out;
}

size_t nbytes_of(const Tensor& t) { return static_cast<size_t>(t.numel()) * itemsize(t.dtype()); }

void host_to_device(const Tensor& src, Tensor& dst) {
  DeviceGuard guard(dst.device());
  const Tensor host = contiguous_host(src);
  // NOTE: from pageable memory cudaMemcpyAsync returns once the bytes are staged, so the
  // host tensor may be freed (or its cached block reused) as soon as this returns.
  if (dst.dtype() == src.dtype() && dst.is_contiguous()) {
    STEEPEST_CUDA_CHECK(cudaMemcpyAsync(dst.data_ptr(), host.data_ptr(), nbytes_of(host),
                                        cudaMemcpyHostToDevice, guard.stream()));
    return;
  }
  Tensor staged = Tensor::empty(src.shape(), src.dtype(), dst.device());
  STEEPEST_CUDA_CHECK(cudaMemcpyAsync(staged.data_ptr(), host.data_ptr(), nbytes_of(host),
                                      cudaMemcpyHostToDevice, guard.stream()));
  device_copy(staged, dst);
}

// Synchronises: the host reads dst as soon as this returns (numpy(), item()).
void device_to_host(const Tensor& src, Tensor& dst) {
  DeviceGuard guard(src.device());
  Tensor packed = src;
  if (src.dtype() != dst.dtype() || !src.is_contiguous()) {
    packed = Tensor::empty(src.shape(), dst.dtype(), src.device());
    device_copy(src, packed);
  }
  if (dst.is_contiguous()) {
    read_back(guard, dst.data_ptr(), packed.data_ptr(), nbytes_of(packed));
    return;
  }
  Tensor host = Tensor::empty(dst.shape(), dst.dtype());
  read_back(guard, host.data_ptr(), packed.data_ptr(), nbytes_of(packed));
  cpu::copy(host, dst);
}

// Between two GPUs: the source's pending work finishes first, then a peer copy on the
// destination's stream.
void device_to_device(const Tensor& src, Tensor& dst) {
  Tensor packed = src;
  if (!src.is_contiguous()) {
    packed = Tensor::empty(src.shape(), src.dtype(), src.device());
    device_copy(src, packed);
  }
  STEEPEST_CUDA_CHECK(cudaStreamSynchronize(stream_for(src.device().index)));
  DeviceGuard guard(dst.device());
  Tensor landed = dst;
  if (dst.dtype() != src.dtype() || !dst.is_contiguous())
    landed = Tensor::empty(src.shape(), src.dtype(), dst.device());
  STEEPEST_CUDA_CHECK(cudaMemcpyPeerAsync(landed.data_ptr(), dst.device().index,
                                          packed.data_ptr(), src.device().index,
                                          nbytes_of(packed), guard.stream()));
  if (landed.data_ptr() != dst.data_ptr()) device_copy(landed, dst);
}

}  // namespace

void copy(const Tensor& src, Tensor& dst) {
  if (dst.numel() == 0) return;
  const Device from = src.device(), to = dst.device();
  if (from.is_cpu() && to.is_cpu())
    cpu::copy(src, dst);
  else if (from.is_cpu())
    host_to_device(src, dst);
  else if (to.is_cpu())
    device_to_host(src, dst);
  else if (from != to)
    device_to_device(src, dst);
  else
    device_copy(src, dst);
}

void fill(Tensor& dst, double value) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  DeviceGuard guard(dst.device());
  dispatch_all_storage("fill", dst.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    // For 16 bits, static_cast rounds on the host with half.h's Half(double), as the CPU does.
    fill_kernel<<<blocks_for(n), kThreads, 0, guard.stream()>>>(n, dst.data<T>(),
                                                               static_cast<T>(value));
    STEEPEST_CUDA_CHECK_LAUNCH();
  });
}

void unary(UnaryOp op, const Tensor& x, Tensor& out, double scalar) {
  elementwise::dispatch_unary<elementwise::Math>(
      op, x.dtype(), scalar, [&](auto tag, auto f, auto s) {
        using S = typename decltype(tag)::type;
        launch_map1<S, S>(x, out, BindUnary<decltype(f), S>{s});
      });
}

void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out, double scalar) {
  elementwise::dispatch_binary<elementwise::Math>(
      op, a.dtype(), scalar, [&](auto tag, auto f, auto s) {
        binary_typed<typename decltype(tag)::type, decltype(f)>(a, b, out, s);
      });
}

}  // namespace steepest::cuda
