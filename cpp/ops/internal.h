// Helpers shared by the op front-ends: input checks with readable messages, kernel
// calls that allocate their result, and recording of backward nodes.
#pragma once

#include <memory>
#include <utility>

#include "steepest/autograd.h"
#include "steepest/kernels.h"
#include "steepest/ops.h"

namespace steepest::ops::detail {

void check_same_dtype(const char* op, const Tensor& a, const Tensor& b);
void check_same_device(const char* op, const Tensor& a, const Tensor& b);
void check_float(const char* op, const Tensor& t, const char* role);
void check_defined(const char* op, const Tensor& t, const char* role);

// A 0-d tensor takes part in type promotion weakly (dtype.h); the result dtype of a
// binary op on two tensors.
Operand operand_kind(const Tensor& t);
DType result_type(const Tensor& a, const Tensor& b);

// matmul's GEMM without autograd (linalg.cpp): out_dtype is a's, or float32 for 16-bit
// operands; b may be float32 with a 16-bit a (read rounded to a's dtype).
Tensor gemm_product(const Tensor& a, const Tensor& b, DType out_dtype);
// The shape of gemm_product(a, b).
Dims gemm_shape(const Tensor& a, const Tensor& b);
// The same GEMM into an existing contiguous out: out = a·b + beta·out (beta = 1 adds the
// product into it, as a weight gradient accumulated in place).
void gemm_into(const Tensor& a, const Tensor& b, const Tensor& out, double beta);

// Kernel calls without autograd; binary_raw broadcasts.
Tensor unary_raw(UnaryOp op, const Tensor& x, double scalar = 0.0);
Tensor binary_raw(BinaryOp op, const Tensor& a, const Tensor& b, double scalar = 0.0,
                  const char* name = "binary");

// Records `node` as the grad_fn of `out` when any input requires grad.
template <class NodeT, class... Args>
NodeT* record(Tensor& out, std::initializer_list<const Tensor*> inputs, Args&&... args) {
  if (!any_requires_grad(inputs)) return nullptr;
  auto node = std::make_shared<NodeT>(std::forward<Args>(args)...);
  NodeT* raw = node.get();
  attach(out, std::move(node), inputs);
  return raw;
}

// A saved output must not own its grad_fn (that would be a reference cycle): keep a
// data-only alias.
inline Tensor saved_output(const Tensor& out) { return out.detach(); }

Dims move_axis_last_order(int ndim, int axis);
// `count` elements of `axis` from `start` in steps of `step` (any sign), as a view; no
// autograd. start and count are already within the axis.
Tensor slice_view(const Tensor& x, int axis, int64_t start, int64_t count, int64_t step);
Dims inverse_permutation(const Dims& order);

}  // namespace steepest::ops::detail
