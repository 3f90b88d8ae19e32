// Views and layout: reshape, permute, expand, slicing. Views share storage; reshape
// of a tensor whose strides can't express the new shape copies first.
#include <algorithm>
#include <limits>

#include "backward.h"
#include "internal.h"
#include "steepest/profiler.h"
#include "steepest/autograd.h"

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
  STEEPEST_PROFILE_OP("reshape");
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
  STEEPEST_PROFILE_OP("flatten");
  if (x.ndim() < 1) fail("flatten", "expected a tensor with a batch dimension, got shape ", x.shape());
  return reshape(x, {x.shape()[0], -1});
}

Tensor flatten(const Tensor& x, int64_t start_dim, int64_t end_dim) {
  STEEPEST_PROFILE_OP("flatten");
  if (x.ndim() == 0) {  // torch: a 0-d tensor flattens to one element, axes 0 or -1
    normalize_axis("flatten", start_dim, x.shape(), 1);
    normalize_axis("flatten", end_dim, x.shape(), 1);
    return reshape(x, {1});
  }
  const int start = normalize_axis("flatten", start_dim, x.shape());
  const int end = normalize_axis("flatten", end_dim, x.shape());
  if (start > end)
    fail("flatten", "start_dim ", start_dim, " comes after end_dim ", end_dim, " for shape ", x.shape());
  Dims shape;
  for (int i = 0; i < x.ndim(); ++i) {
    if (i <= start || i > end) shape.push_back(x.shape()[i]);
    else shape[start] *= x.shape()[i];
  }
  return reshape(x, shape);
}

Tensor permute(const Tensor& x, const Dims& order) {
  STEEPEST_PROFILE_OP("permute");
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
  STEEPEST_PROFILE_OP("transpose");
  int a = normalize_axis("transpose", axis0, x.shape());
  int b = normalize_axis("transpose", axis1, x.shape());
  Dims order;
  for (int i = 0; i < x.ndim(); ++i) order.push_back(i);
  std::swap(order[a], order[b]);
  return permute(x, order);
}

Tensor expand(const Tensor& x, const Dims& requested) {
  STEEPEST_PROFILE_OP("expand");
  if (requested == x.shape()) return x;
  if (requested.size() < x.ndim())
    fail("expand", "cannot expand shape ", x.shape(), " to ", requested,
         " (the target has fewer dimensions)");
  Dims shape = requested;
  Dims strides = Dims::filled(shape.size(), 0);
  int lead = shape.size() - x.ndim();
  for (int i = 0; i < shape.size(); ++i) {
    // -1 keeps an existing dimension (torch); new leading dimensions must be given.
    if (shape[i] == -1 && i >= lead) shape[i] = x.shape()[i - lead];
    if (shape[i] < 0)
      fail("expand", "invalid size ", requested[i], " at dimension ", i, " of ", requested,
           " for a tensor of shape ", x.shape());
  }
  for (int i = 0; i < x.ndim(); ++i) {
    int64_t from = x.shape()[i], to = shape[lead + i];
    if (from == to)
      strides[lead + i] = x.strides()[i];
    else if (from != 1)
      fail("expand", "cannot expand shape ", x.shape(), " to ", requested, " (dimension ", lead + i,
           ": ", from, " is neither 1 nor ", to, ")");
  }
  if (shape == x.shape()) return x;
  Tensor out = x.alias(shape, strides, x.offset());
  record<ExpandBackward>(out, {&x}, x.shape());
  return out;
}

Tensor unsqueeze(const Tensor& x, int64_t axis) {
  STEEPEST_PROFILE_OP("unsqueeze");
  int a = normalize_axis("unsqueeze", axis, x.shape(), x.ndim() + 1);
  Dims shape = x.shape();
  shape.insert(a, 1);
  return reshape(x, shape);
}

