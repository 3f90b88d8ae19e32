// Joining, splitting and rearranging: cat, stack, split, pad, flip, tril/triu, and the
// creation ops eye, linspace and one_hot. No kernels of their own: results are written
// with the copy kernel through views, and the backward formulas are views of G.
#include <algorithm>
#include <cmath>

#include "internal.h"
#include "steepest/profiler.h"

namespace steepest::ops {

using detail::record;

namespace {

// cat: each input's gradient is its slab of G along the axis.
struct CatBackward final : Node {
  CatBackward(int axis, std::vector<int64_t> sizes) : axis(axis), sizes(std::move(sizes)) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override {
    int64_t start = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      if (next[i]) out[i] = slice(g, axis, start, start + sizes[i], 1);
      start += sizes[i];
    }
  }
  const char* name() const override { return "CatBackward"; }
  bool supports_create_graph() const override { return true; }
  int axis;
  std::vector<int64_t> sizes;
};

// Constant padding: the gradient is G's interior, where x was written.
struct PadBackward final : Node {
  explicit PadBackward(std::vector<std::pair<int64_t, int64_t>> widths) : widths(std::move(widths)) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override {
    Tensor inner = g;
    for (size_t a = 0; a < widths.size(); ++a)
      inner = slice(inner, static_cast<int64_t>(a), widths[a].first,
                    g.shape()[static_cast<int>(a)] - widths[a].second, 1);
    out[0] = inner;
  }
  const char* name() const override { return "PadBackward"; }
  bool supports_create_graph() const override { return true; }
  std::vector<std::pair<int64_t, int64_t>> widths;
};

// flip is a permutation of the elements onto themselves: its gradient is flip(G).
struct FlipBackward final : Node {
  explicit FlipBackward(std::vector<int64_t> axes) : axes(std::move(axes)) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override { out[0] = flip(g, axes); }
  const char* name() const override { return "FlipBackward"; }
  bool supports_create_graph() const override { return true; }
  std::vector<int64_t> axes;
};

// A host copy of an integer tensor as int64 (for value checks before a kernel runs).
Tensor host_int64(const Tensor& t) {
  Tensor host = t.device().is_cpu() ? t.detach() : to_device(t.detach(), Device{});
  return contiguous(astype(host, DType::Int64));
}

void check_integer(const char* op, const Tensor& t, const char* role) {
  if (!(t.dtype() == DType::Int32 || t.dtype() == DType::Int64))
    fail<TypeError>(op, role, " must be an int32 or int64 tensor, got ", dtype_name(t.dtype()),
                    " ", t.shape());
}

// (rows, cols) int64 tensors of the row and column numbers of the last two axes.
std::pair<Tensor, Tensor> grid(int64_t rows, int64_t cols, Device device) {
  return {reshape(arange(0, rows, 1, DType::Int64, device), {rows, 1}),
          reshape(arange(0, cols, 1, DType::Int64, device), {1, cols})};
}

Tensor triangle(const char* op, const Tensor& x, int64_t k, bool lower) {
  detail::check_defined(op, x, "input");
  if (x.ndim() < 2)
    fail(op, "needs a tensor of at least 2 dimensions, got shape ", x.shape());
  auto [rows, cols] = grid(x.shape()[x.ndim() - 2], x.shape()[x.ndim() - 1], x.device());
  // Keep column j of row i where j − i ≤ k (tril) or j − i ≥ k (triu).
  Tensor shifted = add(rows, Tensor::full({}, static_cast<double>(k), DType::Int64, x.device()));
  Tensor keep = compare(lower ? BinaryOp::Le : BinaryOp::Ge, cols, shifted);
  return where(keep, x, Tensor::zeros({}, x.dtype(), x.device()));
}

// numpy's formula, in double: i·step + start, the last value exactly stop. Rounded
// after each operation whatever -march allows: an FMA would change the last bit.
__attribute__((optimize("fp-contract=off"))) void fill_linspace(double* p, double start,
                                                                 double stop, int64_t num,
                                                                 bool endpoint) {
  const int64_t divisions = endpoint ? num - 1 : num;
  const double step = divisions > 0 ? (stop - start) / static_cast<double>(divisions) : 0.0;
  for (int64_t i = 0; i < num; ++i) p[i] = static_cast<double>(i) * step + start;
  if (endpoint && num > 1) p[num - 1] = stop;
}

}  // namespace

