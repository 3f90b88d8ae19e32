// Views and layout: reshape, permute, expand, slicing. Views share storage; reshape
// of a tensor whose strides can't express the new shape copies first.
#include <algorithm>

#include "backward.h"
#include "internal.h"

namespace steepest::ops {

using detail::record;

namespace detail {

Dims move_axis_last_order(int ndim, int axis) {
  Dims order;
  for (int i = 0; i < ndim; ++i)
    if (i != axis) order.push_back(i);
  order.push_back(axis);
  return order;
}

Dims inverse_permutation(const Dims& order) {
  Dims inverse = Dims::filled(order.size(), 0);
  for (int i = 0; i < order.size(); ++i) inverse[static_cast<int>(order[i])] = i;
  return inverse;
}

}  // namespace detail

namespace {

// Strides for viewing x with `shape` without a copy, if possible (as numpy's
// _attempt_nocopy_reshape): walks matching groups of old and new dimensions.
bool view_strides(const Tensor& x, const Dims& shape, Dims& strides) {
  if (x.is_contiguous() || x.numel() == 0) {
    strides = contiguous_strides(shape);
    return true;
  }
  Dims old_shape, old_strides;
  for (int i = 0; i < x.ndim(); ++i)
    if (x.shape()[i] != 1) {
      old_shape.push_back(x.shape()[i]);
      old_strides.push_back(x.strides()[i]);
    }
  strides = Dims::filled(shape.size(), 0);
  int oi = 0, oj = 1, ni = 0, nj = 1;
  int on = old_shape.size(), nn = shape.size();
  while (ni < nn && oi < on) {
    int64_t np = shape[ni], op = old_shape[oi];
    while (np != op) {
      if (np < op) np *= shape[nj++];
      else op *= old_shape[oj++];
    }
    for (int ok = oi; ok < oj - 1; ++ok)
      if (old_strides[ok] != old_shape[ok + 1] * old_strides[ok + 1]) return false;
    strides[nj - 1] = old_strides[oj - 1];
    for (int nk = nj - 1; nk > ni; --nk) strides[nk - 1] = strides[nk] * shape[nk];
    ni = nj++;
    oi = oj++;
  }
  int64_t last = ni > 0 ? strides[ni - 1] : 1;
  for (int nk = ni; nk < nn; ++nk) strides[nk] = last;
  return true;
}

}  // namespace

Tensor reshape(const Tensor& x, const Dims& requested) {
  Dims shape = requested;
  int infer = -1;
  int64_t known = 1;
  for (int i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      if (infer >= 0) fail("reshape", "only one dimension can be -1, got ", requested);
      infer = i;
    } else if (shape[i] < 0) {
      fail("reshape", "invalid dimension ", shape[i], " in ", requested);
    } else {
      known *= shape[i];
    }
  }
  if (infer >= 0) {
    if (known == 0 || x.numel() % known != 0)
      fail("reshape", "cannot reshape tensor of shape ", x.shape(), " (", x.numel(),
           " elements) into ", requested);
    shape[infer] = x.numel() / known;
  }
  if (shape.product() != x.numel())
    fail("reshape", "cannot reshape tensor of shape ", x.shape(), " (", x.numel(),
         " elements) into ", requested);
  if (shape == x.shape()) return x;
  Dims strides;
  Tensor out = view_strides(x, shape, strides) ? x.alias(shape, strides, x.offset())
                                               : contiguous(x).detach().alias(shape, contiguous_strides(shape), 0);
  record<ReshapeBackward>(out, {&x}, x.shape());
  return out;
}

Tensor flatten(const Tensor& x) {
  if (x.ndim() < 1) fail("flatten", "expected a tensor with a batch dimension, got shape ", x.shape());
  return reshape(x, {x.shape()[0], -1});
}

Tensor permute(const Tensor& x, const Dims& order) {
  if (order.size() != x.ndim())
    fail("permute", "order ", order, " does not match a tensor of shape ", x.shape());
  // Normalised once here: the backward node (and inverse_permutation, which indexes
  // with the entries) only ever sees axes in [0, ndim).
  Dims axes, shape, strides;
  uint32_t seen = 0;
  bool identity = true;
  for (int i = 0; i < order.size(); ++i) {
    int axis = normalize_axis("permute", order[i], x.shape());
    if (seen & (1u << axis)) fail("permute", "order ", order, " repeats axis ", axis);
    seen |= 1u << axis;
    identity = identity && axis == i;
    axes.push_back(axis);
    shape.push_back(x.shape()[axis]);
    strides.push_back(x.strides()[axis]);
  }
  if (identity) return x;
  Tensor out = x.alias(shape, strides, x.offset());
  record<PermuteBackward>(out, {&x}, axes);
  return out;
}

