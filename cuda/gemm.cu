// Matrix products on the GPU: GEMM through cuBLAS with fp32 accumulation (float16 and
// bfloat16 operands too, on the tensor cores), and the convolution and pooling built on
// it.
//
// cuBLAS is loaded with dlopen on the first GEMM, so importing steepest never needs
// libcublas: "libcublas.so.13" from the default search path first, then from the
// folders in STEEPEST_CUBLAS_PATH (python/steepest/__init__.py points it at the
// nvidia-cublas wheel), then the same for cuBLAS 12, whose GEMM entry point has the same
// signature (a PyTorch built for CUDA 12 ships only that one). TF32 tensor cores are used
// for float32 only when asked (set_allow_tf32 or STEEPEST_ALLOW_TF32=1): they round the
// inputs to 10 mantissa bits. A 16-bit C is rounded once from the fp32 accumulators:
// the handle disallows split-K reductions in the output type.
//
// Convolution is the seed's 实际的卷积 in its plain form: im2col into a column buffer
// (a chunk of images at a time, the buffer capped by kColumnBudget), a batched GEMM, and
// for the input gradient a GEMM into columns followed by a gathering col2im (no atomics,
// so the result is deterministic). A 1×1, stride-1, unpadded convolution multiplies the
// images directly.
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
  if (a.k == 0) {
    dispatch_float_storage("matmul", a.dtype, [&](auto tag) {
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
    const float alpha = static_cast<float>(a.alpha), beta = static_cast<float>(a.beta);
    const cudaDataType type = a.dtype == DType::Float16 ? CUDA_R_16F : CUDA_R_16BF;
    status = c.gemm(handle, op_b, op_a, m, n, k, &alpha, a.b, type, ldb, a.stride_b, a.a, type,
                    lda, a.stride_a, &beta, a.c, type, ldc, a.stride_c, batch,
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

// --------------------------------------------------------------------- convolution

namespace {

// Upper bound on the elements of the column buffers of one chunk of images.
constexpr int64_t kColumnBudget = int64_t{1} << 26;

// cols[n·stride_n + r·ld + p] = X_col(r, p) of image n0 + n, with r = (c, ki, kj) and
// p = (oh, ow); padding reads 0. ld = P, stride_n = CKK·P lays the images one after the
// other; ld = count·P, stride_n = P side by side (one wide matrix).
template <class T>
__global__ void im2col(const T* x, Conv2dGeometry g, int64_t n0, int64_t count, T* cols,
                       int64_t ld, int64_t stride_n) {
  const int64_t spatial = g.out_h * g.out_w, taps = g.kernel_h * g.kernel_w;
  const int64_t ckk = g.in_channels * taps;
  STEEPEST_GRID_STRIDE(e, count * ckk * spatial) {
    const int64_t p = e % spatial, r = (e / spatial) % ckk, n = e / (spatial * ckk);
    const int64_t c = r / taps, ki = (r / g.kernel_w) % g.kernel_h, kj = r % g.kernel_w;
    const int64_t ih = (p / g.out_w) * g.stride_h - g.pad_top + ki * g.dilation_h;
    const int64_t iw = (p % g.out_w) * g.stride_w - g.pad_left + kj * g.dilation_w;
    const bool inside = ih >= 0 && ih < g.in_h && iw >= 0 && iw < g.in_w;
    cols[n * stride_n + r * ld + p] =
        inside ? x[(((n0 + n) * g.in_channels + c) * g.in_h + ih) * g.in_w + iw] : T(0);
  }
}

// The adjoint of im2col, gathered: each input pixel sums the column entries read from
// it (per-image layout: ld = P, stride_n = CKK·P).
template <class T>
__global__ void col2im(const T* cols, Conv2dGeometry g, int64_t n0, int64_t count, T* dx) {
  const int64_t spatial = g.out_h * g.out_w;
  const int64_t ckk = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t plane = g.in_h * g.in_w;
  STEEPEST_GRID_STRIDE(e, count * g.in_channels * plane) {
    const int64_t iw = e % g.in_w, ih = (e / g.in_w) % g.in_h;
    const int64_t c = (e / plane) % g.in_channels, n = e / (plane * g.in_channels);
    const T* base = cols + n * ckk * spatial;
    T acc = 0;
    for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
      const int64_t oh_scaled = ih + g.pad_top - ki * g.dilation_h;
      if (oh_scaled < 0 || oh_scaled % g.stride_h != 0) continue;
      const int64_t oh = oh_scaled / g.stride_h;
      if (oh >= g.out_h) continue;
      for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
        const int64_t ow_scaled = iw + g.pad_left - kj * g.dilation_w;
        if (ow_scaled < 0 || ow_scaled % g.stride_w != 0) continue;
        const int64_t ow = ow_scaled / g.stride_w;
        if (ow >= g.out_w) continue;
        acc += base[((c * g.kernel_h + ki) * g.kernel_w + kj) * spatial + oh * g.out_w + ow];
      }
    }
    dx[(n0 + n) * g.in_channels * plane + c * plane + ih * g.in_w + iw] = acc;
  }
}

// wide[o, n·P + p] = G[n0 + n, o, p]: the output gradients of a chunk side by side.
template <class T>
__global__ void to_wide(const T* gy, int64_t channels, int64_t spatial, int64_t n0,
                        int64_t count, T* wide) {
  STEEPEST_GRID_STRIDE(e, count * channels * spatial) {
    const int64_t p = e % spatial, o = (e / spatial) % channels, n = e / (spatial * channels);
    wide[o * count * spatial + n * spatial + p] = gy[((n0 + n) * channels + o) * spatial + p];
  }
}

template <class T>
__global__ void add_bias(T* y, const T* bias, int64_t channels, int64_t spatial, int64_t total) {
  STEEPEST_GRID_STRIDE(e, total) y[e] += bias[(e / spatial) % channels];
}

// grad_bias[o] = Σ_n Σ_p G[n, o, p]: a block per channel.
template <class T>
__global__ void bias_gradient(const T* gy, int64_t batch, int64_t channels, int64_t spatial,
                              T* grad_bias) {
  const int64_t o = blockIdx.x;
  T acc = 0;
  for (int64_t e = threadIdx.x; e < batch * spatial; e += blockDim.x)
    acc += gy[((e / spatial) * channels + o) * spatial + e % spatial];
  acc = row_reduce<false>(acc, SumOp{}, T(0));
  if (threadIdx.x == 0) grad_bias[o] = acc;
}

bool is_pointwise(const Conv2dGeometry& g) {
  return g.kernel_h == 1 && g.kernel_w == 1 && g.stride_h == 1 && g.stride_w == 1 &&
         g.pad_top == 0 && g.pad_bottom == 0 && g.pad_left == 0 && g.pad_right == 0;
}

// Images per chunk so that `per_image` elements each stay within the budget.
int64_t chunk_images(const Conv2dGeometry& g, int64_t per_image) {
  return std::clamp<int64_t>(kColumnBudget / std::max<int64_t>(per_image, 1), 1, g.batch);
}

GemmArgs product(DType dtype, const Conv2dGeometry& g, bool trans_a, bool trans_b, int64_t m,
                 int64_t n, int64_t k, const void* a, int64_t lda, int64_t stride_a,
                 const void* b, int64_t ldb, int64_t stride_b, void* c, int64_t ldc,
                 int64_t stride_c, int64_t batch, double beta) {
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

// Channel groups (torch's groups): group i multiplies its filters' block of W_row
// (filters × rows, rows = in/groups·kh·kw) with its block of X_col rows, one batched GEMM
// per group.
template <class T>
void conv_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                  const Conv2dGeometry& g, Tensor& y, const DeviceGuard& guard) {
  const int64_t spatial = g.out_h * g.out_w, ckk = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t rows = ckk / g.groups, filters = g.out_channels / g.groups;
  const int64_t out_image = g.out_channels * spatial;
  const DType dtype = x.dtype();
  const T* pw = weight.data<T>();
  T* py = y.data<T>();
  if (is_pointwise(g)) {
    // Y[n] = W · X[n]: every image is its own X_col.
    for (int64_t cg = 0; cg < g.groups; ++cg)
      gemm(product(dtype, g, false, false, filters, spatial, rows, pw + cg * filters * rows, rows,
                   0, x.data<T>() + cg * rows * spatial, spatial, ckk * spatial,
                   py + cg * filters * spatial, spatial, out_image, g.batch, 0.0));
  } else {
    const int64_t chunk = chunk_images(g, ckk * spatial);
    Tensor cols = Tensor::empty({chunk * ckk * spatial}, dtype, x.device());
    T* pc = cols.data<T>();
    for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
      const int64_t count = std::min(chunk, g.batch - n0);
      im2col<<<blocks_for(count * ckk * spatial), kThreads, 0, guard.stream()>>>(
          x.data<T>(), g, n0, count, pc, spatial, ckk * spatial);
      STEEPEST_CUDA_CHECK_LAUNCH();
      // Y[n] = W_row · X_col[n] for the chunk: W is shared (batch stride 0).
      for (int64_t cg = 0; cg < g.groups; ++cg)
        gemm(product(dtype, g, false, false, filters, spatial, rows, pw + cg * filters * rows,
                     rows, 0, pc + cg * rows * spatial, spatial, ckk * spatial,
                     py + n0 * out_image + cg * filters * spatial, spatial, out_image, count,
                     0.0));
    }
  }
  if (bias.defined()) {
    const int64_t total = g.batch * out_image;
    add_bias<<<blocks_for(total), kThreads, 0, guard.stream()>>>(py, bias.data<T>(),
                                                                 g.out_channels, spatial, total);
    STEEPEST_CUDA_CHECK_LAUNCH();
  }
}

template <class T>
void conv_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_y,
                   const Conv2dGeometry& g, Tensor* grad_x, Tensor* grad_weight,
                   Tensor* grad_bias, const DeviceGuard& guard) {
  const int64_t spatial = g.out_h * g.out_w, ckk = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t rows = ckk / g.groups, filters = g.out_channels / g.groups;
  const int64_t out_image = g.out_channels * spatial, in_image = g.in_channels * g.in_h * g.in_w;
  const DType dtype = x.dtype();
  const T* pg = grad_y.data<T>();
  const T* pw = weight.data<T>();
  if (grad_bias) {
    bias_gradient<<<static_cast<unsigned>(g.out_channels), kThreads, 0, guard.stream()>>>(
        pg, g.batch, g.out_channels, spatial, grad_bias->data<T>());
    STEEPEST_CUDA_CHECK_LAUNCH();
  }
  if (grad_weight) {
    // dW_row = Σ_chunks G_wide · X_colᵀ with the chunk's images side by side.
    const int64_t chunk = chunk_images(g, (ckk + g.out_channels) * spatial);
    Tensor cols = Tensor::empty({chunk * ckk * spatial}, dtype, x.device());
    Tensor wide = chunk > 1 ? Tensor::empty({chunk * out_image}, dtype, x.device()) : Tensor();
    T* pc = cols.data<T>();
    T* gw = grad_weight->data<T>();
    for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
      const int64_t count = std::min(chunk, g.batch - n0), width = count * spatial;
      im2col<<<blocks_for(count * ckk * spatial), kThreads, 0, guard.stream()>>>(
          x.data<T>(), g, n0, count, pc, width, spatial);
      STEEPEST_CUDA_CHECK_LAUNCH();
      const T* g_wide = pg + n0 * out_image;
      if (count > 1) {
        to_wide<<<blocks_for(count * out_image), kThreads, 0, guard.stream()>>>(
            pg, g.out_channels, spatial, n0, count, wide.data<T>());
        STEEPEST_CUDA_CHECK_LAUNCH();
        g_wide = wide.data<T>();
      }
      for (int64_t cg = 0; cg < g.groups; ++cg)
        gemm(product(dtype, g, false, true, filters, rows, width, g_wide + cg * filters * width,
                     width, 0, pc + cg * rows * width, width, 0, gw + cg * filters * rows, rows, 0,
                     1, n0 == 0 ? 0.0 : 1.0));
    }
  }
  if (grad_x) {
    T* gx = grad_x->data<T>();
    if (is_pointwise(g)) {
      // dX[n] = Wᵀ · G[n] per channel group
      for (int64_t cg = 0; cg < g.groups; ++cg)
        gemm(product(dtype, g, true, false, rows, spatial, filters, pw + cg * filters * rows, rows,
                     0, pg + cg * filters * spatial, spatial, out_image, gx + cg * rows * spatial,
                     spatial, in_image, g.batch, 0.0));
      return;
    }
    // dX_col[n] = W_rowᵀ · G[n] per channel group, then col2im.
    const int64_t chunk = chunk_images(g, ckk * spatial);
    Tensor cols = Tensor::empty({chunk * ckk * spatial}, dtype, x.device());
    T* pc = cols.data<T>();
    for (int64_t n0 = 0; n0 < g.batch; n0 += chunk) {
      const int64_t count = std::min(chunk, g.batch - n0);
      for (int64_t cg = 0; cg < g.groups; ++cg)
        gemm(product(dtype, g, true, false, rows, spatial, filters, pw + cg * filters * rows, rows,
                     0, pg + n0 * out_image + cg * filters * spatial, spatial, out_image,
                     pc + cg * rows * spatial, spatial, ckk * spatial, count, 0.0));
      col2im<<<blocks_for(count * in_image), kThreads, 0, guard.stream()>>>(pc, g, n0, count, gx);
      STEEPEST_CUDA_CHECK_LAUNCH();
    }
  }
}

