// Declarations of the kernel interface (kernels.def) for the CPU and CUDA backends,
// and the small argument types it uses.
#pragma once

#include <cstdint>

#include "steepest/elementwise_rules.h"
#include "steepest/pointwise.h"
#include "steepest/tensor.h"

namespace steepest {

enum class ReduceOp : uint8_t { Sum, Max };
enum class PoolKind : uint8_t { Max, Avg };
enum class RandomKind : uint8_t { Uniform, Normal };

// A running sum or product along the middle axis of a contiguous (outer, extent, inner)
// tensor. exclusive: element i combines the elements before i (the identity at 0);
// reverse: the scan runs from the end of the axis.
enum class ScanOp : uint8_t { Sum, Prod };
struct ScanArgs {
  ScanOp op = ScanOp::Sum;
  int64_t outer = 1, extent = 1, inner = 1;
  bool exclusive = false, reverse = false;
};

// Row-major batched GEMM: C[i] = alpha * op(A[i]) * op(B[i]) + beta * C[i].
// op(A) is m×k; A is stored k×m when trans_a. lda/ldb/ldc are row strides in elements.
struct GemmArgs {
  DType dtype = DType::Float32;
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  int64_t batch = 1;
  const void* a = nullptr;
  int64_t lda = 0, stride_a = 0;
  const void* b = nullptr;
  int64_t ldb = 0, stride_b = 0;
  void* c = nullptr;
  int64_t ldc = 0, stride_c = 0;
  double alpha = 1.0, beta = 0.0;
  // float32 operands that hold bfloat16 values (widened): the products may be computed
  // from their bfloat16 form, which is exact, with float32 sums (cuBLAS's
  // CUBLAS_COMPUTE_32F_FAST_16BF). Set for the GEMMs of a bfloat16 convolution.
  bool bf16_products = false;
  // With a 16-bit dtype (the mixed precision of a float32 master weight): B holds float32
  // values that the product reads rounded to dtype (as a cast would round them), or C
  // is float32 and receives the float32 sums unrounded. At most one of the two.
  bool float32_b = false, float32_c = false;
};

// The float32 operands GemmArgs allows, checked by both backends.
inline void check_float32_operands(const GemmArgs& g) {
  if ((g.float32_b || g.float32_c) && (!is_half_float(g.dtype) || (g.float32_b && g.float32_c)))
    fail<StateError>("matmul", "a float32 B or C needs 16-bit operands otherwise, got ",
                     dtype_name(g.dtype), g.float32_b && g.float32_c ? " with both" : "");
}

// Geometry shared by convolution and pooling (NCHW). The zero padding may differ on the
// two sides of an axis (TF/Keras "same" puts the odd pixel after); kernels index from the
// top/left pads, and out_h/out_w already account for the bottom/right ones.
struct Conv2dGeometry {
  int64_t batch = 0, in_channels = 0, in_h = 0, in_w = 0;
  int64_t out_channels = 0, kernel_h = 0, kernel_w = 0;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;
  int64_t out_h = 0, out_w = 0;
  // Tap (ki, kj) reads input pixel (oh·stride_h − pad_top + ki·dilation_h, ...).
  int64_t dilation_h = 1, dilation_w = 1;
  // Convolution: channel group i maps input channels [i·in/groups, (i + 1)·in/groups) to
  // output channels [i·out/groups, ...) with its own block of the weight.
  int64_t groups = 1;
  // Average pooling: the divisor counts the window's padding pixels (not those past the
  // bottom/right padding, which ceil_mode can add); otherwise only the input's pixels.
  bool count_include_pad = true;
  // The convolution's operands are bfloat16 values held as float32 (GemmArgs).
  bool bf16_products = false;
};

#if defined(__CUDACC__)
#define STEEPEST_HOST_DEVICE __host__ __device__
#else
#define STEEPEST_HOST_DEVICE
#endif

// Where an attention operand keeps element (entry b, row i, feature c), counted in
// elements from its data pointer: entry b is (outer o, head h) with b = o·heads + h, at
// o·outer + h·head + i·row + c. The heads of a fused (B, T, 3, H, dh) projection and an
// output stored as (B, T, H, dv), ready for the head merge, are both such layouts.
struct AttentionLayout {
  int64_t outer = 0, head = 0, row = 0;
  STEEPEST_HOST_DEVICE int64_t entry(int64_t b, int64_t heads) const {
    return b / heads * outer + b % heads * head;
  }
};

// Fused attention over `batch` independent (query, key) problems: q (batch, tq, d),
// k (batch, tk, d), v (batch, tk, dv), out and grad_out (batch, tq, dv), each laid out
// as its AttentionLayout says (features contiguous); the gradients take the layouts of
// grad_q, grad_k and grad_v. Causal masking is top-left aligned (query i sees keys
// j <= i), as torch's is_causal; attention_key_end gives the bound.
struct AttentionArgs {
  int64_t batch = 0, heads = 1, tq = 0, tk = 0, d = 0, dv = 0;
  bool causal = false;
  double scale = 1.0;
  AttentionLayout q, k, v, out, grad_out, grad_q, grad_k, grad_v;
};

// The rows of t viewed as (rows, last axis), as the row-wise kernels see it.
inline int64_t rows_of(const Tensor& t) {
  const int64_t cols = t.shape().back();
  return cols ? t.numel() / cols : 0;
}

// The GEMM of a convolution's lowering (both backends): `batch` products of op(A) m×k
// and op(B) k×n whose operands lie stride_* elements apart, alpha = 1.
inline GemmArgs conv_gemm_args(DType dtype, const Conv2dGeometry& g, bool trans_a, bool trans_b,
                               int64_t m, int64_t n, int64_t k, const void* a, int64_t lda,
                               int64_t stride_a, const void* b, int64_t ldb, int64_t stride_b,
                               void* c, int64_t ldc, int64_t stride_c, int64_t batch,
                               double beta) {
  GemmArgs args;
  args.dtype = dtype;
  args.bf16_products = g.bf16_products;
  args.trans_a = trans_a;
  args.trans_b = trans_b;
  args.m = m;
  args.n = n;
  args.k = k;
  args.batch = batch;
  args.a = a;
  args.lda = lda;
  args.stride_a = stride_a;
  args.b = b;
  args.ldb = ldb;
  args.stride_b = stride_b;
  args.c = c;
  args.ldc = ldc;
  args.stride_c = stride_c;
  args.beta = beta;
  return args;
}

// Geometry of Adafactor's factored second moment: `batch` matrices of rows × cols (the
// last two axes of the gradient).
struct Factored {
  int64_t batch, rows, cols;
};

inline Factored factored_shape(const Tensor& grad) {
  const int nd = grad.ndim();
  const int64_t rows = grad.size(nd - 2), cols = grad.size(nd - 1);
  return {rows * cols == 0 ? 0 : grad.numel() / (rows * cols), rows, cols};
}

// One past the last key query row i attends to.
STEEPEST_HOST_DEVICE inline int64_t attention_key_end(const AttentionArgs& a, int64_t i) {
  return a.causal ? (i + 1 < a.tk ? i + 1 : a.tk) : a.tk;
}

// The divisor of average-pooling window (oh, ow), torch's rule: the window clipped to
// the padded input, then, without count_include_pad, to the input itself.
STEEPEST_HOST_DEVICE inline int64_t pool_divisor(const Conv2dGeometry& g, int64_t oh, int64_t ow) {
  int64_t h0 = oh * g.stride_h - g.pad_top, w0 = ow * g.stride_w - g.pad_left;
  int64_t h1 = h0 + g.kernel_h, w1 = w0 + g.kernel_w;
  h1 = h1 < g.in_h + g.pad_bottom ? h1 : g.in_h + g.pad_bottom;
  w1 = w1 < g.in_w + g.pad_right ? w1 : g.in_w + g.pad_right;
  if (!g.count_include_pad) {
    h0 = h0 > 0 ? h0 : 0;
    w0 = w0 > 0 ? w0 : 0;
    h1 = h1 < g.in_h ? h1 : g.in_h;
    w1 = w1 < g.in_w ? w1 : g.in_w;
  }
  return (h1 - h0) * (w1 - w0);
}

// fn(i) for the flat plane index i of each input pixel in pooling window (oh, ow), row by
// row: the window walk both backends share.
template <class Fn>
STEEPEST_HOST_DEVICE void for_window(const Conv2dGeometry& g, int64_t oh, int64_t ow, Fn&& fn) {
  for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
    const int64_t ih = oh * g.stride_h - g.pad_top + ki * g.dilation_h;
    if (ih < 0 || ih >= g.in_h) continue;
    for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
      const int64_t iw = ow * g.stride_w - g.pad_left + kj * g.dilation_w;
      if (iw >= 0 && iw < g.in_w) fn(ih * g.in_w + iw);
    }
  }
}

