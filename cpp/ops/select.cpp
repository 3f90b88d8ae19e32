// Selecting along an axis: argmax/argmin, take_along_axis and gather (with the
// scatter-add backward).
#include <algorithm>

#include "internal.h"
#include "steepest/profiler.h"

namespace steepest::ops {

using detail::record;

namespace {

// The extents around axis a: (outer, extent, inner).
struct AxisSplit {
  int64_t outer = 1, extent = 1, inner = 1;
};

AxisSplit split_at_axis(const Dims& shape, int a) {
  AxisSplit s;
  for (int d = 0; d < shape.size(); ++d) {
    if (d < a) s.outer *= shape[d];
    else if (d == a) s.extent = shape[d];
    else s.inner *= shape[d];
  }
  return s;
}

Tensor arg_extremum(const char* op, const Tensor& x, std::optional<int64_t> axis, bool keepdims,
                    bool minimum) {
  detail::check_defined(op, x, "input");
  // Integers are compared as float64 (exact below 2^53).
  Tensor values = is_floating(x.dtype()) ? x.detach() : astype(x.detach(), DType::Float64);
  if (minimum) values = detail::unary_raw(UnaryOp::Neg, values);
  Dims out_shape;
  int a = 0;
  if (!axis || x.ndim() == 0) {
    if (axis && *axis != 0 && *axis != -1)
      fail(op, "axis ", *axis, " is out of range for a zero-dimensional tensor");
    values = reshape(values, {x.numel()});
    if (keepdims) out_shape = Dims::filled(x.ndim(), 1);
  } else {
    a = normalize_axis(op, *axis, x.shape());
    for (int d = 0; d < x.ndim(); ++d)
      if (d != a || keepdims) out_shape.push_back(d == a ? 1 : x.shape()[d]);
  }
  const AxisSplit s = split_at_axis(values.shape(), a);
  if (s.extent == 0)
    fail(op, "cannot take the ", op, " of an empty axis (input shape ", x.shape(), ")");
  Tensor layout = contiguous(values);
  Tensor result = Tensor::empty({s.outer, s.inner}, layout.dtype(), x.device());
  Tensor index = Tensor::empty({s.outer, 1, s.inner}, DType::Int64, x.device());
  STEEPEST_KERNEL(x.device(), reduce)(ReduceOp::Max, layout, s.outer, s.extent, s.inner, result,
                                      &index);
  return reshape(index, out_shape);
}

Tensor gather_along(const char* op, const Tensor& x, int a, const Tensor& index,
                    const Dims& input_shape);

// The backward of GatherBackward's formula (create_graph): G was added into zeros at the
// gathered positions, so its own gradient gathers GG at them again.
struct GatherScatterBackward final : Node {
  explicit GatherScatterBackward(Tensor index) : index(std::move(index)) {}
  void apply(const Tensor& gg, std::vector<Tensor>& out) override {
    out[0] = gather_along("gather", gg, 1, index, gg.shape());
  }
  bool supports_create_graph() const override { return true; }
  void visit_saved(const SavedVisitor& visit) override { visit(index); }
  const char* name() const override { return "GatherScatterBackward"; }
  Tensor index;  // (outer, k, inner) int64
};

// gather's backward: G is added into zeros at the gathered positions (repeated indices
// accumulate), in float32 for 16-bit x.
struct GatherBackward final : Node {
  GatherBackward(Tensor index, Dims x_shape, DType dtype, int64_t extent)
      : index(std::move(index)), x_shape(x_shape), dtype(dtype), extent(extent) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override {
    const DType compute = compute_dtype(dtype);
    const Dims& is = index.shape();
    Tensor grad = Tensor::zeros({is[0], extent, is[2]}, compute, g.device());
    Tensor gc = contiguous(reshape(astype(g, compute), is));
    STEEPEST_KERNEL(g.device(), scatter_add)(gc, index, grad);
    record<GatherScatterBackward>(grad, {&gc}, index);
    out[0] = astype(reshape(grad, x_shape), dtype);
  }
  bool supports_create_graph() const override { return true; }
  void visit_saved(const SavedVisitor& visit) override { visit(index); }
  const char* name() const override { return "GatherBackward"; }
  Tensor index;  // (outer, k, inner) int64
  Dims x_shape;
  DType dtype;
  int64_t extent;
};

// out = x[..., index, ...] along axis a, where x and index agree on every other axis;
// errors name the caller's input shape.
Tensor gather_along(const char* op, const Tensor& x, int a, const Tensor& index,
                    const Dims& input_shape) {
  const int64_t n = x.shape()[a];
  Tensor host = index.device().is_cpu() ? index.detach() : to_device(index.detach(), Device{});
  host = contiguous(astype(host, DType::Int64));
  const int64_t* p = host.data<int64_t>();
  for (int64_t i = 0; i < host.numel(); ++i)
    if (p[i] < -n || p[i] >= n)
      fail<IndexError>(op, "index ", p[i], " is out of range for axis ", a, " with ", n,
                       " elements (input shape ", input_shape, ", index shape ", index.shape(), ")");
  const AxisSplit s = split_at_axis(x.shape(), a);
  const int64_t k = index.shape()[a];
  Tensor idx = reshape(contiguous(astype(index.detach(), DType::Int64)), {s.outer, k, s.inner});
  Tensor xs = reshape(contiguous(x.detach()), {s.outer, n, s.inner});
  Tensor out = Tensor::empty({s.outer, k, s.inner}, x.dtype(), x.device());
  STEEPEST_KERNEL(x.device(), gather)(xs, idx, out);
  out = reshape(out, index.shape());
  if (is_floating(x.dtype())) record<GatherBackward>(out, {&x}, idx, x.shape(), x.dtype(), n);
  return out;
}

void check_index_tensor(const char* op, const Tensor& x, const Tensor& index) {
  detail::check_defined(op, x, "input");
  detail::check_defined(op, index, "index");
  if (!(index.dtype() == DType::Int32 || index.dtype() == DType::Int64))
    fail<TypeError>(op, "index must be an int32 or int64 tensor, got ", dtype_name(index.dtype()),
                    " ", index.shape());
  detail::check_same_device(op, x, index);
  if (index.ndim() != x.ndim())
    fail(op, "index of shape ", index.shape(), " must have as many dimensions as the input ",
         x.shape());
}

}  // namespace

Tensor argmax(const Tensor& x, std::optional<int64_t> axis, bool keepdims) {
  STEEPEST_PROFILE_OP("argmax");
  return arg_extremum("argmax", x, axis, keepdims, false);
}

Tensor argmin(const Tensor& x, std::optional<int64_t> axis, bool keepdims) {
  STEEPEST_PROFILE_OP("argmin");
  return arg_extremum("argmin", x, axis, keepdims, true);
}

// numpy: index broadcasts against x on every axis but `axis`; axis None works on the
// flattened x.
Tensor take_along_axis(const Tensor& x, const Tensor& indices, std::optional<int64_t> axis) {
  STEEPEST_PROFILE_OP("take_along_axis");
  if (!axis) {
    detail::check_defined("take_along_axis", x, "input");
    detail::check_defined("take_along_axis", indices, "indices");
    if (indices.ndim() != 1)
      fail("take_along_axis", "with axis=None the indices must be 1-D, got shape ",
           indices.shape());
    return take_along_axis(reshape(x, {x.numel()}), indices, 0);
  }
  check_index_tensor("take_along_axis", x, indices);
  if (x.ndim() == 0) fail("take_along_axis", "the input must have at least one dimension");
  const int a = normalize_axis("take_along_axis", *axis, x.shape());
  Dims x_shape = x.shape(), index_shape = indices.shape();
  for (int d = 0; d < x.ndim(); ++d) {
    if (d == a) continue;
    const int64_t xd = x.shape()[d], id = indices.shape()[d];
    if (xd != id && xd != 1 && id != 1)
      fail("take_along_axis", "input ", x.shape(), " and indices ", indices.shape(),
           " cannot be broadcast together on axis ", d);
    x_shape[d] = index_shape[d] = xd == 1 ? id : xd;
  }
  Tensor xb = x.shape() == x_shape ? x : expand(x, x_shape);
  Tensor ib = indices.shape() == index_shape ? indices : expand(indices, index_shape);
  return gather_along("take_along_axis", xb, a, ib, x.shape());
}

// torch: out[i][j] = x[index[i][j]][j] (axis 0); index may be smaller than x on the
// other axes, never larger, and its shape is the result's.
Tensor gather(const Tensor& x, int64_t axis, const Tensor& index) {
  STEEPEST_PROFILE_OP("gather");
  check_index_tensor("gather", x, index);
  if (x.ndim() == 0) return reshape(take_along_axis(reshape(x, {1}), reshape(index, {1}), 0), Dims());
  const int a = normalize_axis("gather", axis, x.shape());
  Tensor xv = x;
  for (int d = 0; d < x.ndim(); ++d) {
    if (d == a) continue;
    if (index.shape()[d] > x.shape()[d])
      fail("gather", "index of shape ", index.shape(), " is larger than the input ", x.shape(),
           " on axis ", d);
    if (index.shape()[d] < x.shape()[d]) xv = slice(xv, d, 0, index.shape()[d], 1);
  }
  return gather_along("gather", xv, a, index, x.shape());
}

}  // namespace steepest::ops
