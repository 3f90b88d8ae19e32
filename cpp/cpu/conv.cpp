// Convolution as the seed's 实际的卷积 describes it: every receptive field becomes a column
// of X_col (im2col), the output is W_row · X_col, and the backward pass is the products
// dW_row = G · X_colᵀ and dX_col = W_rowᵀ · G followed by col2im.
//
// X_col is never stored: it is a GemmSource that the GEMM asks for one sliver at a time
// while packing, read from a zero-bordered copy of the images, so the 9×-larger column
// matrix never travels through memory. The columns of a group of images sit side by
// side, so one GEMM with N = images·OH·OW covers the group (small images alone would
// give GEMMs too thin to run fast); a group's outputs go through a thread-local wide
// buffer sized by a memory budget, while images with enough pixels each write their
// NCHW block directly. For stride 1, dX is itself a convolution (of G with the flipped,
// channel-swapped kernel), which needs no col2im; strided convolutions form dX_col and
// col2im it. A 1×1, stride-1, unpadded convolution reads each image as its X_col.
// Channel groups (torch's groups) are one GEMM each over their block of X_col rows and
// of the weight; depthwise convolutions (one input channel per group) skip the GEMMs
// and run direct loops over the planes, which are memory-bound anyway.
// Pooling runs one plane per task; max pooling is branch-free inside the image.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "gemm_source.h"
#include "loops.h"
#include "steepest/kernels.h"

namespace steepest::cpu {
inline namespace STEEPEST_ISA_NS {
namespace {

// An image with at least this many output pixels is a wide enough GEMM on its own.
constexpr int64_t kWideImage = 1024;
// Upper bound on the elements of a group's wide buffer (16 MiB of float32).
constexpr int64_t kWideBudget = int64_t{1} << 22;

template <class T>
T* scratch(std::vector<T>& buffer, int64_t size) {
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(static_cast<size_t>(size));
  return buffer.data();
}

int64_t ceil_div(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }
int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -ceil_div(-a, b); }

// Grain for parallel_for over tasks of `work` elements each.
int64_t grain_for(int64_t work) {
  return std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(work, 1));
}

// Threads that run whole images, one GEMM each, when every image is its own GEMM: with
// no barrier inside an image this also holds up when the cores are shared. 1 means the
// images run in turn and each GEMM uses the threads.
int image_threads(int64_t batch) {
  if (omp_in_parallel()) return 1;
  return static_cast<int>(std::min<int64_t>(omp_get_max_threads(), batch));
}

// image(n, thread) for every n in [0, batch), each thread taking a contiguous share.
template <class Fn>
void for_each_image(int64_t batch, int threads, Fn&& image) {
  if (threads <= 1) {
    for (int64_t n = 0; n < batch; ++n) image(n, 0);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    for (int64_t n = batch * t / nt; n < batch * (t + 1) / nt; ++n) image(n, static_cast<int>(t));
  }
}

// Images per GEMM: one when an image is wide enough, else as many as the wide buffer
// (channels × images·OH·OW) allows, balanced over the batch.
int64_t group_size(const Conv2dGeometry& g, int64_t channels) {
  const int64_t spatial = g.out_h * g.out_w;
  if (spatial >= kWideImage || g.batch <= 1) return 1;
  const int64_t fit = std::clamp<int64_t>(kWideBudget / std::max<int64_t>(channels * spatial, 1),
                                          1, g.batch);
  const int64_t groups = (g.batch + fit - 1) / fit;
  return (g.batch + groups - 1) / groups;
}

struct IndexRange {
  int64_t lo, hi;
};

// Output columns [lo, hi) whose input column ow·stride + kj·dilation − pad lies inside
// the image.
IndexRange valid_columns(const Conv2dGeometry& g, int64_t kj) {
  const int64_t shift = kj * g.dilation_w - g.pad_left;
  const int64_t lo = std::clamp<int64_t>(ceil_div(-shift, g.stride_w), 0, g.out_w);
  const int64_t hi = std::clamp<int64_t>(ceil_div(g.in_w - shift, g.stride_w), lo, g.out_w);
  return {lo, hi};
}

// dst[0, len) = src[0, len) for len >= 16, in fixed 16-element blocks, the last one
// overlapping the one before: a fixed-size memcpy compiles to a few vector moves, while
// a variable-length copy of a short row becomes a library call.
template <class T>
void copy_blocks(const T* src, int64_t len, T* dst) {
  constexpr int64_t kBlock = 16;
  for (int64_t s = 0; s + kBlock <= len; s += kBlock) std::memcpy(dst + s, src + s, sizeof(T) * kBlock);
  if (len % kBlock) std::memcpy(dst + len - kBlock, src + len - kBlock, sizeof(T) * kBlock);
}

// X_col of the images [n0, n0 + count): row r = (c, ki, kj), column p = (image, oh, ow).
// As a GEMM operand it is op(B) = X_col (forward) or X_colᵀ (dW), from row first_row on
// (select_rows: a channel group's block). The images are first
// copied with their zero padding made explicit (a plane stride that is rarely a multiple
// of 4 KiB also spares the L1 cache the aliasing of NCHW planes); then
// X_col(r, p) = padded[start(p) + offset(r)] with no bounds checks, and at stride 1 an
// output row is a plain copy of a stretch of a padded row.
template <class T>
class Columns final : public GemmSource<T> {
 public:
  Columns(const T* x, const Conv2dGeometry& g, int64_t n0, int64_t count, bool transposed)
      : g_(g), transposed_(transposed), hp_(g.in_h + g.pad_top + g.pad_bottom), wp_(g.in_w + g.pad_left + g.pad_right) {
    pad_images(x + n0 * g.in_channels * g.in_h * g.in_w, count);
  }

