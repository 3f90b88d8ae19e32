// Every backward formula of steepest, each citing the section of the seed
// (shared/seed/000_902e3fcc53af0d65.txt) it implements. Formulas are written with ops
// (under no_grad, set by the engine) so they run on any backend.
#include "backward.h"

#include "internal.h"

namespace steepest::ops {

using detail::binary_raw;
using detail::unary_raw;

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

// seed: 激活函数，element-wise的操作 — dL/dX = G ⊙ δ'(X), with the table's δ'.
void UnaryBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  switch (op) {
    case UnaryOp::Neg:
      out[0] = neg(g);
      break;
    case UnaryOp::Exp:  // (e^x)' = e^x, from the output
      out[0] = mul(g, saved);
      break;
    case UnaryOp::Log:  // Log: G ⊙ 1/Y
      out[0] = div(g, saved);
      break;
    case UnaryOp::Sqrt:
      out[0] = binary_raw(BinaryOp::SqrtGrad, g, saved);
      break;
    case UnaryOp::Abs:
      out[0] = mul(g, unary_raw(UnaryOp::Sign, saved));
      break;
    case UnaryOp::Relu:  // ReLU: G ⊙ 1{Y>0}
      out[0] = binary_raw(BinaryOp::ReluGrad, g, saved);
      break;
    case UnaryOp::Sigmoid:  // Sigmoid: G ⊙ Z ⊙ (1 − Z)
      out[0] = binary_raw(BinaryOp::SigmoidGrad, g, saved);
      break;
    case UnaryOp::Tanh:  // Tanh: G ⊙ (1 − Z²)
      out[0] = binary_raw(BinaryOp::TanhGrad, g, saved);
      break;
    case UnaryOp::Gelu:
      out[0] = binary_raw(BinaryOp::GeluGrad, g, saved);
      break;
    case UnaryOp::PowScalar:  // Power: G ⊙ k·Y^(k−1); x⁰ is constant, so 0 even at x = 0
      out[0] = scalar == 0.0 ? Tensor::zeros(g.shape(), g.dtype(), g.device())
                             : binary_raw(BinaryOp::PowScalarGrad, g, saved, scalar);
      break;
    case UnaryOp::MulScalar:
      out[0] = mul_scalar(g, scalar);
      break;
    case UnaryOp::AddScalar:
      out[0] = g;
      break;
    case UnaryOp::Sign:
      out[0] = mul_scalar(g, 0.0);
      break;
    case UnaryOp::ClampMin:
      out[0] = binary_raw(BinaryOp::ClampMinGrad, g, saved, scalar);
      break;
  }
}

const char* UnaryBackward::name() const {
  switch (op) {
#define STEEPEST_CASE(op_name) \
  case UnaryOp::op_name:       \
    return #op_name "Backward";
    STEEPEST_UNARY_OPS(STEEPEST_CASE)
#undef STEEPEST_CASE
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

// seed: 矩阵乘法 — Y = X·W gives dL/dW = Xᵀ·G and dL/dX = G·Wᵀ. Transposes are views,
// so the GEMM reads them with transpose flags instead of copying. Broadcast batch
// axes are summed away.
void MatmulBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  if (next[0]) out[0] = sum_to(matmul(g, transpose(b, -1, -2)), a.shape());
  if (next[1]) {
    if (b.ndim() == 2 && a.ndim() > 2) {
      // All rows of a batched X share one W: fold the batch into the rows.
      int64_t k = a.shape().back(), n = g.shape().back();
      out[1] = matmul(transpose(reshape(a, {-1, k}), 0, 1), reshape(g, {-1, n}));
    } else {
      out[1] = sum_to(matmul(transpose(a, -1, -2), g), b.shape());
    }
  }
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
  out[0] = full;
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

// Binary cross-entropy on logits: dL/dz = σ(z) − y (the seed's demo: a − y), dL/dy = −z.
void BceWithLogitsBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  if (next[0]) out[0] = mul(g, binary_raw(BinaryOp::BceWithLogitsGrad, logits, targets));
  if (next[1]) out[1] = neg(mul(g, logits));
}

void LayerNormBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
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

void EmbeddingBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  Tensor grad_table = Tensor::zeros(table_shape, g.dtype(), g.device());
  STEEPEST_KERNEL(g.device(), embedding_backward)(indices, contiguous(g), grad_table);
  out[1] = grad_table;
}

// seed: 实际的卷积的导数 — dL/dW_row = G·X_colᵀ, dL/dX_col = W_rowᵀ·G then col2im.
// 16-bit tensors run the float32 kernel on widened copies and round each gradient once,
// as the forward does (cpp/ops/nn.cpp).
void Conv2dBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  const DType dtype = x.dtype(), compute = compute_dtype(dtype);
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
  STEEPEST_KERNEL(g.device(), pool2d_backward)(kind, astype(contiguous(g), compute),
                                               argmax.defined() ? &argmax : nullptr,
                                               x.defined() ? &x : nullptr, geo, grad_x);
  out[0] = astype(grad_x, dtype);
}

}  // namespace steepest::ops
