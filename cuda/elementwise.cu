// Elementwise CUDA kernels: one small functor per operation (the same formulas as
// cpp/cpu/elementwise.cpp) over one generic strided launcher, plus fill and the copy
// entry point, which also moves data between the host and the devices. float16 and
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

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

template <class T>
__device__ T stable_sigmoid(T x) {
  if (x >= T(0)) return T(1) / (T(1) + exp(-x));
  const T e = exp(x);
  return e / (T(1) + e);
}

// Unary functors: f(x, scalar).
struct Neg { template <class T> __device__ T operator()(T x, T) const { return -x; } };
struct Exp { template <class T> __device__ T operator()(T x, T) const { return exp(x); } };
struct Log { template <class T> __device__ T operator()(T x, T) const { return log(x); } };
struct Sqrt { template <class T> __device__ T operator()(T x, T) const { return sqrt(x); } };
struct Abs { template <class T> __device__ T operator()(T x, T) const { return x < T(0) ? -x : x; } };
// NOTE: the gradient of relu at 0 is taken as 0 (ReluGrad uses x > 0), as in PyTorch.
// NaN passes through (x < 0 is false for it), as in torch and NumPy.
struct Relu { template <class T> __device__ T operator()(T x, T) const { return x < T(0) ? T(0) : x; } };
struct Sigmoid { template <class T> __device__ T operator()(T x, T) const { return stable_sigmoid(x); } };
struct Tanh { template <class T> __device__ T operator()(T x, T) const { return tanh(x); } };
struct Gelu {
  template <class T> __device__ T operator()(T x, T) const {
    return T(0.5) * x * (T(1) + erf(x * T(kInvSqrt2)));
  }
};
struct PowScalar { template <class T> __device__ T operator()(T x, T s) const { return pow(x, s); } };
struct MulScalar { template <class T> __device__ T operator()(T x, T s) const { return x * s; } };
struct AddScalar { template <class T> __device__ T operator()(T x, T s) const { return x + s; } };
struct Sign { template <class T> __device__ T operator()(T x, T) const { return T((x > T(0)) - (x < T(0))); } };
// NaN stays NaN (a clamp must not hide a diverged value).
struct ClampMin { template <class T> __device__ T operator()(T x, T lo) const { return x < lo ? lo : x; } };

