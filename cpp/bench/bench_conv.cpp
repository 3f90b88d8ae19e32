// Convolution kernels (im2col + GEMM, the seed's 实际的卷积) on the digits CNN layers and
// one wider layer: forward, and backward (dW, db, and dX except for the first layer,
// whose input needs no gradient). The last argument is the OpenMP thread count.
#include "bench_util.h"
#include "steepest/kernels.h"
#include "steepest/ops.h"

namespace steepest::bench {
namespace {

struct ConvLayer {
  Conv2dGeometry g;
  Tensor x, weight, bias, y;

  ConvLayer(int64_t batch, int64_t in_channels, int64_t size, int64_t out_channels,
            int64_t kernel, int64_t pad) {
    g.batch = batch;
    g.in_channels = in_channels;
    g.in_h = g.in_w = size;
    g.out_channels = out_channels;
    g.kernel_h = g.kernel_w = kernel;
    g.pad_top = g.pad_bottom = g.pad_left = g.pad_right = pad;
    g.out_h = g.out_w = size + 2 * pad - kernel + 1;
    x = ops::randn({batch, in_channels, size, size}, 1, DType::Float32, Device{});
    weight = ops::randn({out_channels, in_channels, kernel, kernel}, 2, DType::Float32, Device{});
    bias = ops::randn({out_channels}, 3, DType::Float32, Device{});
    y = Tensor::empty({batch, out_channels, g.out_h, g.out_w}, DType::Float32);
  }

  // Multiply-adds of one GEMM-shaped pass (forward, dW or dX) times two.
  double flops() const {
    return 2.0 * double(g.batch * g.out_channels * g.out_h * g.out_w) *
           double(g.in_channels * g.kernel_h * g.kernel_w);
  }
};

void ConvForward(benchmark::State& state, int64_t batch, int64_t in_channels, int64_t size,
                 int64_t out_channels) {
  use_threads(state, 0);
  ConvLayer layer(batch, in_channels, size, out_channels, 3, 1);
  for (auto _ : state) {
    cpu::conv2d_forward(layer.x, layer.weight, layer.bias, layer.g, layer.y);
    benchmark::ClobberMemory();
  }
  report_flops(state, layer.flops());
}

void ConvBackward(benchmark::State& state, int64_t batch, int64_t in_channels, int64_t size,
                  int64_t out_channels, bool grad_input) {
  use_threads(state, 0);
  ConvLayer layer(batch, in_channels, size, out_channels, 3, 1);
  Tensor grad_y = ops::randn(layer.y.shape(), 4, DType::Float32, Device{});
  Tensor grad_x = Tensor::empty(layer.x.shape(), DType::Float32);
  Tensor grad_w = Tensor::empty(layer.weight.shape(), DType::Float32);
  Tensor grad_b = Tensor::empty(layer.bias.shape(), DType::Float32);
  for (auto _ : state) {
    cpu::conv2d_backward(layer.x, layer.weight, grad_y, layer.g, grad_input ? &grad_x : nullptr,
                         &grad_w, &grad_b);
    benchmark::ClobberMemory();
  }
  report_flops(state, layer.flops() * (grad_input ? 2 : 1));
}

#define STEEPEST_CONV(name, n, c, size, cout, grad_input)                                \
  BENCHMARK_CAPTURE(ConvForward, name, n, c, size, cout)                                  \
      ->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMicrosecond);                     \
  BENCHMARK_CAPTURE(ConvBackward, name, n, c, size, cout, grad_input)                     \
      ->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMicrosecond)
// The digits CNN: conv 1→32 on 8×8, 2×2 max-pool, conv 32→64 on 4×4 (3×3, padding 1).
STEEPEST_CONV(digits_conv1_n32_1to32_8x8, 32, 1, 8, 32, false);
STEEPEST_CONV(digits_conv2_n32_32to64_4x4, 32, 32, 4, 64, true);
STEEPEST_CONV(n32_64to64_32x32, 32, 64, 32, 64, true);
#undef STEEPEST_CONV

}  // namespace
}  // namespace steepest::bench