  void pack(int64_t k0, int64_t kc, int64_t j0, int64_t cols, int width, T* dst) const override {
    if (transposed_)
      pack_transposed(k0, kc, first_row_ + j0, cols, width, dst);
    else
      pack_rows(first_row_ + k0, kc, j0, cols, width, dst);
  }

  // Later GEMMs see X_col from row `first` on (not while a GEMM runs).
  void select_rows(int64_t first) { first_row_ = first; }

 private:
  // padded_: (count, C, top + H + bottom, left + W + right); start_[p]: where output pixel p's
  // receptive field begins in it (tap (0, 0) of channel 0).
  void pad_images(const T* x, int64_t count) {
    thread_local std::vector<T> image_buffer;
    thread_local std::vector<int64_t> start_buffer;
    const int64_t planes = count * g_.in_channels;
    T* padded = padded_ = scratch(image_buffer, planes * hp_ * wp_);
    parallel_for(planes, grain_for(hp_ * wp_), [&](int64_t begin, int64_t end) {
      std::fill(padded + begin * hp_ * wp_, padded + end * hp_ * wp_, T(0));
      for (int64_t plane = begin; plane < end; ++plane)
        pad_plane(x + plane * g_.in_h * g_.in_w, padded + plane * hp_ * wp_);
    });
    const int64_t spatial = g_.out_h * g_.out_w, pixels = count * spatial;
    start_ = scratch(start_buffer, pixels);
    for (int64_t p = 0; p < pixels; ++p) {
      const int64_t image = p / spatial, oh = (p % spatial) / g_.out_w, ow = p % g_.out_w;
      start_[p] = (image * g_.in_channels * hp_ + oh * g_.stride_h) * wp_ + ow * g_.stride_w;
    }
  }

  // One (H, W) plane into the interior of its zeroed padded copy.
  void pad_plane(const T* src, T* dst) const {
    dst += g_.pad_top * wp_ + g_.pad_left;
    if (g_.in_w >= 16) {
      for (int64_t h = 0; h < g_.in_h; ++h) copy_blocks(src + h * g_.in_w, g_.in_w, dst + h * wp_);
    } else if (g_.in_w == 4 || g_.in_w == 8) {
      // Fixed-size copies: a variable-length copy of a short row is a library call.
      for (int64_t h = 0; h < g_.in_h; ++h)
        if (g_.in_w == 4)
          std::memcpy(dst + h * wp_, src + h * g_.in_w, sizeof(T) * 4);
        else
          std::memcpy(dst + h * wp_, src + h * g_.in_w, sizeof(T) * 8);
    } else {
      for (int64_t w = 0; w < g_.in_w; ++w)
        for (int64_t h = 0; h < g_.in_h; ++h) dst[h * wp_ + w] = src[h * g_.in_w + w];
    }
  }

  // The padded-copy address of X_col row r's pixel 0 (tap (ki, kj) of channel c).
  const T* row_base(int64_t r) const {
    const int64_t taps = g_.kernel_h * g_.kernel_w, tap = r % taps;
    return padded_ + (r / taps) * hp_ * wp_ + tap_offset(tap / g_.kernel_w, tap % g_.kernel_w);
  }

  int64_t tap_offset(int64_t ki, int64_t kj) const {
    return ki * g_.dilation_h * wp_ + kj * g_.dilation_w;
  }

  // Whether the columns from p0 on come in whole output rows of consecutive padded
  // elements (stride 1, p0 at the start of a row): read() then copies row by row.
  bool whole_rows(int64_t p0) const { return g_.stride_w == 1 && p0 % g_.out_w == 0; }

  // out[i] = X_col(r, p0 + i) for i < count, with base = row_base(r) and
  // rows = whole_rows(p0).
  void read(const T* base, int64_t p0, int64_t count, bool rows, T* out) const {
    const int64_t* start = start_ + p0;
    const int64_t width = g_.out_w;
    if (rows) {
      if (width == 4) return copy_rows<4>(base, start, count, out);
      if (width == 8) return copy_rows<8>(base, start, count, out);
      if (width >= 16) {
        int64_t i = 0;
        for (; i + width <= count; i += width) copy_blocks(base + start[i], width, out + i);
        for (; i < count; ++i) out[i] = base[start[i]];
        return;
      }
    }
    for (int64_t i = 0; i < count; ++i) out[i] = base[start[i]];
  }

  template <int L>
  static void copy_rows(const T* base, const int64_t* start, int64_t count, T* out) {
    int64_t i = 0;
    for (; i + L <= count; i += L) std::memcpy(out + i, base + start[i], sizeof(T) * L);
    for (; i < count; ++i) out[i] = base[start[i]];
  }

