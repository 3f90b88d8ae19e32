// The Tensor class as Python sees it: properties, operators, NumPy and DLPack
// exchange, basic indexing.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "common.h"
#include "steepest/autograd.h"

namespace steepest::bindings {
namespace {

nb::dlpack::dtype to_dlpack(DType d) {
  switch (d) {
    case DType::Bool:
      return nb::dtype<bool>();
    case DType::Int32:
      return nb::dtype<int32_t>();
    case DType::Int64:
      return nb::dtype<int64_t>();
    case DType::Float16:
      return {static_cast<uint8_t>(nb::dlpack::dtype_code::Float), 16, 1};
    case DType::BFloat16:
      return {static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat), 16, 1};
    case DType::Float32:
      return nb::dtype<float>();
    case DType::Float64:
      return nb::dtype<double>();
  }
  return nb::dtype<float>();
}

DType from_dlpack(nb::dlpack::dtype d) {
  using Code = nb::dlpack::dtype_code;
  auto code = static_cast<Code>(d.code);
  if (d.lanes == 1) {
    if (code == Code::Float && d.bits == 32) return DType::Float32;
    if (code == Code::Float && d.bits == 64) return DType::Float64;
    if (code == Code::Float && d.bits == 16) return DType::Float16;
    if (code == Code::Bfloat && d.bits == 16) return DType::BFloat16;
    if (code == Code::Int && d.bits == 32) return DType::Int32;
    if (code == Code::Int && d.bits == 64) return DType::Int64;
    if (code == Code::Bool && d.bits == 8) return DType::Bool;
  }
  // Unsigned integers included: uint8 values read as bool would turn 2 into True.
  const char* kind = code == Code::UInt ? "uint" : code == Code::Int ? "int" : code == Code::Float ? "float" : "code ";
  throw TypeError("[from_dlpack] unsupported array dtype " + std::string(kind) + std::to_string(d.bits) +
                  (d.lanes == 1 ? "" : " x" + std::to_string(d.lanes)) +
                  "; steepest takes float16/32/64, bfloat16, int32/64 and bool (convert first, e.g. "
                  "a.astype(numpy.int32))");
}

nb::tuple shape_tuple(const Dims& d) {
  nb::list l;
  for (int64_t v : d) l.append(v);
  return nb::tuple(l);
}

// A Python bool, int or float operand with the dtype that stands for its kind in type
// promotion (Bool, Int64, Float64), or nullopt for anything else: the operator then
// returns NotImplemented, so Python asks the other operand.
std::optional<std::pair<double, DType>> python_scalar(nb::handle h) {
  if (PyBool_Check(h.ptr())) return std::pair{h.is(Py_True) ? 1.0 : 0.0, DType::Bool};
  // Arrays with dimensions are not scalars (NumPy scalars and 0-d arrays are).
  if (!PyLong_Check(h.ptr()) && !PyFloat_Check(h.ptr()) && nb::hasattr(h, "shape") &&
      nb::len(nb::object(h.attr("shape"))) > 0)
    return std::nullopt;
  if (PyLong_Check(h.ptr()) || (!PyFloat_Check(h.ptr()) && PyIndex_Check(h.ptr()))) {
    double v = PyLong_AsDouble(nb::int_(h).ptr());
    if (v == -1.0 && PyErr_Occurred()) throw nb::python_error();
    return std::pair{v, DType::Int64};
  }
  if (PyFloat_Check(h.ptr()) || PyNumber_Check(h.ptr())) {
    double v = PyFloat_AsDouble(h.ptr());
    if (v == -1.0 && PyErr_Occurred()) {
      PyErr_Clear();
      return std::nullopt;
    }
    return std::pair{v, DType::Float64};
  }
  return std::nullopt;
}

using BinaryFn = Tensor (*)(const Tensor&, const Tensor&);

// Which side of a binary operator the Python scalar is on: a + 2 or 2 + a (__radd__).
enum class Operands { TensorFirst, ScalarFirst };

// tensor ∘ scalar (or scalar ∘ tensor), the scalar weak in promotion.
nb::object with_scalar(BinaryFn op, const Tensor& a, nb::handle b, Operands order) {
  auto scalar = python_scalar(b);
  if (!scalar) return nb::borrow(Py_NotImplemented);
  Tensor s = ops::scalar_operand(a, scalar->first, scalar->second);
  return nb::cast(order == Operands::ScalarFirst ? op(s, a) : op(a, s));
}

// An index item that is not an int, slice, None or Ellipsis: a steepest tensor, or a
// NumPy array or list, as an int or bool tensor on x's device.
Tensor index_tensor(const Tensor& x, nb::handle h) {
  Tensor t;
  if (nb::isinstance<Tensor>(h)) {
    t = nb::cast<Tensor>(h);
  } else {
    t = nb::cast<Tensor>(nb::module_::import_("steepest").attr("tensor")(h));
    if (is_floating(t.dtype()) && t.numel() == 0) t = ops::astype(t, DType::Int64);  // []
  }
  if (is_floating(t.dtype()))
    throw IndexError(cat("[index] tensors used as indices must be integer or bool, got ",
                         dtype_name(t.dtype()), " ", t.shape()));
  return ops::to_device(t.detach(), x.device());
}

// A key after its basic part (ints, slices of any step, None, Ellipsis) is applied as a
// view; `axes`/`indices` are its advanced part (int arrays, and bool masks as their
// nonzero coordinates) for ops::advanced_index, on axes of `view`.
struct ParsedIndex {
  Tensor view;
  std::vector<int> axes;
  std::vector<Tensor> indices;
};

ParsedIndex parse_index(const Tensor& t, const nb::handle& key) {
  std::vector<nb::handle> items;
  if (nb::isinstance<nb::tuple>(key)) {
    for (nb::handle h : nb::borrow<nb::tuple>(key)) items.push_back(h);
  } else {
    items.push_back(key);
  }
  enum class Kind { Ellipsis, None, Slice, Int, Array };
  std::vector<Kind> kinds;
  std::vector<Tensor> arrays(items.size());
  int consuming = 0;
  bool has_ellipsis = false, has_array = false;
  for (size_t i = 0; i < items.size(); ++i) {
    nb::handle h = items[i];
    if (h.is(nb::ellipsis())) {
      if (has_ellipsis) throw IndexError("[index] an index can only have a single ellipsis");
      has_ellipsis = true;
      kinds.push_back(Kind::Ellipsis);
    } else if (h.is_none()) {
      kinds.push_back(Kind::None);
    } else if (PySlice_Check(h.ptr())) {
      kinds.push_back(Kind::Slice);
      ++consuming;
    } else if (PyLong_Check(h.ptr()) && !PyBool_Check(h.ptr())) {
      kinds.push_back(Kind::Int);
      ++consuming;
    } else if (nb::isinstance<Tensor>(h) || nb::isinstance<nb::list>(h) ||
               nb::hasattr(h, "__array__") || PyIndex_Check(h.ptr())) {
      if (PyBool_Check(h.ptr()))
        throw TypeError("[index] a Python bool is not supported as an index; use a bool tensor");
      arrays[i] = index_tensor(t, h);
      kinds.push_back(Kind::Array);
      has_array = true;
      consuming += arrays[i].dtype() == DType::Bool ? arrays[i].ndim() : 1;
    } else {
      throw TypeError(cat("[index] only integers, slices, None, ..., and integer or bool "
                          "tensors/arrays/lists are supported as indices, got ",
                          nb::type_name(h.type()).c_str()));
    }
  }
  if (consuming > t.ndim())
    throw IndexError(cat("[index] too many indices (", consuming, ") for a tensor of shape ",
                         t.shape()));
  ParsedIndex parsed{t, {}, {}};
  Tensor& out = parsed.view;
  int axis = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    nb::handle h = items[i];
    switch (kinds[i]) {
      case Kind::Ellipsis:
        axis += t.ndim() - consuming;
        break;
      case Kind::None:
        out = ops::unsqueeze(out, axis);
        ++axis;
        break;
      case Kind::Slice: {
        Py_ssize_t start, stop, step;
        if (PySlice_Unpack(h.ptr(), &start, &stop, &step) < 0) throw nb::python_error();
        out = ops::slice(out, axis, start, stop, step);
        ++axis;
        break;
      }
      case Kind::Int:
        // Beside an array an int is an array index too (NumPy's placement rule).
        if (has_array) {
          parsed.axes.push_back(axis++);
          parsed.indices.push_back(Tensor::full({}, static_cast<double>(nb::cast<int64_t>(h)),
                                                DType::Int64, t.device()));
        } else {
          out = ops::select(out, axis, nb::cast<int64_t>(h));
        }
        break;
      case Kind::Array: {
        const Tensor& a = arrays[i];
        if (a.dtype() != DType::Bool) {
          parsed.axes.push_back(axis++);
          parsed.indices.push_back(a);
          break;
        }
        for (int d = 0; d < a.ndim(); ++d)
          if (a.shape()[d] != out.shape()[axis + d])
            throw IndexError(cat("[index] the bool mask of shape ", a.shape(),
                                 " does not match the indexed shape ", out.shape(), " at axis ",
                                 axis + d));
        if (a.ndim() == 0) throw IndexError("[index] 0-d bool masks are not supported");
        for (Tensor& coords : ops::nonzero(a)) {
          parsed.axes.push_back(axis++);
          parsed.indices.push_back(coords);
        }
        break;
      }
    }
  }
  return parsed;
}

