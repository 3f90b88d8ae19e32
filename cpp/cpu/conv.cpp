// Convolution as the seed's 实际的卷积 describes it: every receptive field becomes a column
// of X_col (im2col), the output is W_row · X_col, and the backward pass is two matrix
// products plus col2im, which adds each column's gradient back onto the pixels it was
// read from. Images are split across threads with a per-thread column buffer; with fewer
// images than threads the GEMM itself runs in parallel instead.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "loops.h"
#include "steepest/kernels.h"

namespace steepest::cpu {
namespace {

// (C, H, W) image -> (C·kh·kw, out_h·out_w) columns; padding reads as 0.
template <class T>
void im2col(const T* image, const Conv2dGeometry& g, T* cols) {
  const int64_t spatial = g.out_h * g.out_w;
  for (int64_t c = 0; c < g.in_channels; ++c)
    for (int64_t ki = 0; ki < g.kernel_h; ++ki)
      for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
        T* row = cols + ((c * g.kernel_h + ki) * g.kernel_w + kj) * spatial;
        const T* plane = image + c * g.in_h * g.in_w;
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          int64_t ih = oh * g.stride_h - g.pad_h + ki;
          T* dst = row + oh * g.out_w;
          if (ih < 0 || ih >= g.in_h) {
            std::fill(dst, dst + g.out_w, T(0));
            continue;
          }
          const T* src = plane + ih * g.in_w;
          for (int64_t ow = 0; ow < g.out_w; ++ow) {
            int64_t iw = ow * g.stride_w - g.pad_w + kj;
            dst[ow] = (iw >= 0 && iw < g.in_w) ? src[iw] : T(0);
          }
        }
      }
}

// The adjoint of im2col: accumulates columns back into a zeroed (C, H, W) image.
template <class T>
void col2im(const T* cols, const Conv2dGeometry& g, T* image) {
  const int64_t spatial = g.out_h * g.out_w;
  std::fill(image, image + g.in_channels * g.in_h * g.in_w, T(0));
  for (int64_t c = 0; c < g.in_channels; ++c)
    for (int64_t ki = 0; ki < g.kernel_h; ++ki)
      for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
        const T* row = cols + ((c * g.kernel_h + ki) * g.kernel_w + kj) * spatial;
        T* plane = image + c * g.in_h * g.in_w;
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          int64_t ih = oh * g.stride_h - g.pad_h + ki;
          if (ih < 0 || ih >= g.in_h) continue;
          const T* src = row + oh * g.out_w;
          T* dst = plane + ih * g.in_w;
          for (int64_t ow = 0; ow < g.out_w; ++ow) {
            int64_t iw = ow * g.stride_w - g.pad_w + kj;
            if (iw >= 0 && iw < g.in_w) dst[iw] += src[ow];
          }
        }
      }
}

template <class T>
GemmArgs matrix_product(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const T* a,
                        int64_t lda, const T* b, int64_t ldb, T* c, int64_t ldc, double beta) {
  GemmArgs args;
  args.dtype = DTypeOf<T>::value;
  args.trans_a = trans_a;
  args.trans_b = trans_b;
  args.m = m;
  args.n = n;
  args.k = k;
  args.a = a;
  args.lda = lda;
  args.b = b;
  args.ldb = ldb;
  args.c = c;
  args.ldc = ldc;
  args.beta = beta;
  return args;
}

template <class T>
std::vector<T>& column_buffer(size_t size) {
  thread_local std::vector<T> buffer;
  if (buffer.size() < size) buffer.resize(size);
  return buffer;
}

// Runs fn(n) for every image, across threads when there are enough images.
template <class Fn>
void for_each_image(int64_t batch, Fn&& fn) {
  if (batch >= omp_get_max_threads()) {
    parallel_for(batch, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) fn(n);
    });
  } else {
    for (int64_t n = 0; n < batch; ++n) fn(n);
  }
}