  // op(B) = X_col: dst[k·width + i] = X_col(k0 + k, j0 + i). Consecutive rows step
  // through the taps, then on to the next channel's plane.
  void pack_rows(int64_t k0, int64_t kc, int64_t j0, int64_t cols, int width, T* dst) const {
    const T* plane = row_base(k0 - k0 % (g_.kernel_h * g_.kernel_w));
    int64_t ki = (k0 / g_.kernel_w) % g_.kernel_h, kj = k0 % g_.kernel_w;
    const bool rows = whole_rows(j0);
    for (int64_t k = 0; k < kc; ++k, dst += width) {
      read(plane + tap_offset(ki, kj), j0, cols, rows, dst);
      for (int64_t i = cols; i < width; ++i) dst[i] = T(0);
      if (++kj == g_.kernel_w) {
        kj = 0;
        if (++ki == g_.kernel_h) {
          ki = 0;
          plane += hp_ * wp_;
        }
      }
    }
  }

  // op(B) = X_colᵀ: dst[k·width + i] = X_col(j0 + i, k0 + k). Rows of X_col are read in
  // order into a block that the GEMM's transposing pack turns k-major.
  void pack_transposed(int64_t k0, int64_t kc, int64_t j0, int64_t cols, int width,
                       T* dst) const {
    thread_local std::vector<T> block_buffer;
    T* block = scratch(block_buffer, cols * kc);
    const bool rows = whole_rows(k0);
    for (int64_t i = 0; i < cols; ++i) read(row_base(j0 + i), k0, kc, rows, block + i * kc);
    cpu::pack_transposed(block, kc, cols, width, kc, dst);
  }

  const Conv2dGeometry& g_;
  bool transposed_;
  int64_t hp_, wp_;
  int64_t first_row_ = 0;
  T* padded_ = nullptr;
  int64_t* start_ = nullptr;
};

// NCHW rows of the images [n0, n0 + count) <-> the wide (channels × count·spatial)
// layout of the GEMMs; from_wide adds bias[channel] when given.
template <class T>
void to_wide(const T* nchw, int64_t channels, int64_t spatial, int64_t n0, int64_t count,
             T* wide) {
  parallel_for(count * channels, grain_for(spatial), [&](int64_t b, int64_t e) {
    for (int64_t task = b; task < e; ++task) {
      const int64_t i = task / channels, c = task % channels;
      const T* src = nchw + ((n0 + i) * channels + c) * spatial;
      T* dst = wide + c * count * spatial + i * spatial;
      for (int64_t p = 0; p < spatial; ++p) dst[p] = src[p];
    }
  });
}

template <class T>
void from_wide(const T* wide, const T* bias, int64_t channels, int64_t spatial, int64_t n0,
               int64_t count, T* nchw) {
  parallel_for(count * channels, grain_for(spatial), [&](int64_t b, int64_t e) {
    for (int64_t task = b; task < e; ++task) {
      const int64_t i = task / channels, c = task % channels;
      const T* src = wide + c * count * spatial + i * spatial;
      T* dst = nchw + ((n0 + i) * channels + c) * spatial;
      const T add = bias ? bias[c] : T(0);
      for (int64_t p = 0; p < spatial; ++p) dst[p] = src[p] + add;
    }
  });
}

template <class T>
GemmArgs matrix_product(const Conv2dGeometry& g, bool trans_a, bool trans_b, int64_t m,
                        int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
                        T* c, int64_t ldc, double beta) {
  return conv_gemm_args(DTypeOf<T>::value, g, trans_a, trans_b, m, n, k, a, lda, 0, b, ldb, 0, c,
                        ldc, 0, 1, beta);
}

template <class T>
void add_bias(const T* bias, const Conv2dGeometry& g, T* y) {
  const int64_t spatial = g.out_h * g.out_w;
  parallel_for(g.batch * g.out_channels, grain_for(spatial), [&](int64_t b, int64_t e) {
    for (int64_t row = b; row < e; ++row) {
      const T add = bias[row % g.out_channels];
      T* dst = y + row * spatial;
      for (int64_t p = 0; p < spatial; ++p) dst[p] += add;
    }
  });
}

bool is_pointwise(const Conv2dGeometry& g) {
  return g.kernel_h == 1 && g.kernel_w == 1 && g.stride_h == 1 && g.stride_w == 1 &&
         g.pad_top == 0 && g.pad_bottom == 0 && g.pad_left == 0 && g.pad_right == 0;
}

// Output channels per channel group, and X_col rows (input channels × taps) per group.
int64_t group_filters(const Conv2dGeometry& g) { return g.out_channels / g.groups; }
int64_t group_rows(const Conv2dGeometry& g) {
  return g.in_channels / g.groups * g.kernel_h * g.kernel_w;
}

// One input channel per group (groups == in_channels > 1): the direct loops below.
bool is_depthwise(const Conv2dGeometry& g) { return g.groups > 1 && g.groups == g.in_channels; }

// y = conv(x, w) + bias (bias may be null): per group of images and channel group,
// Y_col = W_row · X_col.
template <class T>
void convolve(const T* x, const T* w, const T* bias, const Conv2dGeometry& g, T* y) {
  const int64_t ckk = group_rows(g), filters = group_filters(g);
  const int64_t spatial = g.out_h * g.out_w;
  if (is_pointwise(g)) {
    // Y[n] = W · X[n]: each image is already its X_col (C × H·W).
    for (int64_t cg = 0; cg < g.groups; ++cg) {
      GemmArgs args = matrix_product<T>(g, false, false, filters, spatial, ckk, w + cg * filters * ckk,
                                        ckk, x + cg * ckk * spatial, spatial,
                                        y + cg * filters * spatial, spatial, 0.0);
      args.batch = g.batch;
      args.stride_b = g.in_channels * spatial;
      args.stride_c = g.out_channels * spatial;
      gemm(args);
    }
    if (bias) add_bias(bias, g, y);
    return;
  }
  const int64_t size = group_size(g, g.out_channels);
  if (size == 1) {
    // Each image's NCHW block is its Y_col.
    for_each_image(g.batch, image_threads(g.batch), [&](int64_t n, int) {
      T* out = y + n * g.out_channels * spatial;
      Columns<T> columns(x, g, n, 1, false);
      for (int64_t cg = 0; cg < g.groups; ++cg) {
        columns.select_rows(cg * ckk);
        gemm(matrix_product<T>(g, false, false, filters, spatial, ckk, w + cg * filters * ckk, ckk,
                               nullptr, 0, out + cg * filters * spatial, spatial, 0.0),
             columns);
      }
      if (bias)
        for (int64_t o = 0; o < g.out_channels; ++o)
          for (int64_t p = 0; p < spatial; ++p) out[o * spatial + p] += bias[o];
    });
    return;
  }
  thread_local std::vector<T> wide_buffer;
  for (int64_t n0 = 0; n0 < g.batch; n0 += size) {
    const int64_t count = std::min(size, g.batch - n0), width = count * spatial;
    T* wide = scratch(wide_buffer, g.out_channels * width);
    Columns<T> columns(x, g, n0, count, false);
    for (int64_t cg = 0; cg < g.groups; ++cg) {
      columns.select_rows(cg * ckk);
      gemm(matrix_product<T>(g, false, false, filters, width, ckk, w + cg * filters * ckk, ckk,
                             nullptr, 0, wide + cg * filters * width, width, 0.0),
           columns);
    }
    from_wide(wide, bias, g.out_channels, spatial, n0, count, y);
  }
}

// ------------------------------------------------------------------ depthwise, direct
// Output channel o reads input channel o / multiplier only, so each output plane is a
// sum over the taps of a weight times a shifted (strided, dilated) input plane; at
// stride 1 every such row update is a contiguous vector loop.

// The tap (ki, kj) terms of one (output plane, input plane) pair, for each output row oh
// and the output columns whose input pixel lies inside the image:
// fn(out_row_offset, in_row_offset, valid columns, column shift), with input column
// ow·stride_w + shift.
template <class Fn>
void for_tap_rows(const Conv2dGeometry& g, int64_t ki, int64_t kj, Fn&& fn) {
  const IndexRange cols = valid_columns(g, kj);
  const int64_t shift = kj * g.dilation_w - g.pad_left;
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    const int64_t ih = oh * g.stride_h - g.pad_top + ki * g.dilation_h;
    if (ih < 0 || ih >= g.in_h) continue;
    fn(oh * g.out_w, ih * g.in_w, cols, shift);
  }
}

