// Every backward formula of steepest, each citing the seed section it implements by its
// title with the formula written out (docs/design/seed.md lists them: X the input, Y the
// output, G the incoming gradient). Formulas are written with ops
// so they run on any backend. The engine runs them under no_grad, except for
// create_graph=True: then grad mode is on, they record a graph of their own, and a
// formula that calls a fused first-order kernel (binary_raw(*Grad), STEEPEST_KERNEL)
// takes a composite of differentiable ops instead, chosen by grad_enabled().
#include "backward.h"

#include "internal.h"

namespace steepest::ops {

using detail::binary_raw;
using detail::unary_raw;

void composite_backward(const Node& node, const CompositeForward& forward,
                        const std::vector<Tensor>& inputs, const Tensor& g,
                        std::vector<Tensor>& out) {
  std::vector<Tensor> aliases(inputs.size()), wanted;
  std::vector<size_t> slots;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].defined()) continue;
    aliases[i] = inputs[i].detach();
    if (i < node.next.size() && node.next[i] && inputs[i].requires_grad()) {
      // An identity node in front of the input: the inner backward stops there instead of
      // running on into the graph below this node.
      attach(aliases[i], std::make_shared<IdentityBackward>(), {&inputs[i]});
      wanted.push_back(aliases[i]);
      slots.push_back(i);
    }
  }
  if (wanted.empty()) return;
  Tensor y = forward(aliases);
  BackwardOptions options;
  options.retain_graph = options.create_graph = options.allow_unused = true;
  std::vector<Tensor> grads = steepest::grad({y}, {g}, wanted, options);
  for (size_t k = 0; k < slots.size(); ++k) out[slots[k]] = grads[k];
}

// seed: 矩阵加法，bias — dL/dX = G and dL/dB = G; a broadcast bias b gets
// ones(1, B)·G, i.e. G summed over the broadcast axes (sum_to).
void AddBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  if (next[0]) out[0] = sum_to(g, a_shape);
  if (next[1]) out[1] = sum_to(subtract ? neg(g) : g, b_shape);
}

// seed: 哈达玛积 — Y = P ⊙ Q gives dL/dP = G ⊙ Q, dL/dQ = G ⊙ P.
void MulBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  if (next[0]) out[0] = sum_to(mul(g, b), a.shape());
  if (next[1]) out[1] = sum_to(mul(g, a), b.shape());
}

// Y = A / B: dL/dA = G / B, dL/dB = −G ⊙ A / B².
void DivBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  Tensor g_over_b = div(g, b);
  if (next[0]) out[0] = sum_to(g_over_b, a.shape());
  if (next[1]) out[1] = sum_to(neg(mul(g_over_b, div(a, b))), b.shape());
}

// seed: 激活函数，element-wise的操作 — dL/dX = G ⊙ δ'(X), with the table's δ'. A saving
// op's δ' is its fused gradient functor (steepest/elementwise_rules.h, named in
// unary_ops.def), from G and the operand the node saved: X or Y.
void UnaryBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  if (grad_enabled()) {
    out[0] = differentiable_grad(g);
    return;
  }
  if (saves != Saves::Nothing) {
    out[0] = binary_raw(gradient_of(op), g, saved, scalar);
    return;
  }
  switch (op) {
    case UnaryOp::Neg:  // −G
      out[0] = neg(g);
      break;
    case UnaryOp::MulScalar:  // G·s
      out[0] = mul_scalar(g, scalar);
      break;
    case UnaryOp::AddScalar:  // G
      out[0] = g;
      break;
    case UnaryOp::Sign:  // piecewise constant: 0 (NaN stays NaN)
      out[0] = mul_scalar(g, 0.0);
      break;
    default:
      fail("backward", name(), " saves nothing but has no rule without a saved operand");
  }
}

