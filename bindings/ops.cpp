// steepest._core.ops: the functional operators of st.ops; their names, keyword arguments
// and docstrings are the API reference (docs/api/ops.md). Heavy ops release the GIL.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "common.h"
#include "steepest/losses.h"

namespace steepest::bindings {

ops::Axes parse_axes(const nb::handle& axis) {
  if (axis.is_none()) return std::nullopt;
  std::vector<int64_t> axes;
  if (PyLong_Check(axis.ptr())) {
    axes.push_back(nb::cast<int64_t>(axis));
  } else if (nb::isinstance<nb::tuple>(axis) || nb::isinstance<nb::list>(axis)) {
    for (nb::handle h : axis) axes.push_back(nb::cast<int64_t>(h));
  } else {
    throw TypeError("[axis] axis must be None, an int or a tuple of ints");
  }
  return axes;
}

namespace {

// A Python int as int64, or a ValueError naming the op (nanobind's cast would only say
// std::bad_cast).
int64_t as_int64(const char* op, const char* what, nb::handle value) {
  int overflow = 0;
  long long v = PyLong_AsLongLongAndOverflow(value.ptr(), &overflow);
  if (overflow != 0)
    fail(op, what, " ", nb::str(value).c_str(), " does not fit in 64 bits");
  if (v == -1 && PyErr_Occurred()) throw nb::python_error();
  return v;
}

}  // namespace

Dims parse_shape(const char* op, const nb::handle& shape) {
  Dims dims;
  if (PyLong_Check(shape.ptr())) {
    dims.push_back(as_int64(op, "the shape entry", shape));
    return dims;
  }
  if (!(nb::isinstance<nb::tuple>(shape) || nb::isinstance<nb::list>(shape)))
    fail<TypeError>(op, "shape must be an int or a sequence of ints");
  for (nb::handle h : shape) {
    if (!PyLong_Check(h.ptr())) fail<TypeError>(op, "shape entries must be ints");
    dims.push_back(as_int64(op, "the shape entry", h));
  }
  return dims;
}

std::pair<int64_t, int64_t> parse_pair(const char* op, const char* name, const nb::handle& value) {
  if (PyLong_Check(value.ptr())) {
    auto v = as_int64(op, name, value);
    return {v, v};
  }
  if ((nb::isinstance<nb::tuple>(value) || nb::isinstance<nb::list>(value)) && nb::len(value) == 2 &&
      PyLong_Check(nb::handle(value[0]).ptr()) && PyLong_Check(nb::handle(value[1]).ptr()))
    return {as_int64(op, name, value[0]), as_int64(op, name, value[1])};
  fail<TypeError>(op, name, " must be an int or a pair of ints");
}

namespace {

Tensor optional_tensor(const std::optional<Tensor>& t) { return t ? *t : Tensor(); }

// A conv/pool padding: an int, a pair (ph, pw), (top, bottom, left, right), or
// ((top, bottom), (left, right)) as torch.nn.functional.pad and Keras' ZeroPadding2D
// write uneven padding.
ops::Padding2d parse_padding(const char* op, const nb::handle& value) {
  bool sequence = nb::isinstance<nb::tuple>(value) || nb::isinstance<nb::list>(value);
  if (sequence && nb::len(value) == 4) {
    int64_t v[4];
    for (size_t i = 0; i < 4; ++i) {
      if (!PyLong_Check(nb::handle(value[i]).ptr()))
        fail<TypeError>(op, "a 4-entry padding must be ints (top, bottom, left, right)");
      v[i] = as_int64(op, "padding", value[i]);
    }
    return {v[0], v[1], v[2], v[3]};
  }
  bool nested = sequence && nb::len(value) == 2 && !PyLong_Check(nb::handle(value[0]).ptr());
  if (!nested) return parse_pair(op, "padding", value);
  auto [top, bottom] = parse_pair(op, "padding", value[0]);
  auto [left, right] = parse_pair(op, "padding", value[1]);
  return {top, bottom, left, right};
}

// conv2d's padding, which may also be "valid" (none) or "same" (torch's rule, stride 1).
ops::Padding2d parse_conv_padding(const char* op, const nb::handle& value, ops::IntPair kernel,
                                  ops::IntPair stride, ops::IntPair dilation) {
  if (!nb::isinstance<nb::str>(value)) return parse_padding(op, value);
  std::string mode = nb::cast<std::string>(value);
  if (mode == "valid") return {};
  if (mode == "same") return ops::same_padding(op, kernel, stride, dilation);
  fail(op, "padding must be 'valid', 'same', an int or a tuple of ints, got '", mode, "'");
}

// A 1-D length argument: an int, or a 1-tuple as torch allows.
int64_t parse_int(const char* op, const char* name, const nb::handle& value) {
  bool sequence = nb::isinstance<nb::tuple>(value) || nb::isinstance<nb::list>(value);
  nb::handle item = sequence && nb::len(value) == 1 ? nb::handle(value[0]) : value;
  if (!PyLong_Check(item.ptr())) fail<TypeError>(op, name, " must be an int");
  return as_int64(op, name, item);
}

// A 1-D padding: an int (both sides) or a pair (before, after).
ops::IntPair parse_padding1d(const char* op, const nb::handle& value) {
  bool sequence = nb::isinstance<nb::tuple>(value) || nb::isinstance<nb::list>(value);
  if (sequence && nb::len(value) == 2) return parse_pair(op, "padding", value);
  int64_t p = parse_int(op, "padding", value);
  return {p, p};
}

}  // namespace

void init_ops(nb::module_& parent) {
  nb::module_ m = parent.def_submodule("ops", "Differentiable functional operators.");
  using nb::arg;
  using Release = nb::call_guard<nb::gil_scoped_release>;

  m.def("add", &ops::add, arg("a"), arg("b"), "a + b with broadcasting.");
  m.def("sub", &ops::sub, arg("a"), arg("b"), "a - b with broadcasting.");
  m.def("mul", &ops::mul, arg("a"), arg("b"), "a * b (Hadamard product) with broadcasting.");
  m.def("div", &ops::div, arg("a"), arg("b"), "a / b with broadcasting.");
  m.def("power",
        [](const Tensor& x, nb::handle exponent) {
          // The exponent's Python type takes part in promotion: int ** int stays an integer.
          const bool integral = PyLong_Check(exponent.ptr()) || PyBool_Check(exponent.ptr());
          return ops::power(x, nb::cast<double>(exponent),
                            PyBool_Check(exponent.ptr()) ? DType::Bool
                            : integral                   ? DType::Int64
                                                         : DType::Float64);
        },
        arg("x"), arg("exponent"), "x ** exponent for a scalar exponent.");
  m.def("clamp_min", &ops::clamp_min, arg("x"), arg("lower"),
        "max(x, lower); clamped entries get no gradient.");

#define UNARY_FUNCTION(function, Name, doc) \
  m.def(#function, &ops::function, arg("x"), doc);
#include "steepest/unary_ops.def"

  m.def("sum", [](const Tensor& x, nb::handle axis, bool keepdims) { return ops::sum(x, parse_axes(axis), keepdims); },
        arg("x"), arg("axis").none() = nb::none(), arg("keepdims") = false);
  m.def("mean", [](const Tensor& x, nb::handle axis, bool keepdims) { return ops::mean(x, parse_axes(axis), keepdims); },
        arg("x"), arg("axis").none() = nb::none(), arg("keepdims") = false);
  m.def("max", [](const Tensor& x, nb::handle axis, bool keepdims) { return ops::max(x, parse_axes(axis), keepdims); },
        arg("x"), arg("axis").none() = nb::none(), arg("keepdims") = false,
        "Maximum; tied maxima share the gradient evenly.");

  m.def("matmul", &ops::matmul, arg("a"), arg("b"), Release(),
        "Matrix product with NumPy semantics (batched, broadcast batch axes). A float16/bfloat16 a "
        "may take a float32 b (a master weight): b is read rounded to a's dtype, without a copy, "
        "and its gradient is float32.");
  m.def("linear", [](const Tensor& x, const Tensor& w, std::optional<Tensor> b) {
          nb::gil_scoped_release release;
          return ops::linear(x, w, optional_tensor(b));
        },
        arg("x"), arg("w"), arg("b").none() = nb::none(), "x·W + b with W of shape (in, out).");

  m.def("softmax", &ops::softmax, arg("x"), arg("axis") = -1);
  m.def("log_softmax", &ops::log_softmax, arg("x"), arg("axis") = -1,
        "log(softmax(x)) computed as x - max - log(sum(exp(x - max))).");
  m.def("cross_entropy",
        [](const Tensor& logits, const Tensor& labels, const std::string& reduction) {
          return ops::cross_entropy(logits, labels, ops::reduction_from_name("cross_entropy", reduction));
        },
        arg("logits"), arg("labels"), arg("reduction") = "mean",
        "Softmax cross-entropy over the last axis; labels are class indices or probabilities.");
  m.def("mse_loss",
        [](const Tensor& p, const Tensor& t, const std::string& reduction) {
          return ops::mse_loss(p, t, ops::reduction_from_name("mse_loss", reduction));
        },
        arg("pred"), arg("target"), arg("reduction") = "mean");
  m.def("binary_cross_entropy",
        [](const Tensor& x, const Tensor& t, bool from_logits, const std::string& reduction) {
          return ops::binary_cross_entropy(x, t, from_logits,
                                           ops::reduction_from_name("binary_cross_entropy", reduction));
        },
        arg("logits"), arg("targets"), arg("from_logits") = true, arg("reduction") = "mean");
  // Keras' losses, the same functions fit trains with (steepest/losses.h).
  m.def("loss_table",
        [] {
          nb::list entries;
          for (const losses::Info& info : losses::table()) {
            nb::list aliases;
            for (const char* alias : info.aliases) aliases.append(alias);
            const char* labels = info.labels == losses::Labels::ClassIndices ? "class_indices"
                                 : info.labels == losses::Labels::NextTokens ? "next_tokens"
                                                                               : "values";
            nb::dict entry;
            entry["name"] = info.name;
            entry["aliases"] = aliases;
            entry["labels"] = labels;
            entry["crossentropy"] = info.crossentropy;
            entries.append(entry);
          }
          return entries;
        },
        "The built-in losses: name, aliases, labels ('values', 'class_indices' or "
        "'next_tokens') and whether a softmax output fuses into the cross-entropy.");
  m.def("loss_reductions",
        [] {
          std::vector<std::string> names;
          for (const char* name : losses::reduction_names()) names.emplace_back(name);
          return names;
        },
        "The names of the loss reductions, as Loss(reduction=...) takes them.");
  m.def("loss",
        [](const std::string& name, const Tensor& y_true, const Tensor& y_pred, bool from_logits,
           std::optional<Tensor> sample_weight, const std::string& reduction) {
          const losses::Info& info = losses::from_name("loss", name);
          return losses::loss(info.name, {info.kind, from_logits}, y_true, y_pred,
                              sample_weight.value_or(Tensor()), losses::reduction_from_name(info.name, reduction));
        },
        arg("name"), arg("y_true"), arg("y_pred"), nb::kw_only(), arg("from_logits") = false,
        arg("sample_weight").none() = nb::none(), arg("reduction") = "sum_over_batch_size",
        "The built-in loss `name` (see loss_table) of y_pred against y_true, weighted by "
        "sample_weight and reduced as Keras does; differentiable.");
  m.def("reduce_loss",
        [](const Tensor& values, std::optional<Tensor> sample_weight, const std::string& reduction) {
          return losses::reduce("loss", values, sample_weight.value_or(Tensor()),
                                losses::reduction_from_name("loss", reduction));
        },
        arg("values"), nb::kw_only(), arg("sample_weight").none() = nb::none(),
        arg("reduction") = "sum_over_batch_size",
        "A custom loss's values weighted by sample_weight and reduced as fit reduces them.");
  m.def("conv2d",
        [](const Tensor& x, const Tensor& w, std::optional<Tensor> b, nb::handle stride,
           nb::handle padding, nb::handle dilation, int64_t groups) {
          const char* op = "conv2d";
          auto s = parse_pair(op, "stride", stride);
          auto d = parse_pair(op, "dilation", dilation);
          ops::IntPair kernel{w.ndim() == 4 ? w.shape()[2] : 1, w.ndim() == 4 ? w.shape()[3] : 1};
          auto p = parse_conv_padding(op, padding, kernel, s, d);
          nb::gil_scoped_release release;
          return ops::conv2d(x, w, optional_tensor(b), s, p, d, groups);
        },
        arg("x"), arg("w"), arg("b").none() = nb::none(), arg("stride") = 1, arg("padding") = 0,
        arg("dilation") = 1, arg("groups") = 1,
        "2-D convolution (NCHW; w: out x in/groups x kh x kw) via im2col + GEMM, torch\n"
        "semantics. padding: an int, (ph, pw), (top, bottom, left, right),\n"
        "((top, bottom), (left, right)), 'valid' or 'same' (stride 1). groups == in channels\n"
        "is a depthwise convolution.");
  m.def("conv1d",
        [](const Tensor& x, const Tensor& w, std::optional<Tensor> b, nb::handle stride,
           nb::handle padding, nb::handle dilation, int64_t groups) {
          const char* op = "conv1d";
          int64_t s = parse_int(op, "stride", stride), d = parse_int(op, "dilation", dilation);
          ops::IntPair p;
          if (nb::isinstance<nb::str>(padding)) {
            int64_t k = w.ndim() == 3 ? w.shape()[2] : 1;
            ops::Padding2d p2 = parse_conv_padding(op, padding, {1, k}, {1, s}, {1, d});
            p = {p2.left, p2.right};
          } else {
            p = parse_padding1d(op, padding);
          }
          nb::gil_scoped_release release;
          return ops::conv1d(x, w, optional_tensor(b), s, p, d, groups);
        },
        arg("x"), arg("w"), arg("b").none() = nb::none(), arg("stride") = 1, arg("padding") = 0,
        arg("dilation") = 1, arg("groups") = 1,
        "1-D convolution (NCL; w: out x in/groups x k) on conv2d's path. padding: an int,\n"
        "(before, after), 'valid' or 'same' (stride 1).");
  m.def("max_pool2d",
        [](const Tensor& x, nb::handle kernel, nb::handle stride, nb::handle padding,
           nb::handle dilation, bool ceil_mode) {
          const char* op = "max_pool2d";
          auto k = parse_pair(op, "kernel_size", kernel);
          auto s = stride.is_none() ? k : parse_pair(op, "stride", stride);
          return ops::max_pool2d(x, k, s, parse_padding(op, padding), parse_pair(op, "dilation", dilation),
                                 ceil_mode);
        },
        arg("x"), arg("kernel_size"), arg("stride").none() = nb::none(), arg("padding") = 0,
        arg("dilation") = 1, arg("ceil_mode") = false,
        "Max pooling (NCHW), torch semantics; the gradient of a window is split evenly among\n"
        "tied maxima. padding as conv2d's (at most half the kernel per side).");
  m.def("avg_pool2d",
        [](const Tensor& x, nb::handle kernel, nb::handle stride, nb::handle padding,
           bool ceil_mode, bool count_include_pad) {
          const char* op = "avg_pool2d";
          auto k = parse_pair(op, "kernel_size", kernel);
          auto s = stride.is_none() ? k : parse_pair(op, "stride", stride);
          return ops::avg_pool2d(x, k, s, parse_padding(op, padding), ceil_mode, count_include_pad);
        },
        arg("x"), arg("kernel_size"), arg("stride").none() = nb::none(), arg("padding") = 0,
        arg("ceil_mode") = false, arg("count_include_pad") = true,
        "Average pooling (NCHW), torch semantics: count_include_pad divides by the window\n"
        "clipped to the padded input, else by the input pixels it covers.");
  m.def("max_pool1d",
        [](const Tensor& x, nb::handle kernel, nb::handle stride, nb::handle padding,
           nb::handle dilation, bool ceil_mode) {
          const char* op = "max_pool1d";
          int64_t k = parse_int(op, "kernel_size", kernel);
          int64_t s = stride.is_none() ? k : parse_int(op, "stride", stride);
          return ops::max_pool1d(x, k, s, parse_padding1d(op, padding),
                                 parse_int(op, "dilation", dilation), ceil_mode);
        },
        arg("x"), arg("kernel_size"), arg("stride").none() = nb::none(), arg("padding") = 0,
        arg("dilation") = 1, arg("ceil_mode") = false, "Max pooling over (N, C, L).");
  m.def("avg_pool1d",
        [](const Tensor& x, nb::handle kernel, nb::handle stride, nb::handle padding,
           bool ceil_mode, bool count_include_pad) {
          const char* op = "avg_pool1d";
          int64_t k = parse_int(op, "kernel_size", kernel);
          int64_t s = stride.is_none() ? k : parse_int(op, "stride", stride);
          return ops::avg_pool1d(x, k, s, parse_padding1d(op, padding), ceil_mode,
                                 count_include_pad);
        },
        arg("x"), arg("kernel_size"), arg("stride").none() = nb::none(), arg("padding") = 0,
        arg("ceil_mode") = false, arg("count_include_pad") = true, "Average pooling over (N, C, L).");
  m.def("layer_norm",
        [](const Tensor& x, std::optional<Tensor> w, std::optional<Tensor> b, double eps) {
          return ops::layer_norm(x, optional_tensor(w), optional_tensor(b), eps);
        },
        arg("x"), arg("weight").none() = nb::none(), arg("bias").none() = nb::none(), arg("eps") = 1e-5,
        "Normalises over the last axis, then scales by weight and shifts by bias.");
  m.def("bias_gelu", &ops::bias_gelu, arg("x"), arg("bias"),
        "gelu(x + bias) in one pass, the bias over the last axis; its backward is one pass "
        "too (the bias gradient summed on the way). For a projection computed without bias.");
  m.def("bias_residual",
        [](const Tensor& x, const Tensor& y, std::optional<Tensor> bias) {
          return ops::bias_residual(x, y, optional_tensor(bias));
        },
        arg("x"), arg("y"), arg("bias").none() = nb::none(),
        "x + y + bias in one pass: a residual x, a branch y of x's shape and the branch's bias "
        "over the last axis.");
  m.def("add_layer_norm",
        [](const Tensor& x, const Tensor& y, std::optional<Tensor> bias, std::optional<Tensor> w,
           std::optional<Tensor> b, double eps) {
          return ops::add_layer_norm(x, y, optional_tensor(bias), optional_tensor(w),
                                     optional_tensor(b), eps);
        },
        arg("x"), arg("y"), arg("bias").none() = nb::none(), arg("weight").none() = nb::none(),
        arg("ln_bias").none() = nb::none(), arg("eps") = 1e-5,
        "(s, layer_norm(s, weight, ln_bias, eps)) with s = x + y + bias, in one pass over each "
        "row: the residual sum a pre-LN Transformer block carries on, and the normalised input "
        "of its next sub-layer.");
  m.def("batch_norm",
        [](const Tensor& x, std::optional<Tensor> running_mean, std::optional<Tensor> running_var,
           std::optional<Tensor> w, std::optional<Tensor> b, bool training, double momentum,
           double eps, int64_t axis) {
          return ops::batch_norm(x, optional_tensor(running_mean), optional_tensor(running_var),
                                 optional_tensor(w), optional_tensor(b), training, momentum, eps,
                                 axis);
        },
        arg("x"), arg("running_mean").none() = nb::none(), arg("running_var").none() = nb::none(),
        arg("weight").none() = nb::none(), arg("bias").none() = nb::none(),
        arg("training") = false, arg("momentum") = 0.99, arg("eps") = 1e-3, arg("axis") = 1,
        "Batch normalisation over every axis but `axis` (Keras semantics). training=True\n"
        "normalises with the batch mean and biased variance and updates running_mean /\n"
        "running_var in place: moving = moving*momentum + batch*(1 - momentum), the\n"
        "variance biased, as Keras (torch's momentum m is 1 - m here, and torch uses the\n"
        "unbiased variance). training=False normalises with the running statistics.\n"
        "The statistics are float32 for 16-bit input (float64 for float64).");
  m.def("embedding", &ops::embedding, arg("indices"), arg("table"), "table[indices].");
  m.def("dropout",
        [](const Tensor& x, double rate, bool training, std::optional<uint64_t> seed) {
          return ops::dropout(x, rate, training, seed);
        },
        arg("x"), arg("rate"), arg("training") = true, arg("seed").none() = nb::none(),
        "Inverted dropout: zeroes a fraction `rate` and scales the rest by 1/(1-rate).");
  m.def("scaled_dot_product_attention",
        [](const Tensor& q, const Tensor& k, const Tensor& v, bool causal, std::optional<double> scale) {
          nb::gil_scoped_release release;
          return ops::scaled_dot_product_attention(q, k, v, causal, scale);
        },
        arg("q"), arg("k"), arg("v"), arg("causal") = false, arg("scale").none() = nb::none(),
        "softmax(q·kᵀ·scale [+ causal mask])·v over (..., T, D) inputs; scale defaults to 1/sqrt(D).");
  m.def("qkv_attention",
        [](const Tensor& qkv, int64_t heads, bool causal, std::optional<double> scale) {
          nb::gil_scoped_release release;
          return ops::qkv_attention(qkv, heads, causal, scale);
        },
        arg("qkv"), arg("heads"), arg("causal") = true, arg("scale").none() = nb::none(),
        "Multi-head self-attention on a fused projection qkv (B, T, 3*d), q, k and v its\n"
        "thirds in that order, each split into `heads` heads; returns the merged heads\n"
        "(B, T, d). scale defaults to 1/sqrt(d/heads).");
  m.def("checkpoint",
        [](nb::callable fn, nb::args args) {
          std::vector<Tensor> inputs;
          for (nb::handle h : args) inputs.push_back(nb::cast<Tensor>(h));
          // The Python function is held through python_owner, so copies of the closure
          // never touch reference counts without the GIL (backward runs without it).
          std::shared_ptr<void> owner = python_owner(fn);
          PyObject* callable = fn.ptr();
          ops::CheckpointFunction run = [owner, callable](const std::vector<Tensor>& xs) {
            nb::gil_scoped_acquire gil;
            nb::list call_args;
            for (const Tensor& x : xs) call_args.append(nb::cast(x));
            nb::object result = nb::borrow<nb::callable>(callable)(*call_args);
            return nb::cast<Tensor>(result);
          };
          return ops::checkpoint(run, inputs);
        },
        arg("fn"), arg("args"),
        "Activation checkpointing: fn(*args) keeps only its inputs; backward recomputes it.");
  m.def("reshape", [](const Tensor& x, nb::handle shape) { return ops::reshape(x, parse_shape("reshape", shape)); },
        arg("x"), arg("shape"));
  m.def("transpose", &ops::transpose, arg("x"), arg("axis0"), arg("axis1"));
  m.def("flatten",
        [](const Tensor& x, int64_t start_dim, int64_t end_dim) {
          return ops::flatten(x, start_dim, end_dim);
        },
        arg("x"), arg("start_dim") = 1, arg("end_dim") = -1,
        "Axes start_dim..end_dim merged into one; by default (N, ...) -> (N, prod(...)).");
  m.def("squeeze", [](const Tensor& x, nb::handle axis) { return ops::squeeze(x, parse_axes(axis)); },
        arg("x"), arg("axis").none() = nb::none(),
        "Drops the given axes of size 1 (others are left alone), or every axis of size 1.");
  m.def("index_select", &ops::index_select, arg("x"), arg("axis"), arg("indices"),
        "The entries of `axis` named by int `indices` (any shape, negative from the end); "
        "the gradient is scattered back with repeated indices adding up.");
  m.def("unsqueeze", &ops::unsqueeze, arg("x"), arg("axis"), "Inserts an axis of size 1.");
  m.def("expand", [](const Tensor& x, nb::handle shape) { return ops::expand(x, parse_shape("expand", shape)); },
        arg("x"), arg("shape"), "A broadcast view; -1 keeps a dimension.");
  m.def("sum_to", [](const Tensor& x, nb::handle shape) { return ops::sum_to(x, parse_shape("sum_to", shape)); },
        arg("x"), arg("shape"), "Sums broadcast axes away so x has `shape` (broadcast backward).");
}

}  // namespace steepest::bindings