template <class T>
void depthwise_forward(const T* x, const T* w, const T* bias, const Conv2dGeometry& g, T* y) {
  const int64_t multiplier = g.out_channels / g.in_channels, taps = g.kernel_h * g.kernel_w;
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  parallel_for(g.batch * g.out_channels, grain_for(taps * out_plane), [&](int64_t b, int64_t e) {
    for (int64_t task = b; task < e; ++task) {
      const int64_t n = task / g.out_channels, o = task % g.out_channels;
      const T* in = x + (n * g.in_channels + o / multiplier) * in_plane;
      T* out = y + task * out_plane;
      std::fill(out, out + out_plane, bias ? bias[o] : T(0));
      for (int64_t ki = 0; ki < g.kernel_h; ++ki)
        for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
          const T weight = w[o * taps + ki * g.kernel_w + kj];
          const int64_t sw = g.stride_w;
          for_tap_rows(g, ki, kj, [&](int64_t out_row, int64_t in_row, IndexRange cols, int64_t shift) {
            T* dst = out + out_row;
            const T* src = in + in_row + shift;
            if (sw == 1)
              for (int64_t ow = cols.lo; ow < cols.hi; ++ow) dst[ow] += weight * src[ow];
            else
              for (int64_t ow = cols.lo; ow < cols.hi; ++ow) dst[ow] += weight * src[ow * sw];
          });
        }
    }
  });
}