// The same rules as apply() written with recorded ops, for create_graph. A saved output
// Y rejoins the graph through this node, so d(δ'(Y))/dX picks up dY/dX.
// X the input, Y the output, G the incoming gradient; `saved` is X or Y (unary_ops.def).
Tensor UnaryBackward::differentiable_grad(const Tensor& g) {
  const Tensor zero = Tensor::zeros({}, g.dtype(), g.device());
  switch (op) {
    case UnaryOp::Neg:
      return neg(g);
    case UnaryOp::Exp:  // G ⊙ Y
      return mul(g, output_in_graph(saved));
    case UnaryOp::Log:  // G / X
      return div(g, saved);
    case UnaryOp::Sqrt:  // G / (2Y)
      return div(g, mul_scalar(output_in_graph(saved), 2.0));
    case UnaryOp::Abs:  // G ⊙ sign(X); sign is piecewise constant: no second-order term
      return mul(g, unary_raw(UnaryOp::Sign, saved));
    case UnaryOp::Relu:  // G ⊙ 1{Y>0}
      return where(compare(BinaryOp::Gt, saved, zero), g, zero);
    case UnaryOp::Sigmoid: {  // G ⊙ Y ⊙ (1 − Y)
      Tensor y = output_in_graph(saved);
      return mul(g, mul(y, add_scalar(neg(y), 1.0)));
    }
    case UnaryOp::Tanh: {  // G ⊙ (1 − Y²)
      Tensor y = output_in_graph(saved);
      return mul(g, add_scalar(neg(mul(y, y)), 1.0));
    }
    case UnaryOp::Gelu: {  // G ⊙ (Φ(X) + X·φ(X))
      const double inv_sqrt2 = 0.70710678118654752440, inv_sqrt_2pi = 0.39894228040143267794;
      Tensor cdf = mul_scalar(add_scalar(erf(mul_scalar(saved, inv_sqrt2)), 1.0), 0.5);
      Tensor pdf = mul_scalar(exp(mul_scalar(mul(saved, saved), -0.5)), inv_sqrt_2pi);
      return mul(g, add(cdf, mul(saved, pdf)));
    }
    case UnaryOp::PowScalar:  // G ⊙ k·X^(k−1), 0 for k = 0
      if (scalar == 0.0) return mul_scalar(g, 0.0);
      return mul(g, mul_scalar(power(saved, scalar - 1.0), scalar));
    case UnaryOp::MulScalar:
      return mul_scalar(g, scalar);
    case UnaryOp::AddScalar:
      return g;
    case UnaryOp::Sign:
      return mul_scalar(g, 0.0);
    case UnaryOp::ClampMin:  // G where X is not below the bound, else 0
      return where(compare(BinaryOp::Lt, saved, Tensor::full({}, scalar, g.dtype(), g.device())),
                   zero, g);
  }
  return Tensor();
}

const char* UnaryBackward::name() const {
  switch (op) {
#define UNARY_OP(Name, Saves, Grad) \
  case UnaryOp::Name:               \
    return #Name "Backward";
#define UNARY_OP_NO_SAVE(Name) UNARY_OP(Name, Nothing, None)
#include "steepest/unary_ops.def"
  }
  return "UnaryBackward";
}

// seed: 降维操作 — y = Σ X gives dL/dX = g·ones(B, D); mean scales by 1/(B·D).
void SumBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  Tensor kept = reshape(g, kept_shape);
  if (scale != 1.0) kept = mul_scalar(kept, scale);
  out[0] = expand(kept, input_shape);
}

// seed: 降维操作 (maxpooling) — the gradient g goes to the maximum. Tied maxima share it
// evenly, as torch's amax and full max() do: dL/dx_i = g·1{x_i = m} / #{j : x_j = m}.
void MaxBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  const Dims& rs = result.shape();
  Tensor mask = astype(compare(BinaryOp::Eq, input, result), g.dtype());
  Tensor share = div(reshape(g, rs), sum(mask, std::vector<int64_t>{1}, true));
  Tensor routed = mul(mask, share);
  out[0] = permute(reshape(routed, permuted_shape), detail::inverse_permutation(order));
}

// One GEMM for the out-of-place product and the in-place sum (backward.h).
Tensor product_gradient(Node& node, size_t i, const Tensor& x, const Tensor& y,
                        const Tensor& input) {
  const Tensor destination = node.grad_destination(i);
  if (destination.defined() && detail::gemm_shape(x, y) == input.shape()) {
    detail::gemm_into(x, y, destination, 1.0);
    node.delivered_in_place(i);
    return Tensor();
  }
  return sum_to(detail::gemm_product(x, y, input.dtype()), input.shape());
}