Tensor cat(const std::vector<Tensor>& tensors, int64_t axis) {
  STEEPEST_PROFILE_OP("cat");
  if (tensors.empty()) fail("cat", "needs at least one tensor");
  for (const Tensor& t : tensors) detail::check_defined("cat", t, "every input");
  const Tensor& first = tensors[0];
  if (first.ndim() == 0)
    fail("cat", "zero-dimensional tensors cannot be concatenated (use stack)");
  const int a = normalize_axis("cat", axis, first.shape());
  Dims shape = first.shape();
  shape[a] = 0;
  std::vector<int64_t> sizes;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    if (t.dtype() != first.dtype())
      fail<TypeError>("cat", "tensor ", i, " has dtype ", dtype_name(t.dtype()),
                      ", tensor 0 has ", dtype_name(first.dtype()), " (convert with astype)");
    detail::check_same_device("cat", first, t);
    bool fits = t.ndim() == first.ndim();
    for (int d = 0; fits && d < t.ndim(); ++d)
      if (d != a && t.shape()[d] != first.shape()[d]) fits = false;
    if (!fits)
      fail("cat", "tensor ", i, " has shape ", t.shape(), ", tensor 0 has ", first.shape(),
           ": all sizes but axis ", a, " must match");
    sizes.push_back(t.shape()[a]);
    shape[a] += t.shape()[a];
  }
  Tensor out = Tensor::empty(shape, first.dtype(), first.device());
  Tensor target = out.detach();
  int64_t start = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    Tensor slab = slice(target, a, start, start + sizes[i], 1);
    if (slab.numel()) STEEPEST_KERNEL(out.device(), copy)(tensors[i], slab);
    start += sizes[i];
  }
  std::vector<const Tensor*> inputs;
  bool wanted = false;
  for (const Tensor& t : tensors) {
    inputs.push_back(&t);
    wanted = wanted || any_requires_grad({&t});
  }
  if (wanted) attach(out, std::make_shared<CatBackward>(a, sizes), inputs);
  return out;
}

Tensor stack(const std::vector<Tensor>& tensors, int64_t axis) {
  STEEPEST_PROFILE_OP("stack");
  if (tensors.empty()) fail("stack", "needs at least one tensor");
  for (const Tensor& t : tensors) detail::check_defined("stack", t, "every input");
  for (size_t i = 1; i < tensors.size(); ++i)
    if (tensors[i].shape() != tensors[0].shape())
      fail("stack", "tensor ", i, " has shape ", tensors[i].shape(), ", tensor 0 has ",
           tensors[0].shape(), ": all tensors must have the same shape");
  const int a = normalize_axis("stack", axis, tensors[0].shape(), tensors[0].ndim() + 1);
  std::vector<Tensor> expanded;
  for (const Tensor& t : tensors) expanded.push_back(unsqueeze(t, a));
  return ops::cat(expanded, a);
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t axis) {
  STEEPEST_PROFILE_OP("split");
  detail::check_defined("split", x, "input");
  if (x.ndim() == 0) fail("split", "cannot split a zero-dimensional tensor");
  const int a = normalize_axis("split", axis, x.shape());
  int64_t total = 0;
  for (int64_t s : sizes) {
    if (s < 0) fail("split", "section sizes must not be negative, got ", s);
    total += s;
  }
  if (total != x.shape()[a])
    fail("split", "section sizes sum to ", total, " but axis ", a, " of shape ", x.shape(),
         " has ", x.shape()[a], " elements");
  std::vector<Tensor> parts;
  int64_t start = 0;
  for (int64_t s : sizes) {
    parts.push_back(slice(x, a, start, start + s, 1));
    start += s;
  }
  return parts;
}

std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t axis) {
  STEEPEST_PROFILE_OP("split");
  detail::check_defined("split", x, "input");
  if (x.ndim() == 0) fail("split", "cannot split a zero-dimensional tensor");
  const int a = normalize_axis("split", axis, x.shape());
  const int64_t extent = x.shape()[a];
  if (split_size <= 0 && !(split_size == 0 && extent == 0))
    fail("split", "split_size must be positive, got ", split_size);
  std::vector<int64_t> sizes;
  for (int64_t start = 0; start < extent; start += split_size)
    sizes.push_back(std::min(split_size, extent - start));
  if (sizes.empty()) sizes.push_back(0);
  return split(x, sizes, a);
}

