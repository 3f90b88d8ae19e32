// The differentiable operators. Each checks its inputs (throwing "[op] ..." errors),
// runs the kernel of the input's device, and records a backward node when a gradient
// is wanted. The backward formulas live together in cpp/ops/backward.cpp.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "steepest/kernels.h"
#include "steepest/tensor.h"

namespace steepest::ops {

enum class Reduction : uint8_t { None, Sum, Mean };
Reduction reduction_from_name(const char* op, const std::string& name);

// An axis list for reductions; nullopt reduces over every axis.
using Axes = std::optional<std::vector<int64_t>>;

// Elementwise, numpy broadcasting, dtype promotion as NumPy >= 2 / PyTorch (dtype.h:
// result_type); true division and float functions of integers give kDefaultFloat.
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor compare(BinaryOp op, const Tensor& a, const Tensor& b);  // bool result, no grad
Tensor add_scalar(const Tensor& x, double value);
Tensor mul_scalar(const Tensor& x, double value);
// A 0-d tensor holding `value` with x's dtype and device (Python scalars in operators).
Tensor scalar_like(const Tensor& x, double value);
// A Python scalar operand of x as a 0-d tensor of their promoted dtype: scalar_dtype is
// Bool, Int64 or Float64 for a Python bool, int or float (a weak scalar, dtype.h).
Tensor scalar_operand(const Tensor& x, double value, DType scalar_dtype);

// neg, exp, log, sqrt, abs, relu, sigmoid, tanh, gelu: the UNARY_FUNCTION lines of
// unary_ops.def.
#define UNARY_FUNCTION(function, Name, doc) Tensor function(const Tensor& x);
#include "steepest/unary_ops.def"
Tensor power(const Tensor& x, double exponent);  // a float exponent
// exponent_dtype says whether the exponent is a Python bool, int or float: int ** int
// stays an integer tensor, int ** float is kDefaultFloat.
Tensor power(const Tensor& x, double exponent, DType exponent_dtype);
Tensor clamp_min(const Tensor& x, double lower);

// Reductions.
Tensor sum(const Tensor& x, const Axes& axes = std::nullopt, bool keepdims = false);
Tensor mean(const Tensor& x, const Axes& axes = std::nullopt, bool keepdims = false);
Tensor max(const Tensor& x, const Axes& axes = std::nullopt, bool keepdims = false);
// Sums x down to `shape` (the backward of broadcasting, the seed's bias derivation).
Tensor sum_to(const Tensor& x, const Dims& shape);

// Linear algebra. matmul also takes a float16/bfloat16 a with a float32 b (a master
// weight): b is read rounded to a's dtype, the result has a's dtype (bit-identical to
// matmul(a, astype(b, a.dtype))) and b's gradient is float32, summed in float32.
Tensor matmul(const Tensor& a, const Tensor& b);
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);

// Neural-network ops.
Tensor softmax(const Tensor& x, int64_t axis = -1);
Tensor log_softmax(const Tensor& x, int64_t axis = -1);
Tensor cross_entropy(const Tensor& logits, const Tensor& labels, Reduction reduction);
Tensor mse_loss(const Tensor& prediction, const Tensor& target, Reduction reduction);
Tensor binary_cross_entropy(const Tensor& input, const Tensor& target, bool from_logits,
                            Reduction reduction);
// The zero padding of a convolution, each side on its own (TF/Keras "same" puts the odd
// pixel after). A pair (ph, pw) pads ph above and below and pw left and right.
struct Padding2d {
  int64_t top = 0, bottom = 0, left = 0, right = 0;
  Padding2d() = default;
  Padding2d(int64_t top_, int64_t bottom_, int64_t left_, int64_t right_)
      : top(top_), bottom(bottom_), left(left_), right(right_) {}
  Padding2d(std::pair<int64_t, int64_t> symmetric)  // NOLINT(google-explicit-constructor)
      : Padding2d(symmetric.first, symmetric.first, symmetric.second, symmetric.second) {}
};
using IntPair = std::pair<int64_t, int64_t>;
// torch's padding="same" for a stride-1 convolution: d·(k − 1) in all, the odd pixel
// after. A stride other than 1 is refused, as torch does.
Padding2d same_padding(const char* op, IntPair kernel, IntPair stride, IntPair dilation);
// The output length of one axis of a convolution or pooling window: the window spans
// dilation·(kernel − 1) + 1 pixels of the padded input. With ceil_mode a last partial
// window counts if it starts inside the input or the leading padding (torch's rule).
// Every step is overflow-checked (declared shapes may be huge): a ValueError naming op.
int64_t window_output_extent(const char* op, int64_t in, int64_t kernel, int64_t stride,
                             int64_t dilation, int64_t pad_before, int64_t pad_after,
                             bool ceil_mode = false);
// torch semantics: weight is (out, in / groups, kh, kw); groups split the channels into
// independent convolutions (groups == in channels: depthwise).
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, IntPair stride,
              const Padding2d& padding, IntPair dilation = {1, 1}, int64_t groups = 1);
// (N, C, L) through conv2d on the (N, C, 1, L) view; padding (before, after).
Tensor conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t stride,
              IntPair padding, int64_t dilation = 1, int64_t groups = 1);