// seed: 矩阵乘法 — Y = X·W gives dL/dW = Xᵀ·G and dL/dX = G·Wᵀ. Transposes are views,
// so the GEMM reads them with transpose flags instead of copying. Broadcast batch
// axes are summed away.
// seed: dX = G·Wᵀ, dW = Xᵀ·G. A float32 W with a 16-bit X (mixed precision) is rounded
// again while dX's GEMM packs it, and dW = Xᵀ·G is summed in float32 and written as
// float32 (no 16-bit dW and no widening pass); with create_graph, dW is the composite
// astype(Xᵀ·G), which rounds once more. A leaf W's dW goes straight into W.grad when the
// engine offers it (product_gradient).
void MatmulBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  if (next[0]) out[0] = sum_to(matmul(g, transpose(b, -1, -2)), a.shape());
  if (!next[1]) return;
  // All rows of a batched X share one 2-D W: the batch folds into the rows.
  const bool fold = b.ndim() == 2 && a.ndim() > 2;
  const int64_t k = a.shape().back(), n = g.shape().back();
  const Tensor xt = fold ? transpose(reshape(a, {-1, k}), 0, 1) : transpose(a, -1, -2);
  const Tensor gr = fold ? reshape(g, {-1, n}) : g;
  if (grad_enabled()) {
    const Tensor product = matmul(xt, gr);
    out[1] = sum_to(b.dtype() != a.dtype() ? astype(product, b.dtype()) : product, b.shape());
    return;
  }
  out[1] = product_gradient(*this, 1, xt, gr, b);
}

void ReshapeBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  out[0] = reshape(g, input_shape);
}

void PermuteBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  out[0] = permute(g, detail::inverse_permutation(order));
}

// The backward of broadcasting is a sum over the broadcast axes (seed: bias).
void ExpandBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  out[0] = sum_to(g, input_shape);
}

void SliceBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  Tensor full = Tensor::zeros(input_shape, g.dtype(), g.device());
  Tensor view = select ? ops::select(full, axis, start)
                       : detail::slice_view(full, axis, start, count, step);
  if (view.shape() != g.shape())
    fail<StateError>("backward", "slice gradient of shape ", g.shape(), " for a view of shape ",
                     view.shape(), " (a backward formula returned a wrongly shaped gradient)");
  STEEPEST_KERNEL(g.device(), copy)(g, view);
  detail::record<SliceScatterBackward>(full, {&g}, *this);
  out[0] = full;
}

// The gradient was written into zeros through the slice: its own gradient is the same
// slice of GG, recorded as a slice so that higher orders go on.
void SliceScatterBackward::apply(const Tensor& gg, std::vector<Tensor>& out) {
  const Tensor source = gg.detach();
  Tensor view = slice.select ? ops::select(source, slice.axis, slice.start)
                             : detail::slice_view(source, slice.axis, slice.start, slice.count,
                                                  slice.step);
  detail::record<SliceBackward>(view, {&gg}, slice);
  out[0] = view;
}

void IdentityBackward::apply(const Tensor& g, std::vector<Tensor>& out) { out[0] = g; }

void CastBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  out[0] = astype(g, input_dtype);
}

void ToDeviceBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  out[0] = to_device(g, input_device);
}

// seed: softmax — dL/dz = G ⊙ p − (G·pᵀ) p; log-softmax: dL/dz = G − p ΣG.
void SoftmaxBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  int ndim = y_last.ndim();
  Dims order = detail::move_axis_last_order(ndim, axis);
  if (grad_enabled()) {  // create_graph: the same rules with recorded ops
    Tensor y = output_in_graph(permute(y_last, detail::inverse_permutation(order)));
    std::vector<int64_t> axes{axis};
    out[0] = log ? sub(g, mul(exp(y), sum(g, axes, true)))
                 : mul(y, sub(g, sum(mul(g, y), axes, true)));
    return;
  }
  Tensor g_last = contiguous(permute(g, order));
  Tensor gx = Tensor::empty(g_last.shape(), g.dtype(), g.device());
  STEEPEST_KERNEL(g.device(), softmax_backward)(g_last, y_last, gx, log);
  out[0] = permute(gx, detail::inverse_permutation(order));
}