// Sum (in O) or max of one column of `extent` integer elements `inner` apart: the
// integer reductions of both backends.
template <class T, class O>
STEEPEST_HOST_DEVICE O integer_reduce_column(ReduceOp op, const T* p, int64_t extent, int64_t inner) {
  O acc = op == ReduceOp::Sum ? O(0) : O(p[0]);
  for (int64_t e = 0; e < extent; ++e) {
    const O v = O(p[e * inner]);
    acc = op == ReduceOp::Sum ? O(acc + v) : (v > acc ? v : acc);
  }
  return acc;
}

// Max pooling records, per window, the flat index of its first maximum in the input
// plane, or kNoPixel for a window with no input pixel at all.
constexpr int64_t kNoPixel = INT64_MIN;

// The number of pixels of window (oh, ow) equal to its maximum `best`: the backward
// splits the window's gradient evenly among them (the subgradient torch's amax uses).
// Counting here rather than in the forward keeps inference at one pass per window. A NaN
// maximum equals nothing, so it counts 0 and its pixel takes the whole gradient.
template <class T>
STEEPEST_HOST_DEVICE int64_t max_pool_ties(const Conv2dGeometry& g, int64_t oh, int64_t ow,
                                           const T* plane, T best) {
  int64_t ties = 0;
  for_window(g, oh, ow, [&](int64_t i) { ties += plane[i] == best; });
  return ties;
}