// As torch: a listed axis whose size is not 1 is left alone; nullopt drops every axis of
// size 1. A 0-d tensor takes axis 0 or -1.
Tensor squeeze(const Tensor& x, const Axes& axes) {
  STEEPEST_PROFILE_OP("squeeze");
  uint32_t drop = 0;
  if (!axes) {
    for (int i = 0; i < x.ndim(); ++i)
      if (x.shape()[i] == 1) drop |= 1u << i;
  } else {
    for (int64_t axis : *axes) {
      if (x.ndim() == 0) {
        normalize_axis("squeeze", axis, x.shape(), 1);
        continue;
      }
      const int a = normalize_axis("squeeze", axis, x.shape());
      if (x.shape()[a] == 1) drop |= 1u << a;
    }
  }
  if (drop == 0) return x;
  Dims shape;
  for (int i = 0; i < x.ndim(); ++i)
    if (!(drop & (1u << i))) shape.push_back(x.shape()[i]);
  return reshape(x, shape);
}

Tensor squeeze(const Tensor& x, int64_t axis) {
  STEEPEST_PROFILE_OP("squeeze");
  return squeeze(x, Axes{{axis}});
}

namespace detail {

Tensor slice_view(const Tensor& x, int axis, int64_t start, int64_t count, int64_t step) {
  Dims shape = x.shape(), strides = x.strides();
  shape[axis] = count;
  // A negative step gives a negative stride (a NumPy view that walks backwards).
  strides[axis] = x.strides()[axis] * step;
  return x.alias(shape, strides, count ? x.offset() + start * x.strides()[axis] : x.offset());
}

}  // namespace detail

Tensor slice(const Tensor& x, int64_t axis, int64_t start, int64_t stop, int64_t step) {
  STEEPEST_PROFILE_OP("slice");
  int a = normalize_axis("slice", axis, x.shape());
  if (step == 0) fail("slice", "slice step cannot be zero");
  if (step == std::numeric_limits<int64_t>::min())
    fail("slice", "slice step ", step, " is out of range");
  // Python's slice semantics (PySlice_AdjustIndices): negative bounds count from the end,
  // and bounds are clamped to the axis (to [-1, extent - 1] when walking backwards).
  const int64_t extent = x.shape()[a];
  auto adjust = [&](int64_t bound) {
    if (bound < 0) return bound >= -extent ? bound + extent : (step < 0 ? int64_t{-1} : int64_t{0});
    if (bound >= extent) return step < 0 ? extent - 1 : extent;
    return bound;
  };
  start = adjust(start);
  stop = adjust(stop);
  int64_t count = 0;
  if (step < 0 && stop < start) count = (start - stop - 1) / (-step) + 1;
  else if (step > 0 && start < stop) count = (stop - start - 1) / step + 1;
  Tensor out = detail::slice_view(x, a, start, count, step);
  record<SliceBackward>(out, {&x}, x.shape(), a, start, count, step, false);
  return out;
}

Tensor select(const Tensor& x, int64_t axis, int64_t index) {
  STEEPEST_PROFILE_OP("select");
  int a = normalize_axis("select", axis, x.shape());
  int64_t extent = x.shape()[a];
  int64_t i = index < 0 ? index + extent : index;
  if (i < 0 || i >= extent)
    fail<IndexError>("select", "index ", index, " is out of range for axis ", a, " of shape ", x.shape());
  Dims shape = x.shape(), strides = x.strides();
  shape.erase(a);
  strides.erase(a);
  Tensor out = x.alias(shape, strides, x.offset() + i * x.strides()[a]);
  record<SliceBackward>(out, {&x}, x.shape(), a, i, 1, 1, true);
  return out;
}

Tensor contiguous(const Tensor& x) {
  STEEPEST_PROFILE_OP("contiguous");
  if (x.is_contiguous()) return x;
  return clone(x);
}

Tensor clone(const Tensor& x) {
  STEEPEST_PROFILE_OP("clone");
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  STEEPEST_KERNEL(x.device(), copy)(x, out);
  record<IdentityBackward>(out, {&x});
  return out;
}