std::vector<Tensor> split_sections(const Tensor& x, int64_t sections, int64_t axis) {
  STEEPEST_PROFILE_OP("split_sections");
  detail::check_defined("split", x, "input");
  if (x.ndim() == 0) fail("split", "cannot split a zero-dimensional tensor");
  const int a = normalize_axis("split", axis, x.shape());
  if (sections <= 0) fail("split", "the number of sections must be positive, got ", sections);
  const int64_t extent = x.shape()[a];
  if (extent % sections != 0)
    fail("split", "axis ", a, " of shape ", x.shape(), " (", extent,
         " elements) does not divide into ", sections, " equal sections");
  return split(x, std::vector<int64_t>(static_cast<size_t>(sections), extent / sections), a);
}

std::vector<Tensor> split_at(const Tensor& x, const std::vector<int64_t>& indices, int64_t axis) {
  STEEPEST_PROFILE_OP("split_at");
  detail::check_defined("split", x, "input");
  if (x.ndim() == 0) fail("split", "cannot split a zero-dimensional tensor");
  const int a = normalize_axis("split", axis, x.shape());
  const int64_t extent = x.shape()[a];
  // numpy: parts x[i_k : i_(k+1)], indices clamped to [0, extent], empty when decreasing.
  std::vector<int64_t> sizes;
  int64_t start = 0;
  for (int64_t index : indices) {
    const int64_t at = std::clamp<int64_t>(index < 0 ? index + extent : index, 0, extent);
    if (at < start) fail("split", "split indices must not decrease, got ", index, " after ", start);
    sizes.push_back(at - start);
    start = at;
  }
  sizes.push_back(extent - start);
  return split(x, sizes, a);
}

PadMode pad_mode_from_name(const std::string& name) {
  if (name == "constant") return PadMode::Constant;
  if (name == "reflect") return PadMode::Reflect;
  if (name == "edge" || name == "replicate") return PadMode::Edge;
  if (name == "wrap" || name == "circular") return PadMode::Wrap;
  fail("pad", "unknown mode '", name,
       "'; expected 'constant', 'reflect', 'edge' ('replicate') or 'wrap' ('circular')");
}

Tensor pad(const Tensor& x, const std::vector<std::pair<int64_t, int64_t>>& widths, PadMode mode,
           double value) {
  STEEPEST_PROFILE_OP("pad");
  detail::check_defined("pad", x, "input");
  if (static_cast<int>(widths.size()) != x.ndim())
    fail("pad", "got ", widths.size(), " (before, after) pairs for a tensor of shape ", x.shape(),
         " (one per axis expected)");
  for (const auto& [before, after] : widths)
    if (before < 0 || after < 0)
      fail("pad", "pad widths must not be negative, got (", before, ", ", after, ")");
  if (mode == PadMode::Constant) {
    Dims shape = x.shape();
    for (int a = 0; a < x.ndim(); ++a) shape[a] += widths[a].first + widths[a].second;
    Tensor out = Tensor::full(shape, value, x.dtype(), x.device());
    Tensor interior = out.detach();
    for (int a = 0; a < x.ndim(); ++a)
      interior = slice(interior, a, widths[a].first, widths[a].first + x.shape()[a], 1);
    if (x.numel()) STEEPEST_KERNEL(x.device(), copy)(x, interior);
    record<PadBackward>(out, {&x}, widths);
    return out;
  }
  // The other modes join slices of x (views, flipped for reflect) axis by axis, so the
  // backward is that of cat, slice and flip.
  Tensor out = x;
  for (int a = 0; a < x.ndim(); ++a) {
    const auto [before, after] = widths[a];
    if (before == 0 && after == 0) continue;
    const int64_t n = out.shape()[a];
    if (mode == PadMode::Reflect && (before >= n || after >= n))
      fail("pad", "reflect padding of (", before, ", ", after, ") needs more than that many ",
           "elements on axis ", a, " of shape ", x.shape());
    if (mode == PadMode::Wrap && (before > n || after > n))
      fail("pad", "wrap padding of (", before, ", ", after, ") is larger than axis ", a,
           " of shape ", x.shape());
    if (mode == PadMode::Edge && n == 0)
      fail("pad", "edge padding of an empty axis ", a, " of shape ", x.shape());
    std::vector<Tensor> parts;
    Dims edge_shape = out.shape();
    switch (mode) {
      case PadMode::Reflect:
        parts = {flip(slice(out, a, 1, before + 1, 1), {a}), out,
                 flip(slice(out, a, n - 1 - after, n - 1, 1), {a})};
        break;
      case PadMode::Edge:
        edge_shape[a] = before;
        parts = {expand(slice(out, a, 0, 1, 1), edge_shape), out};
        edge_shape[a] = after;
        parts.push_back(expand(slice(out, a, n - 1, n, 1), edge_shape));
        break;
      default:  // wrap
        parts = {slice(out, a, n - before, n, 1), out, slice(out, a, 0, after, 1)};
        break;
    }
    out = ops::cat(parts, a);
  }
  return out.impl() == x.impl() ? clone(x) : out;
}