// ------------------------------------------------------------------------- pooling

// A thread per output; the window scan is the CPU's, so ties and NaN pick the same
// element (the last NaN, else the first maximum).
template <class T>
__global__ void pool_forward(bool max_pool, const T* x, Conv2dGeometry g, T* y, int64_t* argmax) {
  const int64_t outputs = g.batch * g.in_channels * g.out_h * g.out_w;
  STEEPEST_GRID_STRIDE(o, outputs) {
    const int64_t ow = o % g.out_w, oh = (o / g.out_w) % g.out_h, p = o / (g.out_w * g.out_h);
    const T* plane = x + p * g.in_h * g.in_w;
    T best = -T(INFINITY), total = 0;
    int64_t best_index = -1;
    for_window(g, oh, ow, [&](int64_t i) {
      const T v = plane[i];
      total += v;
      if (best_index < 0 || v > best || isnan(v)) {
        best = v;
        best_index = i;
      }
    });
    if (max_pool) {
      y[o] = best;
      argmax[o] = best_index < 0 ? kNoPixel : best_index;
    } else {
      y[o] = total / static_cast<T>(pool_divisor(g, oh, ow));
    }
  }
}

// A thread per input pixel gathers from the windows that cover it: max pooling takes
// G where the pixel was the maximum, split evenly among tied maxima; average pooling
// G / divisor.
template <class T>
__global__ void pool_backward(bool max_pool, const T* gy, const int64_t* argmax, const T* x,
                              Conv2dGeometry g, T* gx) {
  const int64_t plane = g.in_h * g.in_w;
  STEEPEST_GRID_STRIDE(e, g.batch * g.in_channels * plane) {
    const int64_t iw = e % g.in_w, ih = (e / g.in_w) % g.in_h, p = e / plane;
    const int64_t pixel = ih * g.in_w + iw;
    const T* in = max_pool ? x + p * plane : nullptr;
    T acc = 0;
    // Window oh covers ih through tap ki when oh·stride − pad + ki·dilation = ih.
    for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
      const int64_t oh_scaled = ih + g.pad_top - ki * g.dilation_h;
      if (oh_scaled < 0 || oh_scaled % g.stride_h != 0 || oh_scaled / g.stride_h >= g.out_h) continue;
      const int64_t oh = oh_scaled / g.stride_h;
      for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
        const int64_t ow_scaled = iw + g.pad_left - kj * g.dilation_w;
        if (ow_scaled < 0 || ow_scaled % g.stride_w != 0 || ow_scaled / g.stride_w >= g.out_w) continue;
        const int64_t ow = ow_scaled / g.stride_w;
        const int64_t o = (p * g.out_h + oh) * g.out_w + ow;
        if (!max_pool) {
          acc += gy[o] / static_cast<T>(pool_divisor(g, oh, ow));
          continue;
        }
        const int64_t entry = argmax[o];
        if (entry == kNoPixel || (entry != pixel && !(in[pixel] == in[entry]))) continue;
        const int64_t ties = max_pool_ties(g, oh, ow, in, in[entry]);
        acc += ties > 1 ? gy[o] / static_cast<T>(ties) : gy[o];
      }
    }
    gx[e] = acc;
  }
}

}  // namespace

