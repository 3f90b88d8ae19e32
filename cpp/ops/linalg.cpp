// matmul with numpy semantics (1-D promotion, broadcast batch axes) on top of one
// strided batched GEMM call; transposed operands are passed as flags, not copies.
// float16/bfloat16 operands are multiplied with float32 accumulation (see matmul_nd).
#include "backward.h"
#include "internal.h"
#include "steepest/profiler.h"

namespace steepest::ops {

using detail::record;

namespace {

// How the GEMM reads the last two axes of t: row-major, or transposed, or neither
// (then the caller makes t contiguous).
struct MatrixLayout {
  bool ok = false;
  bool trans = false;
  int64_t ld = 0;
};

MatrixLayout matrix_layout(const Tensor& t) {
  int n = t.ndim();
  int64_t rows = t.shape()[n - 2], cols = t.shape()[n - 1];
  int64_t rs = t.strides()[n - 2], cs = t.strides()[n - 1];
  if (cs == 1 || cols == 1) {
    int64_t ld = rows > 1 ? rs : cols;
    if (ld >= std::max<int64_t>(cols, 1)) return {true, false, ld};
  }
  if (rs == 1 || rows == 1) {
    int64_t ld = cols > 1 ? cs : rows;
    if (ld >= std::max<int64_t>(rows, 1)) return {true, true, ld};
  }
  return {};
}

// One stride that walks every batch matrix of t (batch axes all but the last two), if
// the batch axes collapse into one.
bool batch_stride(const Tensor& t, int64_t& stride) {
  int nb = t.ndim() - 2;
  stride = 0;
  bool found = false;
  for (int i = nb - 1; i >= 0; --i) {
    if (t.shape()[i] == 1) continue;
    if (!found) {
      stride = t.strides()[i];
      found = true;
      continue;
    }
    // Outer axis must continue the inner one.
    int64_t inner_span = 1;
    for (int j = i + 1; j < nb; ++j) inner_span *= t.shape()[j];
    if (t.strides()[i] != stride * inner_span) return false;
  }
  return true;
}

}  // namespace

// The broadcast batch axes, then (m, n).
Dims detail::gemm_shape(const Tensor& a, const Tensor& b) {
  Dims batch_a(a.shape().begin(), a.shape().end() - 2);
  Dims batch_b(b.shape().begin(), b.shape().end() - 2);
  Dims shape = batch_a;
  if (batch_a != batch_b) {
    try {
      shape = broadcast_shapes("matmul", batch_a, batch_b);
    } catch (const ValueError&) {
      fail("matmul", "batch dimensions of ", a.shape(), " and ", b.shape(),
           " cannot be broadcast together (", batch_a, " vs ", batch_b, ")");
    }
  }
  shape.push_back(a.shape()[a.ndim() - 2]);
  shape.push_back(b.shape().back());
  return shape;
}

// The product of a and b (no graph node) written into a fresh tensor: gemm_into with
// beta = 0, so that a product and an accumulation into an existing gradient are one code
// path.
Tensor detail::gemm_product(const Tensor& a, const Tensor& b, DType out_dtype) {
  Tensor out = Tensor::empty(gemm_shape(a, b), out_dtype, a.device());
  gemm_into(a, b, out, 0.0);
  return out;
}

// out = a·b + beta·out in one strided batched GEMM. A float32 b with a 16-bit a is read
// rounded to a's dtype (GemmArgs::float32_b); out has a's dtype or, for 16-bit operands,
// float32 (GemmArgs::float32_c), and is contiguous, possibly at an offset.
void detail::gemm_into(const Tensor& a, const Tensor& b, const Tensor& out, double beta) {
  const Dims out_shape = gemm_shape(a, b);
  const bool out_dtype_ok =
      out.dtype() == a.dtype() || (is_half_float(a.dtype()) && out.dtype() == DType::Float32);
  // An empty out is never written (its strides need not look contiguous).
  const bool dense = out.numel() == 0 || out.is_contiguous();
  if (out.shape() != out_shape || !out_dtype_ok || !dense || out.device() != a.device())
    fail<StateError>("matmul", "the product of ", a.shape(), " and ", b.shape(), " (",
                     dtype_name(a.dtype()), ") cannot be written into a ",
                     dense ? "" : "non-contiguous ", out.device().str(), " ",
                     dtype_name(out.dtype()), " tensor of shape ", out.shape(),
                     "; expected shape ", out_shape);
  int64_t m = a.shape()[a.ndim() - 2], k = a.shape().back(), n = b.shape().back();
  const Dims batch(out_shape.begin(), out_shape.end() - 2);

  Tensor av = a.detach(), bv = b.detach();
  GemmArgs args;
  args.dtype = a.dtype();
  args.float32_b = b.dtype() != a.dtype();
  args.float32_c = out.dtype() != a.dtype();
  args.m = m;
  args.n = n;
  args.k = k;
  args.batch = batch.product();
  if (b.ndim() == 2 && a.ndim() > 2 && a.is_contiguous()) {
    // A batch of row blocks times one matrix: one tall GEMM.
    args.m = m * args.batch;
    args.batch = 1;
    av = av.alias({args.m, k}, {k, 1}, av.offset());
  } else {
    Dims a_full = batch, b_full = batch;
    a_full.push_back(m);
    a_full.push_back(k);
    b_full.push_back(k);
    b_full.push_back(n);
    av = expand(av, a_full);
    bv = expand(bv, b_full);
  }
  MatrixLayout la = matrix_layout(av), lb = matrix_layout(bv);
  if (!la.ok) {
    av = contiguous(av);
    la = matrix_layout(av);
  }
  if (!lb.ok) {
    bv = contiguous(bv);
    lb = matrix_layout(bv);
  }
  int64_t sa = 0, sb = 0;
  if (!batch_stride(av, sa)) {
    av = contiguous(av);
    la = matrix_layout(av);
    batch_stride(av, sa);
  }
  if (!batch_stride(bv, sb)) {
    bv = contiguous(bv);
    lb = matrix_layout(bv);
    batch_stride(bv, sb);
  }
  args.a = av.data_ptr();
  args.trans_a = la.trans;
  args.lda = la.ld;
  args.stride_a = sa;
  args.b = bv.data_ptr();
  args.trans_b = lb.trans;
  args.ldb = lb.ld;
  args.stride_b = sb;
  args.c = out.data_ptr();
  args.ldc = n;
  args.stride_c = m * n;
  args.beta = beta;
  if (out.numel() > 0) STEEPEST_KERNEL(a.device(), gemm)(args);
}

namespace {

// The seed's mixed precision (混合精度训练): float16/bfloat16 operands go to the GEMM as
// they are; it accumulates in float32 and rounds the result once, as a tensor-core GEMM
// does. The node saves the 16-bit operands, so the memory kept for backward is halved.
// A float32 b (a master weight) is rounded while the GEMM packs it, so the node saves
// the parameter itself rather than a 16-bit copy of it.
Tensor matmul_nd(const Tensor& a, const Tensor& b) {
  Tensor out = detail::gemm_product(a.detach(), b.detach(), a.dtype());
  record<MatmulBackward>(out, {&a, &b}, a, b);
  return out;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  STEEPEST_PROFILE_OP("matmul");
  detail::check_float("matmul", a, "left operand");
  if (!is_half_float(a.dtype()) || b.dtype() != DType::Float32)
    detail::check_same_dtype("matmul", a, b);
  detail::check_same_device("matmul", a, b);
  if (a.ndim() == 0 || b.ndim() == 0)
    fail("matmul", "operands must have at least one dimension, got shapes ", a.shape(), " and ",
         b.shape());
  int64_t ka = a.shape().back(), kb = b.ndim() == 1 ? b.shape()[0] : b.shape()[b.ndim() - 2];
  if (ka != kb)
    fail("matmul", "inner dimensions differ: ", a.shape(), " @ ", b.shape(), " (", ka, " vs ", kb,
         ")");
  // numpy's 1-D rules: a vector on the left is a row, on the right a column, and the
  // added axis is removed from the result.
  if (a.ndim() == 1 || b.ndim() == 1) {
    Tensor a2 = a.ndim() == 1 ? reshape(a, {1, ka}) : a;
    Tensor b2 = b.ndim() == 1 ? reshape(b, {kb, 1}) : b;
    Tensor out = matmul_nd(a2, b2);
    Dims shape = out.shape();
    if (b.ndim() == 1) shape.erase(shape.size() - 1);
    if (a.ndim() == 1) shape.erase(shape.size() - (b.ndim() == 1 ? 1 : 2));
    return reshape(out, shape);
  }
  return matmul_nd(a, b);
}

// The seed's linear layer: Y = X·W + ones(B, 1)·b, with W of shape (in, out). The GEMM
// starts from the broadcast bias (beta = 1) instead of a pass adding it afterwards; with
// 16-bit X the bias is then rounded into Y with the product, once. The graph is that of
// add(matmul(X, W), b): MatmulBackward on the product for X and W, AddBackward above it,
// whose row sum is b's gradient.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  STEEPEST_PROFILE_OP("linear");
  if (weight.ndim() != 2)
    fail("linear", "weight must be 2-D (in_features, out_features), got shape ", weight.shape());
  if (x.ndim() == 0 || x.shape().back() != weight.shape()[0])
    fail("linear", "input of shape ", x.shape(), " does not match weight of shape ",
         weight.shape(), " (expected the last input dimension to be ", weight.shape()[0], ")");
  if (!bias.defined()) return matmul(x, weight);
  if (bias.ndim() != 1 || bias.shape()[0] != weight.shape()[1])
    fail("linear", "bias of shape ", bias.shape(), " does not match weight of shape ",
         weight.shape(), " (expected (", weight.shape()[1], ",))");
  // A 1-D x, other dtypes (promoted by add) and mixed devices (reported by matmul) take
  // the composed ops.
  const bool master_weight = is_half_float(x.dtype()) && weight.dtype() == DType::Float32;
  if (x.ndim() < 2 || !is_floating(x.dtype()) || bias.dtype() != x.dtype() ||
      (weight.dtype() != x.dtype() && !master_weight) || weight.device() != x.device() ||
      bias.device() != x.device())
    return add(matmul(x, weight), bias);
  Dims out_shape = x.shape();
  out_shape[out_shape.size() - 1] = weight.shape()[1];
  // A fresh tensor: the GEMM adds into it (contiguous() of a one-row expand is the bias).
  Tensor out = Tensor::empty(out_shape, x.dtype(), x.device());
  STEEPEST_KERNEL(x.device(), copy)(expand(bias.detach(), out_shape), out);
  detail::gemm_into(x.detach(), weight.detach(), out, 1.0);
  Tensor product = out.alias(out.shape(), out.strides(), out.offset());
  record<MatmulBackward>(product, {&x, &weight}, x, weight);
  record<AddBackward>(out, {&product, &bias}, out_shape, bias.shape(), false);
  return out;
}

}  // namespace steepest::ops
