// Neural-network op front-ends: softmax family and losses, convolution and pooling,
// layer norm, embedding, dropout.
#include <cmath>

#include "backward.h"
#include "internal.h"
#include "steepest/profiler.h"

namespace steepest::ops {

using detail::check_float;
using detail::record;

Reduction reduction_from_name(const char* op, const std::string& name) {
  if (name == "mean") return Reduction::Mean;
  if (name == "sum") return Reduction::Sum;
  if (name == "none") return Reduction::None;
  fail(op, "reduction must be 'mean', 'sum' or 'none', got '", name, "'");
}

namespace {

Tensor reduce_loss(const Tensor& per_element, Reduction reduction) {
  if (reduction == Reduction::Mean) return mean(per_element);
  if (reduction == Reduction::Sum) return sum(per_element);
  return per_element;
}

// The elementwise losses of 16-bit inputs run in float32 (the seed's mixed precision
// keeps losses in fp32; the chain of 16-bit roundings through difference, square and
// mean would cost several ulps) and round once; the casts carry the gradients back.
Tensor widened(const Tensor& t) { return astype(t, compute_dtype(t.dtype())); }

Tensor softmax_like(const char* op, const Tensor& x, int64_t axis, bool log) {
  check_float(op, x, "input");
  if (x.ndim() == 0) {  // torch: axis 0 or -1 of a 0-d tensor is its one element
    normalize_axis(op, axis, x.shape(), 1);
    return reshape(softmax_like(op, reshape(x, {1}), 0, log), {});
  }
  int a = normalize_axis(op, axis, x.shape());
  Dims order = detail::move_axis_last_order(x.ndim(), a);
  Tensor x_last = contiguous(permute(x.detach(), order));
  Tensor y_last = Tensor::empty(x_last.shape(), x.dtype(), x.device());
  STEEPEST_KERNEL(x.device(), softmax_forward)(x_last, y_last, log);
  Tensor out = permute(y_last, detail::inverse_permutation(order));
  if (out.impl() == y_last.impl()) out = y_last.detach();  // never alias the saved tensor
  record<SoftmaxBackward>(out, {&x}, y_last, a, log);
  return out;
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t axis) {
  STEEPEST_PROFILE_OP("softmax");
  return softmax_like("softmax", x, axis, false);
}
Tensor log_softmax(const Tensor& x, int64_t axis) {
  STEEPEST_PROFILE_OP("log_softmax");
  return softmax_like("log_softmax", x, axis, true);
}

// seed: softmax + cross-entropy, fused (log-softmax inside, gradient p − y).
Tensor cross_entropy(const Tensor& logits, const Tensor& labels, Reduction reduction) {
  STEEPEST_PROFILE_OP("cross_entropy");
  const char* op = "cross_entropy";
  check_float(op, logits, "logits");
  detail::check_defined(op, labels, "labels");
  detail::check_same_device(op, logits, labels);
  if (logits.ndim() < 1) fail(op, "logits must have a class axis, got shape ", logits.shape());
  int64_t classes = logits.shape().back();
  Dims row_shape(logits.shape().begin(), logits.shape().end() - 1);
  int64_t rows = row_shape.product();
  bool indices = !is_floating(labels.dtype());
  if (indices) {
    if (labels.dtype() != DType::Int64 && labels.dtype() != DType::Int32)
      fail<TypeError>(op, "class-index labels must be int32 or int64, got ",
                      dtype_name(labels.dtype()));
    if (labels.shape() != row_shape)
      fail(op, "labels of shape ", labels.shape(), " do not match logits of shape ",
           logits.shape(), " (expected class indices of shape ", row_shape, ")");
  } else {
    detail::check_same_dtype(op, logits, labels);
    if (labels.shape() != logits.shape())
      fail(op, "probability labels of shape ", labels.shape(), " do not match logits of shape ",
           logits.shape());
  }
  if (classes == 0 && rows > 0) fail(op, "logits of shape ", logits.shape(), " have no classes");
  Tensor z = contiguous(reshape(logits.detach(), {rows, classes}));
  Tensor y = indices ? contiguous(reshape(labels.detach(), {rows}))
                     : contiguous(reshape(labels.detach(), {rows, classes}));
  // The per-row max and log Σ stay in the compute dtype (float32 for 16-bit logits).
  Tensor loss = Tensor::empty({rows}, logits.dtype(), logits.device());
  Tensor lse = Tensor::empty({rows, 2}, compute_dtype(logits.dtype()), logits.device());
  STEEPEST_KERNEL(logits.device(), cross_entropy_forward)(z, y, loss, lse);
  Tensor out;
  if (reduction == Reduction::None) {
    out = reshape(loss, row_shape).detach();
  } else {
    NoGradGuard no_grad;
    out = reduction == Reduction::Mean ? mean(loss) : sum(loss);
  }
  // Edges: logits, then labels (soft labels are differentiable, class indices are not).
  const Tensor* label_input = indices ? nullptr : &labels;
  record<CrossEntropyBackward>(out, {&logits, label_input}, z, y, lse, reduction, logits.shape(),
                               labels.shape(), logits, indices ? Tensor() : labels);
  return out;
}

Tensor mse_loss(const Tensor& prediction, const Tensor& target, Reduction reduction) {
  STEEPEST_PROFILE_OP("mse_loss");
  check_float("mse_loss", prediction, "prediction");
  if (prediction.shape() != target.shape())
    fail("mse_loss", "prediction of shape ", prediction.shape(), " and target of shape ",
         target.shape(), " differ");
  if (is_half_float(prediction.dtype())) {
    detail::check_same_dtype("mse_loss", prediction, target);
    return astype(mse_loss(widened(prediction), widened(target), reduction), prediction.dtype());
  }
  Tensor diff = sub(prediction, target);
  return reduce_loss(mul(diff, diff), reduction);
}

Tensor binary_cross_entropy(const Tensor& input, const Tensor& target, bool from_logits,
                            Reduction reduction) {
  STEEPEST_PROFILE_OP("binary_cross_entropy");
  const char* op = "binary_cross_entropy";
  check_float(op, input, "input");
  detail::check_same_dtype(op, input, target);
  if (input.shape() != target.shape())
    fail(op, "input of shape ", input.shape(), " and target of shape ", target.shape(), " differ");
  if (is_half_float(input.dtype()))
    return astype(binary_cross_entropy(widened(input), widened(target), from_logits, reduction),
                  input.dtype());
  if (!from_logits) {
    // −(y log p + (1 − y) log(1 − p)) on probabilities.
    Tensor one_minus_p = add_scalar(neg(input), 1.0);
    Tensor one_minus_y = add_scalar(neg(target), 1.0);
    Tensor ll = add(mul(target, log(input)), mul(one_minus_y, log(one_minus_p)));
    return reduce_loss(neg(ll), reduction);
  }
  Tensor per_element = detail::binary_raw(BinaryOp::BceWithLogits, input, target, 0.0, op);
  record<BceWithLogitsBackward>(per_element, {&input, &target}, input, target);
  return reduce_loss(per_element, reduction);
}

// --- convolution and pooling ---------------------------------------------------------

Padding2d same_padding(const char* op, IntPair kernel, IntPair stride, IntPair dilation) {
  if (stride.first != 1 || stride.second != 1)
    fail(op, "padding='same' needs stride 1 (as in torch), got stride (", stride.first, ", ",
         stride.second, "); give the padding explicitly");
  auto split = [&](int64_t k, int64_t d) {
    int64_t total = 0;
    if (k <= 0 || d <= 0 || __builtin_mul_overflow(d, k - 1, &total))
      fail(op, "padding='same' needs a positive kernel and dilation, got kernel ", k,
           " and dilation ", d);
    return std::pair<int64_t, int64_t>{total / 2, total - total / 2};
  };
  auto [top, bottom] = split(kernel.first, dilation.first);
  auto [left, right] = split(kernel.second, dilation.second);
  return {top, bottom, left, right};
}

int64_t window_output_extent(const char* op, int64_t in, int64_t kernel, int64_t stride,
                             int64_t dilation, int64_t pad_before, int64_t pad_after,
                             bool ceil_mode) {
  if (in < 0 || kernel <= 0 || stride <= 0 || dilation <= 0 || pad_before < 0 || pad_after < 0)
    fail(op, "expected input size >= 0, kernel, stride and dilation >= 1 and padding >= 0, got "
         "input ", in, ", kernel ", kernel, ", stride ", stride, ", dilation ", dilation,
         ", padding (", pad_before, ", ", pad_after, ")");
  int64_t span = 0, padded = 0;
  if (__builtin_mul_overflow(dilation, kernel - 1, &span) || __builtin_add_overflow(span, 1, &span) ||
      __builtin_add_overflow(in, pad_before, &padded) ||
      __builtin_add_overflow(padded, pad_after, &padded))
    fail(op, "sizes overflow 64 bits: input ", in, ", kernel ", kernel, ", dilation ", dilation,
         ", padding (", pad_before, ", ", pad_after, ")");
  if (span > padded)
    fail(op, "the kernel spans ", span, " pixels (kernel ", kernel, ", dilation ", dilation,
         "), more than the padded input's ", padded, " (input ", in, ", padding (", pad_before,
         ", ", pad_after, "))");
  const int64_t room = padded - span;
  int64_t out = room / stride + 1;
  // The extra window must start inside the input or the leading padding:
  // (out − 1)·stride < in + pad_before, written without the product.
  if (ceil_mode && room % stride != 0) {
    const int64_t start_limit = in + pad_before;
    if (out < start_limit / stride + (start_limit % stride != 0)) ++out;
  }
  return out;
}

namespace {

void check_image(const char* op, const Tensor& x) {
  check_float(op, x, "input");
  if (x.ndim() != 4) fail(op, "expected an NCHW input of 4 dimensions, got shape ", x.shape());
}

void check_positive(const char* op, const char* what, IntPair value) {
  if (value.first <= 0 || value.second <= 0)
    fail(op, what, " must be positive, got (", value.first, ", ", value.second, ")");
}

// The geometry's padding and output extents from `padding` (ceil_mode for pooling).
void set_padding(const char* op, const Tensor& x, const ops::Padding2d& padding, bool ceil_mode,
                 Conv2dGeometry& g) {
  if (padding.top < 0 || padding.bottom < 0 || padding.left < 0 || padding.right < 0)
    fail(op, "padding must be non-negative, got ((", padding.top, ", ", padding.bottom, "), (",
         padding.left, ", ", padding.right, "))");
  g.pad_top = padding.top;
  g.pad_bottom = padding.bottom;
  g.pad_left = padding.left;
  g.pad_right = padding.right;
  try {
    g.out_h = window_output_extent(op, g.in_h, g.kernel_h, g.stride_h, g.dilation_h, g.pad_top,
                                   g.pad_bottom, ceil_mode);
    g.out_w = window_output_extent(op, g.in_w, g.kernel_w, g.stride_w, g.dilation_w, g.pad_left,
                                   g.pad_right, ceil_mode);
  } catch (const ValueError& e) {
    // The axis's message, with the whole call's shapes (built only on failure).
    throw ValueError(cat(e.what(), " [input shape ", x.shape(), ", kernel ",
                         Dims{g.kernel_h, g.kernel_w}, ", dilation ",
                         Dims{g.dilation_h, g.dilation_w}, ", padding ((", g.pad_top, ", ",
                         g.pad_bottom, "), (", g.pad_left, ", ", g.pad_right, "))]"));
  }
}

// (N, C, L) -> (N, C, 1, L) for the 1-D ops, which run on the 2-D path.
Tensor as_image(const char* op, const Tensor& x, const char* what) {
  detail::check_defined(op, x, what);
  if (x.ndim() != 3)
    fail(op, "expected a 3-D ", what, " ((N, C, L) input, (out, in / groups, k) weight), got shape ",
         x.shape());
  return reshape(x, {x.shape()[0], x.shape()[1], 1, x.shape()[2]});
}

// Channel counts of a convolution: (N, C, ...) input, (out, C / groups, ...) weight.
void check_channels(const char* op, const Tensor& x, const Tensor& weight, int64_t groups) {
  if (groups <= 0) fail(op, "groups must be positive, got ", groups);
  const int64_t channels = x.shape()[1], filters = weight.shape()[0];
  if (channels % groups != 0 || filters % groups != 0)
    fail(op, "groups=", groups, " must divide both the input channels (", channels,
         ", input shape ", x.shape(), ") and the output channels (", filters, ", weight shape ",
         weight.shape(), ")");
  if (weight.shape()[1] != channels / groups)
    fail(op, "input of shape ", x.shape(), " has ", channels, " channels but weight of shape ",
         weight.shape(), " with groups=", groups, " expects ", weight.shape()[1] * groups,
         " (weight is (out_channels, in_channels / groups, ...kernel))");
}

Tensor as_sequence(const Tensor& y) { return reshape(y, {y.shape()[0], y.shape()[1], y.shape()[3]}); }

}  // namespace

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor& bias, IntPair stride,
              const Padding2d& padding, IntPair dilation, int64_t groups) {
  STEEPEST_PROFILE_OP("conv2d");
  const char* op = "conv2d";
  check_image(op, x);
  detail::check_same_dtype(op, x, weight);
  detail::check_same_device(op, x, weight);
  check_positive(op, "stride", stride);
  check_positive(op, "dilation", dilation);
  if (weight.ndim() != 4)
    fail(op, "weight must be (out_channels, in_channels / groups, kh, kw), got shape ",
         weight.shape());
  check_channels(op, x, weight, groups);
  const int64_t channels = x.shape()[1], filters = weight.shape()[0];
  Conv2dGeometry g;
  g.batch = x.shape()[0];
  g.in_channels = channels;
  g.in_h = x.shape()[2];
  g.in_w = x.shape()[3];
  g.out_channels = filters;
  g.kernel_h = weight.shape()[2];
  g.kernel_w = weight.shape()[3];
  g.stride_h = stride.first;
  g.stride_w = stride.second;
  g.dilation_h = dilation.first;
  g.dilation_w = dilation.second;
  g.groups = groups;
  if (g.kernel_h == 0 || g.kernel_w == 0)
    fail(op, "weight of shape ", weight.shape(), " has an empty kernel");
  set_padding(op, x, padding, false, g);
  if (bias.defined()) {
    detail::check_same_dtype(op, x, bias);
    if (bias.ndim() != 1 || bias.shape()[0] != g.out_channels)
      fail(op, "bias of shape ", bias.shape(), " does not match ", g.out_channels,
           " output channels");
  }
  Tensor xc = contiguous(x.detach()), wc = contiguous(weight.detach());
  Tensor bc = bias.defined() ? contiguous(bias.detach()) : Tensor();
  Tensor y;
  if (is_half_float(x.dtype())) {
    // float16/bfloat16 (混合精度训练): the convolution kernels are float32/float64 only,
    // so the operands are widened to float32 (exact), convolved with float32
    // accumulation, and the output is rounded once. The node keeps the 16-bit x and w;
    // Conv2dBackward widens them the same way. Widened bfloat16 values let the GEMMs
    // multiply in bfloat16 (exact products, float32 sums) where the hardware can.
    g.bf16_products = x.dtype() == DType::BFloat16;
    Tensor y32 = Tensor::empty({g.batch, g.out_channels, g.out_h, g.out_w}, DType::Float32, x.device());
    STEEPEST_KERNEL(x.device(), conv2d_forward)(astype(xc, DType::Float32), astype(wc, DType::Float32),
                                                bc.defined() ? astype(bc, DType::Float32) : Tensor(), g,
                                                y32);
    y = astype(y32, x.dtype());
  } else {
    y = Tensor::empty({g.batch, g.out_channels, g.out_h, g.out_w}, x.dtype(), x.device());
    STEEPEST_KERNEL(x.device(), conv2d_forward)(xc, wc, bc, g, y);
  }
  record<Conv2dBackward>(y, {&x, &weight, bias.defined() ? &bias : nullptr}, xc, wc, g,
                         bias.defined(), x, weight);
  return y;
}

Tensor conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, int64_t stride,
              IntPair padding, int64_t dilation, int64_t groups) {
  STEEPEST_PROFILE_OP("conv1d");
  const char* op = "conv1d";
  Tensor image = as_image(op, x, "input"), kernel = as_image(op, weight, "weight");
  check_channels(op, x, weight, groups);
  return as_sequence(conv2d(image, kernel, bias, {1, stride},
                            Padding2d(0, 0, padding.first, padding.second), {1, dilation},
                            groups));
}