Tensor max_pool2d(const Tensor& x, IntPair kernel, IntPair stride, const Padding2d& padding,
                  IntPair dilation = {1, 1}, bool ceil_mode = false);
Tensor avg_pool2d(const Tensor& x, IntPair kernel, IntPair stride, const Padding2d& padding,
                  bool ceil_mode = false, bool count_include_pad = true);
Tensor max_pool1d(const Tensor& x, int64_t kernel, int64_t stride, IntPair padding,
                  int64_t dilation = 1, bool ceil_mode = false);
Tensor avg_pool1d(const Tensor& x, int64_t kernel, int64_t stride, IntPair padding,
                  bool ceil_mode = false, bool count_include_pad = true);
Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps);
// Fused Transformer pieces (cpp/ops/fused.cpp), each equal to its composition:
// gelu(x + bias), the bias over the last axis.
Tensor bias_gelu(const Tensor& x, const Tensor& bias);
// x + y + bias (bias over the last axis, may be undefined); x and y of one shape.
Tensor bias_residual(const Tensor& x, const Tensor& y, const Tensor& bias);
// (s, layer_norm(s, weight, ln_bias, eps)) with s = x + y + bias, in one pass per row.
std::pair<Tensor, Tensor> add_layer_norm(const Tensor& x, const Tensor& y, const Tensor& bias,
                                         const Tensor& weight, const Tensor& ln_bias,
                                         double eps);
Tensor embedding(const Tensor& indices, const Tensor& table);
// Batch normalisation over every axis but `axis` (the channels), Keras semantics.
// training: normalises with the batch mean and biased variance and, when running_mean /
// running_var are given, updates them in place as Keras does:
// moving = moving·momentum + batch·(1 − momentum), the variance biased (torch's momentum
// m is 1 − m here, and torch feeds the unbiased variance). Otherwise normalises with
// running_mean / running_var. Statistics are of the compute type (float for 16-bit x).
Tensor batch_norm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                  const Tensor& weight, const Tensor& bias, bool training, double momentum,
                  double eps, int64_t axis);
// seed nullopt draws one from the global generator.
Tensor dropout(const Tensor& x, double rate, bool training, std::optional<uint64_t> seed);

// softmax(q·kᵀ·scale + mask)·v over (..., T, D) inputs; scale defaults to 1/√D and the
// causal mask hides keys after each query.
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v,
                                    bool causal, std::optional<double> scale = std::nullopt);
// Multi-head self-attention on a fused projection qkv (B, T, 3·d): q, k and v are its
// thirds in that order, each split into `heads` heads of d/heads features; returns the
// heads merged back, (B, T, d). Its gradient is one (B, T, 3·d) tensor written by the
// fused kernel, with no per-head split or merge copies in either direction.
Tensor qkv_attention(const Tensor& qkv, int64_t heads, bool causal,
                     std::optional<double> scale = std::nullopt);

// Activation checkpointing: runs fn without recording a graph, keeping only `inputs`;
// backward runs fn again and backpropagates through the recomputed graph. fn must be
// deterministic (dropout keyed by seed and step is).
using CheckpointFunction = std::function<Tensor(const std::vector<Tensor>&)>;
Tensor checkpoint(const CheckpointFunction& fn, const std::vector<Tensor>& inputs);

// Shape and layout (views where possible, all differentiable).
Tensor reshape(const Tensor& x, const Dims& shape);  // one -1 allowed
Tensor flatten(const Tensor& x);                     // (N, ...) -> (N, prod(...))
Tensor transpose(const Tensor& x, int64_t axis0, int64_t axis1);
Tensor permute(const Tensor& x, const Dims& order);
Tensor expand(const Tensor& x, const Dims& shape);  // -1 keeps a dimension (torch)
Tensor unsqueeze(const Tensor& x, int64_t axis);
Tensor squeeze(const Tensor& x, int64_t axis);  // a no-op when the axis is not of size 1
Tensor squeeze(const Tensor& x, const Axes& axes);  // nullopt: every axis of size 1
// torch.flatten: axes start_dim..end_dim merged into one.
Tensor flatten(const Tensor& x, int64_t start_dim, int64_t end_dim);
// Python slice semantics: negative bounds count from the end, bounds are clamped, a
// negative step walks backwards (a view with a negative stride, as NumPy).
Tensor slice(const Tensor& x, int64_t axis, int64_t start, int64_t stop, int64_t step);
Tensor select(const Tensor& x, int64_t axis, int64_t index);  // drops the axis
// Integer-array indexing. index_select: x.shape[:axis] + indices.shape + x.shape[axis+1:],
// negative indices counting from the end; the backward is a scatter-add.
Tensor index_select(const Tensor& x, int64_t axis, const Tensor& indices);
// NumPy advanced indexing of x by int tensors on distinct, increasing `axes` (broadcast
// together); the indexed dimensions replace the axes when adjacent, else come first.
Tensor advanced_index(const Tensor& x, const std::vector<int>& axes, const std::vector<Tensor>& indices);
// The coordinates of the true elements of a bool mask, one int64 tensor per axis.
std::vector<Tensor> nonzero(const Tensor& mask);
// x[advanced index] = values (broadcast, cast to x's dtype), in place, no autograd.
void index_put(Tensor& x, const std::vector<int>& axes, const std::vector<Tensor>& indices,
               const Tensor& values);