// seed: softmax接cross-entropy的导数 — dL/dz = p − y (p·Σy − y for soft labels);
// soft labels also get dL/dy = −log p.
void CrossEntropyBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  int64_t rows = logsumexp.shape()[0];
  Tensor per_row = g;
  if (reduction == Reduction::Mean)
    per_row = expand(reshape(mul_scalar(g, rows ? 1.0 / static_cast<double>(rows) : 0.0), {1}), {rows});
  else if (reduction == Reduction::Sum)
    per_row = expand(reshape(g, {1}), {rows});
  per_row = contiguous(reshape(per_row, {rows}));
  if (grad_enabled()) {
    differentiable_grad(per_row, out);
    return;
  }
  if (next[0]) {
    Tensor grad_logits = Tensor::empty(logits.shape(), logits.dtype(), logits.device());
    STEEPEST_KERNEL(g.device(), cross_entropy_backward)(logits, labels, logsumexp, per_row,
                                                        grad_logits);
    out[0] = reshape(grad_logits, logits_shape);
  }
  if (next.size() > 1 && next[1]) {
    // log p = (z − m) − log Σ exp(z − m), with the statistics in the logits' dtype
    Tensor lse = astype(logsumexp, logits.dtype());
    Tensor log_p = sub(sub(logits, slice(lse, 1, 0, 1, 1)), slice(lse, 1, 1, 2, 1));
    out[1] = reshape(neg(mul(log_p, reshape(per_row, {rows, 1}))), labels_shape);
  }
}

// create_graph: p − y (p·Σy − y) and −log p from the connected logits and labels.
void CrossEntropyBackward::differentiable_grad(const Tensor& per_row, std::vector<Tensor>& out) {
  const int64_t rows = logsumexp.shape()[0], classes = logits.shape()[1];
  Tensor z = reshape(logits_input, {rows, classes});
  Tensor weight = reshape(per_row, {rows, 1});
  if (next[0]) {
    Tensor p = softmax(z, -1);
    Tensor residual;
    if (labels_input.defined()) {
      Tensor y = reshape(labels_input, {rows, classes});
      residual = sub(mul(p, sum(y, std::vector<int64_t>{1}, true)), y);
    } else {
      residual = sub(p, astype(one_hot(labels, classes), p.dtype()));
    }
    out[0] = reshape(mul(residual, weight), logits_shape);
  }
  if (next.size() > 1 && next[1])
    out[1] = reshape(neg(mul(log_softmax(z, -1), weight)), labels_shape);
}

// Binary cross-entropy on logits: dL/dz = σ(z) − y (the seed's demo: a − y), dL/dy = −z.
void BceWithLogitsBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  if (next[0])
    out[0] = mul(g, grad_enabled() ? sub(sigmoid(logits), targets)
                                   : binary_raw(BinaryOp::BceWithLogitsGrad, logits, targets));
  if (next[1]) out[1] = neg(mul(g, logits));
}

void LayerNormBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  if (grad_enabled()) {
    // seed: LayerNorm — y = (x − μ)/√(σ² + ε)·w + b over the last axis, composed.
    const double epsilon = eps;
    composite_backward(*this, [epsilon](const std::vector<Tensor>& in) {
      const std::vector<int64_t> last{-1};
      Tensor centered = sub(in[0], ops::mean(in[0], last, true));
      Tensor variance = ops::mean(mul(centered, centered), last, true);
      Tensor y = mul(centered, power(add_scalar(variance, epsilon), -0.5));
      if (in[1].defined()) y = mul(y, in[1]);
      if (in[2].defined()) y = add(y, in[2]);
      return y;
    }, {x_input, weight_input, bias_input}, g, out);
    return;
  }
  Tensor gc = contiguous(g);
  Tensor grad_x = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor grad_w, grad_b;
  bool want_w = weight.defined() && next[1];
  bool want_b = has_bias && next[2];
  if (want_w) grad_w = Tensor::empty(weight.shape(), x.dtype(), x.device());
  if (want_b) grad_b = Tensor::empty({x.shape().back()}, x.dtype(), x.device());
  STEEPEST_KERNEL(g.device(), layer_norm_backward)(gc, x, weight, mean, rstd, grad_x,
                                                   want_w ? &grad_w : nullptr,
                                                   want_b ? &grad_b : nullptr);
  if (next[0]) out[0] = grad_x;
  if (want_w) out[1] = grad_w;
  if (want_b) out[2] = grad_b;
}

