// The everyday ops of st.ops (where, maximum, clip, cat, split, pad, cumsum, var, ...)
// and their Tensor methods, named as NumPy/PyTorch name them. Arguments are converted
// here; the ops and their checks are in cpp/ops/{pointwise,scan,select,join}.cpp.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "common.h"

namespace steepest::bindings {
namespace {

bool is_tensor(nb::handle h) { return nb::isinstance<Tensor>(h); }

bool is_number(nb::handle h) {
  return PyFloat_Check(h.ptr()) || PyLong_Check(h.ptr()) || PyBool_Check(h.ptr());
}

// A Tensor, or a Python number as a 0-d tensor of `like`'s dtype and device (NumPy's
// weak scalars).
Tensor operand(const char* op, const char* role, nb::handle value, const Tensor& like) {
  if (is_tensor(value)) return nb::cast<Tensor>(value);
  if (is_number(value)) return ops::scalar_like(like, nb::cast<double>(value));
  fail<TypeError>(op, role, " must be a Tensor or a number, got ",
                  nb::type_name(value.type()).c_str());
}

// Two operands of which at least one is a Tensor.
std::pair<Tensor, Tensor> operands(const char* op, nb::handle a, nb::handle b) {
  if (is_tensor(a)) {
    Tensor ta = nb::cast<Tensor>(a);
    return {ta, operand(op, "the second operand", b, ta)};
  }
  if (is_tensor(b)) {
    Tensor tb = nb::cast<Tensor>(b);
    return {operand(op, "the first operand", a, tb), tb};
  }
  fail<TypeError>(op, "at least one operand must be a Tensor");
}

std::optional<int64_t> parse_axis(const char* op, nb::handle axis) {
  if (axis.is_none()) return std::nullopt;
  if (!PyLong_Check(axis.ptr()) || PyBool_Check(axis.ptr()))
    fail<TypeError>(op, "axis must be None or an int, got ", nb::type_name(axis.type()).c_str());
  return nb::cast<int64_t>(axis);
}

int64_t parse_int(const char* op, const char* name, nb::handle value) {
  if (!PyLong_Check(value.ptr()) || PyBool_Check(value.ptr()))
    fail<TypeError>(op, name, " must be an int, got ", nb::type_name(value.type()).c_str());
  return nb::cast<int64_t>(value);
}

bool is_sequence(nb::handle h) { return nb::isinstance<nb::tuple>(h) || nb::isinstance<nb::list>(h); }

std::vector<int64_t> parse_ints(const char* op, const char* name, nb::handle value) {
  std::vector<int64_t> out;
  if (!is_sequence(value))
    fail<TypeError>(op, name, " must be an int or a sequence of ints");
  for (nb::handle h : value) out.push_back(parse_int(op, name, h));
  return out;
}

std::vector<Tensor> parse_tensors(const char* op, nb::handle tensors) {
  if (is_tensor(tensors) || !is_sequence(tensors))
    fail<TypeError>(op, "expects a sequence (list or tuple) of Tensors");
  std::vector<Tensor> out;
  for (nb::handle h : tensors) {
    if (!is_tensor(h))
      fail<TypeError>(op, "element ", out.size(), " is a ", nb::type_name(h.type()).c_str(),
                      ", not a Tensor");
    out.push_back(nb::cast<Tensor>(h));
  }
  return out;
}

// var/std: numpy's ddof, or torch's correction / unbiased (the same number, other names).
double parse_ddof(const char* op, double ddof, nb::handle correction, nb::handle unbiased) {
  int given = (ddof != 0.0) + !correction.is_none() + !unbiased.is_none();
  if (given > 1) fail(op, "give at most one of ddof, correction and unbiased");
  if (!correction.is_none()) return nb::cast<double>(correction);
  if (!unbiased.is_none()) return nb::cast<bool>(unbiased) ? 1.0 : 0.0;
  return ddof;
}

// numpy's pad_width: n, (n,), (before, after), or one (before, after) per axis.
std::vector<std::pair<int64_t, int64_t>> parse_pad_width(nb::handle width, int ndim) {
  const char* op = "pad";
  auto pair_of = [&](nb::handle h) -> std::pair<int64_t, int64_t> {
    if (PyLong_Check(h.ptr())) {
      const int64_t v = parse_int(op, "pad_width", h);
      return {v, v};
    }
    std::vector<int64_t> v = parse_ints(op, "pad_width", h);
    if (v.size() == 1) return {v[0], v[0]};
    if (v.size() == 2) return {v[0], v[1]};
    fail(op, "each pad_width entry must be an int or a (before, after) pair, got ", v.size(),
         " numbers");
  };
  std::vector<std::pair<int64_t, int64_t>> widths;
  if (PyLong_Check(width.ptr()) || (is_sequence(width) && nb::len(width) <= 2 &&
                                    (nb::len(width) == 0 || PyLong_Check(nb::handle(width[0]).ptr())))) {
    if (is_sequence(width) && nb::len(width) == 0)
      fail(op, "pad_width must not be empty");
    widths.assign(static_cast<size_t>(ndim), pair_of(width));
    return widths;
  }
  if (!is_sequence(width)) fail<TypeError>(op, "pad_width must be an int or a sequence");
  for (nb::handle h : width) widths.push_back(pair_of(h));
  if (widths.size() == 1) widths.assign(static_cast<size_t>(ndim), widths[0]);
  return widths;
}

Tensor clip(const Tensor& x, nb::handle lo, nb::handle hi) {
  if (is_tensor(lo) || is_tensor(hi)) {
    Tensor tlo = lo.is_none() ? Tensor() : operand("clip", "min", lo, x);
    Tensor thi = hi.is_none() ? Tensor() : operand("clip", "max", hi, x);
    return ops::clip(x, tlo, thi);
  }
  auto bound = [](const char* name, nb::handle h) -> std::optional<double> {
    if (h.is_none()) return std::nullopt;
    if (!is_number(h))
      fail<TypeError>("clip", name, " must be None, a number or a Tensor, got ",
                      nb::type_name(h.type()).c_str());
    return nb::cast<double>(h);
  };
  return ops::clip(x, bound("min", lo), bound("max", hi));
}

Tensor power(nb::handle x, nb::handle y) {
  if (is_tensor(x) && !is_tensor(y) && is_number(y))
    return ops::power(nb::cast<Tensor>(x), nb::cast<double>(y));
  auto [a, b] = operands("pow", x, y);
  return ops::pow(a, b);
}

std::vector<Tensor> split(const Tensor& x, nb::handle split_size_or_sections, int64_t axis,
                          nb::handle indices_or_sections) {
  if (!indices_or_sections.is_none()) {
    if (!split_size_or_sections.is_none())
      fail("split", "give split_size_or_sections (torch) or indices_or_sections (numpy), not both");
    if (PyLong_Check(indices_or_sections.ptr()))
      return ops::split_sections(x, parse_int("split", "sections", indices_or_sections), axis);
    return ops::split_at(x, parse_ints("split", "indices", indices_or_sections), axis);
  }
  if (split_size_or_sections.is_none())
    fail("split", "give split_size_or_sections (torch) or indices_or_sections (numpy)");
  if (PyLong_Check(split_size_or_sections.ptr()))
    return ops::split(x, parse_int("split", "split_size", split_size_or_sections), axis);
  return ops::split(x, parse_ints("split", "sections", split_size_or_sections), axis);
}

// torch.nn.functional.pad's `pad`: (before, after) pairs from the last axis backwards.
std::vector<std::pair<int64_t, int64_t>> parse_torch_pad(nb::handle pad, int ndim) {
  std::vector<int64_t> flat = parse_ints("pad", "pad", pad);
  if (flat.size() % 2 != 0 || static_cast<int>(flat.size()) > 2 * ndim)
    fail("pad", "pad must hold an even number of at most ", 2 * ndim, " ints (two per axis from ",
         "the last), got ", flat.size());
  std::vector<std::pair<int64_t, int64_t>> widths(static_cast<size_t>(ndim), {0, 0});
  for (size_t i = 0; i < flat.size() / 2; ++i)
    widths[static_cast<size_t>(ndim) - 1 - i] = {flat[2 * i], flat[2 * i + 1]};
  return widths;
}

Tensor pad(const Tensor& x, nb::handle pad_width, const std::string& mode, double value,
           std::optional<double> constant_values, nb::handle torch_pad) {
  if (pad_width.is_none() == torch_pad.is_none())
    fail("pad", "give pad_width (numpy) or pad= (torch.nn.functional.pad), exactly one");
  auto widths = torch_pad.is_none() ? parse_pad_width(pad_width, x.ndim())
                                    : parse_torch_pad(torch_pad, x.ndim());
  return ops::pad(x, widths, ops::pad_mode_from_name(mode),
                  constant_values ? *constant_values : value);
}

std::vector<int64_t> flip_axes(const Tensor& x, nb::handle axis) {
  if (axis.is_none()) {
    std::vector<int64_t> all;
    for (int d = 0; d < x.ndim(); ++d) all.push_back(d);
    return all;
  }
  if (PyLong_Check(axis.ptr())) return {parse_int("flip", "axis", axis)};
  return parse_ints("flip", "axis", axis);
}

Tensor var(const Tensor& x, nb::handle axis, bool keepdims, double ddof, nb::handle correction,
           nb::handle unbiased) {
  return ops::var(x, parse_axes(axis), keepdims, parse_ddof("var", ddof, correction, unbiased));
}

Tensor std_dev(const Tensor& x, nb::handle axis, bool keepdims, double ddof, nb::handle correction,
               nb::handle unbiased) {
  return ops::std_dev(x, parse_axes(axis), keepdims, parse_ddof("std", ddof, correction, unbiased));
}

}  // namespace

void init_everyday_ops(nb::module_& parent) {
  nb::module_ m = nb::borrow<nb::module_>(parent.attr("ops"));
  using nb::arg;

  // --- pointwise
  m.def("where", [](const Tensor& cond, nb::handle x, nb::handle y) {
          if (!is_tensor(x) && !is_tensor(y)) {  // two numbers: float32, as torch.where
            Tensor like = Tensor::zeros({}, DType::Float32, cond.device());
            return ops::where(cond, operand("where", "x", x, like), operand("where", "y", y, like));
          }
          auto [a, b] = operands("where", x, y);
          return ops::where(cond, a, b);
        },
        arg("condition"), arg("x"), arg("y"),
        "x where condition is True, else y (broadcast; numbers take the other's dtype).");
  m.def("maximum", [](nb::handle a, nb::handle b) {
          auto [ta, tb] = operands("maximum", a, b);
          return ops::maximum(ta, tb);
        },
        arg("a"), arg("b"), "Elementwise max, NaN-propagating; a tie splits the gradient.");
  m.def("minimum", [](nb::handle a, nb::handle b) {
          auto [ta, tb] = operands("minimum", a, b);
          return ops::minimum(ta, tb);
        },
        arg("a"), arg("b"), "Elementwise min, NaN-propagating; a tie splits the gradient.");
  for (const char* name : {"clip", "clamp"})
    m.def(name, &clip, arg("x"), arg("min").none() = nb::none(), arg("max").none() = nb::none(),
          "x limited to [min, max]; bounds are numbers or Tensors (None: unbounded).");
  m.def("pow", &power, arg("x"), arg("exponent"),
        "x ** exponent, either a Tensor (gradients to both) or a number.");
  m.def("erf", &ops::erf, arg("x"), "The error function.");
  m.def("silu", &ops::silu, arg("x"), "x·sigmoid(x) (swish).");
  m.def("softplus", &ops::softplus, arg("x"), arg("beta") = 1.0, arg("threshold") = 20.0,
        "log(1 + e^(beta·x))/beta, overflow-free; x itself where beta·x > threshold.");
  m.def("elu", &ops::elu, arg("x"), arg("alpha") = 1.0, "x for x > 0, alpha·(e^x − 1) else.");
  m.def("leaky_relu", &ops::leaky_relu, arg("x"), arg("negative_slope") = 0.01,
        "x for x > 0, negative_slope·x else.");

  // --- reductions and scans
  m.def("min", [](const Tensor& x, nb::handle axis, bool keepdims) { return ops::min(x, parse_axes(axis), keepdims); },
        arg("x"), arg("axis").none() = nb::none(), arg("keepdims") = false,
        "Minimum; tied minima share the gradient evenly.");
  m.def("prod", [](const Tensor& x, nb::handle axis, bool keepdims) { return ops::prod(x, parse_axes(axis), keepdims); },
        arg("x"), arg("axis").none() = nb::none(), arg("keepdims") = false,
        "Product; the gradient is exact where x has zeros.");
  m.def("cumsum", [](const Tensor& x, nb::handle axis) { return ops::cumsum(x, parse_axis("cumsum", axis)); },
        arg("x"), arg("axis").none() = nb::none(),
        "Running sum along axis (None: of the flattened x); integers sum in int64.");
  m.def("logsumexp", [](const Tensor& x, nb::handle axis, bool keepdims) { return ops::logsumexp(x, parse_axes(axis), keepdims); },
        arg("x"), arg("axis").none() = nb::none(), arg("keepdims") = false,
        "log(sum(exp(x))) computed with the max shift.");
  m.def("var", &var, arg("x"), arg("axis").none() = nb::none(), arg("keepdims") = false,
        arg("ddof") = 0.0, nb::kw_only(), arg("correction").none() = nb::none(),
        arg("unbiased").none() = nb::none(),
        "Variance, sum((x - mean)²)/(n - ddof); torch's correction/unbiased are accepted.");
  m.def("std", &std_dev, arg("x"), arg("axis").none() = nb::none(), arg("keepdims") = false,
        arg("ddof") = 0.0, nb::kw_only(), arg("correction").none() = nb::none(),
        arg("unbiased").none() = nb::none(), "Standard deviation, sqrt(var(x, ...)).");

  // --- selection
  m.def("argmax", [](const Tensor& x, nb::handle axis, bool keepdims) { return ops::argmax(x, parse_axis("argmax", axis), keepdims); },
        arg("x"), arg("axis").none() = nb::none(), arg("keepdims") = false,
        "int64 index of the first maximum (of the flattened x for axis=None).");
  m.def("argmin", [](const Tensor& x, nb::handle axis, bool keepdims) { return ops::argmin(x, parse_axis("argmin", axis), keepdims); },
        arg("x"), arg("axis").none() = nb::none(), arg("keepdims") = false,
        "int64 index of the first minimum (of the flattened x for axis=None).");
  m.def("take_along_axis", [](const Tensor& x, const Tensor& indices, nb::handle axis) {
          return ops::take_along_axis(x, indices, parse_axis("take_along_axis", axis));
        },
        arg("x"), arg("indices"), arg("axis").none(),
        "numpy.take_along_axis: indices broadcast against x on the other axes.");
  m.def("gather", &ops::gather, arg("x"), arg("axis"), arg("index"),
        "torch.gather: `out[i][j] = x[index[i][j]][j]` for axis 0; out has index's shape.");

  // --- joining and rearranging
  for (const char* name : {"cat", "concatenate"})
    m.def(name, [](nb::handle tensors, int64_t axis) { return ops::cat(parse_tensors("cat", tensors), axis); },
          arg("tensors"), arg("axis") = 0, "Joins tensors along an existing axis.");
  m.def("stack", [](nb::handle tensors, int64_t axis) { return ops::stack(parse_tensors("stack", tensors), axis); },
        arg("tensors"), arg("axis") = 0, "Joins equally shaped tensors along a new axis.");
  m.def("split", &split, arg("x"), arg("split_size_or_sections").none() = nb::none(),
        arg("axis") = 0, nb::kw_only(), arg("indices_or_sections").none() = nb::none(),
        "torch.split: an int is the size of each part (the last may be smaller), a list the\n"
        "sizes. numpy.split via indices_or_sections=: an int is the number of equal parts,\n"
        "a list the indices to split at. The parts are views.");
  m.def("pad", &pad, arg("x"), arg("pad_width").none() = nb::none(), arg("mode") = "constant",
        arg("value") = 0.0, nb::kw_only(), arg("constant_values").none() = nb::none(),
        arg("pad").none() = nb::none(),
        "numpy.pad: pad_width is n, (before, after) or one pair per axis; mode 'constant',\n"
        "'reflect', 'edge' ('replicate') or 'wrap' ('circular'). pad= takes\n"
        "torch.nn.functional.pad's tuple instead: (left, right, top, bottom, ...) from the last axis.");
  m.def("flip", [](const Tensor& x, nb::handle axis) { return ops::flip(x, flip_axes(x, axis)); },
        arg("x"), arg("axis").none() = nb::none(), "Reverses the order along the axes (None: all).");
  m.def("tril", &ops::tril, arg("x"), arg("k") = 0, "Zeroes the elements above diagonal k.");
  m.def("triu", &ops::triu, arg("x"), arg("k") = 0, "Zeroes the elements below diagonal k.");

  // --- creation
  m.def("eye", [](int64_t n, std::optional<int64_t> m_, int64_t k, const std::string& dtype, const std::string& device) {
          return ops::eye(n, m_, k, dtype_from_name(dtype), parse_device(device));
        },
        arg("n"), arg("m").none() = nb::none(), arg("k") = 0, arg("dtype") = "float32",
        arg("device") = "cpu", "n×m matrix with ones on diagonal k.");
  m.def("linspace", [](double start, double stop, int64_t num, bool endpoint, const std::string& dtype, const std::string& device) {
          return ops::linspace(start, stop, num, endpoint, dtype_from_name(dtype), parse_device(device));
        },
        arg("start"), arg("stop"), arg("num") = 50, arg("endpoint") = true,
        arg("dtype") = "float32", arg("device") = "cpu", "num evenly spaced values (numpy's formula).");
  m.def("one_hot", &ops::one_hot, arg("indices"), arg("num_classes") = -1,
        "int64 one-hot encoding along a new last axis (num_classes=-1: max(indices) + 1).");

  // --- Tensor methods, as torch names them
  nb::handle cls = nb::type<Tensor>();
  // Defined with the class as scope, so that a method of the same name bound elsewhere
  // gains an overload instead of being replaced.
  auto method = [&](const char* name, auto&& f, auto... extra) {
    nb::cpp_function_def(std::forward<decltype(f)>(f), nb::scope(cls), nb::name(name),
                         nb::is_method(), extra...);
  };
  method("where", [](const Tensor& self, const Tensor& cond, nb::handle y) {
    return ops::where(cond, self, operand("where", "y", y, self));
  }, arg("condition"), arg("y"));
  method("maximum", [](const Tensor& self, nb::handle other) {
    return ops::maximum(self, operand("maximum", "other", other, self));
  }, arg("other"));
  method("minimum", [](const Tensor& self, nb::handle other) {
    return ops::minimum(self, operand("minimum", "other", other, self));
  }, arg("other"));
  for (const char* name : {"clip", "clamp"})
    method(name, &clip, arg("min").none() = nb::none(), arg("max").none() = nb::none());
  method("pow", [](const Tensor& self, nb::handle exponent) { return power(nb::cast(self), exponent); },
         arg("exponent"));
  method("__rpow__", [](const Tensor& self, double base) { return ops::pow(ops::scalar_like(self, base), self); });
  method("erf", &ops::erf);
  method("min", [](const Tensor& x, nb::handle axis, bool keepdims) { return ops::min(x, parse_axes(axis), keepdims); },
         arg("axis").none() = nb::none(), arg("keepdims") = false);
  method("prod", [](const Tensor& x, nb::handle axis, bool keepdims) { return ops::prod(x, parse_axes(axis), keepdims); },
         arg("axis").none() = nb::none(), arg("keepdims") = false);
  method("cumsum", [](const Tensor& x, nb::handle axis) { return ops::cumsum(x, parse_axis("cumsum", axis)); },
         arg("axis").none() = nb::none());
  method("logsumexp", [](const Tensor& x, nb::handle axis, bool keepdims) { return ops::logsumexp(x, parse_axes(axis), keepdims); },
         arg("axis").none() = nb::none(), arg("keepdims") = false);
  method("var", &var, arg("axis").none() = nb::none(), arg("keepdims") = false, arg("ddof") = 0.0,
         nb::kw_only(), arg("correction").none() = nb::none(), arg("unbiased").none() = nb::none());
  method("std", &std_dev, arg("axis").none() = nb::none(), arg("keepdims") = false, arg("ddof") = 0.0,
         nb::kw_only(), arg("correction").none() = nb::none(), arg("unbiased").none() = nb::none());
  method("argmax", [](const Tensor& x, nb::handle axis, bool keepdims) { return ops::argmax(x, parse_axis("argmax", axis), keepdims); },
         arg("axis").none() = nb::none(), arg("keepdims") = false);
  method("argmin", [](const Tensor& x, nb::handle axis, bool keepdims) { return ops::argmin(x, parse_axis("argmin", axis), keepdims); },
         arg("axis").none() = nb::none(), arg("keepdims") = false);
  method("gather", [](const Tensor& x, int64_t axis, const Tensor& index) { return ops::gather(x, axis, index); },
         arg("axis"), arg("index"));
  method("split", &split, arg("split_size_or_sections").none() = nb::none(), arg("axis") = 0,
         nb::kw_only(), arg("indices_or_sections").none() = nb::none());
  method("flip", [](const Tensor& x, nb::handle axis) { return ops::flip(x, flip_axes(x, axis)); },
         arg("axis").none() = nb::none());
  method("tril", &ops::tril, arg("k") = 0);
  method("triu", &ops::triu, arg("k") = 0);
}

}  // namespace steepest::bindings