Tensor contiguous(const Tensor& x);
Tensor clone(const Tensor& x);
Tensor astype(const Tensor& x, DType dtype);
Tensor to_device(const Tensor& x, Device device);
// Writes src into dst in place, from any device and dtype (dst keeps its own): how
// weights are set on a GPU model. Not recorded by autograd.
void copy_into(const Tensor& src, Tensor& dst);

// Creation.
Tensor randn(const Dims& shape, std::optional<uint64_t> seed, DType dtype, Device device);
Tensor rand(const Dims& shape, std::optional<uint64_t> seed, DType dtype, Device device);
Tensor arange(int64_t start, int64_t stop, int64_t step, DType dtype, Device device);

// Broadcast result shape of a and b, or a ValueError naming `op` and both shapes.
Dims broadcast_shapes(const char* op, const Dims& a, const Dims& b);

// --- Everyday ops (NumPy/PyTorch names) ---------------------------------------------
// Pointwise (cpp/ops/pointwise.cpp). Tied extrema share the gradient evenly.
Tensor where(const Tensor& cond, const Tensor& x, const Tensor& y);
Tensor maximum(const Tensor& a, const Tensor& b);
Tensor minimum(const Tensor& a, const Tensor& b);
Tensor clip(const Tensor& x, std::optional<double> lo, std::optional<double> hi);
Tensor clip(const Tensor& x, const Tensor& lo, const Tensor& hi);  // either may be undefined
Tensor pow(const Tensor& x, const Tensor& y);
Tensor erf(const Tensor& x);
Tensor silu(const Tensor& x);
Tensor softplus(const Tensor& x, double beta = 1.0, double threshold = 20.0);
Tensor elu(const Tensor& x, double alpha = 1.0);
Tensor leaky_relu(const Tensor& x, double negative_slope = 0.01);

// Reductions and scans (cpp/ops/scan.cpp); axis nullopt works on the flattened x.
Tensor min(const Tensor& x, const Axes& axes = std::nullopt, bool keepdims = false);
Tensor prod(const Tensor& x, const Axes& axes = std::nullopt, bool keepdims = false);
Tensor cumsum(const Tensor& x, std::optional<int64_t> axis);
Tensor logsumexp(const Tensor& x, const Axes& axes = std::nullopt, bool keepdims = false);
Tensor var(const Tensor& x, const Axes& axes = std::nullopt, bool keepdims = false, double ddof = 0);
Tensor std_dev(const Tensor& x, const Axes& axes = std::nullopt, bool keepdims = false,
               double ddof = 0);

// Selection (cpp/ops/select.cpp). Index tensors are int32/int64, negative entries count
// from the end.
Tensor argmax(const Tensor& x, std::optional<int64_t> axis = std::nullopt, bool keepdims = false);
Tensor argmin(const Tensor& x, std::optional<int64_t> axis = std::nullopt, bool keepdims = false);
Tensor take_along_axis(const Tensor& x, const Tensor& indices, std::optional<int64_t> axis);
Tensor gather(const Tensor& x, int64_t axis, const Tensor& index);

// Joining and rearranging (cpp/ops/join.cpp).
Tensor cat(const std::vector<Tensor>& tensors, int64_t axis = 0);
Tensor stack(const std::vector<Tensor>& tensors, int64_t axis = 0);
// torch's split: parts of the given sizes, or of split_size each (the last may be smaller).
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t axis);
std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t axis);
// numpy's split: `sections` equal parts, or the parts between the given indices.
std::vector<Tensor> split_sections(const Tensor& x, int64_t sections, int64_t axis);
std::vector<Tensor> split_at(const Tensor& x, const std::vector<int64_t>& indices, int64_t axis);
enum class PadMode : uint8_t { Constant, Reflect, Edge, Wrap };
PadMode pad_mode_from_name(const std::string& name);
// widths: one (before, after) pair per axis, as numpy's pad_width.
Tensor pad(const Tensor& x, const std::vector<std::pair<int64_t, int64_t>>& widths, PadMode mode,
           double value = 0.0);
Tensor flip(const Tensor& x, const std::vector<int64_t>& axes);
Tensor tril(const Tensor& x, int64_t k = 0);
Tensor triu(const Tensor& x, int64_t k = 0);

// Creation.
Tensor eye(int64_t n, std::optional<int64_t> m, int64_t k, DType dtype, Device device);
Tensor linspace(double start, double stop, int64_t num, bool endpoint, DType dtype, Device device);
// int64 (..., num_classes); num_classes < 0 takes max(indices) + 1.
Tensor one_hot(const Tensor& indices, int64_t num_classes = -1);

}  // namespace steepest::ops

namespace steepest {
// The global generator behind seed-less random ops (st.manual_seed).
void manual_seed(uint64_t seed);
uint64_t next_seed();
}  // namespace steepest