Tensor astype(const Tensor& x, DType dtype) {
  STEEPEST_PROFILE_OP("astype");
  if (dtype == x.dtype()) return x;
  Tensor out = Tensor::empty(x.shape(), dtype, x.device());
  STEEPEST_KERNEL(x.device(), copy)(x, out);
  if (is_floating(dtype)) record<CastBackward>(out, {&x}, x.dtype());
  return out;
}

Tensor to_device(const Tensor& x, Device device) {
  STEEPEST_PROFILE_OP("to_device");
  if (device == x.device()) return x;
  Tensor out = Tensor::empty(x.shape(), x.dtype(), device);
  Device kernel_device = device.is_cuda() ? device : x.device();
  STEEPEST_KERNEL(kernel_device, copy)(contiguous(x), out);
  record<ToDeviceBackward>(out, {&x}, x.device());
  return out;
}

void copy_into(const Tensor& src, Tensor& dst) {
  STEEPEST_PROFILE_OP("copy_into");
  if (src.shape() != dst.shape())
    fail("copy_", "cannot write a tensor of shape ", src.shape(), " into one of shape ", dst.shape());
  NoGradGuard no_grad;
  Tensor staged = to_device(src.detach(), dst.device());
  STEEPEST_KERNEL(dst.device(), copy)(staged, dst);
  dst.storage()->bump_version();
}

}  // namespace steepest::ops

// --- advanced indexing -----------------------------------------------------------------

