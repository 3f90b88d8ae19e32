// Convolution and pooling on the GPU (NCHW), as cpp/cpu/conv.cpp on the CPU.
// Convolution is the seed's 实际的卷积 in its plain form: im2col into a column buffer
// (a chunk of images at a time, the buffer capped by kColumnBudget), a batched GEMM, and
// for the input gradient a GEMM into columns followed by a gathering col2im (no atomics,
// so the result is deterministic). A 1×1, stride-1, unpadded convolution multiplies the
// images directly.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common.cuh"

namespace steepest::cuda {
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
  return conv_gemm_args(dtype, g, trans_a, trans_b, m, n, k, a, lda, stride_a, b, ldb, stride_b,
                        c, ldc, stride_c, batch, beta);
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

}  // namespace steepest::cuda