namespace {

struct PoolOptions {
  IntPair dilation{1, 1};
  bool ceil_mode = false, count_include_pad = true;
};

Tensor pool2d(const char* op, PoolKind kind, const Tensor& x, IntPair kernel, IntPair stride,
              const Padding2d& padding, const PoolOptions& options) {
  check_image(op, x);
  check_positive(op, "kernel_size", kernel);
  check_positive(op, "stride", stride);
  check_positive(op, "dilation", options.dilation);
  // torch's bound, which keeps every window on some input pixel (without dilation).
  if (std::max(padding.top, padding.bottom) > kernel.first / 2 ||
      std::max(padding.left, padding.right) > kernel.second / 2)
    fail(op, "padding ((", padding.top, ", ", padding.bottom, "), (", padding.left, ", ",
         padding.right, ")) must be at most half of kernel_size (", kernel.first, ", ",
         kernel.second, ")");
  Conv2dGeometry g;
  g.batch = x.shape()[0];
  g.in_channels = g.out_channels = x.shape()[1];
  g.in_h = x.shape()[2];
  g.in_w = x.shape()[3];
  g.kernel_h = kernel.first;
  g.kernel_w = kernel.second;
  g.stride_h = stride.first;
  g.stride_w = stride.second;
  g.dilation_h = options.dilation.first;
  g.dilation_w = options.dilation.second;
  g.count_include_pad = options.count_include_pad;
  set_padding(op, x, padding, options.ceil_mode, g);
  // 16-bit inputs are pooled in float32 and rounded (the pooling kernels are
  // float32/float64 only); a max is one of the inputs, so max pooling stays exact.
  Tensor xc = astype(contiguous(x.detach()), compute_dtype(x.dtype()));
  Tensor y = Tensor::empty({g.batch, g.in_channels, g.out_h, g.out_w}, xc.dtype(), x.device());
  Tensor argmax;
  if (kind == PoolKind::Max) argmax = Tensor::empty(y.shape(), DType::Int64, x.device());
  STEEPEST_KERNEL(x.device(), pool2d_forward)(kind, xc, g, y, kind == PoolKind::Max ? &argmax : nullptr);
  y = astype(y, x.dtype());
  // Max pooling keeps the input for the windows with tied maxima (pool2d_backward).
  record<Pool2dBackward>(y, {&x}, kind, argmax, kind == PoolKind::Max ? xc : Tensor(), g,
                         x.dtype());
  return y;
}

}  // namespace