// CPU kernels per instruction-set level (PyTorch's CPU_CAPABILITY scheme). The hot CPU
// kernel files (the list in CMakeLists.txt) are compiled once per level: baseline
// x86-64, avx2 (AVX2+FMA+F16C) and avx512 (F/BW/VL/DQ/CD; the GEMM adds its AVX512_BF16
// kernel where the CPU has it), or one level, native, when STEEPEST_NATIVE=ON; other
// CPUs have baseline only. Each compilation defines the entries below in its own
// namespace steepest::cpu::<level> (cpp/cpu/isa_level.h). The entry points here are
// pointers into the best level the CPU supports, capped by STEEPEST_CPU_ISA, chosen once
// by cpp/cpu/dispatch.cpp when the library loads; until then (other static
// initialisers) each resolves on its first call. Calling one costs one indirect call,
// as STEEPEST_KERNEL always did.
// To add a kernel: its KERNEL line in kernels.def, its definition in a per-level file.
// To add a per-level file: one line in STEEPEST_CPU_KERNEL_SOURCES (CMakeLists.txt), and
// open its namespace as `namespace steepest::cpu { inline namespace STEEPEST_ISA_NS {`.
namespace cpu {
#define KERNEL(name, params) extern void(*name) params;
#include "steepest/kernels.def"
#undef KERNEL

// The level the CPU entries run ("baseline", "avx2", "avx512" or "native").
const char* cpu_isa_name();
// Why STEEPEST_CPU_ISA was not applied as given (an unknown name, or a native build),
// or empty; the Python module turns it into a warning at import.
const char* cpu_isa_warning();
}  // namespace cpu

namespace cuda {
#define KERNEL(name, params) void name params;
#include "steepest/kernels.def"
#undef KERNEL
}  // namespace cuda

// The kernel `name` of the backend that owns `device`.
#define STEEPEST_KERNEL(device, name) \
  ((device).is_cuda() ? &::steepest::cuda::name : ::steepest::cpu::name)

}  // namespace steepest
