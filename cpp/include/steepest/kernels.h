// Declarations of the kernel interface (kernels.def) for the CPU and CUDA backends,
// and the small argument types it uses.
#pragma once

#include <cstdint>

#include "steepest/tensor.h"

namespace steepest {

// Elementwise operations. The *Grad entries are the fused backward formulas of the
// seed's activation table (激活函数): G ⊙ δ'(X) in one pass.
#define STEEPEST_UNARY_OPS(X) \
  X(Neg) X(Exp) X(Log) X(Sqrt) X(Abs) X(Relu) X(Sigmoid) X(Tanh) X(Gelu) X(PowScalar) \
  X(MulScalar) X(AddScalar) X(Sign) X(ClampMin)
#define STEEPEST_BINARY_OPS(X)                                                              \
  X(Add) X(Sub) X(Mul) X(Div) X(Eq) X(Ne) X(Lt) X(Le) X(Gt) X(Ge) X(ReluGrad) X(SigmoidGrad) \
  X(TanhGrad) X(GeluGrad) X(PowScalarGrad) X(SqrtGrad) X(BceWithLogits) X(BceWithLogitsGrad) \
  X(ClampMinGrad)

#define STEEPEST_ENUM_ENTRY(name) name,
enum class UnaryOp : uint8_t { STEEPEST_UNARY_OPS(STEEPEST_ENUM_ENTRY) };
enum class BinaryOp : uint8_t { STEEPEST_BINARY_OPS(STEEPEST_ENUM_ENTRY) };
#undef STEEPEST_ENUM_ENTRY

inline bool is_comparison(BinaryOp op) {
  return op == BinaryOp::Eq || op == BinaryOp::Ne || op == BinaryOp::Lt || op == BinaryOp::Le ||
         op == BinaryOp::Gt || op == BinaryOp::Ge;
}

enum class ReduceOp : uint8_t { Sum, Max };
enum class PoolKind : uint8_t { Max, Avg };
enum class RandomKind : uint8_t { Uniform, Normal };

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
};

// Geometry shared by convolution and pooling (NCHW). The zero padding may differ on the
// two sides of an axis (TF/Keras "same" puts the odd pixel after); kernels index from the
// top/left pads, and out_h/out_w already account for the bottom/right ones.
struct Conv2dGeometry {
  int64_t batch = 0, in_channels = 0, in_h = 0, in_w = 0;
  int64_t out_channels = 0, kernel_h = 0, kernel_w = 0;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_top = 0, pad_bottom = 0, pad_left = 0, pad_right = 0;
  int64_t out_h = 0, out_w = 0;
  // The convolution's operands are bfloat16 values held as float32 (GemmArgs).
  bool bf16_products = false;
};

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