Tensor index(const Tensor& t, const nb::handle& key) {
  ParsedIndex parsed = parse_index(t, key);
  return ops::advanced_index(parsed.view, parsed.axes, parsed.indices);
}

// t[key] = value: value (a tensor, array, list or number) broadcast to the indexed shape
// and cast to t's dtype. Not recorded by autograd, so refused where a gradient is wanted.
void set_index(Tensor& t, const nb::handle& key, const nb::handle& value) {
  if (t.requires_grad() && grad_enabled())
    throw StateError(t.is_leaf()
                         ? "[setitem] a leaf tensor that requires grad cannot be assigned in "
                           "place; assign under `with st.no_grad():` or to t.detach()"
                         : "[setitem] in-place assignment into a tensor recorded by autograd is "
                           "not supported; build the result out of place (e.g. with a mask)");
  Tensor source;
  if (nb::isinstance<Tensor>(value)) {
    source = nb::cast<Tensor>(value).detach();
  } else if (auto scalar = python_scalar(value); scalar && !nb::hasattr(value, "shape")) {
    source = Tensor::full({}, scalar->first, t.dtype(), t.device());
  } else {
    source = nb::cast<Tensor>(nb::module_::import_("steepest").attr("tensor")(value));
  }
  NoGradGuard no_grad;
  ParsedIndex parsed = parse_index(t.detach(), key);
  if (!parsed.axes.empty()) {
    ops::index_put(parsed.view, parsed.axes, parsed.indices, source);
  } else {
    Tensor view = parsed.view;
    while (source.ndim() > view.ndim() && source.shape()[0] == 1) source = ops::squeeze(source, 0);
    Tensor src = ops::astype(ops::to_device(source, view.device()), view.dtype());
    // A value that shares memory with the target (t[1:] = t[:-1]) is read before writing.
    if (src.storage() == view.storage()) src = ops::clone(src);
    src = ops::expand(src, view.shape());
    STEEPEST_KERNEL(view.device(), copy)(src, view);
  }
  t.storage()->bump_version();
}