namespace steepest::ops {

namespace {

// Integer index tensors of any device and dtype as int64 on `device`, negative entries
// counted from the end of an axis of `extent`; out-of-range entries are an IndexError.
Tensor wrapped_indices(const char* op, const Tensor& indices, int64_t extent, int axis,
                       const Dims& shape, Device device) {
  if (indices.dtype() != DType::Int32 && indices.dtype() != DType::Int64)
    fail<IndexError>(op, "index arrays must be integer or bool, got ", dtype_name(indices.dtype()));
  NoGradGuard no_grad;
  Tensor idx = astype(to_device(indices.detach(), device), DType::Int64);
  if (idx.numel() == 0) return contiguous(idx);
  const auto high = static_cast<int64_t>(max(idx).item());
  const auto low = -static_cast<int64_t>(max(neg(idx)).item());
  if (high >= extent || low < -extent)
    fail<IndexError>(op, "index ", high >= extent ? high : low, " is out of bounds for axis ", axis,
                     " with size ", extent, " (tensor of shape ", shape, ")");
  if (low >= 0) return contiguous(idx);
  Tensor negative = astype(compare(BinaryOp::Lt, idx, Tensor::zeros({}, DType::Int64, device)), DType::Int64);
  return contiguous(add(idx, mul(negative, Tensor::full({}, static_cast<double>(extent), DType::Int64, device))));
}

// The float type of the same width, for moving integer rows with the embedding kernels
// (they copy rows as stored, bit for bit).
DType same_width_float(DType d) { return itemsize(d) == 8 ? DType::Float64 : DType::Float32; }

}  // namespace

// Rows of axis 0 of a contiguous (extent, rest) table, for in-range int64 indices.
// seed: embedding — a gather of rows; its backward (EmbeddingBackward) is the scatter-add
// dL/dX[i] = Σ_{j : idx[j] = i} G[j], repeated indices adding up.
Tensor index_select(const Tensor& x, int64_t axis, const Tensor& indices) {
  STEEPEST_PROFILE_OP("index_select");
  const char* op = "index_select";
  detail::check_defined(op, x, "input");
  detail::check_defined(op, indices, "indices");
  if (x.ndim() == 0) fail<IndexError>(op, "cannot index a 0-d tensor along an axis");
  const int a = normalize_axis(op, axis, x.shape());
  const int64_t extent = x.shape()[a];
  Tensor idx = wrapped_indices(op, indices, extent, a, x.shape(), x.device());
  // (extent, rest) with the indexed axis first.
  Dims order;
  order.push_back(a);
  Dims rest_shape;
  for (int i = 0; i < x.ndim(); ++i)
    if (i != a) {
      order.push_back(i);
      rest_shape.push_back(x.shape()[i]);
    }
  const int64_t rest = rest_shape.product();
  Tensor table = reshape(permute(x, order), {extent, rest});
  Tensor rows;
  if (is_floating(x.dtype())) {
    rows = embedding(reshape(idx, {idx.numel()}), table);
  } else {
    // Integer and bool tensors have no gradient; their rows travel as floats of the same
    // width (bool through int32).
    Tensor stored = astype(contiguous(table.detach()), x.dtype() == DType::Bool ? DType::Int32 : x.dtype());
    const DType as = same_width_float(stored.dtype());
    Tensor bits = Tensor::view_of(stored.storage(), stored.shape(), stored.strides(), stored.offset(), as);
    Tensor moved = embedding(reshape(idx, {idx.numel()}), bits).detach();
    rows = astype(Tensor::view_of(moved.storage(), moved.shape(), moved.strides(), moved.offset(),
                                  stored.dtype()),
                  x.dtype());
  }
  // (indices..., rest...) then the index axes moved to where `axis` was.
  Dims out_shape = idx.shape();
  for (int64_t d : rest_shape) out_shape.push_back(d);
  Tensor out = reshape(rows, out_shape);
  if (a == 0) return out;
  const int k = idx.ndim();
  Dims back;
  for (int i = 0; i < a; ++i) back.push_back(k + i);
  for (int i = 0; i < k; ++i) back.push_back(i);
  for (int i = k + a; i < out.ndim(); ++i) back.push_back(i);
  return permute(out, back);
}

std::vector<Tensor> nonzero(const Tensor& mask) {
  STEEPEST_PROFILE_OP("nonzero");
  if (mask.dtype() != DType::Bool)
    fail<TypeError>("nonzero", "expected a bool mask, got ", dtype_name(mask.dtype()));
  Tensor host = contiguous(to_device(mask.detach(), Device{}));
  const bool* p = host.data<bool>();
  const int64_t n = host.numel();
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) count += p[i] ? 1 : 0;
  std::vector<Tensor> coords;
  std::vector<int64_t*> out;
  for (int d = 0; d < std::max(1, mask.ndim()); ++d) {
    coords.push_back(Tensor::empty({count}, DType::Int64));
    out.push_back(coords.back().data<int64_t>());
  }
  int64_t j = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (!p[i]) continue;
    int64_t rem = i;
    for (int d = mask.ndim() - 1; d >= 0; --d) {
      out[d][j] = rem % mask.shape()[d];
      rem /= mask.shape()[d];
    }
    if (mask.ndim() == 0) out[0][j] = 0;
    ++j;
  }
  for (Tensor& c : coords) c = to_device(c, mask.device());
  return coords;
}