// dX, the adjoint of depthwise_forward: an input plane gathers every output plane that
// reads it (its `multiplier` channels), tap by tap.
template <class T>
void depthwise_input_gradient(const T* w, const T* grad_y, const Conv2dGeometry& g, T* dx) {
  const int64_t multiplier = g.out_channels / g.in_channels, taps = g.kernel_h * g.kernel_w;
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  parallel_for(g.batch * g.in_channels, grain_for(multiplier * taps * out_plane),
               [&](int64_t b, int64_t e) {
    for (int64_t task = b; task < e; ++task) {
      const int64_t n = task / g.in_channels, c = task % g.in_channels;
      T* in = dx + task * in_plane;
      std::fill(in, in + in_plane, T(0));
      for (int64_t o = c * multiplier; o < (c + 1) * multiplier; ++o) {
        const T* out = grad_y + (n * g.out_channels + o) * out_plane;
        for (int64_t ki = 0; ki < g.kernel_h; ++ki)
          for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
            const T weight = w[o * taps + ki * g.kernel_w + kj];
            const int64_t sw = g.stride_w;
            for_tap_rows(g, ki, kj, [&](int64_t out_row, int64_t in_row, IndexRange cols, int64_t shift) {
              const T* src = out + out_row;
              T* dst = in + in_row + shift;
              if (sw == 1)
                for (int64_t ow = cols.lo; ow < cols.hi; ++ow) dst[ow] += weight * src[ow];
              else
                for (int64_t ow = cols.lo; ow < cols.hi; ++ow) dst[ow * sw] += weight * src[ow];
            });
          }
      }
    }
  });
}

// Σ_i a[i]·b[i·stride] in 16 fixed lanes, so the summation order (and the result) is
// the same whatever vector width the compiler picks.
template <class T>
T strided_dot(const T* a, const T* b, int64_t n, int64_t stride) {
  constexpr int64_t kLanes = 16;
  T lanes[kLanes] = {};
  int64_t i = 0;
  if (stride == 1) {
    for (; i + kLanes <= n; i += kLanes)
      for (int64_t l = 0; l < kLanes; ++l) lanes[l] += a[i + l] * b[i + l];
  } else {
    for (; i + kLanes <= n; i += kLanes)
      for (int64_t l = 0; l < kLanes; ++l) lanes[l] += a[i + l] * b[(i + l) * stride];
  }
  for (; i < n; ++i) lanes[i % kLanes] += a[i] * b[i * stride];
  T total = 0;
  for (int64_t l = 0; l < kLanes; ++l) total += lanes[l];
  return total;
}

// dW[o, tap] = Σ_n Σ_(oh, ow) G[n, o, oh, ow] · X[n, o / multiplier, input pixel of the tap]
// (the forward's product rule), one output channel per task, the images in order.
template <class T>
void depthwise_weight_gradient(const T* x, const T* grad_y, const Conv2dGeometry& g, T* grad_w) {
  const int64_t multiplier = g.out_channels / g.in_channels, taps = g.kernel_h * g.kernel_w;
  const int64_t in_plane = g.in_h * g.in_w, out_plane = g.out_h * g.out_w;
  parallel_for(g.out_channels, grain_for(g.batch * taps * out_plane), [&](int64_t b, int64_t e) {
    for (int64_t o = b; o < e; ++o) {
      T* dw = grad_w + o * taps;
      std::fill(dw, dw + taps, T(0));
      for (int64_t n = 0; n < g.batch; ++n) {
        const T* in = x + (n * g.in_channels + o / multiplier) * in_plane;
        const T* out = grad_y + (n * g.out_channels + o) * out_plane;
        for (int64_t ki = 0; ki < g.kernel_h; ++ki)
          for (int64_t kj = 0; kj < g.kernel_w; ++kj)
            for_tap_rows(g, ki, kj, [&](int64_t out_row, int64_t in_row, IndexRange cols, int64_t shift) {
              dw[ki * g.kernel_w + kj] +=
                  strided_dot(out + out_row + cols.lo, in + in_row + shift + cols.lo * g.stride_w,
                              cols.hi - cols.lo, g.stride_w);
            });
      }
    }
  });
}

template <class T>
void conv_forward(const Tensor& x, const Tensor& weight, const Tensor& bias,
                  const Conv2dGeometry& g, Tensor& y) {
  const T* pb = bias.defined() ? bias.data<T>() : nullptr;
  if (is_depthwise(g))
    depthwise_forward(x.data<T>(), weight.data<T>(), pb, g, y.data<T>());
  else
    convolve(x.data<T>(), weight.data<T>(), pb, g, y.data<T>());
}

// db = Σ over images and pixels of G. Each thread adds the images' blocks of its channels
// (long contiguous vector adds, whatever the image size), then sums each channel's row.
template <class T>
void bias_gradient(const T* grad_y, const Conv2dGeometry& g, T* grad_bias) {
  const int64_t spatial = g.out_h * g.out_w;
  parallel_for(g.out_channels, grain_for(g.batch * spatial), [&](int64_t b, int64_t e) {
    thread_local std::vector<T> rows_buffer;
    const int64_t len = (e - b) * spatial;
    T* rows = scratch(rows_buffer, len);
    std::copy(grad_y + b * spatial, grad_y + b * spatial + len, rows);
    for (int64_t n = 1; n < g.batch; ++n) {
      const T* src = grad_y + (n * g.out_channels + b) * spatial;
      for (int64_t i = 0; i < len; ++i) rows[i] += src[i];
    }
    for (int64_t o = b; o < e; ++o) {
      T acc = 0;
      for (int64_t p = 0; p < spatial; ++p) acc += rows[(o - b) * spatial + p];
      grad_bias[o] = acc;
    }
  });
}