double item(const Tensor& t) {
  // 16-bit values are exact in float32.
  return is_half_float(t.dtype()) ? ops::astype(t.detach(), DType::Float32).item() : t.item();
}

// NumPy has no bfloat16: the ml_dtypes package (JAX's) adds it. The tensor's bits are
// shared through a uint16 view that ml_dtypes reinterprets.
nb::object bfloat16_numpy(const Tensor& t) {
  nb::object dtype;
  try {
    dtype = nb::module_::import_("ml_dtypes").attr("bfloat16");
  } catch (const nb::python_error& e) {
    if (!e.matches(PyExc_ImportError)) throw;
    throw TypeError("[numpy] NumPy has no bfloat16 type: install the ml_dtypes package "
                    "(pip install ml_dtypes), or convert first with t.astype('float32').numpy()");
  }
  nb::ndarray<> bits = tensor_view(t, nb::dtype<uint16_t>());
  return nb::cast(nb::ndarray<nb::numpy>(bits)).attr("view")(dtype);
}

}  // namespace

std::shared_ptr<void> python_owner(nb::handle object) {
  object.inc_ref();
  return std::shared_ptr<void>(object.ptr(), [](void* p) {
    if (!Py_IsInitialized()) return;
    nb::gil_scoped_acquire gil;
    Py_DECREF(static_cast<PyObject*>(p));
  });
}