template <class T>
void conv_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                  const Conv2dGeometry& g, Tensor& y) {
  const int64_t ckk = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t spatial = g.out_h * g.out_w;
  const T* px = x.data<T>();
  const T* pw = weight.data<T>();
  const T* pb = bias.defined() ? bias.data<T>() : nullptr;
  T* py = y.data<T>();
  for_each_image(g.batch, [&](int64_t n) {
    std::vector<T>& cols = column_buffer<T>(static_cast<size_t>(ckk * spatial));
    im2col(px + n * g.in_channels * g.in_h * g.in_w, g, cols.data());
    T* out = py + n * g.out_channels * spatial;
    // Y_col = W_row · X_col
    gemm(matrix_product<T>(false, false, g.out_channels, spatial, ckk, pw, ckk, cols.data(),
                           spatial, out, spatial, 0.0));
    if (pb)
      for (int64_t o = 0; o < g.out_channels; ++o)
        for (int64_t p = 0; p < spatial; ++p) out[o * spatial + p] += pb[o];
  });
}

template <class T>
void conv_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_y,
                   const Conv2dGeometry& g, Tensor* grad_x, Tensor* grad_weight,
                   Tensor* grad_bias) {
  const int64_t ckk = g.in_channels * g.kernel_h * g.kernel_w;
  const int64_t spatial = g.out_h * g.out_w;
  const int64_t image_size = g.in_channels * g.in_h * g.in_w;
  const T* px = x.data<T>();
  const T* pw = weight.data<T>();
  const T* pg = grad_y.data<T>();

  if (grad_bias) {
    T* gb = grad_bias->data<T>();
    for (int64_t o = 0; o < g.out_channels; ++o) {
      T acc = 0;
      for (int64_t n = 0; n < g.batch; ++n) {
        const T* row = pg + (n * g.out_channels + o) * spatial;
        for (int64_t p = 0; p < spatial; ++p) acc += row[p];
      }
      gb[o] = acc;
    }
  }

  if (grad_x) {
    T* gx = grad_x->data<T>();
    for_each_image(g.batch, [&](int64_t n) {
      std::vector<T>& cols = column_buffer<T>(static_cast<size_t>(ckk * spatial));
      // dL/dX_col = W_rowᵀ · G, then col2im.
      gemm(matrix_product<T>(true, false, ckk, spatial, g.out_channels, pw, ckk,
                             pg + n * g.out_channels * spatial, spatial, cols.data(), spatial,
                             0.0));
      col2im(cols.data(), g, gx + n * image_size);
    });
  }

  if (grad_weight) {
    T* gw = grad_weight->data<T>();
    const int64_t wsize = g.out_channels * ckk;
    int threads = g.batch >= omp_get_max_threads() ? omp_get_max_threads() : 1;
    // One partial dW per thread, summed at the end, so images can run in parallel.
    std::vector<T> partial(static_cast<size_t>(wsize * threads), T(0));
    auto accumulate = [&](int64_t begin, int64_t end, T* dst) {
      for (int64_t n = begin; n < end; ++n) {
        std::vector<T>& cols = column_buffer<T>(static_cast<size_t>(ckk * spatial));
        im2col(px + n * image_size, g, cols.data());
        // dL/dW_row += G · X_colᵀ
        gemm(matrix_product<T>(false, true, g.out_channels, ckk, spatial,
                               pg + n * g.out_channels * spatial, spatial, cols.data(), spatial,
                               dst, ckk, 1.0));
      }
    };
    if (threads > 1) {
#pragma omp parallel num_threads(threads)
      {
        int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
        accumulate(g.batch * t / nt, g.batch * (t + 1) / nt, partial.data() + t * wsize);
      }
    } else {
      accumulate(0, g.batch, partial.data());
    }
    for (int64_t i = 0; i < wsize; ++i) {
      T acc = 0;
      for (int t = 0; t < threads; ++t) acc += partial[static_cast<size_t>(t * wsize + i)];
      gw[i] = acc;
    }
  }
}

