// Matrix products on the GPU: GEMM through cuBLAS with fp32 accumulation (float16 and
// bfloat16 operands too, on the tensor cores). Convolution and pooling, built on it, are
// in cuda/conv.cu.
//
// cuBLAS is loaded with dlopen on the first GEMM, so importing steepest never needs
// libcublas: "libcublas.so.13" from the default search path first, then from the
// folders in STEEPEST_CUBLAS_PATH (python/steepest/__init__.py points it at the
// nvidia-cublas wheel), then the same for cuBLAS 12, whose GEMM entry point has the same
// signature (a PyTorch built for CUDA 12 ships only that one). TF32 tensor cores are used
// for float32 only when asked (set_allow_tf32 or STEEPEST_ALLOW_TF32=1): they round the
// inputs to 10 mantissa bits. A 16-bit C is rounded once from the fp32 accumulators:
// the handle disallows split-K reductions in the output type.
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include <cublas_v2.h>

#include "common.cuh"

namespace steepest {
namespace {

using CreateFn = cublasStatus_t (*)(cublasHandle_t*);
using SetStreamFn = cublasStatus_t (*)(cublasHandle_t, cudaStream_t);
using SetMathModeFn = cublasStatus_t (*)(cublasHandle_t, cublasMath_t);
using PropertyFn = cublasStatus_t (*)(libraryPropertyType, int*);
using StatusStringFn = const char* (*)(cublasStatus_t);
using GemmFn = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int,
                                  int, const void*, const void*, cudaDataType, int, long long,
                                  const void*, cudaDataType, int, long long, const void*, void*,
                                  cudaDataType, int, long long, int, cublasComputeType_t,
                                  cublasGemmAlgo_t);

struct Cublas {
  void* library = nullptr;
  std::string path;
  std::string version;
  std::string error;  // why loading failed: every path tried
  CreateFn create = nullptr;
  SetStreamFn set_stream = nullptr;
  SetMathModeFn set_math_mode = nullptr;
  StatusStringFn status_string = nullptr;
  GemmFn gemm = nullptr;
};

Cublas load_cublas() {
  Cublas c;
  c.library = cuda::open_library({"libcublas.so.13", "libcublas.so.12"}, "STEEPEST_CUBLAS_PATH", c.path, c.error);
  if (!c.library) return c;
  auto symbol = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(c.library, name));
    if (!fn) c.error += std::string("\n  ") + c.path + " has no " + name;
  };
  PropertyFn property = nullptr;
  symbol(c.create, "cublasCreate_v2");
  symbol(c.set_stream, "cublasSetStream_v2");
  symbol(c.set_math_mode, "cublasSetMathMode");
  symbol(c.gemm, "cublasGemmStridedBatchedEx");
  symbol(property, "cublasGetProperty");
  // Optional: only used to name a failure.
  c.status_string = reinterpret_cast<StatusStringFn>(dlsym(c.library, "cublasGetStatusString"));
  if (!c.create || !c.set_stream || !c.set_math_mode || !c.gemm || !property) {
    c.library = nullptr;
    return c;
  }
  int major = 0, minor = 0, patch = 0;
  property(MAJOR_VERSION, &major);
  property(MINOR_VERSION, &minor);
  property(PATCH_LEVEL, &patch);
  c.version = std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
  return c;
}

// Set once the first GEMM has tried to load cuBLAS (successfully or not).
std::atomic<const Cublas*> g_cublas{nullptr};

const Cublas& cublas() {
  static const Cublas loaded = load_cublas();
  g_cublas.store(&loaded);
  if (!loaded.library)
    throw StateError("[gemm] cannot load cuBLAS (pip install nvidia-cublas, or set "
                     "STEEPEST_CUBLAS_PATH to the folder of libcublas.so.13):" +
                     loaded.error);
  return loaded;
}

void check_cublas(cublasStatus_t status, const char* call) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  const Cublas& c = cublas();
  fail<StateError>("gemm", call, " failed: ",
                   c.status_string ? c.status_string(status) : "cuBLAS status",
                   " (", static_cast<int>(status), ")");
}