nb::ndarray<> tensor_view(const Tensor& t, std::optional<nb::dlpack::dtype> as) {
  std::vector<size_t> shape(t.shape().begin(), t.shape().end());
  std::vector<int64_t> strides(t.strides().begin(), t.strides().end());
  auto* keep = new Tensor(t);
  nb::capsule owner(keep, [](void* p) noexcept { delete static_cast<Tensor*>(p); });
  int device_type = t.device().is_cpu() ? nb::device::cpu::value : nb::device::cuda::value;
  return nb::ndarray<>(t.data_ptr(), shape.size(), shape.data(), owner, strides.data(),
                       as ? *as : to_dlpack(t.dtype()), device_type, t.device().index);
}

Tensor tensor_from_ndarray(const nb::ndarray<>& array, nb::handle owner, std::optional<DType> as) {
  if (as && itemsize(*as) * 8 != array.dtype().bits)
    throw TypeError(cat("[from_numpy] cannot read ", static_cast<int>(array.dtype().bits),
                        "-bit elements as ", dtype_name(*as)));
  DType dtype = as ? *as : from_dlpack(array.dtype());
  Dims shape, strides;
  int64_t lo = 0, hi = 0;
  for (size_t i = 0; i < array.ndim(); ++i) {
    auto extent = static_cast<int64_t>(array.shape(i));
    int64_t stride = array.stride(i);
    if (stride < 0)
      throw ValueError("[from_numpy] arrays with negative strides are not supported; "
                       "pass a copy (np.ascontiguousarray)");
    shape.push_back(extent);
    strides.push_back(stride);
    if (extent == 0) lo = hi = 0;
    hi += extent > 0 ? (extent - 1) * stride : 0;
  }
  bool empty = shape.product() == 0;
  size_t nbytes = empty ? 0 : static_cast<size_t>(hi - lo + 1) * itemsize(dtype);
  Device device;
  if (array.device_type() == nb::device::cuda::value)
    device = Device{DeviceType::CUDA, array.device_id()};
  else if (array.device_type() != nb::device::cpu::value)
    throw ValueError("[from_dlpack] only CPU and CUDA arrays are supported");
  auto storage = Storage::borrow(array.data(), nbytes, device, python_owner(owner));
  return Tensor::view_of(storage, shape, strides, 0, dtype);
}