Tensor max_pool2d(const Tensor& x, IntPair kernel, IntPair stride, const Padding2d& padding,
                  IntPair dilation, bool ceil_mode) {
  STEEPEST_PROFILE_OP("max_pool2d");
  return pool2d("max_pool2d", PoolKind::Max, x, kernel, stride, padding, {dilation, ceil_mode, true});
}

Tensor avg_pool2d(const Tensor& x, IntPair kernel, IntPair stride, const Padding2d& padding,
                  bool ceil_mode, bool count_include_pad) {
  STEEPEST_PROFILE_OP("avg_pool2d");
  return pool2d("avg_pool2d", PoolKind::Avg, x, kernel, stride, padding,
                {{1, 1}, ceil_mode, count_include_pad});
}

Tensor max_pool1d(const Tensor& x, int64_t kernel, int64_t stride, IntPair padding,
                  int64_t dilation, bool ceil_mode) {
  STEEPEST_PROFILE_OP("max_pool1d");
  const char* op = "max_pool1d";
  return as_sequence(pool2d(op, PoolKind::Max, as_image(op, x, "input"), {1, kernel}, {1, stride},
                            Padding2d(0, 0, padding.first, padding.second),
                            {{1, dilation}, ceil_mode, true}));
}

Tensor avg_pool1d(const Tensor& x, int64_t kernel, int64_t stride, IntPair padding,
                  bool ceil_mode, bool count_include_pad) {
  STEEPEST_PROFILE_OP("avg_pool1d");
  const char* op = "avg_pool1d";
  return as_sequence(pool2d(op, PoolKind::Avg, as_image(op, x, "input"), {1, kernel}, {1, stride},
                            Padding2d(0, 0, padding.first, padding.second),
                            {{1, 1}, ceil_mode, count_include_pad}));
}