Tensor transpose(const Tensor& x, int64_t axis0, int64_t axis1) {
  int a = normalize_axis("transpose", axis0, x.shape());
  int b = normalize_axis("transpose", axis1, x.shape());
  Dims order;
  for (int i = 0; i < x.ndim(); ++i) order.push_back(i);
  std::swap(order[a], order[b]);
  return permute(x, order);
}

Tensor expand(const Tensor& x, const Dims& shape) {
  if (shape == x.shape()) return x;
  if (shape.size() < x.ndim())
    fail("expand", "cannot expand shape ", x.shape(), " to ", shape);
  Dims strides = Dims::filled(shape.size(), 0);
  int lead = shape.size() - x.ndim();
  for (int i = 0; i < x.ndim(); ++i) {
    int64_t from = x.shape()[i], to = shape[lead + i];
    if (from == to)
      strides[lead + i] = x.strides()[i];
    else if (from != 1)
      fail("expand", "cannot expand shape ", x.shape(), " to ", shape);
  }
  Tensor out = x.alias(shape, strides, x.offset());
  record<ExpandBackward>(out, {&x}, x.shape());
  return out;
}

Tensor unsqueeze(const Tensor& x, int64_t axis) {
  int a = normalize_axis("unsqueeze", axis, x.shape(), x.ndim() + 1);
  Dims shape = x.shape();
  shape.insert(a, 1);
  return reshape(x, shape);
}

Tensor squeeze(const Tensor& x, int64_t axis) {
  int a = normalize_axis("squeeze", axis, x.shape());
  if (x.shape()[a] != 1)
    fail("squeeze", "axis ", axis, " of shape ", x.shape(), " has size ", x.shape()[a], ", not 1");
  Dims shape = x.shape();
  shape.erase(a);
  return reshape(x, shape);
}

Tensor slice(const Tensor& x, int64_t axis, int64_t start, int64_t stop, int64_t step) {
  int a = normalize_axis("slice", axis, x.shape());
  if (step <= 0) fail("slice", "step must be positive, got ", step);
  int64_t extent = x.shape()[a];
  start = std::clamp<int64_t>(start < 0 ? start + extent : start, 0, extent);
  stop = std::clamp<int64_t>(stop < 0 ? stop + extent : stop, 0, extent);
  int64_t count = stop > start ? (stop - start + step - 1) / step : 0;
  Dims shape = x.shape(), strides = x.strides();
  shape[a] = count;
  strides[a] = x.strides()[a] * step;
  Tensor out = x.alias(shape, strides, x.offset() + start * x.strides()[a]);
  record<SliceBackward>(out, {&x}, x.shape(), a, start, stop, step, false);
  return out;
}

Tensor select(const Tensor& x, int64_t axis, int64_t index) {
  int a = normalize_axis("select", axis, x.shape());
  int64_t extent = x.shape()[a];
  int64_t i = index < 0 ? index + extent : index;
  if (i < 0 || i >= extent)
    fail<IndexError>("select", "index ", index, " is out of range for axis ", a, " of shape ", x.shape());
  Dims shape = x.shape(), strides = x.strides();
  shape.erase(a);
  strides.erase(a);
  Tensor out = x.alias(shape, strides, x.offset() + i * x.strides()[a]);
  record<SliceBackward>(out, {&x}, x.shape(), a, i, i + 1, 1, true);
  return out;
}

Tensor contiguous(const Tensor& x) {
  if (x.is_contiguous()) return x;
  return clone(x);
}

Tensor clone(const Tensor& x) {
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  STEEPEST_KERNEL(x.device(), copy)(x, out);
  record<IdentityBackward>(out, {&x});
  return out;
}

Tensor astype(const Tensor& x, DType dtype) {
  if (dtype == x.dtype()) return x;
  Tensor out = Tensor::empty(x.shape(), dtype, x.device());
  STEEPEST_KERNEL(x.device(), copy)(x, out);
  if (is_floating(dtype)) record<CastBackward>(out, {&x}, x.dtype());
  return out;
}

Tensor to_device(const Tensor& x, Device device) {
  if (device == x.device()) return x;
  Tensor out = Tensor::empty(x.shape(), x.dtype(), device);
  Device kernel_device = device.is_cuda() ? device : x.device();
  STEEPEST_KERNEL(kernel_device, copy)(contiguous(x), out);
  record<ToDeviceBackward>(out, {&x}, x.device());
  return out;
}

void copy_into(const Tensor& src, Tensor& dst) {
  if (src.shape() != dst.shape())
    fail("copy_", "cannot write a tensor of shape ", src.shape(), " into one of shape ", dst.shape());
  NoGradGuard no_grad;
  Tensor staged = to_device(src.detach(), dst.device());
  STEEPEST_KERNEL(dst.device(), copy)(staged, dst);
  dst.storage()->bump_version();
}

}  // namespace steepest::ops