// dW_row = Σ_image-groups G · X_colᵀ, per channel group, accumulated in place (beta = 1
// after the first group of images).
template <class T>
void weight_gradient(const T* x, const T* grad_y, const Conv2dGeometry& g, T* grad_w) {
  const int64_t ckk = group_rows(g), filters = group_filters(g);
  const int64_t spatial = g.out_h * g.out_w;
  thread_local std::vector<T> wide_buffer, partial_buffer;
  const int64_t size = group_size(g, g.out_channels);
  if (size == 1) {
    // Each thread adds its images into its own zeroed partial dW (beta = 1); the
    // partials are summed last.
    const int threads = image_threads(g.batch);
    const int64_t wsize = g.out_channels * ckk;
    T* partial = threads > 1 ? scratch(partial_buffer, threads * wsize) : grad_w;
    std::fill(partial, partial + threads * wsize, T(0));
    for_each_image(g.batch, threads, [&](int64_t n, int t) {
      Columns<T> columns(x, g, n, 1, true);
      for (int64_t cg = 0; cg < g.groups; ++cg) {
        columns.select_rows(cg * ckk);
        gemm(matrix_product<T>(g, false, false, filters, ckk, spatial,
                               grad_y + (n * g.out_channels + cg * filters) * spatial, spatial,
                               nullptr, 0, partial + t * wsize + cg * filters * ckk, ckk, 1.0),
             columns);
      }
    });
    if (threads > 1)
      parallel_for(wsize, kParallelGrain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          T acc = 0;
          for (int t = 0; t < threads; ++t) acc += partial[t * wsize + i];
          grad_w[i] = acc;
        }
      });
    return;
  }
  for (int64_t n0 = 0; n0 < g.batch; n0 += size) {
    const int64_t count = std::min(size, g.batch - n0), width = count * spatial;
    const T* g_wide = grad_y + n0 * g.out_channels * spatial;
    if (count > 1) {
      T* wide = scratch(wide_buffer, g.out_channels * width);
      to_wide(grad_y, g.out_channels, spatial, n0, count, wide);
      g_wide = wide;
    }
    Columns<T> columns(x, g, n0, count, true);
    for (int64_t cg = 0; cg < g.groups; ++cg) {
      columns.select_rows(cg * ckk);
      gemm(matrix_product<T>(g, false, false, filters, ckk, width, g_wide + cg * filters * width,
                             width, nullptr, 0, grad_w + cg * filters * ckk, ckk,
                             n0 == 0 ? 0.0 : 1.0),
           columns);
    }
  }
}

// The adjoint of im2col: writes each image plane of dx as the sum of the column entries
// that were read from its pixels. cols covers the images [n0, n0 + count).
template <class T>
void col2im(const T* cols, const Conv2dGeometry& g, int64_t n0, int64_t count, T* dx) {
  const int64_t spatial = g.out_h * g.out_w, width = count * spatial;
  const int64_t taps = g.kernel_h * g.kernel_w;
  parallel_for(count * g.in_channels, grain_for(taps * spatial), [&](int64_t b, int64_t e) {
    for (int64_t task = b; task < e; ++task) {
      const int64_t i = task / g.in_channels, c = task % g.in_channels;
      T* plane = dx + ((n0 + i) * g.in_channels + c) * g.in_h * g.in_w;
      std::fill(plane, plane + g.in_h * g.in_w, T(0));
      for (int64_t ki = 0; ki < g.kernel_h; ++ki)
        for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
          const T* src = cols + ((c * g.kernel_h + ki) * g.kernel_w + kj) * width + i * spatial;
          const IndexRange valid = valid_columns(g, kj);
          const int64_t shift = kj * g.dilation_w - g.pad_left;
          for (int64_t oh = 0; oh < g.out_h; ++oh, src += g.out_w) {
            const int64_t ih = oh * g.stride_h - g.pad_top + ki * g.dilation_h;
            if (ih < 0 || ih >= g.in_h) continue;
            T* row = plane + ih * g.in_w;
            for (int64_t ow = valid.lo; ow < valid.hi; ++ow) row[ow * g.stride_w + shift] += src[ow];
          }
        }
    }
  });
}

// Whether dX is the stride-1 convolution below: one channel group, and padding that
// leaves the transposed convolution a non-negative padding.
bool input_gradient_is_convolution(const Conv2dGeometry& g) {
  return g.groups == 1 && g.stride_h == 1 && g.stride_w == 1 &&
         std::max(g.pad_top, g.pad_bottom) <= g.dilation_h * (g.kernel_h - 1) &&
         std::max(g.pad_left, g.pad_right) <= g.dilation_w * (g.kernel_w - 1);
}