void conv2d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                    const Conv2dGeometry& geometry, Tensor& y) {
  if (y.numel() == 0) return;
  DeviceGuard guard(x.device());
  dispatch_float("conv2d", x.dtype(), [&](auto tag) {
    conv_forward<typename decltype(tag)::type>(x, weight, bias, geometry, y, guard);
  });
}

void conv2d_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_y,
                     const Conv2dGeometry& geometry, Tensor* grad_x, Tensor* grad_weight,
                     Tensor* grad_bias) {
  DeviceGuard guard(x.device());
  dispatch_float("conv2d", x.dtype(), [&](auto tag) {
    conv_backward<typename decltype(tag)::type>(x, weight, grad_y, geometry, grad_x, grad_weight,
                                                grad_bias, guard);
  });
}

void pool2d_forward(PoolKind kind, const Tensor& x, const Conv2dGeometry& geometry, Tensor& y,
                    Tensor* argmax) {
  const int64_t n = y.numel();
  if (n == 0) return;
  DeviceGuard guard(x.device());
  dispatch_float("pool2d", x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    pool_forward<<<blocks_for(n), kThreads, 0, guard.stream()>>>(
        kind == PoolKind::Max, x.data<T>(), geometry, y.data<T>(),
        argmax ? argmax->data<int64_t>() : nullptr);
    STEEPEST_CUDA_CHECK_LAUNCH();
  });
}

void pool2d_backward(PoolKind kind, const Tensor& grad_y, const Tensor* argmax, const Tensor* x,
                     const Conv2dGeometry& geometry, Tensor& grad_x) {
  const int64_t n = grad_x.numel();
  if (n == 0) return;
  DeviceGuard guard(grad_y.device());
  dispatch_float("pool2d", grad_y.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    pool_backward<<<blocks_for(n), kThreads, 0, guard.stream()>>>(
        kind == PoolKind::Max, grad_y.data<T>(), argmax ? argmax->data<int64_t>() : nullptr,
        x ? x->data<T>() : nullptr, geometry, grad_x.data<T>());
    STEEPEST_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace cuda
}  // namespace steepest
