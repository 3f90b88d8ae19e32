// The Keras layers, each a forward pass over ops (so autograd derives its backward) and
// the weights it owns. Under a mixed-precision policy (混合精度训练：…同时保留FP32的权重
// 主副本) the weights stay float32 and each forward casts them to the compute dtype.
#include <cmath>

#include "steepest/autograd.h"
#include "steepest/kernels.h"
#include "steepest/model.h"
#include "steepest/ops.h"

namespace steepest::model {

Activation activation_from_name(const std::string& name) {
  if (name.empty() || name == "linear" || name == "none") return Activation::Linear;
  if (name == "relu") return Activation::Relu;
  if (name == "sigmoid") return Activation::Sigmoid;
  if (name == "tanh") return Activation::Tanh;
  if (name == "gelu") return Activation::Gelu;
  if (name == "softmax") return Activation::Softmax;
  fail("activation", "unknown activation '", name,
       "'; expected one of linear, relu, sigmoid, tanh, gelu, softmax");
}

const char* activation_name(Activation activation) {
  switch (activation) {
    case Activation::Linear:
      return "linear";
    case Activation::Relu:
      return "relu";
    case Activation::Sigmoid:
      return "sigmoid";
    case Activation::Tanh:
      return "tanh";
    case Activation::Gelu:
      return "gelu";
    case Activation::Softmax:
      return "softmax";
  }
  return "linear";
}

Tensor apply_activation(Activation activation, const Tensor& x) {
  switch (activation) {
    case Activation::Linear:
      return x;
    case Activation::Relu:
      return ops::relu(x);
    case Activation::Sigmoid:
      return ops::sigmoid(x);
    case Activation::Tanh:
      return ops::tanh(x);
    case Activation::Gelu:
      return ops::gelu(x);
    case Activation::Softmax:
      return ops::softmax(x, -1);
  }
  return x;
}

Tensor Regularizer::penalty(const Tensor& weight) const {
  Tensor total;
  if (l1 != 0.0) total = ops::mul_scalar(ops::sum(ops::abs(weight)), l1);
  if (l2 != 0.0) {
    Tensor l2_term = ops::mul_scalar(ops::sum(ops::mul(weight, weight)), l2);
    total = total.defined() ? ops::add(total, l2_term) : l2_term;
  }
  return total;
}

namespace {

Tensor add_penalty(const Tensor& total, const Tensor& term) {
  if (!term.defined()) return total;
  return total.defined() ? ops::add(total, term) : term;
}

}  // namespace

// ----------------------------------------------------------------------------- Layer

Dims Layer::build(const Dims& input_shape, uint64_t seed) {
  input_shape_ = input_shape;
  weights_.clear();
  output_shape_ = build_weights(input_shape, seed);
  built_ = true;
  return output_shape_;
}

std::pair<Dims, std::vector<std::pair<std::string, Dims>>> Layer::plan(const Dims& input_shape) {
  std::pair<Dims, std::vector<std::pair<std::string, Dims>>> out;
  plan_ = &out.second;
  try {
    out.first = build_weights(input_shape, 0);
  } catch (...) {
    plan_ = nullptr;
    throw;
  }
  plan_ = nullptr;
  return out;
}

void Layer::to_device(Device device) {
  for (auto& entry : weights_) {
    TensorImpl& w = *entry.second.impl();
    if (w.storage->device() == device) continue;
    // The weight's impl takes over the copy's storage: autograd identity and
    // requires_grad stay, only the memory moves (as torch's param.data = ...).
    Tensor moved = ops::to_device(entry.second.detach(), device);
    w.storage = moved.storage();
    w.strides = moved.strides();
    w.offset = moved.offset();
    if (w.grad) w.grad = ops::to_device(Tensor(w.grad).detach(), device).impl_ptr();
  }
}

void Layer::set_compute_dtype(DType dtype) {
  if (!is_floating(dtype))
    fail<TypeError>(kind(), "the compute dtype must be floating-point, got ", dtype_name(dtype));
  compute_dtype_ = dtype;
}

Tensor Layer::cast(const Tensor& t) const {
  if (!t.defined() || !is_floating(t.dtype()) || t.dtype() == compute_dtype_) return t;
  return ops::astype(t, compute_dtype_);
}

Tensor Layer::product_weight(const Tensor& w) const {
  return is_half_float(compute_dtype_) && w.dtype() == DType::Float32 ? w : cast(w);
}

Tensor Layer::add_weight(const std::string& name, const Dims& shape, const std::string& initializer,
                         int64_t fan_in, int64_t fan_out, uint64_t seed) {
  if (plan_ != nullptr) {
    plan_->emplace_back(name, shape);
    return {};
  }
  NoGradGuard no_grad;
  const DType dtype = DType::Float32;
  double fan_sum = static_cast<double>(std::max<int64_t>(fan_in + fan_out, 1));
  double fan_in_d = static_cast<double>(std::max<int64_t>(fan_in, 1));
  auto uniform = [&](double limit) {
    return ops::add_scalar(ops::mul_scalar(ops::rand(shape, seed, dtype, {}), 2.0 * limit), -limit);
  };
  auto normal = [&](double stddev) { return ops::mul_scalar(ops::randn(shape, seed, dtype, {}), stddev); };
  Tensor w;
  if (initializer == "glorot_uniform") w = uniform(std::sqrt(6.0 / fan_sum));
  else if (initializer == "glorot_normal") w = normal(std::sqrt(2.0 / fan_sum));
  else if (initializer == "he_uniform") w = uniform(std::sqrt(6.0 / fan_in_d));
  else if (initializer == "he_normal") w = normal(std::sqrt(2.0 / fan_in_d));
  else if (initializer == "random_uniform" || initializer == "uniform") w = uniform(0.05);
  else if (initializer == "random_normal" || initializer == "normal") w = normal(0.05);
  else if (initializer == "zeros") w = Tensor::zeros(shape, dtype);
  else if (initializer == "ones") w = Tensor::full(shape, 1.0, dtype);
  else
    fail(kind(), "unknown initializer '", initializer,
         "'; expected glorot_uniform, glorot_normal, he_uniform, he_normal, random_uniform, "
         "random_normal, zeros or ones");
  w = w.detach();
  w.set_requires_grad(true);
  weights_.emplace_back(name, w);
  return w;
}

// ----------------------------------------------------------------------------- Dense

Dense::Dense(std::string name, int64_t units, Activation activation, bool use_bias,
             std::string kernel_initializer, std::string bias_initializer,
             Regularizer kernel_regularizer, Regularizer bias_regularizer)
    : Layer(std::move(name)), units_(units), activation_(activation), use_bias_(use_bias),
      kernel_initializer_(std::move(kernel_initializer)),
      bias_initializer_(std::move(bias_initializer)), kernel_regularizer_(kernel_regularizer),
      bias_regularizer_(bias_regularizer) {
  if (units <= 0) fail("Dense", "units must be positive, got ", units);
}

Dims Dense::build_weights(const Dims& input_shape, uint64_t seed) {
  if (input_shape.empty()) fail("Dense", "needs an input with a feature axis, got shape ", input_shape);
  int64_t in = input_shape.back();
  add_weight("kernel", {in, units_}, kernel_initializer_, in, units_, seed);
  if (use_bias_) add_weight("bias", {units_}, bias_initializer_, in, units_, seed + 1);
  Dims out = input_shape;
  out[out.size() - 1] = units_;
  return out;
}

// The seed's linear layer, Y = X·W + b.
Tensor Dense::forward_pre_activation(const Tensor& x, Pass pass) {
  const Tensor input = cast(x);
  Tensor y = ops::linear(input, product_weight(weights_[0].second),
                         use_bias_ ? cast(weights_[1].second) : Tensor());
  if (!kfac_ || !pass.training || !grad_enabled()) return y;
  {
    NoGradGuard no_grad;
    kfac_->add_inputs(ops::reshape(input.detach(), {-1, input.shape().back()}), input.shape()[0]);
  }
  return optim::kfac_output_tap(y, kfac_, y.ndim() - 1);
}

Tensor Dense::forward(const Tensor& x, Pass pass) {
  return apply_activation(activation_, forward_pre_activation(x, pass));
}

Tensor Dense::regularization() const {
  Tensor total;
  if (kernel_regularizer_.active()) total = kernel_regularizer_.penalty(weights_[0].second);
  if (use_bias_ && bias_regularizer_.active())
    total = add_penalty(total, bias_regularizer_.penalty(weights_[1].second));
  return total;
}

// ---------------------------------------------------------------------------- Conv2D

DataFormat data_format_from_name(const char* op, const std::string& name) {
  if (name == "channels_first") return DataFormat::ChannelsFirst;
  if (name == "channels_last") return DataFormat::ChannelsLast;
  fail(op, "data_format must be 'channels_first' or 'channels_last', got '", name, "'");
}

namespace {

// A per-sample shape in `format` as (C, H, W): images (H, W, C) / (C, H, W) for rank 2,
// sequences (L, C) / (C, L) for rank 1 as (C, 1, L).
Dims channels_first_shape(const char* op, DataFormat format, const Dims& shape, int rank = 2) {
  bool last = format == DataFormat::ChannelsLast;
  if (rank == 1) {
    if (shape.size() != 2)
      fail(op, "expects ", last ? "channels-last sequences (L, C)" : "channels-first sequences (C, L)",
           ", got input shape ", shape);
    return last ? Dims{shape[1], 1, shape[0]} : Dims{shape[0], 1, shape[1]};
  }
  if (shape.size() != 3)
    fail(op, "expects ", last ? "channels-last images (H, W, C)" : "channels-first images (C, H, W)",
         ", got input shape ", shape);
  return last ? Dims{shape[2], shape[0], shape[1]} : shape;
}

// (C, H, W) back in `format` (rank 1: (C, 1, L) as (L, C) or (C, L)).
Dims in_format(DataFormat format, const Dims& chw, int rank = 2) {
  bool last = format == DataFormat::ChannelsLast;
  if (rank == 1) return last ? Dims{chw[2], chw[0]} : Dims{chw[0], chw[2]};
  return last ? Dims{chw[1], chw[2], chw[0]} : chw;
}

// The kernels compute on NCHW (NCL for rank 1); a channels-last layer applies `f`
// between two transposes.
template <class F>
Tensor on_channels_first(DataFormat format, int rank, const Tensor& x, F f) {
  if (format == DataFormat::ChannelsFirst) return f(x);
  if (rank == 1) return ops::permute(f(ops::permute(x, {0, 2, 1})), {0, 2, 1});
  return ops::permute(f(ops::permute(x, {0, 3, 1, 2})), {0, 2, 3, 1});
}

// The pixels a window of `kernel` taps `dilation` apart spans, overflow-checked.
int64_t window_span(const char* op, int64_t kernel, int64_t dilation) {
  int64_t span = 0;
  if (__builtin_mul_overflow(dilation, kernel - 1, &span) || __builtin_add_overflow(span, 1, &span))
    fail(op, "kernel ", kernel, " with dilation ", dilation, " overflows 64 bits");
  return span;
}

// TF/Keras "same": output ceil(in / stride), the odd padding pixel after. Written so no
// step overflows: (out − 1)·stride < in.
std::pair<int64_t, int64_t> same_padding(int64_t in, int64_t span, int64_t stride) {
  const int64_t out = in / stride + (in % stride != 0);
  const int64_t total = out > 0 ? std::max<int64_t>(span - (in - (out - 1) * stride), 0) : 0;
  return {total / 2, total - total / 2};
}

// `shape`, a layer's per-sample output, once its element count is known to fit int64.
Dims checked_output(const char* op, const Dims& shape) {
  int64_t elements = 1;
  for (int64_t d : shape)
    if (__builtin_mul_overflow(elements, d, &elements))
      fail(op, "output shape ", shape, " per sample has more elements than 2^63 - 1");
  return shape;
}

}  // namespace

Conv2D::Conv2D(std::string name, int64_t filters, std::pair<int64_t, int64_t> kernel_size,
               std::pair<int64_t, int64_t> strides, bool same_padding, Activation activation,
               bool use_bias, std::string kernel_initializer, Regularizer kernel_regularizer,
               DataFormat data_format, ConvOptions options)
    : Layer(std::move(name)), filters_(filters), kernel_(kernel_size), strides_(strides),
      same_padding_(same_padding), data_format_(data_format), activation_(activation),
      use_bias_(use_bias), kernel_initializer_(std::move(kernel_initializer)),
      kernel_regularizer_(kernel_regularizer), options_(options) {
  const char* op = kind();
  if (options_.depth_multiplier > 0) {
    if (options_.groups != 1) fail(op, "takes no groups (one group per input channel)");
  } else if (filters <= 0) {
    fail(op, "filters must be positive, got ", filters);
  }
  if (options_.depth_multiplier < 0)
    fail(op, "depth_multiplier must be positive, got ", options_.depth_multiplier);
  if (kernel_.first <= 0 || kernel_.second <= 0 || strides_.first <= 0 || strides_.second <= 0)
    fail(op, "kernel_size and strides must be positive");
  if (options_.dilation.first <= 0 || options_.dilation.second <= 0)
    fail(op, "dilation_rate must be positive, got ", Dims{options_.dilation.first, options_.dilation.second});
  if (options_.groups <= 0) fail(op, "groups must be positive, got ", options_.groups);
  if (options_.depth_multiplier == 0 && filters % options_.groups != 0)
    fail(op, "groups=", options_.groups, " must divide filters=", filters);
  if (options_.causal && options_.rank != 1) fail(op, "padding='causal' is for Conv1D only");
}

const char* Conv2D::kind() const {
  if (options_.rank == 1) return "Conv1D";
  return options_.depth_multiplier > 0 ? "DepthwiseConv2D" : "Conv2D";
}

Dims Conv2D::build_weights(const Dims& input_shape, uint64_t seed) {
  const char* op = kind();
  const int rank = options_.rank;
  Dims chw = channels_first_shape(op, data_format_, input_shape, rank);
  int64_t channels = chw[0], h = chw[1], w = chw[2];
  groups_ = options_.groups;
  out_channels_ = filters_;
  if (options_.depth_multiplier > 0) {
    groups_ = channels;
    if (channels <= 0 || __builtin_mul_overflow(channels, options_.depth_multiplier, &out_channels_))
      fail(op, "input channels ", channels, " times depth_multiplier ", options_.depth_multiplier,
           " is not a positive 64-bit size");
  }
  if (channels % groups_ != 0)
    fail(op, "groups=", groups_, " must divide the input channels (", channels, ", input shape ",
         input_shape, ")");
  const auto [dh, dw] = options_.dilation;
  if (same_padding_) {
    auto [top, bottom] = same_padding(h, window_span(op, kernel_.first, dh), strides_.first);
    auto [left, right] = same_padding(w, window_span(op, kernel_.second, dw), strides_.second);
    padding_ = {top, bottom, left, right};
  } else if (options_.causal) {
    padding_ = {0, 0, window_span(op, kernel_.second, dw) - 1, 0};
  }
  const int64_t out_h = ops::window_output_extent(op, h, kernel_.first, strides_.first, dh,
                                                  padding_.top, padding_.bottom);
  const int64_t out_w = ops::window_output_extent(op, w, kernel_.second, strides_.second, dw,
                                                  padding_.left, padding_.right);
  // The product is checked for overflow; the fans (per-group channels·area,
  // filters·area) divide it.
  const int64_t group_channels = channels / groups_;
  const Dims kernel_shape = rank == 1 ? Dims{out_channels_, group_channels, kernel_.second}
                                      : Dims{out_channels_, group_channels, kernel_.first, kernel_.second};
  const int64_t elements = kernel_shape.product();
  add_weight("kernel", kernel_shape, kernel_initializer_, elements / out_channels_,
             group_channels ? elements / group_channels : 0, seed);
  if (use_bias_) add_weight("bias", {out_channels_}, "zeros", 0, 0, seed + 1);
  return checked_output(op, in_format(data_format_, {out_channels_, out_h, out_w}, rank));
}

optim::KfacLayout Conv2D::kfac_layout() const {
  const bool plain = options_.rank == 2 && options_.depth_multiplier == 0 && options_.groups == 1;
  return plain ? optim::KfacLayout::OutputRows : optim::KfacLayout::None;
}

Tensor Conv2D::forward_pre_activation(const Tensor& x, Pass pass) {
  const bool collect = kfac_ && pass.training && grad_enabled() && kfac_layout() != optim::KfacLayout::None;
  return on_channels_first(data_format_, options_.rank, cast(x), [&](const Tensor& input) {
    const Tensor bias = use_bias_ ? cast(weights_[1].second) : Tensor();
    if (options_.rank == 1)
      return ops::conv1d(input, cast(weights_[0].second), bias, strides_.second,
                         {padding_.left, padding_.right}, options_.dilation.second, groups_);
    Tensor y = ops::conv2d(input, cast(weights_[0].second), bias, strides_, padding_, options_.dilation,
                           groups_);
    if (!collect) return y;
    {
      NoGradGuard no_grad;
      kfac_->add_inputs(optim::im2col_rows(input.detach(), kernel_, strides_, options_.dilation,
                                           {padding_.top, padding_.bottom, padding_.left, padding_.right}),
                        input.shape()[0]);
    }
    return optim::kfac_output_tap(y, kfac_, 1);
  });
}

Tensor Conv2D::forward(const Tensor& x, Pass pass) {
  return apply_activation(activation_, forward_pre_activation(x, pass));
}

Tensor Conv2D::regularization() const {
  return kernel_regularizer_.active() ? kernel_regularizer_.penalty(weights_[0].second) : Tensor();
}

// ------------------------------------------------------------------- pooling, reshaping

Pool2D::Pool2D(std::string name, bool max, std::pair<int64_t, int64_t> pool_size,
               std::pair<int64_t, int64_t> strides, DataFormat data_format, bool same_padding,
               int rank)
    : Layer(std::move(name)), max_(max), pool_(pool_size), strides_(strides),
      data_format_(data_format), same_padding_(same_padding), rank_(rank) {
  if (pool_.first <= 0 || pool_.second <= 0 || strides_.first <= 0 || strides_.second <= 0)
    fail(kind(), "pool_size and strides must be positive, got pool_size ", Dims{pool_.first, pool_.second},
         " and strides ", Dims{strides_.first, strides_.second});
}

const char* Pool2D::kind() const {
  if (rank_ == 1) return max_ ? "MaxPooling1D" : "AveragePooling1D";
  return max_ ? "MaxPool2D" : "AvgPool2D";
}

Dims Pool2D::build_weights(const Dims& input_shape, uint64_t) {
  const char* op = kind();
  Dims chw = channels_first_shape(op, data_format_, input_shape, rank_);
  if (same_padding_) {
    auto [top, bottom] = same_padding(chw[1], pool_.first, strides_.first);
    auto [left, right] = same_padding(chw[2], pool_.second, strides_.second);
    padding_ = {top, bottom, left, right};
  }
  const int64_t out_h = ops::window_output_extent(op, chw[1], pool_.first, strides_.first, 1,
                                                  padding_.top, padding_.bottom);
  const int64_t out_w = ops::window_output_extent(op, chw[2], pool_.second, strides_.second, 1,
                                                  padding_.left, padding_.right);
  return checked_output(op, in_format(data_format_, {chw[0], out_h, out_w}, rank_));
}

Tensor Pool2D::forward(const Tensor& x, Pass) {
  return on_channels_first(data_format_, rank_, x, [&](const Tensor& input) {
    // rank 1 pools the (N, C, 1, L) view: the 1-D ops are exactly that.
    Tensor image = rank_ == 1 ? ops::reshape(input, {input.shape()[0], input.shape()[1], 1, input.shape()[2]})
                              : input;
    // TF/Keras average the input pixels of a "same"-padded window only.
    Tensor y = max_ ? ops::max_pool2d(image, pool_, strides_, padding_)
                    : ops::avg_pool2d(image, pool_, strides_, padding_, /*ceil_mode=*/false,
                                      /*count_include_pad=*/!same_padding_);
    return rank_ == 1 ? ops::reshape(y, {y.shape()[0], y.shape()[1], y.shape()[3]}) : y;
  });
}

Dims Flatten::build_weights(const Dims& input_shape, uint64_t) { return {input_shape.product()}; }

Tensor Flatten::forward(const Tensor& x, Pass) { return ops::flatten(x); }

Tensor ActivationLayer::forward(const Tensor& x, Pass) {
  return apply_activation(activation_, x);
}

Dropout::Dropout(std::string name, double rate, uint64_t seed)
    : Layer(std::move(name)), rate_(rate), seed_(seed) {
  if (!(rate >= 0.0 && rate < 1.0)) fail("Dropout", "rate must be in [0, 1), got ", rate);
}

// A fresh mask every step, reproducible from (seed, step): resuming training from a
// checkpoint draws the same masks as an uninterrupted run.
Tensor Dropout::forward(const Tensor& x, Pass pass) {
  uint64_t key = seed_ ^ (0x9E3779B97F4A7C15ull * static_cast<uint64_t>(pass.step + 1));
  return ops::dropout(x, rate_, pass.training, key);
}

LayerNormalization::LayerNormalization(std::string name, double epsilon, bool center, bool scale)
    : Layer(std::move(name)), epsilon_(epsilon), center_(center), scale_(scale) {
  if (!(epsilon > 0)) fail("LayerNormalization", "epsilon must be positive, got ", epsilon);
}

Dims LayerNormalization::build_weights(const Dims& input_shape, uint64_t seed) {
  if (input_shape.empty()) fail("LayerNormalization", "needs a feature axis, got ", input_shape);
  int64_t features = input_shape.back();
  if (scale_) add_weight("gamma", {features}, "ones", 0, 0, seed);
  if (center_) add_weight("beta", {features}, "zeros", 0, 0, seed);
  return input_shape;
}

Tensor LayerNormalization::forward(const Tensor& x, Pass) {
  Tensor gamma = scale_ ? cast(weights_[0].second) : Tensor();
  Tensor beta = center_ ? cast(weights_[scale_ ? 1 : 0].second) : Tensor();
  return ops::layer_norm(cast(x), gamma, beta, epsilon_);
}

Normalization::Normalization(std::string name, bool per_feature, std::vector<double> mean,
                             std::vector<double> variance)
    : Layer(std::move(name)), per_feature_(per_feature) {
  set_statistics(std::move(mean), std::move(variance));
}

void Normalization::set_statistics(std::vector<double> mean, std::vector<double> variance) {
  if (mean.size() != variance.size())
    fail("Normalization", "mean has ", mean.size(), " entries but variance has ", variance.size());
  for (double v : variance)
    if (!(v >= 0.0)) fail("Normalization", "variances must be >= 0, got ", v);
  mean_ = std::move(mean);
  variance_ = std::move(variance);
  if (built_) write_statistics();
}

Dims Normalization::build_weights(const Dims& input_shape, uint64_t) {
  if (input_shape.empty()) fail("Normalization", "needs a feature axis, got ", input_shape);
  Dims shape{per_feature_ ? input_shape.back() : 1};
  for (const char* name : {"mean", "variance"}) {
    Tensor w = add_weight(name, shape, "zeros", 0, 0, 0);
    if (w.defined()) w.set_requires_grad(false);  // statistics, not trained
  }
  if (!planning()) write_statistics();
  return input_shape;
}

void Normalization::write_statistics() {
  int64_t size = weights_[0].second.numel();
  if (mean_.empty()) {  // not adapted: the identity
    mean_.assign(static_cast<size_t>(size), 0.0);
    variance_.assign(static_cast<size_t>(size), 1.0);
  }
  if (static_cast<int64_t>(mean_.size()) != size)
    fail("Normalization", "statistics have ", mean_.size(), " entries but the layer normalises ",
         size, per_feature_ ? " features" : " scalar");
  // Written on the host, then copied into the weights wherever they live.
  Tensor mean = Tensor::empty({size}, DType::Float32), variance = Tensor::empty({size}, DType::Float32);
  for (int64_t i = 0; i < size; ++i) {
    mean.data<float>()[i] = static_cast<float>(mean_[static_cast<size_t>(i)]);
    variance.data<float>()[i] = static_cast<float>(variance_[static_cast<size_t>(i)]);
  }
  STEEPEST_KERNEL(weights_[0].second.device(), copy)(mean, weights_[0].second);
  STEEPEST_KERNEL(weights_[1].second.device(), copy)(variance, weights_[1].second);
}

// Keras: (x − mean) / max(√variance, ε), here as x·s − mean·s with s = 1/√max(var, ε²).
// s comes from the float32 statistics before the cast to the compute dtype.
Tensor Normalization::forward(const Tensor& x, Pass) {
  constexpr double kEpsilon = 1e-7;
  Tensor inv_std = ops::power(ops::clamp_min(weights_[1].second, kEpsilon * kEpsilon), -0.5);
  return ops::mul(ops::sub(cast(x), cast(weights_[0].second)), cast(inv_std));
}

BatchNormalization::BatchNormalization(std::string name, int64_t axis, double momentum,
                                       double epsilon, bool center, bool scale)
    : Layer(std::move(name)), axis_(axis), momentum_(momentum), epsilon_(epsilon),
      center_(center), scale_(scale) {
  const char* op = "BatchNormalization";
  if (axis == 0) fail(op, "axis 0 is the batch axis; expected a feature axis (1 or -1, ...)");
  if (!(epsilon > 0)) fail(op, "epsilon must be positive, got ", epsilon);
  if (!(momentum >= 0.0 && momentum <= 1.0)) fail(op, "momentum must be in [0, 1], got ", momentum);
}

Dims BatchNormalization::build_weights(const Dims& input_shape, uint64_t seed) {
  const char* op = "BatchNormalization";
  const auto rank = static_cast<int64_t>(input_shape.size()) + 1;  // with the batch axis
  if (axis_ >= rank || axis_ < -(rank - 1))
    fail(op, "axis ", axis_, " is out of range for inputs of shape (batch, ",
         input_shape, ") (expected 1..", rank - 1, " or -", rank - 1, "..-1)");
  batch_axis_ = axis_ < 0 ? axis_ + rank : axis_;
  const int64_t channels = input_shape[static_cast<size_t>(batch_axis_ - 1)];
  if (scale_) add_weight("gamma", {channels}, "ones", 0, 0, seed);
  if (center_) add_weight("beta", {channels}, "zeros", 0, 0, seed);
  // Statistics, not trained: saved with the model, never stepped.
  for (const char* name : {"moving_mean", "moving_variance"}) {
    Tensor w = add_weight(name, {channels}, name[7] == 'm' ? "zeros" : "ones", 0, 0, seed);
    if (w.defined()) w.set_requires_grad(false);
  }
  return input_shape;
}

// Keras casts 16-bit inputs to float32 around its batch norm; the kernels do the same
// internally (float32 statistics), so the input stays in the compute dtype. A float64
// compute dtype runs in float32, the dtype of the moving statistics updated in place.
Tensor BatchNormalization::forward(const Tensor& x, Pass pass) {
  Tensor& moving_mean = weights_[weights_.size() - 2].second;
  Tensor& moving_variance = weights_[weights_.size() - 1].second;
  Tensor input = cast(x);
  if (steepest::compute_dtype(input.dtype()) != moving_mean.dtype())
    input = ops::astype(input, moving_mean.dtype());
  auto like_input = [&](const Tensor& w) {
    return w.dtype() == input.dtype() ? w : ops::astype(w, input.dtype());
  };
  Tensor gamma = scale_ ? like_input(weights_[0].second) : Tensor();
  Tensor beta = center_ ? like_input(weights_[scale_ ? 1 : 0].second) : Tensor();
  return ops::batch_norm(input, moving_mean, moving_variance, gamma, beta, pass.training, momentum_,
                         epsilon_, batch_axis_);
}

GlobalPool2D::GlobalPool2D(std::string name, bool max, DataFormat data_format, bool keepdims)
    : Layer(std::move(name)), max_(max), data_format_(data_format), keepdims_(keepdims) {}

Dims GlobalPool2D::build_weights(const Dims& input_shape, uint64_t) {
  Dims chw = channels_first_shape(kind(), data_format_, input_shape);
  if (!keepdims_) return {chw[0]};
  return in_format(data_format_, {chw[0], 1, 1});
}

Tensor GlobalPool2D::forward(const Tensor& x, Pass) {
  const std::vector<int64_t> axes = data_format_ == DataFormat::ChannelsFirst
                                        ? std::vector<int64_t>{2, 3}
                                        : std::vector<int64_t>{1, 2};
  return max_ ? ops::max(x, axes, keepdims_) : ops::mean(x, axes, keepdims_);
}

Reshape::Reshape(std::string name, Dims target_shape)
    : Layer(std::move(name)), target_(std::move(target_shape)) {
  int unknown = 0;
  for (int64_t d : target_) {
    if (d == -1) ++unknown;
    else if (d <= 0)
      fail("Reshape", "target_shape entries must be positive or one -1, got ", target_);
  }
  if (unknown > 1) fail("Reshape", "target_shape may have one -1 only, got ", target_);
}

Dims Reshape::build_weights(const Dims& input_shape, uint64_t) {
  const int64_t total = input_shape.product();
  int64_t known = 1;
  for (int64_t d : target_)
    if (d != -1 && __builtin_mul_overflow(known, d, &known))
      fail("Reshape", "target_shape ", target_, " has more elements than 2^63 - 1");
  Dims out = target_;
  for (int64_t& d : out)
    if (d == -1) {
      if (known == 0 || total % known != 0)
        fail("Reshape", "cannot reshape samples of shape ", input_shape, " (", total,
             " elements) to ", target_);
      d = total / known;
      known = total;
    }
  if (known != total)
    fail("Reshape", "cannot reshape samples of shape ", input_shape, " (", total,
         " elements) to ", target_, " (", known, " elements)");
  return out;
}

Tensor Reshape::forward(const Tensor& x, Pass) {
  Dims shape{x.shape()[0]};
  for (int64_t d : output_shape_) shape.push_back(d);
  return ops::reshape(x, shape);
}

ZeroPadding2D::ZeroPadding2D(std::string name, ops::Padding2d padding, DataFormat data_format)
    : Layer(std::move(name)), padding_(padding), data_format_(data_format) {
  if (padding.top < 0 || padding.bottom < 0 || padding.left < 0 || padding.right < 0)
    fail("ZeroPadding2D", "padding must be >= 0, got ((", padding.top, ", ", padding.bottom,
         "), (", padding.left, ", ", padding.right, "))");
}

Dims ZeroPadding2D::build_weights(const Dims& input_shape, uint64_t) {
  Dims chw = channels_first_shape(kind(), data_format_, input_shape);
  int64_t h = 0, w = 0;
  if (__builtin_add_overflow(chw[1], padding_.top + padding_.bottom, &h) ||
      __builtin_add_overflow(chw[2], padding_.left + padding_.right, &w))
    fail("ZeroPadding2D", "padded size overflows 64 bits");
  return checked_output(kind(), in_format(data_format_, {chw[0], h, w}));
}

Tensor ZeroPadding2D::forward(const Tensor& x, Pass) {
  const std::pair<int64_t, int64_t> none{0, 0}, rows{padding_.top, padding_.bottom},
      cols{padding_.left, padding_.right};
  if (data_format_ == DataFormat::ChannelsFirst)
    return ops::pad(x, {none, none, rows, cols}, ops::PadMode::Constant);
  return ops::pad(x, {none, rows, cols, none}, ops::PadMode::Constant);
}

Embedding::Embedding(std::string name, int64_t input_dim, int64_t output_dim, std::string initializer)
    : Layer(std::move(name)), input_dim_(input_dim), output_dim_(output_dim),
      initializer_(std::move(initializer)) {
  if (input_dim <= 0 || output_dim <= 0)
    fail("Embedding", "input_dim and output_dim must be positive, got ", input_dim, " and ", output_dim);
}

Dims Embedding::build_weights(const Dims& input_shape, uint64_t seed) {
  add_weight("embeddings", {input_dim_, output_dim_}, initializer_, input_dim_, output_dim_, seed);
  Dims out = input_shape;
  out.push_back(output_dim_);
  return out;
}

// Rows are gathered from the float32 table and then cast (as Keras does): the same values
// as casting the whole table first, without its copy, and the scatter-add of the
// gradient stays in float32.
Tensor Embedding::forward(const Tensor& x, Pass) {
  Tensor indices = is_floating(x.dtype()) ? ops::astype(x.detach(), DType::Int64) : x;
  return cast(ops::embedding(indices, weights_[0].second));
}

}  // namespace steepest::model