// dX for a stride-1 convolution: the full correlation of G with the kernel flipped in
// space and with input and output channels swapped, i.e. a convolution with the same
// dilation and padding d·(k − 1) − pad (per side) whose output has the input's size.
template <class T>
void input_gradient_stride1(const T* w, const T* grad_y, const Conv2dGeometry& g, T* dx) {
  const int64_t taps = g.kernel_h * g.kernel_w;
  thread_local std::vector<T> flipped_buffer;
  T* flipped = scratch(flipped_buffer, g.in_channels * g.out_channels * taps);
  for (int64_t o = 0; o < g.out_channels; ++o)
    for (int64_t c = 0; c < g.in_channels; ++c)
      for (int64_t t = 0; t < taps; ++t)
        flipped[(c * g.out_channels + o) * taps + (taps - 1 - t)] =
            w[(o * g.in_channels + c) * taps + t];
  Conv2dGeometry t = g;
  t.in_channels = g.out_channels;
  t.out_channels = g.in_channels;
  t.in_h = g.out_h;
  t.in_w = g.out_w;
  t.out_h = g.in_h;
  t.out_w = g.in_w;
  t.pad_top = g.dilation_h * (g.kernel_h - 1) - g.pad_top;
  t.pad_bottom = g.dilation_h * (g.kernel_h - 1) - g.pad_bottom;
  t.pad_left = g.dilation_w * (g.kernel_w - 1) - g.pad_left;
  t.pad_right = g.dilation_w * (g.kernel_w - 1) - g.pad_right;
  convolve<T>(grad_y, flipped, nullptr, t, dx);
}

// dX_col = W_rowᵀ · G per group of images and channel group, then col2im (any stride).
template <class T>
void input_gradient_strided(const T* w, const T* grad_y, const Conv2dGeometry& g, T* dx) {
  const int64_t ckk = group_rows(g), filters = group_filters(g);
  const int64_t rows = g.groups * ckk;
  const int64_t spatial = g.out_h * g.out_w;
  thread_local std::vector<T> cols_buffer, wide_buffer;
  const int64_t size = group_size(g, std::max(g.out_channels, rows));
  for (int64_t n0 = 0; n0 < g.batch; n0 += size) {
    const int64_t count = std::min(size, g.batch - n0), width = count * spatial;
    const T* g_wide = grad_y + n0 * g.out_channels * spatial;
    if (count > 1) {
      T* wide = scratch(wide_buffer, g.out_channels * width);
      to_wide(grad_y, g.out_channels, spatial, n0, count, wide);
      g_wide = wide;
    }
    T* cols = scratch(cols_buffer, rows * width);
    for (int64_t cg = 0; cg < g.groups; ++cg)
      gemm(matrix_product<T>(g, true, false, ckk, width, filters, w + cg * filters * ckk, ckk,
                             g_wide + cg * filters * width, width, cols + cg * ckk * width, width,
                             0.0));
    col2im(cols, g, n0, count, dx);
  }
}

template <class T>
void conv_backward(const Tensor& x, const Tensor& weight, const Tensor& grad_y,
                   const Conv2dGeometry& g, Tensor* grad_x, Tensor* grad_weight,
                   Tensor* grad_bias) {
  const int64_t spatial = g.out_h * g.out_w;
  const int64_t filters = group_filters(g), channels = g.in_channels / g.groups;
  const T* px = x.data<T>();
  const T* pw = weight.data<T>();
  const T* pg = grad_y.data<T>();
  if (grad_bias) bias_gradient(pg, g, grad_bias->data<T>());
  if (grad_weight) {
    T* gw = grad_weight->data<T>();
    if (is_depthwise(g)) {
      depthwise_weight_gradient(px, pg, g, gw);
    } else if (is_pointwise(g)) {
      // dW = Σ_n G[n] · X[n]ᵀ per channel group, accumulated in place (beta = 1 after
      // the first image).
      for (int64_t n = 0; n < g.batch; ++n)
        for (int64_t cg = 0; cg < g.groups; ++cg)
          gemm(matrix_product<T>(g, false, true, filters, channels, spatial,
                                 pg + (n * g.out_channels + cg * filters) * spatial, spatial,
                                 px + (n * g.in_channels + cg * channels) * spatial, spatial,
                                 gw + cg * filters * channels, channels, n == 0 ? 0.0 : 1.0));
    } else {
      weight_gradient(px, pg, g, gw);
    }
  }
  if (grad_x) {
    T* gx = grad_x->data<T>();
    if (is_depthwise(g))
      depthwise_input_gradient(pw, pg, g, gx);
    else if (input_gradient_is_convolution(g))
      input_gradient_stride1(pw, pg, g, gx);
    else
      input_gradient_strided(pw, pg, g, gx);
  }
}

// Output positions [lo, hi) along one axis whose window lies inside the image.
IndexRange inner_windows(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t dilation,
                         int64_t pad) {
  const int64_t span = dilation * (kernel - 1) + 1;
  const int64_t lo = std::clamp<int64_t>(ceil_div(pad, stride), 0, out);
  const int64_t hi = std::clamp<int64_t>(floor_div(in - span + pad, stride) + 1, lo, out);
  return {lo, hi};
}