// The fused formula is in cpp/cpu/nn.cpp's batch_norm_backward.
void BatchNormBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  if (grad_enabled()) {
    // BatchNorm on (outer, C, inner): y = (x − μ_c)/√(σ²_c + ε)·γ_c + β_c, composed; with
    // the running statistics (inference) μ and 1/√(σ² + ε) are constants.
    const Dims stats_shape{1, channels, 1};
    Tensor fixed_mean = batch_stats ? Tensor() : reshape(mean, stats_shape);
    Tensor fixed_rstd = batch_stats ? Tensor() : reshape(rstd, stats_shape);
    const Dims grouped{outer, channels, inner};
    const double epsilon = eps;
    const bool batch = batch_stats;
    composite_backward(*this, [=](const std::vector<Tensor>& in) {
      Tensor x3 = reshape(in[0], grouped);
      Tensor y;
      if (batch) {
        const std::vector<int64_t> axes{0, 2};
        Tensor centered = sub(x3, ops::mean(x3, axes, true));
        Tensor variance = ops::mean(mul(centered, centered), axes, true);
        y = mul(centered, power(add_scalar(variance, epsilon), -0.5));
      } else {
        y = mul(sub(x3, astype(fixed_mean, x3.dtype())), astype(fixed_rstd, x3.dtype()));
      }
      if (in[1].defined()) y = mul(y, reshape(in[1], stats_shape));
      if (in[2].defined()) y = add(y, reshape(in[2], stats_shape));
      return reshape(y, in[0].shape());
    }, {x_input, weight_input, bias_input}, g, out);
    return;
  }
  Tensor gc = contiguous(g);
  Tensor grad_x, grad_w, grad_b;
  const bool want_w = weight.defined() && next[1];
  const bool want_b = has_bias && next[2];
  if (next[0]) grad_x = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (want_w) grad_w = Tensor::empty({channels}, x.dtype(), x.device());
  if (want_b) grad_b = Tensor::empty({channels}, x.dtype(), x.device());
  STEEPEST_KERNEL(g.device(), batch_norm_backward)(gc, x, outer, channels, inner, mean, rstd,
                                                   weight, batch_stats,
                                                   next[0] ? &grad_x : nullptr,
                                                   want_w ? &grad_w : nullptr,
                                                   want_b ? &grad_b : nullptr);
  if (next[0]) out[0] = grad_x;
  if (want_w) out[1] = grad_w;
  if (want_b) out[2] = grad_b;
}

// The table's gradient scatters G's rows into the rows they were read from (adding where an
// index repeats): into a zero table, or straight into a leaf table's .grad when the engine
// offers it (Node::grad_destination), which then needs no table-sized temporary.
void EmbeddingBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  const Tensor destination = grad_destination(1);
  const bool in_place = destination.defined() && destination.dtype() == g.dtype();
  Tensor grad_table = in_place ? destination : Tensor::zeros(table_shape, g.dtype(), g.device());
  STEEPEST_KERNEL(g.device(), embedding_backward)(indices, contiguous(g), grad_table);
  if (in_place) {
    delivered_in_place(1);
    return;
  }
  detail::record<EmbeddingScatterBackward>(grad_table, {&g}, indices);
  out[1] = grad_table;
}

void EmbeddingScatterBackward::apply(const Tensor& gg, std::vector<Tensor>& out) {
  out[0] = embedding(indices, gg);
}

// seed: 实际的卷积的导数 — dL/dW_row = G·X_colᵀ, dL/dX_col = W_rowᵀ·G then col2im.
// 16-bit tensors run the float32 kernel on widened copies and round each gradient once,
// as the forward does (cpp/ops/nn.cpp).
namespace {

// The three convolution products with a fixed geometry, each recorded with its node, in
// the compute dtype (create_graph only; the first-order path calls the kernels directly).
Tensor conv_forward_recorded(const Tensor& x, const Tensor& w, const Conv2dGeometry& geo) {
  Tensor xc = contiguous(x.detach()), wc = contiguous(w.detach());
  Tensor y = Tensor::empty({geo.batch, geo.out_channels, geo.out_h, geo.out_w}, x.dtype(), x.device());
  STEEPEST_KERNEL(x.device(), conv2d_forward)(xc, wc, Tensor(), geo, y);
  detail::record<Conv2dBackward>(y, {&x, &w, nullptr}, xc, wc, geo, false, x, w);
  return y;
}

Tensor conv_input_grad_recorded(const Tensor& g, const Tensor& w, const Conv2dGeometry& geo) {
  Tensor gc = contiguous(g.detach()), wc = contiguous(w.detach());
  Tensor grad_x = Tensor::empty({geo.batch, geo.in_channels, geo.in_h, geo.in_w}, g.dtype(), g.device());
  // The kernel reads x only for the weight gradient, which is not asked for.
  const Tensor no_x = Tensor::empty({0}, g.dtype(), g.device());
  STEEPEST_KERNEL(g.device(), conv2d_backward)(no_x, wc, gc, geo, &grad_x, nullptr, nullptr);
  detail::record<ConvInputGradBackward>(grad_x, {&g, &w}, g, w, geo);
  return grad_x;
}

Tensor conv_weight_grad_recorded(const Tensor& g, const Tensor& x, const Dims& weight_shape,
                                 const Conv2dGeometry& geo) {
  Tensor gc = contiguous(g.detach()), xc = contiguous(x.detach());
  Tensor grad_w = Tensor::empty(weight_shape, g.dtype(), g.device());
  const Tensor no_w = Tensor::empty({0}, g.dtype(), g.device());  // read only for dX
  STEEPEST_KERNEL(g.device(), conv2d_backward)(xc, no_w, gc, geo, nullptr, &grad_w, nullptr);
  detail::record<ConvWeightGradBackward>(grad_w, {&g, &x}, g, x, geo);
  return grad_w;
}

Dims conv_weight_shape(const Conv2dGeometry& geo) {
  return {geo.out_channels, geo.in_channels / geo.groups, geo.kernel_h, geo.kernel_w};
}

}  // namespace