// --- normalisation, embedding, dropout -------------------------------------------------

Tensor layer_norm(const Tensor& x, const Tensor& weight, const Tensor& bias, double eps) {
  STEEPEST_PROFILE_OP("layer_norm");
  const char* op = "layer_norm";
  check_float(op, x, "input");
  if (x.ndim() == 0) fail(op, "expected at least one dimension, got a 0-d tensor");
  int64_t cols = x.shape().back();
  for (const Tensor* p : {&weight, &bias}) {
    if (!p->defined()) continue;
    detail::check_same_dtype(op, x, *p);
    if (p->ndim() != 1 || p->shape()[0] != cols)
      fail(op, "weight/bias of shape ", p->shape(), " do not match the normalised axis of ",
           x.shape(), " (expected (", cols, ",))");
  }
  if (!(eps > 0)) fail(op, "eps must be positive, got ", eps);
  Tensor xc = contiguous(x.detach());
  Tensor wc = weight.defined() ? contiguous(weight.detach()) : Tensor();
  Tensor bc = bias.defined() ? contiguous(bias.detach()) : Tensor();
  int64_t rows = cols ? x.numel() / cols : 0;
  // The row statistics stay in the compute dtype (float32 for 16-bit x).
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor mu = Tensor::empty({rows}, compute_dtype(x.dtype()), x.device());
  Tensor rstd = Tensor::empty({rows}, compute_dtype(x.dtype()), x.device());
  STEEPEST_KERNEL(x.device(), layer_norm_forward)(xc, wc, bc, eps, y, mu, rstd);
  record<LayerNormBackward>(y, {&x, weight.defined() ? &weight : nullptr, bias.defined() ? &bias : nullptr},
                            xc, wc, mu, rstd, bias.defined(), eps, x, weight, bias);
  return y;
}

