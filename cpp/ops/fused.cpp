// Fused Transformer pieces: bias + GELU after a projection without bias, and the residual
// sum x + y + bias together with the LayerNorm the next sub-block reads (one pass over each
// row instead of an add per term and a separate normalisation). Each computes what its
// composition of ops computes; TransformerBlock::block is their caller.
#include <utility>

#include "backward.h"
#include "internal.h"
#include "steepest/profiler.h"

namespace steepest::ops {

using detail::check_float;
using detail::record;

namespace {

// x is (..., cols); bias, when given, is (cols) of x's dtype and device.
void check_bias(const char* op, const Tensor& x, const Tensor& bias, const char* role) {
  if (!bias.defined()) return;
  detail::check_same_dtype(op, x, bias);
  detail::check_same_device(op, x, bias);
  if (x.ndim() == 0 || bias.ndim() != 1 || bias.shape()[0] != x.shape().back())
    fail(op, role, " of shape ", bias.shape(), " does not match the last axis of ", x.shape(),
         " (expected (", x.ndim() ? x.shape().back() : 0, ",))");
}

void check_input(const char* op, const Tensor& x) {
  check_float(op, x, "input");
  if (x.ndim() == 0) fail(op, "expected at least one dimension, got a 0-d tensor");
}

// sum = x + y + bias, and with norm given its layer norm (recorded as layer_norm(sum)).
Tensor fused_residual(const char* op, const Tensor& x, const Tensor& y, const Tensor& bias,
                      Tensor* norm, const Tensor& weight, const Tensor& ln_bias, double eps) {
  check_input(op, x);
  detail::check_same_dtype(op, x, y);
  detail::check_same_device(op, x, y);
  if (x.shape() != y.shape())
    fail(op, "the residual input of shape ", x.shape(), " and the branch of shape ", y.shape(),
         " must have the same shape");
  check_bias(op, x, bias, "bias");
  check_bias(op, x, weight, "weight");
  check_bias(op, x, ln_bias, "ln_bias");
  if (norm && !(eps > 0)) fail(op, "eps must be positive, got ", eps);
  auto dense = [](const Tensor& t) { return t.defined() ? contiguous(t.detach()) : Tensor(); };
  const Tensor xc = dense(x), yc = dense(y), bc = dense(bias), wc = dense(weight),
               lbc = dense(ln_bias);
  const int64_t cols = x.shape().back(), rows = cols ? x.numel() / cols : 0;
  Tensor sum = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor mu, rstd;
  if (norm) {
    *norm = Tensor::empty(x.shape(), x.dtype(), x.device());
    mu = Tensor::empty({rows}, compute_dtype(x.dtype()), x.device());
    rstd = Tensor::empty({rows}, compute_dtype(x.dtype()), x.device());
  }
  STEEPEST_KERNEL(x.device(), add_layer_norm_forward)(xc, yc, bc, wc, lbc, eps, sum, norm,
                                                      norm ? &mu : nullptr,
                                                      norm ? &rstd : nullptr);
  record<ResidualAddBackward>(sum, {&x, &y, bias.defined() ? &bias : nullptr},
                              bias.defined() ? bias.shape() : Dims{});
  if (norm)
    record<LayerNormBackward>(*norm, {&sum, weight.defined() ? &weight : nullptr,
                                      ln_bias.defined() ? &ln_bias : nullptr},
                              sum.detach(), wc, mu, rstd, ln_bias.defined(), eps,
                              sum, weight, ln_bias);
  return sum;
}

}  // namespace

Tensor bias_gelu(const Tensor& x, const Tensor& bias) {
  STEEPEST_PROFILE_OP("bias_gelu");
  const char* op = "bias_gelu";
  check_input(op, x);
  detail::check_defined(op, bias, "bias");
  check_bias(op, x, bias, "bias");
  Tensor xc = contiguous(x.detach()), bc = contiguous(bias.detach());
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  STEEPEST_KERNEL(x.device(), bias_gelu_forward)(xc, bc, out);
  record<BiasGeluBackward>(out, {&x, &bias}, xc, bc, x, bias);
  return out;
}

Tensor bias_residual(const Tensor& x, const Tensor& y, const Tensor& bias) {
  STEEPEST_PROFILE_OP("bias_residual");
  return fused_residual("bias_residual", x, y, bias, nullptr, Tensor(), Tensor(), 0.0);
}

std::pair<Tensor, Tensor> add_layer_norm(const Tensor& x, const Tensor& y, const Tensor& bias,
                                         const Tensor& weight, const Tensor& ln_bias,
                                         double eps) {
  STEEPEST_PROFILE_OP("add_layer_norm");
  Tensor norm;
  Tensor sum = fused_residual("add_layer_norm", x, y, bias, &norm, weight, ln_bias, eps);
  return {sum, norm};
}

// d(x + y + b): G to x and y, G summed over the rows to b. Written with ops, so that it is
// its own create_graph rule.
void ResidualAddBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  if (next[0]) out[0] = g;
  if (next[1]) out[1] = g;
  if (next.size() > 2 && next[2]) out[2] = sum_to(g, bias_shape);
}

// GELU'(z) with z = x + b: dz = G ⊙ (Φ(z) + z·φ(z)) to x, its column sums to b.
void BiasGeluBackward::apply(const Tensor& g, std::vector<Tensor>& out) {
  if (grad_enabled()) {
    composite_backward(*this, [](const std::vector<Tensor>& in) {
      return gelu(add(in[0], in[1]));
    }, {x_input, bias_input}, g, out);
    return;
  }
  Tensor gc = contiguous(g);
  Tensor grad_x = Tensor::empty(x.shape(), x.dtype(), x.device());
  Tensor grad_b;
  if (next[1]) grad_b = Tensor::empty(bias.shape(), x.dtype(), x.device());
  STEEPEST_KERNEL(g.device(), bias_gelu_backward)(gc, x, bias, grad_x,
                                                  next[1] ? &grad_b : nullptr);
  if (next[0]) out[0] = grad_x;
  if (next[1]) out[1] = grad_b;
}

}  // namespace steepest::ops
