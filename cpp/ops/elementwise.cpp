// Elementwise op front-ends: checks, numpy broadcasting, kernel dispatch, graph nodes.
#include "backward.h"
#include "internal.h"
#include "steepest/profiler.h"

namespace steepest::ops {
namespace detail {

void check_defined(const char* op, const Tensor& t, const char* role) {
  if (!t.defined()) fail(op, role, " is None");
}

void check_same_dtype(const char* op, const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype())
    fail<TypeError>(op, "dtype mismatch: ", dtype_name(a.dtype()), " ", a.shape(), " and ",
                    dtype_name(b.dtype()), " ", b.shape(), " (convert one with astype)");
}

Operand operand_kind(const Tensor& t) { return t.ndim() == 0 ? Operand::ZeroDim : Operand::Tensor; }

DType result_type(const Tensor& a, const Tensor& b) {
  if (a.dtype() == b.dtype()) return a.dtype();  // the common case, without the categories
  return steepest::result_type(a.dtype(), operand_kind(a), b.dtype(), operand_kind(b));
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
using detail::result_type;
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

// Both operands cast to `dtype`; the casts of floating inputs carry their gradients back.
std::pair<Tensor, Tensor> promoted(const char* name, const Tensor& a, const Tensor& b, DType dtype) {
  detail::check_defined(name, a, "first operand");
  detail::check_defined(name, b, "second operand");
  detail::check_same_device(name, a, b);
  return {astype(a, dtype), astype(b, dtype)};
}

// NOTE: bool + bool and bool * bool are logical or/and (as in torch and NumPy): computed
// on int32, where a sum of two trues is 2, then cast back.
Tensor bool_arith(BinaryOp op, const Tensor& a, const Tensor& b, const char* name) {
  return astype(binary_raw(op, astype(a, DType::Int32), astype(b, DType::Int32), 0.0, name),
                DType::Bool);
}

Tensor add_like(const char* name, const Tensor& a, const Tensor& b, bool subtract) {
  // As torch: a bool operand of `-` is most likely a mask someone meant to invert.
  if (subtract && (a.dtype() == DType::Bool || b.dtype() == DType::Bool))
    fail<TypeError>(name, "subtraction with a bool tensor is not supported (", dtype_name(a.dtype()),
                    " ", a.shape(), " - ", dtype_name(b.dtype()), " ", b.shape(),
                    "); invert a mask with a == 0, or convert with astype");
  if (a.dtype() != b.dtype()) {
    auto [pa, pb] = promoted(name, a, b, result_type(a, b));
    return add_like(name, pa, pb, subtract);
  }
  if (a.dtype() == DType::Bool) return bool_arith(BinaryOp::Add, a, b, name);
  Tensor out = binary_raw(subtract ? BinaryOp::Sub : BinaryOp::Add, a, b, 0.0, name);
  record<AddBackward>(out, {&a, &b}, a.shape(), b.shape(), subtract);
  return out;
}

// Float functions (exp, log, ...) of integer and bool tensors are computed in the default
// float dtype, as in torch.
Tensor as_floating(const Tensor& x) {
  return is_floating(x.dtype()) ? x : astype(x, kDefaultFloat);
}

// The node keeps X or Y as unary_ops.def says for op.
Tensor unary_op(const char* name, UnaryOp op, const Tensor& x, double scalar) {
  detail::check_float(name, x, "input");
  Tensor out = unary_raw(op, x, scalar);
  if (any_requires_grad({&x}))
    record<UnaryBackward>(out, {&x}, op, x, detail::saved_output(out), scalar);
  return out;
}

Tensor float_unary(const char* name, UnaryOp op, const Tensor& x) {
  detail::check_defined(name, x, "input");
  return unary_op(name, op, as_floating(x), 0.0);
}

void check_not_bool(const char* name, const Tensor& x) {
  if (x.dtype() == DType::Bool)
    fail<TypeError>(name, "not supported for bool tensors (shape ", x.shape(),
                    "); convert with astype");
}

// x ** k for integer x and a non-negative integer k, by repeated squaring with exact
// integer products (wrapping on overflow as torch does).
Tensor integer_power(const Tensor& x, int64_t k) {
  Tensor result = Tensor::full(x.shape(), 1.0, x.dtype(), x.device());
  Tensor base = x;
  for (; k > 0; k >>= 1) {
    if (k & 1) result = binary_raw(BinaryOp::Mul, result, base, 0.0, "power");
    if (k > 1) base = binary_raw(BinaryOp::Mul, base, base, 0.0, "power");
  }
  return result;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b) {
  STEEPEST_PROFILE_OP("add");
  return add_like("add", a, b, false);
}
Tensor sub(const Tensor& a, const Tensor& b) {
  STEEPEST_PROFILE_OP("sub");
  return add_like("sub", a, b, true);
}

Tensor mul(const Tensor& a, const Tensor& b) {
  STEEPEST_PROFILE_OP("mul");
  if (a.dtype() != b.dtype()) {
    auto [pa, pb] = promoted("mul", a, b, result_type(a, b));
    return mul(pa, pb);
  }
  if (a.dtype() == DType::Bool) return bool_arith(BinaryOp::Mul, a, b, "mul");
  Tensor out = binary_raw(BinaryOp::Mul, a, b, 0.0, "mul");
  record<MulBackward>(out, {&a, &b}, a, b);
  return out;
}

// True division: integer and bool operands divide in the default float dtype.
Tensor div(const Tensor& a, const Tensor& b) {
  STEEPEST_PROFILE_OP("div");
  if (a.dtype() != b.dtype() || !is_floating(a.dtype())) {
    DType dtype = result_type(a, b);
    auto [pa, pb] = promoted("div", a, b, is_floating(dtype) ? dtype : kDefaultFloat);
    return div(pa, pb);
  }
  Tensor out = binary_raw(BinaryOp::Div, a, b, 0.0, "div");
  record<DivBackward>(out, {&a, &b}, a, b);
  return out;
}

Tensor compare(BinaryOp op, const Tensor& a, const Tensor& b) {
  STEEPEST_PROFILE_OP("compare");
  if (a.dtype() != b.dtype()) {
    auto [pa, pb] = promoted("compare", a, b, result_type(a, b));
    return compare(op, pa.detach(), pb.detach());
  }
  return binary_raw(op, a, b, 0.0, "compare");
}

Tensor scalar_like(const Tensor& x, double value) {
  return Tensor::full({}, value, x.dtype(), x.device());
}

Tensor scalar_operand(const Tensor& x, double value, DType scalar_dtype) {
  detail::check_defined("scalar", x, "tensor operand");
  const DType dtype =
      steepest::result_type(x.dtype(), detail::operand_kind(x), scalar_dtype, Operand::Scalar);
  return Tensor::full({}, value, dtype, x.device());
}

Tensor add_scalar(const Tensor& x, double value) {
  STEEPEST_PROFILE_OP("add_scalar");
  return unary_op("add", UnaryOp::AddScalar, x, value);
}
Tensor mul_scalar(const Tensor& x, double value) {
  STEEPEST_PROFILE_OP("mul_scalar");
  return unary_op("mul", UnaryOp::MulScalar, x, value);
}

// Integer neg/abs/relu stay integers (as torch); they are rare, so they are built from
// the exact integer binary kernels instead of integer unary kernels.
Tensor neg(const Tensor& x) {
  STEEPEST_PROFILE_OP("neg");
  detail::check_defined("neg", x, "input");
  if (is_floating(x.dtype())) return unary_op("neg", UnaryOp::Neg, x, 0.0);
  check_not_bool("neg", x);
  return binary_raw(BinaryOp::Sub, Tensor::zeros({}, x.dtype(), x.device()), x, 0.0, "neg");
}
Tensor abs(const Tensor& x) {
  STEEPEST_PROFILE_OP("abs");
  detail::check_defined("abs", x, "input");
  if (is_floating(x.dtype())) return unary_op("abs", UnaryOp::Abs, x, 0.0);
  check_not_bool("abs", x);
  Tensor negative = astype(compare(BinaryOp::Lt, x, Tensor::zeros({}, x.dtype(), x.device())), x.dtype());
  // |x| = x − 2·x·1{x<0}
  Tensor twice = binary_raw(BinaryOp::Add, negative, negative, 0.0, "abs");
  return binary_raw(BinaryOp::Sub, x, binary_raw(BinaryOp::Mul, x, twice, 0.0, "abs"), 0.0, "abs");
}
Tensor relu(const Tensor& x) {
  STEEPEST_PROFILE_OP("relu");
  detail::check_defined("relu", x, "input");
  if (is_floating(x.dtype())) return unary_op("relu", UnaryOp::Relu, x, 0.0);
  check_not_bool("relu", x);
  Tensor positive = astype(compare(BinaryOp::Gt, x, Tensor::zeros({}, x.dtype(), x.device())), x.dtype());
  return binary_raw(BinaryOp::Mul, x, positive, 0.0, "relu");
}
Tensor exp(const Tensor& x) {
  STEEPEST_PROFILE_OP("exp");
  return float_unary("exp", UnaryOp::Exp, x);
}
Tensor log(const Tensor& x) {
  STEEPEST_PROFILE_OP("log");
  return float_unary("log", UnaryOp::Log, x);
}
Tensor sqrt(const Tensor& x) {
  STEEPEST_PROFILE_OP("sqrt");
  return float_unary("sqrt", UnaryOp::Sqrt, x);
}
Tensor sigmoid(const Tensor& x) {
  STEEPEST_PROFILE_OP("sigmoid");
  return float_unary("sigmoid", UnaryOp::Sigmoid, x);
}
Tensor tanh(const Tensor& x) {
  STEEPEST_PROFILE_OP("tanh");
  return float_unary("tanh", UnaryOp::Tanh, x);
}
Tensor gelu(const Tensor& x) {
  STEEPEST_PROFILE_OP("gelu");
  return unary_op("gelu", UnaryOp::Gelu, x, 0.0);
}
Tensor clamp_min(const Tensor& x, double lower) {
  STEEPEST_PROFILE_OP("clamp_min");
  return unary_op("clamp_min", UnaryOp::ClampMin, x, lower);
}
Tensor power(const Tensor& x, double exponent) {
  STEEPEST_PROFILE_OP("power");
  return power(x, exponent, DType::Float64);
}

Tensor power(const Tensor& x, double exponent, DType exponent_dtype) {
  STEEPEST_PROFILE_OP("power");
  detail::check_defined("power", x, "input");
  const DType dtype = steepest::result_type(x.dtype(), detail::operand_kind(x), exponent_dtype,
                                            Operand::Scalar);
  if (is_floating(dtype))
    return unary_op("power", UnaryOp::PowScalar, astype(x, dtype), exponent);
  if (exponent < 0)
    fail("power", "integers to negative integer powers are not allowed (", dtype_name(x.dtype()),
         " tensor ** ", exponent, "); convert to a float dtype first");
  if (!(exponent <= 9.2e18))
    fail("power", "integer exponent ", exponent, " does not fit in 64 bits");
  return astype(integer_power(astype(x, dtype == DType::Bool ? DType::Int64 : dtype),
                              static_cast<int64_t>(exponent)),
                dtype);
}

}  // namespace steepest::ops