Tensor batch_norm(const Tensor& x, const Tensor& running_mean, const Tensor& running_var,
                  const Tensor& weight, const Tensor& bias, bool training, double momentum,
                  double eps, int64_t axis) {
  STEEPEST_PROFILE_OP("batch_norm");
  const char* op = "batch_norm";
  check_float(op, x, "input");
  if (x.ndim() == 0) fail(op, "expected at least one dimension, got a 0-d tensor");
  const int ax = normalize_axis(op, axis, x.shape());
  const int64_t channels = x.shape()[static_cast<size_t>(ax)];
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < ax; ++d) outer *= x.shape()[static_cast<size_t>(d)];
  for (int d = ax + 1; d < x.ndim(); ++d) inner *= x.shape()[static_cast<size_t>(d)];
  for (const Tensor* p : {&weight, &bias}) {
    if (!p->defined()) continue;
    detail::check_same_device(op, x, *p);
    detail::check_same_dtype(op, x, *p);
    if (p->ndim() != 1 || p->shape()[0] != channels)
      fail(op, "weight/bias of shape ", p->shape(), " do not match the ", channels,
           " channels of axis ", ax, " of input ", x.shape(), " (expected (", channels, ",))");
  }
  const DType stat_dtype = compute_dtype(x.dtype());
  if (running_mean.defined() != running_var.defined())
    fail(op, "give both running_mean and running_var, or neither");
  for (const Tensor* p : {&running_mean, &running_var}) {
    if (!p->defined()) continue;
    detail::check_same_device(op, x, *p);
    if (p->dtype() != stat_dtype)
      fail<TypeError>(op, "running statistics must be ", dtype_name(stat_dtype), " for ",
                      dtype_name(x.dtype()), " input, got ", dtype_name(p->dtype()));
    if (p->ndim() != 1 || p->shape()[0] != channels)
      fail(op, "running statistics of shape ", p->shape(), " do not match the ", channels,
           " channels of axis ", ax, " of input ", x.shape());
    if (training && p->requires_grad())
      fail(op, "running statistics are updated in place and must not require grad");
  }
  if (!training && !running_mean.defined())
    fail(op, "inference (training=False) needs running_mean and running_var");
  if (!(eps > 0)) fail(op, "eps must be positive, got ", eps);
  if (!(momentum >= 0.0 && momentum <= 1.0)) fail(op, "momentum must be in [0, 1], got ", momentum);
  if (training && outer * inner == 0 && channels > 0)
    fail(op, "training needs at least one value per channel, got input ", x.shape());

  Tensor xc = contiguous(x.detach());
  Tensor wc = weight.defined() ? contiguous(weight.detach()) : Tensor();
  Tensor bc = bias.defined() ? contiguous(bias.detach()) : Tensor();
  Tensor mean, rstd;
  {
    NoGradGuard no_grad;
    if (training) {
      mean = Tensor::empty({channels}, stat_dtype, x.device());
      Tensor var = Tensor::empty({channels}, stat_dtype, x.device());
      STEEPEST_KERNEL(x.device(), batch_norm_stats)(xc, outer, channels, inner, mean, var);
      rstd = power(add_scalar(var, eps), -0.5);
      if (running_mean.defined()) {
        // Keras: moving = moving·momentum + batch·(1 − momentum), in place.
        auto update = [momentum](Tensor moving, const Tensor& batch) {
          copy_into(add(mul_scalar(moving.detach(), momentum), mul_scalar(batch, 1.0 - momentum)),
                    moving);
        };
        update(running_mean, mean);
        update(running_var, var);
      }
    } else {
      mean = contiguous(running_mean.detach());
      rstd = power(add_scalar(running_var.detach(), eps), -0.5);
    }
  }
  Tensor y = Tensor::empty(x.shape(), x.dtype(), x.device());
  STEEPEST_KERNEL(x.device(), batch_norm_apply)(xc, outer, channels, inner, mean, rstd, wc, bc, y);
  record<BatchNormBackward>(y, {&x, weight.defined() ? &weight : nullptr, bias.defined() ? &bias : nullptr},
                            xc, wc, mean, rstd, outer, channels, inner, training, bias.defined(), eps,
                            x, weight, bias);
  return y;
}