Tensor flip(const Tensor& x, const std::vector<int64_t>& axes) {
  STEEPEST_PROFILE_OP("flip");
  detail::check_defined("flip", x, "input");
  uint32_t flipped = 0;
  std::vector<int64_t> normalized;
  for (int64_t axis : axes) {
    const int a = normalize_axis("flip", axis, x.shape());
    if (flipped & (1u << a)) fail("flip", "axis ", axis, " is repeated");
    flipped |= 1u << a;
    normalized.push_back(a);
  }
  // A view that walks the flipped axes backwards, copied out.
  Dims strides = x.strides();
  int64_t offset = x.offset();
  if (x.numel() > 0)
    for (int a : normalized) {
      offset += (x.shape()[a] - 1) * strides[a];
      strides[a] = -strides[a];
    }
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (x.numel()) STEEPEST_KERNEL(x.device(), copy)(x.alias(x.shape(), strides, offset), out);
  record<FlipBackward>(out, {&x}, normalized);
  return out;
}

Tensor tril(const Tensor& x, int64_t k) {
  STEEPEST_PROFILE_OP("tril");
  return triangle("tril", x, k, true);
}
Tensor triu(const Tensor& x, int64_t k) {
  STEEPEST_PROFILE_OP("triu");
  return triangle("triu", x, k, false);
}

Tensor eye(int64_t n, std::optional<int64_t> m, int64_t k, DType dtype, Device device) {
  STEEPEST_PROFILE_OP("eye");
  const int64_t cols = m ? *m : n;
  if (n < 0 || cols < 0) fail("eye", "sizes must not be negative, got (", n, ", ", cols, ")");
  auto [rows, columns] = grid(n, cols, device);
  Tensor shifted = add(rows, Tensor::full({}, static_cast<double>(k), DType::Int64, device));
  return astype(compare(BinaryOp::Eq, columns, shifted), dtype);
}

Tensor linspace(double start, double stop, int64_t num, bool endpoint, DType dtype,
                Device device) {
  STEEPEST_PROFILE_OP("linspace");
  if (num < 0) fail("linspace", "num must not be negative, got ", num);
  if (!is_floating(dtype) && !(std::isfinite(start) && std::isfinite(stop)))
    fail("linspace", "an integer linspace needs finite ends, got ", start, " and ", stop);
  Tensor host = Tensor::empty({num}, DType::Float64);
  fill_linspace(host.data<double>(), start, stop, num, endpoint);
  Tensor typed = astype(host, dtype);
  return device.is_cpu() ? typed : to_device(typed, device);
}

Tensor one_hot(const Tensor& indices, int64_t num_classes) {
  STEEPEST_PROFILE_OP("one_hot");
  detail::check_defined("one_hot", indices, "indices");
  check_integer("one_hot", indices, "indices");
  Tensor host = host_int64(indices);
  const int64_t* p = host.data<int64_t>();
  int64_t lowest = 0, highest = -1;
  for (int64_t i = 0; i < host.numel(); ++i) {
    lowest = std::min(lowest, p[i]);
    highest = std::max(highest, p[i]);
  }
  if (lowest < 0)
    fail<IndexError>("one_hot", "class index ", lowest, " is negative (indices of shape ",
                     indices.shape(), ")");
  if (num_classes < 0) num_classes = highest + 1;
  if (highest >= num_classes)
    fail<IndexError>("one_hot", "class index ", highest, " is out of range for num_classes=",
                     num_classes, " (indices of shape ", indices.shape(), ")");
  Tensor classes = arange(0, num_classes, 1, indices.dtype(), indices.device());
  return astype(compare(BinaryOp::Eq, unsqueeze(indices.detach(), -1), classes), DType::Int64);
}

}  // namespace steepest::ops