// One handle per device, bound to the device's stream for good.
cublasHandle_t handle_for(const cuda::DeviceGuard& guard) {
  static std::mutex mutex;
  static std::vector<cublasHandle_t> handles;
  std::lock_guard<std::mutex> lock(mutex);
  const auto index = static_cast<size_t>(guard.index());
  if (handles.size() <= index) handles.resize(index + 1, nullptr);
  if (!handles[index]) {
    const Cublas& c = cublas();
    cublasHandle_t handle = nullptr;
    check_cublas(c.create(&handle), "cublasCreate");
    check_cublas(c.set_stream(handle, guard.stream()), "cublasSetStream");
    const auto math = static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH |
                                                CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION);
    check_cublas(c.set_math_mode(handle, math), "cublasSetMathMode");
    handles[index] = handle;
  }
  return handles[index];
}

std::atomic<bool>& allow_tf32() {
  static std::atomic<bool> flag{[] {
    const char* env = std::getenv("STEEPEST_ALLOW_TF32");
    return env != nullptr && std::strcmp(env, "1") == 0;
  }()};
  return flag;
}

// The device that owns a pointer: asked of the driver only when there are several.
int device_of(const void* p) {
  if (cuda_device_count() <= 1) return 0;
  cudaPointerAttributes attributes;
  STEEPEST_CUDA_CHECK(cudaPointerGetAttributes(&attributes, p));
  return attributes.device;
}

}  // namespace

void cuda_set_allow_tf32(bool allow) { allow_tf32().store(allow); }
bool cuda_allow_tf32() { return allow_tf32().load(); }

// What the backends() report says about cuBLAS; asking never loads it.
std::string cublas_info() {
  const Cublas* c = g_cublas.load();
  if (!c) return "not loaded yet (loads on the first GPU matrix product)";
  if (!c->library) return "unavailable:" + c->error;
  return c->path + " (cuBLAS " + c->version + ")";
}