void init_tensor(nb::module_& m) {
  nb::class_<Tensor> cls(m, "Tensor");
  cls.doc() = "An n-dimensional array with reverse-mode automatic differentiation.";

  cls.def_prop_ro("shape", [](const Tensor& t) { return shape_tuple(t.shape()); })
      .def_prop_ro("ndim", &Tensor::ndim)
      .def_prop_ro("dtype", [](const Tensor& t) { return std::string(dtype_name(t.dtype())); })
      .def_prop_ro("device", [](const Tensor& t) { return t.device().str(); })
      .def_prop_ro("strides", [](const Tensor& t) { return shape_tuple(t.strides()); })
      .def_prop_ro("is_leaf", &Tensor::is_leaf)
      .def_prop_ro("grad_fn",
                   [](const Tensor& t) -> nb::object {
                     if (!t.grad_fn()) return nb::none();
                     return nb::str(t.grad_fn()->name());
                   })
      .def_prop_rw(
          "requires_grad", &Tensor::requires_grad,
          [](Tensor& t, bool v) { t.set_requires_grad(v); })
      .def_prop_rw(
          "grad",
          [](const Tensor& t) -> std::optional<Tensor> {
            Tensor g = t.grad();
            if (!g.defined()) return std::nullopt;
            return g;
          },
          [](Tensor& t, std::optional<Tensor> g) {
            if (g && (g->shape() != t.shape() || g->dtype() != t.dtype()))
              throw ValueError(cat("[grad] assigned gradient of shape ", g->shape(), " and dtype ",
                                   dtype_name(g->dtype()), " does not match the tensor's ",
                                   t.shape(), " ", dtype_name(t.dtype())));
            t.set_grad(g ? *g : Tensor());
          },
          nb::arg("value").none())
      .def("numel", &Tensor::numel)
      .def("__len__",
           [](const Tensor& t) {
             if (t.ndim() == 0) throw TypeError("[len] len() of a 0-d tensor");
             return t.shape()[0];
           })
      .def("item", &item, "The value of a one-element tensor as a Python float.")
      .def(
          "backward",
          [](const Tensor& t, std::optional<Tensor> grad, std::optional<bool> retain_graph,
             bool create_graph) {
            nb::gil_scoped_release release;
            BackwardOptions options;
            options.retain_graph = retain_graph.value_or(create_graph);
            options.create_graph = create_graph;
            backward(t, grad ? *grad : Tensor(), options);
          },
          nb::arg("grad").none() = nb::none(), nb::arg("retain_graph").none() = nb::none(),
          nb::arg("create_graph") = false,
          "Accumulates d(self)/d(leaf) into every leaf's .grad; grad is required when self "
          "has more than one element. create_graph=True records the backward itself, so the "
          "gradients can be differentiated again (the leaf's .grad then holds a graph that "
          "holds the leaf: set .grad = None when done, or use st.autograd.grad); "
          "retain_graph defaults to create_graph.")
      .def("detach", &Tensor::detach, "The same data without autograd history.")
      .def(
          "requires_grad_",
          [](Tensor& t, bool v) {
            t.set_requires_grad(v);
            return t;
          },
          nb::arg("requires_grad") = true)
      .def("contiguous", &ops::contiguous)
      .def("clone", &ops::clone)
      .def(
          "reshape",
          [](const Tensor& t, nb::args shape) {
            if (shape.size() == 1 && !PyLong_Check(shape[0].ptr()))
              return ops::reshape(t, parse_shape("reshape", shape[0]));
            return ops::reshape(t, parse_shape("reshape", shape));
          },
          "Same data in a new shape (one dimension may be -1).")
      .def("view", [](const Tensor& t, nb::args shape) {
        if (shape.size() == 1 && !PyLong_Check(shape[0].ptr()))
          return ops::reshape(t, parse_shape("reshape", shape[0]));
        return ops::reshape(t, parse_shape("reshape", shape));
      })
      .def("flatten",
           [](const Tensor& t, int64_t start_dim, int64_t end_dim) {
             return ops::flatten(t, start_dim, end_dim);
           },
           nb::arg("start_dim") = 0, nb::arg("end_dim") = -1,
           "torch.flatten: axes start_dim..end_dim merged into one (all of them by default).")
      .def("transpose", &ops::transpose, nb::arg("axis0"), nb::arg("axis1"))
      .def("permute",
           [](const Tensor& t, nb::args order) {
             if (order.size() == 1 && !PyLong_Check(order[0].ptr()))
               return ops::permute(t, parse_shape("permute", order[0]));
             return ops::permute(t, parse_shape("permute", order));
           })
      .def_prop_ro("T",
                   [](const Tensor& t) {
                     Dims order;
                     for (int i = t.ndim() - 1; i >= 0; --i) order.push_back(i);
                     return ops::permute(t, order);
                   })
      .def("unsqueeze", &ops::unsqueeze, nb::arg("axis"))
      .def("squeeze",
           [](const Tensor& t, nb::handle axis) { return ops::squeeze(t, parse_axes(axis)); },
           nb::arg("axis").none() = nb::none(),
           "Drops the given axes of size 1 (others are left alone), or every axis of size 1.")
      .def("expand", [](const Tensor& t, nb::args shape) {
        if (shape.size() == 1 && !PyLong_Check(shape[0].ptr()))
          return ops::expand(t, parse_shape("expand", shape[0]));
        return ops::expand(t, parse_shape("expand", shape));
      })
      .def("astype", [](const Tensor& t, const std::string& d) { return ops::astype(t, dtype_from_name(d)); },
           nb::arg("dtype"))
      .def("to", [](const Tensor& t, const std::string& d) { return ops::to_device(t, parse_device(d)); },
           nb::arg("device"))
      .def("copy_", [](Tensor& t, const Tensor& src) { ops::copy_into(src, t); return t; }, nb::arg("src"),
           "Writes src into this tensor in place (any device, converted to this dtype); no autograd.")
      .def("sum", [](const Tensor& t, nb::handle axis, bool keepdims) {
             return ops::sum(t, parse_axes(axis), keepdims);
           }, nb::arg("axis").none() = nb::none(), nb::arg("keepdims") = false)
      .def("mean", [](const Tensor& t, nb::handle axis, bool keepdims) {
             return ops::mean(t, parse_axes(axis), keepdims);
           }, nb::arg("axis").none() = nb::none(), nb::arg("keepdims") = false)
      .def("max", [](const Tensor& t, nb::handle axis, bool keepdims) {
             return ops::max(t, parse_axes(axis), keepdims);
           }, nb::arg("axis").none() = nb::none(), nb::arg("keepdims") = false)
      .def("exp", &ops::exp)
      .def("log", &ops::log)
      .def("sqrt", &ops::sqrt)
      .def("abs", &ops::abs)
      .def("relu", &ops::relu)
      .def("sigmoid", &ops::sigmoid)
      .def("tanh", &ops::tanh)
      .def("gelu", &ops::gelu)
      .def("__getitem__", &index, nb::arg("key").none(),
           "NumPy indexing: ints, slices (any step), None, ..., int arrays and bool masks; "
           "basic indexing returns a view.")
      .def("__setitem__", &set_index, nb::arg("key").none(), nb::arg("value").none(),
           "In-place assignment with broadcasting (not for tensors that require grad).")
      .def("index_select",
           [](const Tensor& t, int64_t axis, const Tensor& indices) { return ops::index_select(t, axis, indices); },
           nb::arg("axis"), nb::arg("indices"))
      .def("__neg__", &ops::neg)
      .def("__abs__", &ops::abs)
      .def("__add__", &ops::add)
      .def("__add__", [](const Tensor& a, nb::handle b) { return with_scalar(&ops::add, a, b, Operands::TensorFirst); })
      .def("__radd__", [](const Tensor& a, nb::handle b) { return with_scalar(&ops::add, a, b, Operands::ScalarFirst); })
      .def("__sub__", &ops::sub)
      .def("__sub__", [](const Tensor& a, nb::handle b) { return with_scalar(&ops::sub, a, b, Operands::TensorFirst); })
      .def("__rsub__", [](const Tensor& a, nb::handle b) { return with_scalar(&ops::sub, a, b, Operands::ScalarFirst); })
      .def("__mul__", &ops::mul)
      .def("__mul__", [](const Tensor& a, nb::handle b) { return with_scalar(&ops::mul, a, b, Operands::TensorFirst); })
      .def("__rmul__", [](const Tensor& a, nb::handle b) { return with_scalar(&ops::mul, a, b, Operands::ScalarFirst); })
      .def("__truediv__", &ops::div)
      .def("__truediv__", [](const Tensor& a, nb::handle b) { return with_scalar(&ops::div, a, b, Operands::TensorFirst); })
      .def("__rtruediv__", [](const Tensor& a, nb::handle b) { return with_scalar(&ops::div, a, b, Operands::ScalarFirst); })
      .def("__matmul__", &ops::matmul)
      .def("__pow__",
           [](const Tensor& a, nb::handle k) -> nb::object {
             if (nb::isinstance<Tensor>(k)) return nb::cast(ops::pow(a, nb::cast<Tensor>(k)));
             auto scalar = python_scalar(k);
             if (!scalar) return nb::borrow(Py_NotImplemented);
             return nb::cast(ops::power(a, scalar->first, scalar->second));
           })
      .def("__hash__", [](const Tensor& t) { return reinterpret_cast<intptr_t>(t.impl()); });

#define STEEPEST_COMPARE(py, op)                                                                 \
  cls.def(py, [](const Tensor& a, const Tensor& b) { return ops::compare(BinaryOp::op, a, b); });   \
  cls.def(py, [](const Tensor& a, nb::handle b) {                                                  \
    return with_scalar([](const Tensor& x, const Tensor& y) { return ops::compare(BinaryOp::op, x, y); }, \
                       a, b, Operands::TensorFirst);                                               \
  }, nb::arg("other").none());
  STEEPEST_COMPARE("__eq__", Eq)
  STEEPEST_COMPARE("__ne__", Ne)
  STEEPEST_COMPARE("__lt__", Lt)
  STEEPEST_COMPARE("__le__", Le)
  STEEPEST_COMPARE("__gt__", Gt)
  STEEPEST_COMPARE("__ge__", Ge)
#undef STEEPEST_COMPARE

  cls.def(
         "numpy",
         [](const Tensor& t) -> nb::object {
           // A GPU tensor is copied to the host (the copy synchronises its stream).
           Tensor host = t.device().is_cpu() ? t : ops::to_device(t.detach(), Device{});
           nb::object array = host.dtype() == DType::BFloat16
                                  ? bfloat16_numpy(host)
                                  : nb::cast(nb::ndarray<nb::numpy>(tensor_view(host)));
           // NumPy's writes bypass the version counter (autograd.h), so memory autograd
           // depends on is handed out read-only: writes would corrupt a gradient unseen.
           if (host.impl() == t.impl() && (t.requires_grad() || t.storage()->saved_for_backward()))
             nb::setattr(array.attr("flags"), "writeable", nb::bool_(false));
           return array;
         },
         "A NumPy array sharing this tensor's memory (a host copy for GPU tensors); "
         "read-only while the tensor requires grad or a graph has saved it for backward "
         "(use t.detach().numpy() after backward, or t.copy_(), to write). bfloat16 needs "
         "the ml_dtypes package.")
      .def(
          "__dlpack__",
          [](const Tensor& t, nb::kwargs kwargs) {
            // DLPack consumers (torch) reject the negative strides of a reversed slice.
            bool negative = false;
            for (int64_t s : t.strides()) negative = negative || s < 0;
            Tensor exported = negative ? ops::clone(t.detach()) : t;
            nb::object view = nb::cast(nb::ndarray<nb::array_api>(tensor_view(exported)));
            return view.attr("__dlpack__")(**kwargs);
          },
          "DLPack export, for torch.from_dlpack and numpy.from_dlpack.")
      .def("__dlpack_device__", [](const Tensor& t) {
        int type = t.device().is_cpu() ? nb::device::cpu::value : nb::device::cuda::value;
        return nb::make_tuple(type, t.device().index);
      });

  m.def(
      "from_dlpack",
      [](nb::ndarray<> array, nb::handle source, std::optional<std::string> dtype) {
        std::optional<DType> as;
        if (dtype) as = dtype_from_name(*dtype);
        return tensor_from_ndarray(array, source, as);
      },
      nb::arg("array"), nb::arg("source"), nb::arg("dtype").none() = nb::none(),
      "A tensor sharing the memory of an array that supports DLPack or the buffer protocol; "
      "dtype reinterprets elements of the same size (ml_dtypes' bfloat16 arrive as uint16).");
  m.def(
      "empty",
      [](nb::handle shape, const std::string& dtype, const std::string& device) {
        return Tensor::empty(parse_shape("empty", shape), dtype_from_name(dtype), parse_device(device));
      },
      nb::arg("shape"), nb::arg("dtype") = "float32", nb::arg("device") = "cpu");
  m.def(
      "full",
      [](nb::handle shape, double value, const std::string& dtype, const std::string& device) {
        return Tensor::full(parse_shape("full", shape), value, dtype_from_name(dtype), parse_device(device));
      },
      nb::arg("shape"), nb::arg("fill_value"), nb::arg("dtype") = "float32", nb::arg("device") = "cpu");
  m.def(
      "randn",
      [](nb::handle shape, std::optional<uint64_t> seed, const std::string& dtype, const std::string& device) {
        return ops::randn(parse_shape("randn", shape), seed, dtype_from_name(dtype), parse_device(device));
      },
      nb::arg("shape"), nb::arg("seed").none() = nb::none(), nb::arg("dtype") = "float32",
      nb::arg("device") = "cpu");
  m.def(
      "rand",
      [](nb::handle shape, std::optional<uint64_t> seed, const std::string& dtype, const std::string& device) {
        return ops::rand(parse_shape("rand", shape), seed, dtype_from_name(dtype), parse_device(device));
      },
      nb::arg("shape"), nb::arg("seed").none() = nb::none(), nb::arg("dtype") = "float32",
      nb::arg("device") = "cpu");
  m.def(
      "arange",
      [](int64_t start, int64_t stop, int64_t step, const std::string& dtype, const std::string& device) {
        return ops::arange(start, stop, step, dtype_from_name(dtype), parse_device(device));
      },
      nb::arg("start"), nb::arg("stop"), nb::arg("step") = 1, nb::arg("dtype") = "int64",
      nb::arg("device") = "cpu");
}

}  // namespace steepest::bindings