template <class T>
void pool_forward(PoolKind kind, const T* x, const Conv2dGeometry& g, T* y, int64_t* argmax) {
  const int64_t planes = g.batch * g.in_channels;
  const T inv_area = T(1) / static_cast<T>(g.kernel_h * g.kernel_w);
  parallel_for(planes, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(g.in_h * g.in_w, 1)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t p = begin; p < end; ++p) {
                   const T* plane = x + p * g.in_h * g.in_w;
                   for (int64_t oh = 0; oh < g.out_h; ++oh)
                     for (int64_t ow = 0; ow < g.out_w; ++ow) {
                       T best = -std::numeric_limits<T>::infinity();
                       int64_t best_index = -1;
                       T total = 0;
                       for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
                         int64_t ih = oh * g.stride_h - g.pad_h + ki;
                         if (ih < 0 || ih >= g.in_h) continue;
                         for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
                           int64_t iw = ow * g.stride_w - g.pad_w + kj;
                           if (iw < 0 || iw >= g.in_w) continue;
                           T v = plane[ih * g.in_w + iw];
                           total += v;
                           if (best_index < 0 || v > best || std::isnan(v)) {
                             best = v;
                             best_index = ih * g.in_w + iw;
                           }
                         }
                       }
                       int64_t o = (p * g.out_h + oh) * g.out_w + ow;
                       if (kind == PoolKind::Max) {
                         y[o] = best;
                         argmax[o] = best_index;
                       } else {
                         y[o] = total * inv_area;
                       }
                     }
                 }
               });
}

template <class T>
void pool_backward(PoolKind kind, const T* gy, const int64_t* argmax, const Conv2dGeometry& g,
                   T* gx) {
  const int64_t planes = g.batch * g.in_channels;
  const T inv_area = T(1) / static_cast<T>(g.kernel_h * g.kernel_w);
  parallel_for(planes, std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(g.in_h * g.in_w, 1)),
               [&](int64_t begin, int64_t end) {
                 for (int64_t p = begin; p < end; ++p) {
                   T* plane = gx + p * g.in_h * g.in_w;
                   std::fill(plane, plane + g.in_h * g.in_w, T(0));
                   for (int64_t oh = 0; oh < g.out_h; ++oh)
                     for (int64_t ow = 0; ow < g.out_w; ++ow) {
                       int64_t o = (p * g.out_h + oh) * g.out_w + ow;
                       if (kind == PoolKind::Max) {
                         // The seed's max derivation: only the argmax receives gradient.
                         plane[argmax[o]] += gy[o];
                         continue;
                       }
                       for (int64_t ki = 0; ki < g.kernel_h; ++ki) {
                         int64_t ih = oh * g.stride_h - g.pad_h + ki;
                         if (ih < 0 || ih >= g.in_h) continue;
                         for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
                           int64_t iw = ow * g.stride_w - g.pad_w + kj;
                           if (iw >= 0 && iw < g.in_w) plane[ih * g.in_w + iw] += gy[o] * inv_area;
                         }
                       }
                     }
                 }
               });
}

}  // namespace

void conv2d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                    const Conv2dGeometry& geometry, Tensor& y) {
  dispatch_float("conv2d", x.dtype(), [&](auto tag) {
    conv_forward<typename decltype(tag)::type>(x, weight, bias, geometry, y);
  });
}

void conv2d_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_y,
                     const Conv2dGeometry& geometry, Tensor* grad_x, Tensor* grad_weight,
                     Tensor* grad_bias) {
  dispatch_float("conv2d", x.dtype(), [&](auto tag) {
    conv_backward<typename decltype(tag)::type>(x, weight, grad_y, geometry, grad_x, grad_weight,
                                                grad_bias);
  });
}

void pool2d_forward(PoolKind kind, const Tensor& x, const Conv2dGeometry& geometry, Tensor& y,
                    Tensor* argmax) {
  dispatch_float("pool2d", x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    pool_forward<T>(kind, x.data<T>(), geometry, y.data<T>(),
                    argmax ? argmax->data<int64_t>() : nullptr);
  });
}

void pool2d_backward(PoolKind kind, const Tensor& grad_y, const Tensor* argmax,
                     const Conv2dGeometry& geometry, Tensor& grad_x) {
  dispatch_float("pool2d", grad_y.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    pool_backward<T>(kind, grad_y.data<T>(), argmax ? argmax->data<int64_t>() : nullptr,
                     geometry, grad_x.data<T>());
  });
}

}  // namespace steepest::cpu