namespace cuda {
namespace {

// C[i] = beta·C[i] for an empty inner dimension (k = 0), which cuBLAS may not accept.
template <class S>
__global__ void scale_matrices(S* c, int64_t batch, int64_t m, int64_t n, int64_t ldc,
                               int64_t stride_c, compute_t<S> beta) {
  using C = compute_t<S>;
  STEEPEST_GRID_STRIDE(e, batch * m * n) {
    const int64_t b = e / (m * n), i = (e / n) % m, j = e % n;
    S& v = c[b * stride_c + i * ldc + j];
    v = to_storage<S>(beta == C(0) ? C(0) : beta * to_compute(v));
  }
}

// dst[i] = src[i] rounded to S: a float32 B read at the 16-bit dtype (GemmArgs::float32_b).
template <class S>
__global__ void round_operand(const float* src, S* dst, int64_t n) {
  STEEPEST_GRID_STRIDE(i, n) { dst[i] = to_storage<S>(src[i]); }
}

int checked_int(const char* what, int64_t value) {
  if (value > INT_MAX)
    fail("matmul", what, " = ", value, " exceeds cuBLAS's 32-bit limit of ", INT_MAX);
  return static_cast<int>(value);
}

}  // namespace

// Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, and a row-major matrix
// read column-major is its transpose: so cuBLAS gets B as its first operand and A as its
// second, with the same trans flags and leading dimensions, and m and n swapped.
void gemm(const GemmArgs& a) {
  if (a.m == 0 || a.n == 0 || a.batch == 0) return;
  DeviceGuard guard(Device{DeviceType::CUDA, device_of(a.c)});
  if (!is_floating(a.dtype))
    fail<TypeError>("matmul", "expected float16, bfloat16, float32 or float64 on the GPU, got ",
                    dtype_name(a.dtype));
  check_float32_operands(a);
  if (a.k == 0) {
    dispatch_float_storage("matmul", a.float32_c ? DType::Float32 : a.dtype, [&](auto tag) {
      using S = typename decltype(tag)::type;
      using C = typename decltype(tag)::compute;
      scale_matrices<<<blocks_for(a.batch * a.m * a.n), kThreads, 0, guard.stream()>>>(
          static_cast<S*>(a.c), a.batch, a.m, a.n, a.ldc, a.stride_c, static_cast<C>(a.beta));
      STEEPEST_CUDA_CHECK_LAUNCH();
    });
    return;
  }
  const Cublas& c = cublas();
  const cublasHandle_t handle = handle_for(guard);
  const cublasOperation_t op_b = a.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_a = a.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int m = checked_int("n", a.n), n = checked_int("m", a.m), k = checked_int("k", a.k);
  const int ldb = checked_int("ldb", a.ldb), lda = checked_int("lda", a.lda);
  const int ldc = checked_int("ldc", a.ldc), batch = checked_int("batch", a.batch);
  cublasStatus_t status;
  if (is_half_float(a.dtype)) {
    // A, B and C in 16 bits, products accumulated in fp32 (alpha and beta are floats).
    // cuBLAS cannot round a float32 B while it loads it: B's span is rounded into a
    // temporary that lives for this call only. A float32 C takes the fp32 sums unrounded.
    const float alpha = static_cast<float>(a.alpha), beta = static_cast<float>(a.beta);
    const cudaDataType type = a.dtype == DType::Float16 ? CUDA_R_16F : CUDA_R_16BF;
    const void* b = a.b;
    Tensor rounded_b;
    if (a.float32_b) {
      const int64_t span = (a.batch - 1) * a.stride_b +
                           ((a.trans_b ? a.n : a.k) - 1) * a.ldb + (a.trans_b ? a.k : a.n);
      rounded_b = Tensor::empty({span}, a.dtype, Device{DeviceType::CUDA, device_of(a.c)});
      dispatch_float_storage("matmul", a.dtype, [&](auto tag) {
        using S = typename decltype(tag)::type;
        if constexpr (!std::is_same_v<S, typename decltype(tag)::compute>)
          round_operand<<<blocks_for(span), kThreads, 0, guard.stream()>>>(
              static_cast<const float*>(a.b), static_cast<S*>(rounded_b.data_ptr()), span);
      });
      STEEPEST_CUDA_CHECK_LAUNCH();
      b = rounded_b.data_ptr();
    }
    const cudaDataType c_type = a.float32_c ? CUDA_R_32F : type;
    status = c.gemm(handle, op_b, op_a, m, n, k, &alpha, b, type, ldb, a.stride_b, a.a, type,
                    lda, a.stride_a, &beta, a.c, c_type, ldc, a.stride_c, batch,
                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  } else if (a.dtype == DType::Float32) {
    const float alpha = static_cast<float>(a.alpha), beta = static_cast<float>(a.beta);
    // Operands that hold bfloat16 values lose nothing on the bfloat16 tensor cores.
    const cublasComputeType_t compute = a.bf16_products       ? CUBLAS_COMPUTE_32F_FAST_16BF
                                        : allow_tf32().load() ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                              : CUBLAS_COMPUTE_32F;
    status = c.gemm(handle, op_b, op_a, m, n, k, &alpha, a.b, CUDA_R_32F, ldb, a.stride_b, a.a,
                    CUDA_R_32F, lda, a.stride_a, &beta, a.c, CUDA_R_32F, ldc, a.stride_c, batch,
                    compute, CUBLAS_GEMM_DEFAULT);
  } else {
    const double alpha = a.alpha, beta = a.beta;
    status = c.gemm(handle, op_b, op_a, m, n, k, &alpha, a.b, CUDA_R_64F, ldb, a.stride_b, a.a,
                    CUDA_R_64F, lda, a.stride_a, &beta, a.c, CUDA_R_64F, ldc, a.stride_c, batch,
                    CUBLAS_COMPUTE_64F, CUBLAS_GEMM_DEFAULT);
  }
  check_cublas(status, "cublasGemmStridedBatchedEx");
}

}  // namespace cuda
}  // namespace steepest