Tensor embedding(const Tensor& indices, const Tensor& table) {
  STEEPEST_PROFILE_OP("embedding");
  const char* op = "embedding";
  check_float(op, table, "table");
  detail::check_same_device(op, indices, table);
  if (indices.dtype() != DType::Int64 && indices.dtype() != DType::Int32)
    fail<TypeError>(op, "indices must be int32 or int64, got ", dtype_name(indices.dtype()));
  if (table.ndim() != 2) fail(op, "table must be 2-D (vocab, dim), got shape ", table.shape());
  Tensor idx = contiguous(indices.detach());
  Dims out_shape = indices.shape();
  out_shape.push_back(table.shape()[1]);
  Tensor out = Tensor::empty(out_shape, table.dtype(), table.device());
  STEEPEST_KERNEL(table.device(), embedding_forward)(idx, contiguous(table.detach()), out);
  record<EmbeddingBackward>(out, {nullptr, &table}, idx, table.shape());
  return out;
}

// Inverted dropout: kept activations are scaled by 1/(1 − rate) so the expectation is
// unchanged and inference needs no rescaling.
Tensor dropout(const Tensor& x, double rate, bool training, std::optional<uint64_t> seed) {
  STEEPEST_PROFILE_OP("dropout");
  check_float("dropout", x, "input");
  if (!(rate >= 0.0 && rate < 1.0)) fail("dropout", "rate must be in [0, 1), got ", rate);
  if (!training || rate == 0.0) return x;
  Tensor mask = Tensor::empty(x.shape(), x.dtype(), x.device());
  STEEPEST_KERNEL(x.device(), dropout_mask)(mask, rate, seed ? *seed : next_seed());
  return mul(x, mask);
}

}  // namespace steepest::ops