// d<GG, convᵀ_X(G; W)>: /dG = conv(GG, W), /dW = convᵀ_W(G; GG).
void ConvInputGradBackward::apply(const Tensor& gg, std::vector<Tensor>& out) {
  if (next[0]) out[0] = conv_forward_recorded(gg, weight, geometry);
  if (next[1]) out[1] = conv_weight_grad_recorded(g, gg, weight.shape(), geometry);
}

// d<GG, convᵀ_W(G; X)>: /dG = conv(X, GG), /dX = convᵀ_X(G; GG).
void ConvWeightGradBackward::apply(const Tensor& gg, std::vector<Tensor>& out) {
  if (next[0]) out[0] = conv_forward_recorded(x, gg, geometry);
  if (next[1]) out[1] = conv_input_grad_recorded(g, gg, geometry);
}

void Conv2dBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  const DType dtype = x.dtype(), compute = compute_dtype(dtype);
  if (grad_enabled()) {  // create_graph: the same products, recorded
    Tensor gc = astype(g, compute);
    if (next[0]) out[0] = astype(conv_input_grad_recorded(gc, astype(weight_input, compute), geometry), dtype);
    if (next[1])
      out[1] = astype(conv_weight_grad_recorded(gc, astype(x_input, compute), conv_weight_shape(geometry), geometry), dtype);
    if (has_bias && next[2]) out[2] = sum(g, std::vector<int64_t>{0, 2, 3});
    return;
  }
  Tensor gc = astype(contiguous(g), compute);
  Tensor xc = astype(x, compute), wc = astype(weight, compute);
  Tensor grad_x, grad_w, grad_b;
  if (next[0]) grad_x = Tensor::empty(x.shape(), compute, x.device());
  if (next[1]) grad_w = Tensor::empty(weight.shape(), compute, x.device());
  bool want_b = has_bias && next[2];
  if (want_b) grad_b = Tensor::empty({geometry.out_channels}, compute, x.device());
  STEEPEST_KERNEL(g.device(), conv2d_backward)(xc, wc, gc, geometry,
                                               next[0] ? &grad_x : nullptr,
                                               next[1] ? &grad_w : nullptr,
                                               want_b ? &grad_b : nullptr);
  if (next[0]) out[0] = astype(grad_x, dtype);
  if (next[1]) out[1] = astype(grad_w, dtype);
  if (want_b) out[2] = astype(grad_b, dtype);
}

void Pool2dBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  const Conv2dGeometry& geo = geometry;
  const DType compute = compute_dtype(dtype);
  Tensor grad_x = Tensor::empty({geo.batch, geo.in_channels, geo.in_h, geo.in_w}, compute, g.device());
  Tensor gc = astype(contiguous(g), compute);
  STEEPEST_KERNEL(g.device(), pool2d_backward)(kind, gc, argmax.defined() ? &argmax : nullptr,
                                               x.defined() ? &x : nullptr, geo, grad_x);
  if (grad_enabled()) {  // create_graph
    if (kind == PoolKind::Avg) {
      detail::record<AvgPool2dScatterBackward>(grad_x, {&gc}, geo, compute);
    } else {
      Tensor index, weight;
      max_pool_shares(argmax, x, geo, compute, index, weight);
      detail::record<MaxPool2dScatterBackward>(grad_x, {&gc}, index, weight, geo);
    }
  }
  out[0] = astype(grad_x, dtype);
}

