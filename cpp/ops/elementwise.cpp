// Elementwise op front-ends: checks, numpy broadcasting, kernel dispatch, graph nodes.
#include "backward.h"
#include "internal.h"

namespace steepest::ops {
namespace detail {

void check_defined(const char* op, const Tensor& t, const char* role) {
  if (!t.defined()) fail(op, role, " is None");
}

void check_same_dtype(const char* op, const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype())
    fail<TypeError>(op, "dtype mismatch: ", dtype_name(a.dtype()), " ", a.shape(), " and ",
                    dtype_name(b.dtype()), " ", b.shape(),
                    " (no implicit promotion; convert one with astype)");
}

void check_same_device(const char* op, const Tensor& a, const Tensor& b) {
  if (a.device() != b.device())
    fail(op, "inputs are on different devices: ", a.device().str(), " and ", b.device().str(),
         "; move one with .to()");
}

void check_float(const char* op, const Tensor& t, const char* role) {
  if (!is_floating(t.dtype()))
    fail<TypeError>(op, role, " must be a floating-point tensor, got ", dtype_name(t.dtype()),
                    " ", t.shape());
}

Tensor unary_raw(UnaryOp op, const Tensor& x, double scalar) {
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  STEEPEST_KERNEL(x.device(), unary)(op, x, out, scalar);
  return out;
}

Tensor binary_raw(BinaryOp op, const Tensor& a, const Tensor& b, double scalar, const char* name) {
  check_same_dtype(name, a, b);
  check_same_device(name, a, b);
  Dims shape = a.shape() == b.shape() ? a.shape() : broadcast_shapes(name, a.shape(), b.shape());
  Tensor out = Tensor::empty(shape, is_comparison(op) ? DType::Bool : a.dtype(), a.device());
  // Broadcasting reads the smaller operand with stride 0 (a view, never a copy).
  Tensor a_view = a.shape() == shape ? a : expand(a.detach(), shape);
  Tensor b_view = b.shape() == shape ? b : expand(b.detach(), shape);
  STEEPEST_KERNEL(a.device(), binary)(op, a_view, b_view, out, scalar);
  return out;
}

}  // namespace detail

using detail::binary_raw;
using detail::record;
using detail::unary_raw;

Dims broadcast_shapes(const char* op, const Dims& a, const Dims& b) {
  int n = std::max(a.size(), b.size());
  Dims out = Dims::filled(n, 1);
  for (int i = 0; i < n; ++i) {
    int ia = a.size() - n + i, ib = b.size() - n + i;
    int64_t da = ia >= 0 ? a[ia] : 1, db = ib >= 0 ? b[ib] : 1;
    if (da != db && da != 1 && db != 1)
      fail(op, "shapes ", a, " and ", b, " cannot be broadcast together (dimension ", i, ": ",
           da, " vs ", db, ")");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

namespace {

Tensor add_like(const char* name, const Tensor& a, const Tensor& b, bool subtract) {
  Tensor out = binary_raw(subtract ? BinaryOp::Sub : BinaryOp::Add, a, b, 0.0, name);
  record<AddBackward>(out, {&a, &b}, a.shape(), b.shape(), subtract);
  return out;
}

Tensor unary_op(const char* name, UnaryOp op, const Tensor& x, double scalar, bool save_output) {
  detail::check_float(name, x, "input");
  Tensor out = unary_raw(op, x, scalar);
  if (any_requires_grad({&x})) {
    Tensor saved = save_output ? detail::saved_output(out) : x;
    record<UnaryBackward>(out, {&x}, op, saved, scalar);
  }
  return out;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) { return add_like("add", a, b, false); }
Tensor sub(const Tensor& a, const Tensor& b) { return add_like("sub", a, b, true); }

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary_raw(BinaryOp::Mul, a, b, 0.0, "mul");
  record<MulBackward>(out, {&a, &b}, a, b);
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  detail::check_float("div", a, "dividend");
  Tensor out = binary_raw(BinaryOp::Div, a, b, 0.0, "div");
  record<DivBackward>(out, {&a, &b}, a, b);
  return out;
}

Tensor compare(BinaryOp op, const Tensor& a, const Tensor& b) {
  return binary_raw(op, a, b, 0.0, "compare");
}

Tensor scalar_like(const Tensor& x, double value) {
  return Tensor::full({}, value, x.dtype(), x.device());
}

Tensor add_scalar(const Tensor& x, double value) {
  return unary_op("add", UnaryOp::AddScalar, x, value, false);
}
Tensor mul_scalar(const Tensor& x, double value) {
  return unary_op("mul", UnaryOp::MulScalar, x, value, false);
}

Tensor neg(const Tensor& x) { return unary_op("neg", UnaryOp::Neg, x, 0.0, false); }
Tensor exp(const Tensor& x) { return unary_op("exp", UnaryOp::Exp, x, 0.0, true); }
Tensor log(const Tensor& x) { return unary_op("log", UnaryOp::Log, x, 0.0, false); }
Tensor sqrt(const Tensor& x) { return unary_op("sqrt", UnaryOp::Sqrt, x, 0.0, true); }
Tensor abs(const Tensor& x) { return unary_op("abs", UnaryOp::Abs, x, 0.0, false); }
Tensor relu(const Tensor& x) { return unary_op("relu", UnaryOp::Relu, x, 0.0, true); }
Tensor sigmoid(const Tensor& x) { return unary_op("sigmoid", UnaryOp::Sigmoid, x, 0.0, true); }
Tensor tanh(const Tensor& x) { return unary_op("tanh", UnaryOp::Tanh, x, 0.0, true); }
Tensor gelu(const Tensor& x) { return unary_op("gelu", UnaryOp::Gelu, x, 0.0, false); }
Tensor clamp_min(const Tensor& x, double lower) {
  return unary_op("clamp_min", UnaryOp::ClampMin, x, lower, false);
}
Tensor power(const Tensor& x, double exponent) {
  return unary_op("power", UnaryOp::PowScalar, x, exponent, false);
}

}  // namespace steepest::ops
