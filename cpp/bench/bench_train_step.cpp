// One training step of the digits MLP (64→256→256→10, ReLU, batch 32) through the
// public op API: forward with ops::linear/relu/cross_entropy, backward with
// steepest::backward. Measures what the eager engine costs per step (GEMMs plus op
// dispatch, allocation and the tape); the optimizer update is not included.
#include <vector>

#include "bench_util.h"
#include "steepest/autograd.h"
#include "steepest/ops.h"

namespace steepest::bench {
namespace {

void TrainStepMlp(benchmark::State& state) {
  use_threads(state, 0);
  const int64_t batch = 32;
  const std::vector<int64_t> widths = {64, 256, 256, 10};
  std::vector<Tensor> weights, biases;
  for (size_t i = 0; i + 1 < widths.size(); ++i) {
    Tensor w = ops::mul_scalar(ops::randn({widths[i], widths[i + 1]}, 10 + i, DType::Float32,
                                          Device{}),
                               0.1);
    Tensor b = Tensor::zeros({widths[i + 1]}, DType::Float32);
    w.set_requires_grad(true);
    b.set_requires_grad(true);
    weights.push_back(w);
    biases.push_back(b);
  }
  Tensor x = ops::randn({batch, widths[0]}, 1, DType::Float32, Device{});
  Tensor labels = Tensor::empty({batch}, DType::Int64);
  for (int64_t i = 0; i < batch; ++i) labels.data<int64_t>()[i] = i % 10;

  double flops = 0;
  for (size_t i = 0; i + 1 < widths.size(); ++i)
    flops += 2.0 * batch * double(widths[i] * widths[i + 1]) * (i == 0 ? 2 : 3);
  for (auto _ : state) {
    Tensor h = x;
    for (size_t i = 0; i < weights.size(); ++i) {
      h = ops::linear(h, weights[i], biases[i]);
      if (i + 1 < weights.size()) h = ops::relu(h);
    }
    Tensor loss = ops::cross_entropy(h, labels, ops::Reduction::Mean);
    backward(loss, Tensor());
    for (size_t i = 0; i < weights.size(); ++i) {
      weights[i].set_grad(Tensor());
      biases[i].set_grad(Tensor());
    }
  }
  report_flops(state, flops);
}
BENCHMARK(TrainStepMlp)->Arg(1)->Arg(2)->UseRealTime()->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace steepest::bench