// Where max pooling's backward sent each window's gradient: to the pixels equal to the
// window's maximum, 1/ties each (max_pool_ties). For window w of plane p, entries
// [w·T, (w+1)·T) of index row p name those pixels and weight[p][w] holds their shares,
// padded with weight 0 to T, the most ties of any window (a window without pixels has
// none). Built on the host from the input widened to float64, which keeps every equality.
void max_pool_shares(const Tensor& argmax, const Tensor& x, const Conv2dGeometry& geo,
                     DType dtype, Tensor& index, Tensor& weight) {
  const Tensor entries = contiguous(to_device(argmax, Device{}));
  const Tensor input = contiguous(to_device(astype(x, DType::Float64), Device{}));
  const int64_t* entry = entries.data<int64_t>();
  const double* pixels = input.data<double>();
  const int64_t windows = geo.out_h * geo.out_w, plane_size = geo.in_h * geo.in_w;
  const int64_t planes = geo.batch * geo.in_channels;
  const auto plane_of = [&](int64_t i) { return pixels + (i / windows) * plane_size; };
  const auto best_of = [&](int64_t i) { return plane_of(i)[entry[i]]; };
  int64_t most = 1;
  for (int64_t i = 0; i < entries.numel(); ++i)
    if (entry[i] != kNoPixel)
      most = std::max(most, max_pool_ties(geo, (i % windows) / geo.out_w, i % geo.out_w,
                                          plane_of(i), best_of(i)));
  Tensor host_index = Tensor::zeros({planes, windows * most}, DType::Int64, Device{});
  Tensor host_weight = Tensor::zeros({planes, windows, most}, DType::Float64, Device{});
  int64_t* to = host_index.data<int64_t>();
  double* share = host_weight.data<double>();
  for (int64_t i = 0; i < entries.numel(); ++i) {
    if (entry[i] == kNoPixel) continue;
    const int64_t oh = (i % windows) / geo.out_w, ow = i % geo.out_w;
    const double best = best_of(i);
    const int64_t ties = max_pool_ties(geo, oh, ow, plane_of(i), best);
    if (ties == 0) {  // a NaN maximum: its pixel took the whole gradient
      to[i * most] = entry[i];
      share[i * most] = 1.0;
      continue;
    }
    int64_t k = 0;
    for_window(geo, oh, ow, [&](int64_t pixel) {
      if (plane_of(i)[pixel] != best) return;
      to[i * most + k] = pixel;
      share[i * most + k++] = 1.0 / static_cast<double>(ties);
    });
  }
  index = to_device(host_index, argmax.device());
  weight = to_device(astype(host_weight, dtype), argmax.device());
}

// gG = Pᵀ·GG: each window's share-weighted sum of GG over the pixels its gradient went to.
void MaxPool2dScatterBackward::apply(const Tensor& gg, std::vector<Tensor>& out) {
  const Conv2dGeometry& geo = geometry;
  const int64_t planes = geo.batch * geo.in_channels;
  Tensor picked = take_along_axis(reshape(gg, {planes, geo.in_h * geo.in_w}), index, 1);
  Tensor pooled = sum(mul(reshape(picked, weight.shape()), astype(weight, gg.dtype())),
                      std::vector<int64_t>{2});
  out[0] = reshape(pooled, {geo.batch, geo.in_channels, geo.out_h, geo.out_w});
}

void AvgPool2dScatterBackward::apply(const Tensor& gg, std::vector<Tensor>& out) {
  Tensor source = contiguous(gg.detach());
  Tensor pooled = Tensor::empty({geometry.batch, geometry.in_channels, geometry.out_h, geometry.out_w},
                                source.dtype(), gg.device());
  STEEPEST_KERNEL(gg.device(), pool2d_forward)(PoolKind::Avg, source, geometry, pooled, nullptr);
  detail::record<Pool2dBackward>(pooled, {&gg}, PoolKind::Avg, Tensor(), Tensor(), geometry, dtype);
  out[0] = pooled;
}

}  // namespace steepest::ops
