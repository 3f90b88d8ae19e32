// Reductions and scans beyond sum/mean/max: cumsum, prod, min, logsumexp, var and std,
// each with its hand-derived backward.
#include <cmath>
#include <limits>

#include "backward.h"
#include "internal.h"
#include "steepest/profiler.h"

namespace steepest::ops {

using detail::record;

namespace {

// x with the reduced axes moved last and merged: (kept elements, reduced elements).
struct Folded {
  Tensor layout;  // contiguous (outer, extent, 1)
  Dims order, permuted_shape, out_shape, kept_shape;
  int64_t outer = 1, extent = 1;
};

Folded fold(const char* op, const Tensor& x, const Axes& axes, bool keepdims) {
  uint32_t reduced = 0;
  if (!axes) {
    reduced = (1u << x.ndim()) - 1;
  } else {
    for (int64_t axis : *axes) {
      const int a = normalize_axis(op, axis, x.shape());
      if (reduced & (1u << a)) fail(op, "axis ", axis, " is repeated");
      reduced |= 1u << a;
    }
  }
  Folded f;
  for (int pass = 0; pass < 2; ++pass)
    for (int d = 0; d < x.ndim(); ++d)
      if (static_cast<bool>(reduced & (1u << d)) == (pass == 1)) f.order.push_back(d);
  for (int d = 0; d < x.ndim(); ++d) {
    const bool r = reduced & (1u << d);
    (r ? f.extent : f.outer) *= x.shape()[d];
    f.kept_shape.push_back(r ? 1 : x.shape()[d]);
    if (!r || keepdims) f.out_shape.push_back(r ? 1 : x.shape()[d]);
  }
  Tensor permuted = permute(x.detach(), f.order);
  f.permuted_shape = permuted.shape();
  f.layout = reshape(contiguous(permuted), {f.outer, f.extent, 1});
  return f;
}

Tensor run_scan(const Tensor& x3, ScanOp op, bool exclusive, bool reverse) {
  ScanArgs args;
  args.op = op;
  args.outer = x3.shape()[0];
  args.extent = x3.shape()[1];
  args.inner = x3.shape()[2];
  args.exclusive = exclusive;
  args.reverse = reverse;
  Tensor out = Tensor::empty(x3.shape(), x3.dtype(), x3.device());
  STEEPEST_KERNEL(x3.device(), scan)(args, x3, out);
  return out;
}

// (outer, extent, inner) contiguous view of x around axis a.
Tensor around_axis(const Tensor& x, int a) {
  int64_t outer = 1, inner = 1;
  for (int d = 0; d < x.ndim(); ++d) {
    if (d < a) outer *= x.shape()[d];
    if (d > a) inner *= x.shape()[d];
  }
  return reshape(contiguous(x), {outer, x.shape()[a], inner});
}

// cumsum: y_i = Σ_{j≤i} x_j, so dL/dx_j = Σ_{i≥j} G_i, a reversed cumsum of G.
struct CumsumBackward final : Node {
  explicit CumsumBackward(int axis) : axis(axis) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override {
    if (grad_enabled()) {  // create_graph: the reversed cumsum with recorded ops
      const std::vector<int64_t> axes{axis};
      out[0] = flip(cumsum(flip(g, axes), axis), axes);
      return;
    }
    out[0] = reshape(run_scan(around_axis(g, axis), ScanOp::Sum, false, true), g.shape());
  }
  bool supports_create_graph() const override { return true; }
  const char* name() const override { return "CumsumBackward"; }
  int axis;
};

// prod: dL/dx_i = G·Π_{j≠i} x_j, the product of the elements before i times that of the
// elements after it (two exclusive scans): exact with zeros, no division by x_i.
struct ProdBackward final : Node {
  ProdBackward(Tensor layout, Dims order, Dims permuted_shape, Tensor x)
      : layout(std::move(layout)), order(order), permuted_shape(permuted_shape), x(std::move(x)) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override {
    const Dims folded{layout.shape()[0], layout.shape()[1]};
    Tensor others = grad_enabled()
                        ? others_in_graph(reshape(contiguous(permute(x, order)), folded))
                        : reshape(mul(run_scan(layout, ScanOp::Prod, true, false),
                                      run_scan(layout, ScanOp::Prod, true, true)), folded);
    Tensor grad = mul(reshape(g, {folded[0], 1}), others);
    out[0] = permute(reshape(grad, permuted_shape), detail::inverse_permutation(order));
  }
  // Π_{j≠i} x_j per row of xf (kept, reduced) with recorded ops (create_graph), exact
  // through its first derivative whatever the zeros (torch's prod_backward cases). With
  // P' = Π of the row's non-zero elements and Z = Σ of its zero elements (0, but
  // connected: ∂/∂x_k of a product through the zero x_k is the rest of the product):
  //   no zero:      P'/x_i
  //   one zero:     P' at the zero; (P'/x_i)·Z elsewhere (∂/∂x_zero = P'/x_i)
  //   two zeros:    P'·(Z − x_i) at each zero (the other zero's factor); 0 elsewhere
  //   three or more: 0, as is every first derivative (each keeps a zero factor).
  static Tensor others_in_graph(const Tensor& xf) {
    const auto scalar = [&](double v) { return Tensor::full({}, v, xf.dtype(), xf.device()); };
    const Tensor zero = compare(BinaryOp::Eq, xf, scalar(0.0));
    const Tensor nonzero = where(zero, scalar(1.0), xf);
    const std::vector<int64_t> row{1};
    const Tensor rest = prod(nonzero, row, true);                    // P'
    const Tensor zeros_sum = sum(where(zero, xf, scalar(0.0)), row, true);  // Z
    const Tensor count = sum(astype(zero, xf.dtype()), row, true);
    const auto rows_with = [&](double n) { return compare(BinaryOp::Eq, count, scalar(n)); };
    const Tensor without_i = div(rest, nonzero);
    Tensor at_zero = where(rows_with(1.0), rest,
                           where(rows_with(2.0), mul(rest, sub(zeros_sum, xf)), scalar(0.0)));
    Tensor elsewhere = where(rows_with(0.0), without_i,
                             where(rows_with(1.0), mul(without_i, zeros_sum), scalar(0.0)));
    return where(zero, at_zero, elsewhere);
  }
  bool supports_create_graph() const override { return true; }
  void visit_saved(const SavedVisitor& visit) override { visit(layout); visit(x); }
  const char* name() const override { return "ProdBackward"; }
  Tensor layout;
  Dims order, permuted_shape;
  Tensor x;  // the input as the caller passed it (create_graph)
};

// logsumexp: y = log Σ e^x gives dL/dx = G ⊙ e^(x − y) (the softmax of x). x stays
// connected and y rejoins the graph through this node for create_graph.
struct LogSumExpBackward final : Node {
  LogSumExpBackward(Tensor x, Tensor y_kept) : x(std::move(x)), y_kept(std::move(y_kept)) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override {
    Tensor y = grad_enabled() ? reshape(output_in_graph(reshape(y_kept, g.shape())), y_kept.shape())
                              : y_kept;
    out[0] = mul(reshape(g, y_kept.shape()), exp(sub(x, y)));
  }
  bool supports_create_graph() const override { return true; }
  void visit_saved(const SavedVisitor& visit) override { visit(x); visit(y_kept); }
  const char* name() const override { return "LogSumExpBackward"; }
  Tensor x, y_kept;
};

// var = Σ(x − μ)²/(n − ddof) gives dL/dx = G·2(x − μ)/(n − ddof) (the μ terms cancel:
// Σ(x − μ) = 0); std = √var gives dL/dx = G·(x − μ)/((n − ddof)·std). `factor` holds
// 2/(n − ddof) or 1/((n − ddof)·std), shaped as the kept output.
struct VarianceBackward final : Node {
  VarianceBackward(Tensor centered, Tensor factor, bool is_std, Tensor x, Axes axes,
                   double divisor)
      : centered(std::move(centered)), factor(std::move(factor)), is_std(is_std),
        x(std::move(x)), axes(std::move(axes)), divisor(divisor) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override {
    if (grad_enabled()) {  // create_graph: differentiate the composed statistic
      composite_backward(*this, [this, &g](const std::vector<Tensor>& in) {
        Tensor c = sub(in[0], mean(in[0], axes, true));
        Tensor v = mul_scalar(sum(mul(c, c), axes, true), 1.0 / divisor);
        return reshape(is_std ? sqrt(v) : v, g.shape());
      }, {x}, g, out);
      return;
    }
    out[0] = mul(centered, mul(reshape(g, factor.shape()), factor));
  }
  bool supports_create_graph() const override { return true; }
  void visit_saved(const SavedVisitor& visit) override { visit(centered); visit(factor); visit(x); }
  const char* name() const override { return is_std ? "StdBackward" : "VarBackward"; }
  Tensor centered, factor;
  bool is_std;
  Tensor x;  // the input as the caller passed it (create_graph)
  Axes axes;
  double divisor;
};

Tensor variance(const char* op, const Tensor& x, const Axes& axes, bool keepdims, double ddof,
                bool is_std) {
  detail::check_defined(op, x, "input");
  detail::check_float(op, x, "input");
  if (!(ddof >= 0)) fail(op, "ddof must be a non-negative number, got ", ddof);
  const Folded f = fold(op, x, axes, keepdims);
  const double divisor = std::max(static_cast<double>(f.extent) - ddof, 0.0);
  const bool wanted = any_requires_grad({&x});
  Tensor centered, factor, out;
  {
    NoGradGuard no_grad;
    const Tensor xd = x.detach();
    centered = sub(xd, mean(xd, axes, true));
    Tensor var_kept = mul_scalar(sum(mul(centered, centered), axes, true), 1.0 / divisor);
    Tensor kept = is_std ? sqrt(var_kept) : var_kept;
    if (wanted)
      factor = is_std ? div(Tensor::full({}, 1.0 / divisor, x.dtype(), x.device()), kept)
                      : Tensor::full(f.kept_shape, 2.0 / divisor, x.dtype(), x.device());
    out = reshape(kept, f.out_shape);
  }
  if (wanted) record<VarianceBackward>(out, {&x}, centered, factor, is_std, x, axes, divisor);
  return out;
}

}  // namespace

Tensor cumsum(const Tensor& x, std::optional<int64_t> axis) {
  STEEPEST_PROFILE_OP("cumsum");
  detail::check_defined("cumsum", x, "input");
  if (!axis) return cumsum(reshape(x, {x.numel()}), 0);
  if (x.ndim() == 0) {
    if (*axis != 0 && *axis != -1)
      fail("cumsum", "axis ", *axis, " is out of range for a zero-dimensional tensor");
    return reshape(cumsum(reshape(x, {1}), 0), Dims());
  }
  const int a = normalize_axis("cumsum", *axis, x.shape());
  // Integers and bools sum in int64, as torch and numpy.
  const Tensor values = is_floating(x.dtype()) ? x.detach() : astype(x.detach(), DType::Int64);
  Tensor out = reshape(run_scan(around_axis(values, a), ScanOp::Sum, false, false), x.shape());
  if (is_floating(x.dtype())) record<CumsumBackward>(out, {&x}, a);
  return out;
}

Tensor prod(const Tensor& x, const Axes& axes, bool keepdims) {
  STEEPEST_PROFILE_OP("prod");
  detail::check_defined("prod", x, "input");
  const Tensor values = is_floating(x.dtype()) ? x : astype(x.detach(), DType::Int64);
  const Folded f = fold("prod", values, axes, keepdims);
  Tensor out;
  if (f.extent == 0) {
    out = Tensor::full(f.out_shape, 1.0, values.dtype(), x.device());
  } else {
    Tensor running = run_scan(f.layout, ScanOp::Prod, false, false);
    out = reshape(contiguous(slice(running, 1, f.extent - 1, f.extent, 1)), f.out_shape);
  }
  if (is_floating(x.dtype()))
    record<ProdBackward>(out, {&x}, f.layout, f.order, f.permuted_shape, x);
  return out;
}

Tensor min(const Tensor& x, const Axes& axes, bool keepdims) {
  STEEPEST_PROFILE_OP("min");
  detail::check_defined("min", x, "input");
  detail::check_float("min", x, "input");
  if (x.numel() == 0)
    fail("min", "cannot take the min over an empty axis (input shape ", x.shape(),
         "); there is no identity for min");
  // min(x) = −max(−x) exactly (negation is exact); the gradient follows max's tie rule.
  return neg(max(neg(x), axes, keepdims));
}

Tensor logsumexp(const Tensor& x, const Axes& axes, bool keepdims) {
  STEEPEST_PROFILE_OP("logsumexp");
  detail::check_defined("logsumexp", x, "input");
  detail::check_float("logsumexp", x, "input");
  const Folded f = fold("logsumexp", x, axes, keepdims);
  if (f.extent == 0)
    fail("logsumexp", "cannot reduce over an empty axis (input shape ", x.shape(), ")");
  Tensor kept;
  {
    NoGradGuard no_grad;
    const Tensor xd = x.detach();
    // The seed's max shift: log Σ e^x = m + log Σ e^(x − m); an infinite m is not
    // subtracted (e^(x − m) would be NaN for x = m = ±inf).
    Tensor m = max(xd, axes, true);
    Tensor infinite = compare(BinaryOp::Eq, abs(m),
                              Tensor::full({}, std::numeric_limits<double>::infinity(),
                                           x.dtype(), x.device()));
    Tensor shift = where(infinite, Tensor::zeros({}, x.dtype(), x.device()), m);
    kept = add(log(sum(exp(sub(xd, shift)), axes, true)), shift);
  }
  Tensor out = reshape(kept, f.out_shape);
  record<LogSumExpBackward>(out, {&x}, x, kept.detach());
  return out;
}

Tensor var(const Tensor& x, const Axes& axes, bool keepdims, double ddof) {
  STEEPEST_PROFILE_OP("var");
  return variance("var", x, axes, keepdims, ddof, false);
}

Tensor std_dev(const Tensor& x, const Axes& axes, bool keepdims, double ddof) {
  STEEPEST_PROFILE_OP("std_dev");
  return variance("std", x, axes, keepdims, ddof, true);
}

}  // namespace steepest::ops