// Binary functors: f(a, b, scalar); the *Grad functors take (G, saved).
struct Add { template <class T> __device__ T operator()(T a, T b, T) const { return a + b; } };
struct Sub { template <class T> __device__ T operator()(T a, T b, T) const { return a - b; } };
struct Mul { template <class T> __device__ T operator()(T a, T b, T) const { return a * b; } };
struct Div { template <class T> __device__ T operator()(T a, T b, T) const { return a / b; } };
struct Eq { template <class T> __device__ bool operator()(T a, T b, T) const { return a == b; } };
struct Ne { template <class T> __device__ bool operator()(T a, T b, T) const { return a != b; } };
struct Lt { template <class T> __device__ bool operator()(T a, T b, T) const { return a < b; } };
struct Le { template <class T> __device__ bool operator()(T a, T b, T) const { return a <= b; } };
struct Gt { template <class T> __device__ bool operator()(T a, T b, T) const { return a > b; } };
struct Ge { template <class T> __device__ bool operator()(T a, T b, T) const { return a >= b; } };
// ReLU: G ⊙ 1{X>0}
struct ReluGrad { template <class T> __device__ T operator()(T g, T x, T) const { return x > T(0) ? g : T(0); } };
// Sigmoid: G ⊙ Z ⊙ (1 − Z), from the output Z
struct SigmoidGrad { template <class T> __device__ T operator()(T g, T z, T) const { return g * z * (T(1) - z); } };
// Tanh: G ⊙ (1 − Z²), from the output Z
struct TanhGrad { template <class T> __device__ T operator()(T g, T z, T) const { return g * (T(1) - z * z); } };
// GELU(x) = x Φ(x): G ⊙ (Φ(x) + x φ(x))
struct GeluGrad {
  template <class T> __device__ T operator()(T g, T x, T) const {
    const T cdf = T(0.5) * (T(1) + erf(x * T(kInvSqrt2)));
    const T pdf = T(kInvSqrt2Pi) * exp(T(-0.5) * x * x);
    return g * (cdf + x * pdf);
  }
};
// Power: G ⊙ k·Y^(k−1)
struct PowScalarGrad {
  template <class T> __device__ T operator()(T g, T x, T k) const { return g * k * pow(x, k - T(1)); }
};
// sqrt: G / (2·Z), from the output Z
struct SqrtGrad { template <class T> __device__ T operator()(T g, T z, T) const { return g / (T(2) * z); } };
// Clamped values get no gradient.
struct ClampMinGrad { template <class T> __device__ T operator()(T g, T x, T lo) const { return x < lo ? T(0) : g; } };
// Binary cross-entropy on logits in the overflow-free form max(z, 0) − z·y + log(1 + e^(−|z|)).
struct BceWithLogits {
  template <class T> __device__ T operator()(T z, T y, T) const {
    const T abs_z = z < T(0) ? -z : z;
    return (z > T(0) ? z : T(0)) - z * y + log1p(exp(-abs_z));
  }
};
// d/dz of the above: sigmoid(z) − y (the seed's a − y).
struct BceWithLogitsGrad {
  template <class T> __device__ T operator()(T z, T y, T) const { return stable_sigmoid(z) - y; }
};

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
  using Result = std::conditional_t<std::is_same_v<decltype(F{}(C{}, C{}, C{})), bool>, bool, S>;
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
  dispatch_float_storage("unary", x.dtype(), [&](auto tag) {
    using S = typename decltype(tag)::type;
    using C = typename decltype(tag)::compute;
    const C s = static_cast<C>(scalar);
    switch (op) {
#define STEEPEST_CASE(name)                                  \
  case UnaryOp::name:                                        \
    launch_map1<S, S>(x, out, BindUnary<name, S>{s});        \
    break;
      STEEPEST_UNARY_OPS(STEEPEST_CASE)
#undef STEEPEST_CASE
    }
  });
}

void binary(BinaryOp op, const Tensor& a, const Tensor& b, Tensor& out, double scalar) {
  if (is_floating(a.dtype())) {
    dispatch_float_storage("binary", a.dtype(), [&](auto tag) {
      using S = typename decltype(tag)::type;
      using C = typename decltype(tag)::compute;
      const C s = static_cast<C>(scalar);
      switch (op) {
#define STEEPEST_CASE(name)                 \
  case BinaryOp::name:                      \
    binary_typed<S, name>(a, b, out, s);    \
    break;
        STEEPEST_BINARY_OPS(STEEPEST_CASE)
#undef STEEPEST_CASE
      }
    });
    return;
  }
  // Integer and bool tensors: exact arithmetic and comparisons only, as on the CPU.
  dispatch_all("binary", a.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    switch (op) {
#define STEEPEST_CASE(name)                  \
  case BinaryOp::name:                       \
    binary_typed<T, name>(a, b, out, T{});   \
    return;
      STEEPEST_CASE(Eq)
      STEEPEST_CASE(Ne)
      STEEPEST_CASE(Lt)
      STEEPEST_CASE(Le)
      STEEPEST_CASE(Gt)
      STEEPEST_CASE(Ge)
      default:
        break;
    }
    if constexpr (!std::is_same_v<T, bool>) {
      switch (op) {
        STEEPEST_CASE(Add)
        STEEPEST_CASE(Sub)
        STEEPEST_CASE(Mul)
        default:
          break;
      }
    }
#undef STEEPEST_CASE
    fail<TypeError>("binary", "this operation needs floating-point tensors, got ",
                    dtype_name(a.dtype()));
  });
}

}  // namespace steepest::cuda