Tensor advanced_index(const Tensor& x, const std::vector<int>& axes, const std::vector<Tensor>& indices) {
  STEEPEST_PROFILE_OP("advanced_index");
  const char* op = "index";
  if (axes.empty()) return x;
  if (axes.size() != indices.size()) fail(op, "one index tensor per indexed axis is needed");
  // The index tensors broadcast together (NumPy), each wrapped into its axis.
  Dims shape = indices[0].shape();
  for (const Tensor& t : indices) shape = broadcast_shapes(op, shape, t.shape());
  bool adjacent = true;
  for (size_t i = 1; i < axes.size(); ++i) adjacent = adjacent && axes[i] == axes[i - 1] + 1;
  // One flat index over the indexed axes, brought to the front: Σ idx_i · Π later sizes.
  Tensor flat;
  int64_t extent = 1;
  for (size_t i = 0; i < axes.size(); ++i) {
    const int64_t size = x.shape()[axes[i]];
    Tensor w = expand(wrapped_indices(op, indices[i], size, axes[i], x.shape(), x.device()), shape);
    flat = flat.defined() ? add(mul(flat, Tensor::full({}, static_cast<double>(size), DType::Int64, x.device())), w) : w;
    extent *= size;
  }
  Dims order, rest;
  for (int a : axes) order.push_back(a);
  uint32_t indexed = 0;
  for (int a : axes) indexed |= 1u << a;
  for (int i = 0; i < x.ndim(); ++i)
    if (!(indexed & (1u << i))) {
      order.push_back(i);
      rest.push_back(x.shape()[i]);
    }
  Dims merged = rest;
  merged.insert(0, extent);
  Tensor front = reshape(permute(x, order), merged);
  Tensor out = index_select(front, 0, contiguous(flat));  // (shape..., rest...)
  // NumPy puts the indexed dimensions where the indexed axes were when those are adjacent,
  // and first otherwise.
  if (!adjacent || axes[0] == 0) return out;
  const int k = shape.size(), before = axes[0];
  Dims back;
  for (int i = 0; i < before; ++i) back.push_back(k + i);
  for (int i = 0; i < k; ++i) back.push_back(i);
  for (int i = k + before; i < out.ndim(); ++i) back.push_back(i);
  return permute(out, back);
}

void index_put(Tensor& x, const std::vector<int>& axes, const std::vector<Tensor>& indices,
               const Tensor& values) {
  STEEPEST_PROFILE_OP("index_put");
  const char* op = "setitem";
  NoGradGuard no_grad;
  // Where each element of x lives in its storage, selected as the reads select values.
  Tensor positions = Tensor::full({}, static_cast<double>(x.offset()), DType::Int64, x.device());
  for (int i = 0; i < x.ndim(); ++i) {
    Dims along = Dims::filled(x.ndim(), 1);
    along[i] = x.shape()[i];
    Tensor steps = arange(0, x.shape()[i], 1, DType::Int64, x.device());
    steps = mul(steps, Tensor::full({}, static_cast<double>(x.strides()[i]), DType::Int64, x.device()));
    positions = add(positions, reshape(steps, along));
  }
  positions = expand(positions, x.shape());
  Tensor selected = advanced_index(positions, axes, indices);
  Tensor source = values;
  while (source.ndim() > selected.ndim() && source.shape()[0] == 1) source = squeeze(source, 0);
  if (source.ndim() > selected.ndim())
    fail(op, "cannot assign a value of shape ", values.shape(), " to ", selected.shape(), " elements");
  Tensor src = contiguous(to_device(astype(expand(source, broadcast_shapes(op, selected.shape(), source.shape())), x.dtype()), Device{}));
  if (src.shape() != selected.shape())
    fail(op, "cannot broadcast a value of shape ", values.shape(), " to the indexed shape ", selected.shape());
  Tensor where = contiguous(to_device(selected, Device{}));
  // Written on the host: directly into a CPU tensor's storage, into a copy of a GPU
  // tensor's storage region otherwise. Repeated positions: the last value wins.
  std::shared_ptr<Storage> storage = x.storage();
  Tensor host_storage;
  if (!x.device().is_cpu()) {
    const int64_t elements = static_cast<int64_t>(storage->nbytes() / itemsize(x.dtype()));
    Tensor whole = Tensor::view_of(storage, {elements}, {1}, 0, x.dtype());
    host_storage = to_device(whole, Device{});
  }
  void* base = x.device().is_cpu() ? storage->data() : host_storage.data_ptr();
  const int64_t* pos = where.data<int64_t>();
  const int64_t n = where.numel();
  dispatch_all_storage(op, x.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* dst = static_cast<T*>(base);
    const T* s = src.data<T>();
    for (int64_t i = 0; i < n; ++i) dst[pos[i]] = s[i];
  });
  if (!x.device().is_cpu()) {
    Tensor whole = Tensor::view_of(storage, host_storage.shape(), {1}, 0, x.dtype());
    STEEPEST_KERNEL(x.device(), copy)(host_storage, whole);
  }
}

}  // namespace steepest::ops