template <class T>
void pool_forward(PoolKind kind, const T* x, const Conv2dGeometry& g, T* y, int64_t* argmax) {
  const int64_t planes = g.batch * g.in_channels;
  const IndexRange rows =
      inner_windows(g.in_h, g.out_h, g.kernel_h, g.stride_h, g.dilation_h, g.pad_top);
  const IndexRange cols =
      inner_windows(g.in_w, g.out_w, g.kernel_w, g.stride_w, g.dilation_w, g.pad_left);
  // Any window: skips the padding; NaN wins, and a later NaN over an earlier one.
  auto window_max = [&](const T* plane, int64_t oh, int64_t ow, T& best, int64_t& best_index) {
    best = -std::numeric_limits<T>::infinity();
    best_index = -1;
    for_window(g, oh, ow, [&](int64_t i) {
      const T v = plane[i];
      if (best_index < 0 || v > best || std::isnan(v)) {
        best = v;
        best_index = i;
      }
    });
  };
  // A window inside the image: branch-free selects, because on real data "is this the
  // new max" is a coin flip the branch predictor loses half the time (measured 6x
  // faster). Undilated windows get constant steps, which the compiler unrolls. A NaN
  // sends the window back to the exact scan above.
  auto inner_max = [&](auto dense, const T* plane, int64_t oh, int64_t ow, T& best,
                       int64_t& best_index) {
    const int64_t first = (oh * g.stride_h - g.pad_top) * g.in_w + ow * g.stride_w - g.pad_left;
    const int64_t row_step = dense ? g.in_w : g.dilation_h * g.in_w;
    const int64_t col_step = dense ? 1 : g.dilation_w;
    best = plane[first];
    best_index = first;
    bool nan = best != best;
    for (int64_t ki = 0; ki < g.kernel_h; ++ki)
      for (int64_t kj = 0; kj < g.kernel_w; ++kj) {
        const int64_t i = first + ki * row_step + kj * col_step;
        const T v = plane[i];
        const bool take = v > best;
        best = take ? v : best;
        best_index = take ? i : best_index;
        nan |= v != v;
      }
    return !nan;
  };
  const bool dense = g.dilation_h == 1 && g.dilation_w == 1;
  parallel_for(planes, grain_for(g.in_h * g.in_w), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const T* plane = x + p * g.in_h * g.in_w;
      for (int64_t oh = 0; oh < g.out_h; ++oh)
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const int64_t o = (p * g.out_h + oh) * g.out_w + ow;
          if (kind == PoolKind::Avg) {
            T total = 0;
            for_window(g, oh, ow, [&](int64_t i) { total += plane[i]; });
            y[o] = total / static_cast<T>(pool_divisor(g, oh, ow));
            continue;
          }
          T best;
          int64_t best_index;
          const bool inner = oh >= rows.lo && oh < rows.hi && ow >= cols.lo && ow < cols.hi;
          const bool done =
              inner && (dense ? inner_max(std::true_type{}, plane, oh, ow, best, best_index)
                              : inner_max(std::false_type{}, plane, oh, ow, best, best_index));
          if (!done)
            window_max(plane, oh, ow, best, best_index);
          y[o] = best;
          argmax[o] = best_index < 0 ? kNoPixel : best_index;
        }
    }
  });
}

// Max pooling: a window's gradient goes to its maximum, split evenly among tied maxima
// (the subgradient torch's amax uses); average pooling: G / divisor to each input pixel
// of the window (the seed's 平均池化 derivative).
template <class T>
void pool_backward(PoolKind kind, const T* gy, const int64_t* argmax, const T* x,
                   const Conv2dGeometry& g, T* gx) {
  const int64_t planes = g.batch * g.in_channels;
  parallel_for(planes, grain_for(g.in_h * g.in_w), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      T* plane = gx + p * g.in_h * g.in_w;
      std::fill(plane, plane + g.in_h * g.in_w, T(0));
      for (int64_t oh = 0; oh < g.out_h; ++oh)
        for (int64_t ow = 0; ow < g.out_w; ++ow) {
          const int64_t o = (p * g.out_h + oh) * g.out_w + ow;
          if (kind == PoolKind::Avg) {
            const T share = gy[o] / static_cast<T>(pool_divisor(g, oh, ow));
            for_window(g, oh, ow, [&](int64_t i) { plane[i] += share; });
            continue;
          }
          const int64_t entry = argmax[o];
          if (entry == kNoPixel) continue;
          const T* in = x + p * g.in_h * g.in_w;
          const T best = in[entry];
          const int64_t ties = max_pool_ties(g, oh, ow, in, best);
          if (ties <= 1) {
            plane[entry] += gy[o];
            continue;
          }
          const T share = gy[o] / static_cast<T>(ties);
          for_window(g, oh, ow, [&](int64_t i) {
            if (in[i] == best) plane[i] += share;
          });
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

void pool2d_backward(PoolKind kind, const Tensor& grad_y, const Tensor* argmax, const Tensor* x,
                     const Conv2dGeometry& geometry, Tensor& grad_x) {
  dispatch_float("pool2d", grad_y.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    pool_backward<T>(kind, grad_y.data<T>(), argmax ? argmax->data<int64_t>() : nullptr,
                     x ? x->data<T>() : nullptr, geometry, grad_x.data<T>());
  });
}

}  // namespace STEEPEST_ISA_NS
}  // namespace steepest::cpu
