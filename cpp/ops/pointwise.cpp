// Everyday pointwise ops: where, maximum/minimum, clip, a tensor exponent and the
// activations erf, silu, softplus, elu, leaky_relu. Front-ends (checks, broadcasting)
// and backward formulas; the per-element maths is steepest/pointwise.h.
#include <cmath>
#include <limits>

#include "internal.h"
#include "steepest/profiler.h"

namespace steepest::ops {

using detail::record;

namespace {

// Tensor views broadcast to `shape` (stride 0 where broadcast; never a copy).
Tensor broadcast_view(const Tensor& t, const Dims& shape) {
  return t.shape() == shape ? t.detach() : expand(t.detach(), shape);
}

Tensor pointwise_raw(PointwiseOp op, const Tensor& a, const Tensor* b, double p0 = 0.0,
                     double p1 = 0.0, const char* name = "pointwise") {
  if (!b) {
    Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
    STEEPEST_KERNEL(a.device(), pointwise)(op, a, nullptr, out, p0, p1);
    return out;
  }
  detail::check_same_dtype(name, a, *b);
  detail::check_same_device(name, a, *b);
  Dims shape = a.shape() == b->shape() ? a.shape() : broadcast_shapes(name, a.shape(), b->shape());
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  Tensor av = broadcast_view(a, shape), bv = broadcast_view(*b, shape);
  STEEPEST_KERNEL(a.device(), pointwise)(op, av, &bv, out, p0, p1);
  return out;
}

// --------------------------------------------------------------------- activations

// One node for the unary rules: dL/dx = G ⊙ f'(x), the *Grad rule of pointwise.h.
// x is kept connected to the graph for create_graph.
struct PointwiseBackward final : Node {
  PointwiseBackward(PointwiseOp grad_op, Tensor x, double p0, double p1, const char* op_name)
      : grad_op(grad_op), x(std::move(x)), p0(p0), p1(p1), op_name(op_name) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override {
    out[0] = grad_enabled() ? mul(g, derivative()) : pointwise_raw(grad_op, g, &x, p0, p1);
  }
  // f'(x) with recorded ops (create_graph), the rules of pointwise.h's *Grad.
  Tensor derivative() const {
    const Tensor one = Tensor::full({}, 1.0, x.dtype(), x.device());
    switch (grad_op) {
      case PointwiseOp::ErfGrad:  // 2/√π·e^(−x²)
        return mul_scalar(exp(neg(mul(x, x))), 1.12837916709551257390);
      case PointwiseOp::SiluGrad: {  // σ(x)·(1 + x·(1 − σ(x)))
        Tensor s = sigmoid(x);
        return mul(s, add_scalar(mul(x, add_scalar(neg(s), 1.0)), 1.0));
      }
      case PointwiseOp::SoftplusGrad: {  // σ(βx), 1 above the threshold
        Tensor bx = mul_scalar(x, p0);
        return where(compare(BinaryOp::Gt, bx, Tensor::full({}, p1, x.dtype(), x.device())),
                     one, sigmoid(bx));
      }
      case PointwiseOp::EluGrad:  // 1 for x > 0, α·e^x otherwise
        return where(compare(BinaryOp::Gt, x, Tensor::zeros({}, x.dtype(), x.device())), one,
                     mul_scalar(exp(x), p0));
      default:  // piecewise constant (leaky_relu): no second-order term
        return pointwise_raw(grad_op, Tensor::full(x.shape(), 1.0, x.dtype(), x.device()), &x,
                             p0, p1);
    }
  }
  bool supports_create_graph() const override { return true; }
  void visit_saved(const SavedVisitor& visit) override { visit(x); }
  const char* name() const override { return op_name; }
  PointwiseOp grad_op;
  Tensor x;
  double p0, p1;
  const char* op_name;
};

Tensor activation(const char* name, const char* node_name, PointwiseOp op, PointwiseOp grad_op,
                  const Tensor& x, double p0 = 0.0, double p1 = 0.0) {
  detail::check_defined(name, x, "input");
  detail::check_float(name, x, "input");
  Tensor out = pointwise_raw(op, x, nullptr, p0, p1);
  record<PointwiseBackward>(out, {&x}, grad_op, x, p0, p1, node_name);
  return out;
}

// -------------------------------------------------------------------- where & friends

// where(c, x, y): dL/dx = G ⊙ 1{c}, dL/dy = G ⊙ 1{¬c}, each summed to its shape.
struct WhereBackward final : Node {
  WhereBackward(Tensor cond, Dims x_shape, Dims y_shape)
      : cond(std::move(cond)), x_shape(x_shape), y_shape(y_shape) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override {
    Tensor zero = Tensor::zeros({}, g.dtype(), g.device());
    if (next[1]) out[1] = sum_to(where(cond, g, zero), x_shape);
    if (next[2]) out[2] = sum_to(where(cond, zero, g), y_shape);
  }
  void visit_saved(const SavedVisitor& visit) override { visit(cond); }
  const char* name() const override { return "WhereBackward"; }
  bool supports_create_graph() const override { return true; }
  Tensor cond;
  Dims x_shape, y_shape;
};

// maximum/minimum(a, b): dL/da = G ⊙ w(a, b), dL/db = G ⊙ w(b, a), with w the share of
// pointwise.h (1 for the larger, 0 for the smaller, ½ each at a tie).
struct ExtremumBackward final : Node {
  ExtremumBackward(PointwiseOp weight_op, Tensor a, Tensor b, const char* op_name)
      : weight_op(weight_op), a(std::move(a)), b(std::move(b)), op_name(op_name) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override {
    if (next[0]) out[0] = sum_to(mul(g, pointwise_raw(weight_op, a, &b)), a.shape());
    if (next[1]) out[1] = sum_to(mul(g, pointwise_raw(weight_op, b, &a)), b.shape());
  }
  void visit_saved(const SavedVisitor& visit) override { visit(a); visit(b); }
  const char* name() const override { return op_name; }
  // The weights are piecewise constant: linear in G is the whole second-order story.
  bool supports_create_graph() const override { return true; }
  PointwiseOp weight_op;
  Tensor a, b;
  const char* op_name;
};

// x^y: dL/dx = G ⊙ y·x^(y−1), dL/dy = G ⊙ x^y·ln x (pointwise.h's weights, with torch's
// conventions at y = 0 and at x = 0). x and y stay connected for create_graph.
struct PowBackward final : Node {
  PowBackward(Tensor x, Tensor y) : x(std::move(x)), y(std::move(y)) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override {
    const bool recorded = grad_enabled();
    if (next[0])
      out[0] = sum_to(mul(g, recorded ? base_weight() : pointwise_raw(PointwiseOp::PowBaseWeight, x, &y)),
                      x.shape());
    if (next[1])
      out[1] = sum_to(mul(g, recorded ? exponent_weight() : pointwise_raw(PointwiseOp::PowExponentWeight, x, &y)),
                      y.shape());
  }
  // The weights with recorded ops (create_graph); the conventions become masks.
  Tensor base_weight() const {
    const Tensor zero = Tensor::zeros({}, x.dtype(), x.device());
    return where(compare(BinaryOp::Eq, y, zero), zero,
                 mul(y, pow(x, add_scalar(y, -1.0))));
  }
  Tensor exponent_weight() const {
    const Tensor zero = Tensor::zeros({}, x.dtype(), x.device());
    Tensor constant = mul(compare(BinaryOp::Eq, x, zero), compare(BinaryOp::Ge, y, zero));  // and
    Tensor safe_x = where(constant, Tensor::full({}, 1.0, x.dtype(), x.device()), x);
    return where(constant, zero, mul(pow(safe_x, y), log(safe_x)));
  }
  bool supports_create_graph() const override { return true; }
  void visit_saved(const SavedVisitor& visit) override { visit(x); visit(y); }
  const char* name() const override { return "PowBackward"; }
  Tensor x, y;
};

// clip with scalar bounds: dL/dx = G ⊙ 1{lo ≤ x ≤ hi}.
struct ClipBackward final : Node {
  ClipBackward(Tensor x, double lo, double hi) : x(std::move(x)), lo(lo), hi(hi) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override {
    // create_graph: G times the (piecewise constant) mask, which records on G
    out[0] = grad_enabled()
                 ? mul(g, pointwise_raw(PointwiseOp::ClipGrad,
                                        Tensor::full(x.shape(), 1.0, x.dtype(), x.device()), &x,
                                        lo, hi))
                 : pointwise_raw(PointwiseOp::ClipGrad, g, &x, lo, hi);
  }
  bool supports_create_graph() const override { return true; }
  void visit_saved(const SavedVisitor& visit) override { visit(x); }
  const char* name() const override { return "ClipBackward"; }
  Tensor x;
  double lo, hi;
};

void check_binary_float(const char* name, const Tensor& a, const Tensor& b) {
  detail::check_defined(name, a, "first input");
  detail::check_defined(name, b, "second input");
  detail::check_same_device(name, a, b);
  detail::check_same_dtype(name, a, b);
  detail::check_float(name, a, "input");
}

Tensor extremum(const char* name, const char* node_name, PointwiseOp op, PointwiseOp weight,
                const Tensor& a, const Tensor& b) {
  detail::check_defined(name, a, "first input");
  detail::check_defined(name, b, "second input");
  if (!is_floating(a.dtype()) && a.dtype() == b.dtype()) {  // integers: exact, no gradient
    const bool larger = op == PointwiseOp::Maximum;
    return where(compare(larger ? BinaryOp::Gt : BinaryOp::Lt, a, b), a, b);
  }
  check_binary_float(name, a, b);
  Tensor out = pointwise_raw(op, a, &b, 0.0, 0.0, name);
  record<ExtremumBackward>(out, {&a, &b}, weight, a.detach(), b.detach(), node_name);
  return out;
}

}  // namespace

Tensor where(const Tensor& cond, const Tensor& x, const Tensor& y) {
  STEEPEST_PROFILE_OP("where");
  detail::check_defined("where", cond, "condition");
  detail::check_defined("where", x, "x");
  detail::check_defined("where", y, "y");
  if (cond.dtype() != DType::Bool)
    fail<TypeError>("where", "condition must be a bool tensor, got ", dtype_name(cond.dtype()),
                    " ", cond.shape(), " (compare with ==, <, ... or use astype('bool'))");
  detail::check_same_dtype("where", x, y);
  detail::check_same_device("where", x, y);
  detail::check_same_device("where", cond, x);
  Dims shape = broadcast_shapes("where", broadcast_shapes("where", cond.shape(), x.shape()),
                                y.shape());
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  Tensor cv = broadcast_view(cond, shape), xv = broadcast_view(x, shape),
         yv = broadcast_view(y, shape);
  STEEPEST_KERNEL(x.device(), where)(cv, xv, yv, out);
  if (is_floating(x.dtype()))
    record<WhereBackward>(out, {&cond, &x, &y}, cond.detach(), x.shape(), y.shape());
  return out;
}

Tensor maximum(const Tensor& a, const Tensor& b) {
  STEEPEST_PROFILE_OP("maximum");
  return extremum("maximum", "MaximumBackward", PointwiseOp::Maximum, PointwiseOp::MaximumWeight,
                  a, b);
}

Tensor minimum(const Tensor& a, const Tensor& b) {
  STEEPEST_PROFILE_OP("minimum");
  return extremum("minimum", "MinimumBackward", PointwiseOp::Minimum, PointwiseOp::MinimumWeight,
                  a, b);
}

Tensor clip(const Tensor& x, std::optional<double> lo, std::optional<double> hi) {
  STEEPEST_PROFILE_OP("clip");
  detail::check_defined("clip", x, "input");
  if (!lo && !hi) fail("clip", "at least one of min and max must be given");
  if ((lo && std::isnan(*lo)) || (hi && std::isnan(*hi)))
    fail("clip", "bounds must not be NaN");
  if (!is_floating(x.dtype())) {  // integers: exact, through where
    auto bound = [&](std::optional<double> b) {
      if (!b) return Tensor();
      if (*b != std::floor(*b))
        fail<TypeError>("clip", "bound ", *b, " is not an integer, and the input is ",
                        dtype_name(x.dtype()), " ", x.shape(), " (convert it with astype)");
      return scalar_like(x, *b);
    };
    return clip(x, bound(lo), bound(hi));
  }
  const double inf = std::numeric_limits<double>::infinity();
  const double low = lo ? *lo : -inf, high = hi ? *hi : inf;
  Tensor out = pointwise_raw(PointwiseOp::Clip, x, nullptr, low, high);
  record<ClipBackward>(out, {&x}, x.detach(), low, high);
  return out;
}

// Tensor bounds: where(x < lo, lo, x), then where(· > hi, hi, ·). x keeps the gradient
// at a bound (as torch.clamp); a bound gets it where it replaced x.
Tensor clip(const Tensor& x, const Tensor& lo, const Tensor& hi) {
  STEEPEST_PROFILE_OP("clip");
  detail::check_defined("clip", x, "input");
  if (!lo.defined() && !hi.defined()) fail("clip", "at least one of min and max must be given");
  Tensor out = x;
  for (const Tensor* bound : {&lo, &hi}) {
    if (!bound->defined()) continue;
    detail::check_same_device("clip", x, *bound);
    detail::check_same_dtype("clip", x, *bound);
    out = where(compare(bound == &lo ? BinaryOp::Lt : BinaryOp::Gt, out, *bound), *bound, out);
  }
  return out;
}

Tensor pow(const Tensor& x, const Tensor& y) {
  STEEPEST_PROFILE_OP("pow");
  check_binary_float("pow", x, y);
  Tensor out = pointwise_raw(PointwiseOp::Pow, x, &y, 0.0, 0.0, "pow");
  record<PowBackward>(out, {&x, &y}, x, y);
  return out;
}

Tensor erf(const Tensor& x) {
  STEEPEST_PROFILE_OP("erf");
  return activation("erf", "ErfBackward", PointwiseOp::Erf, PointwiseOp::ErfGrad, x);
}
Tensor silu(const Tensor& x) {
  STEEPEST_PROFILE_OP("silu");
  return activation("silu", "SiluBackward", PointwiseOp::Silu, PointwiseOp::SiluGrad, x);
}
Tensor softplus(const Tensor& x, double beta, double threshold) {
  STEEPEST_PROFILE_OP("softplus");
  if (!(beta > 0.0)) fail("softplus", "beta must be positive, got ", beta);
  return activation("softplus", "SoftplusBackward", PointwiseOp::Softplus,
                    PointwiseOp::SoftplusGrad, x, beta, threshold);
}
Tensor elu(const Tensor& x, double alpha) {
  STEEPEST_PROFILE_OP("elu");
  return activation("elu", "EluBackward", PointwiseOp::Elu, PointwiseOp::EluGrad, x, alpha);
}
Tensor leaky_relu(const Tensor& x, double negative_slope) {
  STEEPEST_PROFILE_OP("leaky_relu");
  return activation("leaky_relu", "LeakyReluBackward", PointwiseOp::LeakyRelu,
                    PointwiseOp::LeakyReluGrad, x, negative_slope);
}

}  // namespace steepest::ops
