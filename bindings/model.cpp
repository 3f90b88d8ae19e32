// steepest._core.model: layers and Sequential. train_epoch runs the whole batch loop in
// C++ without the GIL and takes it back only to redraw the progress bar (at most every
// `report_seconds`) and to check for Ctrl-C. The *_stream variants read batches from a
// BatchQueue that Python producer threads fill; the loop takes the GIL there only when
// it has waited 100 ms for a batch, to check for Ctrl-C.
#include <nanobind/stl/function.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <chrono>

#include "common.h"
#include "steepest/model.h"
#include "steepest/ops.h"

namespace steepest::bindings {
namespace {

using model::Activation;

model::OnNanLoss on_nan_loss(bool stop) { return stop ? model::OnNanLoss::Stop : model::OnNanLoss::Continue; }

model::Metric metric_from_name(const std::string& name) {
  if (name == "accuracy" || name == "acc") return model::Metric::Accuracy;
  if (name == "sparse_categorical_accuracy") return model::Metric::SparseCategoricalAccuracy;
  if (name == "categorical_accuracy") return model::Metric::CategoricalAccuracy;
  if (name == "binary_accuracy") return model::Metric::BinaryAccuracy;
  if (name == "mae" || name == "mean_absolute_error") return model::Metric::MeanAbsoluteError;
  if (name == "mse" || name == "mean_squared_error") return model::Metric::MeanSquaredError;
  throw ValueError("[compile] unknown metric '" + name +
                   "'; expected accuracy, sparse_categorical_accuracy, categorical_accuracy, "
                   "binary_accuracy, mae or mse");
}

nb::dict logs_dict(const model::Logs& logs) {
  nb::dict d;
  d["loss"] = logs.loss;
  nb::list metrics;
  for (double m : logs.metrics) metrics.append(m);
  d["metrics"] = metrics;
  d["samples"] = logs.samples;
  d["batches"] = logs.batches;
  d["stopped"] = logs.stopped;
  d["nan_loss"] = logs.nan_loss;
  d["exhausted"] = logs.exhausted;
  if (logs.loss_scale > 0.0) {
    d["loss_scale"] = logs.loss_scale;
    d["skipped_steps"] = logs.skipped_steps;
  }
  return d;
}

// Wraps a Python progress callback: throttled, called with the GIL, and turning Ctrl-C
// (or the callback returning False) into a clean stop after the current step.
model::Progress throttled(nb::object callback, double report_seconds, bool& interrupted) {
  using Clock = std::chrono::steady_clock;
  auto last = std::make_shared<Clock::time_point>(Clock::now());
  return [callback, report_seconds, last, &interrupted](int64_t batch, int64_t total,
                                                       const model::Logs& logs) {
    auto now = Clock::now();
    bool final_batch = batch == total;
    if (!final_batch && std::chrono::duration<double>(now - *last).count() < report_seconds)
      return true;
    *last = now;
    nb::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) {
      PyErr_Clear();
      interrupted = true;
      return false;
    }
    if (callback.is_none()) return true;
    nb::object keep_going = callback(batch, total, logs_dict(logs));
    return keep_going.is_none() || nb::cast<bool>(keep_going);
  };
}

// A Python callable called with the GIL, or an empty function for None (the loop then
// stays in C++).
template <class... Args>
std::function<void(Args...)> with_gil(nb::object callable) {
  if (callable.is_none()) return {};
  return [callable](Args... args) {
    nb::gil_scoped_acquire gil;
    callable(args...);
  };
}

// A Python object shared by C++ closures that may be copied and dropped without the GIL
// (the loop runs without it): the last owner takes the GIL to release it.
std::shared_ptr<nb::object> shared_object(nb::object object) {
  return std::shared_ptr<nb::object>(new nb::object(std::move(object)), [](nb::object* p) {
    nb::gil_scoped_acquire gil;
    delete p;
  });
}

// What a Python part of the model returned, as a Tensor, or a TypeError naming `what`.
Tensor returned_tensor(const nb::object& value, const char* what) {
  Tensor* t = nullptr;
  if (!nb::try_cast<Tensor*>(value, t) || t == nullptr)
    throw TypeError(std::string("[") + what + "] must return a steepest Tensor (built with st ops), got " +
                    nb::type_name(value.type()).c_str());
  return *t;
}

// A subclass of st.layers.Layer written in Python. The C++ layer holds a weak reference
// to the Python object (which owns this layer: a strong one would be a cycle the
// garbage collector cannot see) and calls its _st_build and _st_call with the GIL, from
// the loop's thread only. A Python exception leaves as nb::python_error and reaches the
// caller of fit as itself.
class PyLayer final : public model::Layer {
 public:
  PyLayer(std::string name, nb::handle owner, std::string kind)
      : Layer(std::move(name)), owner_(shared_object(nb::steal(PyWeakref_NewRef(owner.ptr(), nullptr)))),
        kind_(std::move(kind)) {
    if (!owner_->is_valid()) throw nb::python_error();
  }
  const char* kind() const override { return kind_.c_str(); }

  Tensor forward(const Tensor& x, model::Pass pass) override {
    nb::gil_scoped_acquire gil;
    nb::object out = owner().attr("_st_call")(cast(x), pass.training);
    return cast(returned_tensor(out, (kind_ + ".call").c_str()));
  }

  // Layer::add_weight for Python's add_weight: the layer's seed plus the weight's index
  // keys the initializer, as for the C++ layers (a Python Dense twin draws a built-in
  // Dense's weights).
  Tensor add_python_weight(const std::string& name, const Dims& shape, const std::string& initializer,
                           int64_t fan_in, int64_t fan_out, bool trainable) {
    if (planning()) fail(kind_.c_str(), "a Python layer cannot plan its weights without building them");
    for (auto& entry : weights_)
      if (entry.first == name) fail(kind_.c_str(), "add_weight: the layer already has a weight named '", name, "'");
    uint64_t seed = seed_ + weights_.size();
    Tensor w = add_weight(name, shape, initializer, fan_in, fan_out, seed);
    if (!trainable) w.set_requires_grad(false);
    return w;
  }

 private:
  Dims build_weights(const Dims& input_shape, uint64_t seed) override {
    if (planning()) fail(kind_.c_str(), "a Python layer cannot plan its weights without building them");
    seed_ = seed;
    nb::gil_scoped_acquire gil;
    nb::object out = owner().attr("_st_build")(std::vector<int64_t>(input_shape.begin(), input_shape.end()));
    std::vector<int64_t> shape = nb::cast<std::vector<int64_t>>(out);
    return Dims(shape.begin(), shape.end());
  }

  nb::object owner() const {
    nb::object layer = nb::borrow(PyWeakref_GetObject(owner_->ptr()));
    if (layer.is_none()) fail(kind_.c_str(), "the Python layer object no longer exists");
    return layer;
  }

  std::shared_ptr<nb::object> owner_;
  std::string kind_;
  uint64_t seed_ = 0;
};

std::vector<int64_t> as_order(const std::optional<nb::ndarray<int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>>& order) {
  std::vector<int64_t> out;
  if (order) out.assign(order->data(), order->data() + order->shape(0));
  return out;
}

// The batch loop's callbacks around a Python progress callback and batch-begin hook.
struct LoopCallbacks {
  bool interrupted = false;
  model::BatchCallbacks callbacks;
  LoopCallbacks(nb::object callback, double report_seconds, nb::object batch_begin)
      : callbacks{throttled(std::move(callback), report_seconds, interrupted), with_gil<int64_t>(batch_begin)} {}
  // For a loop starved by its producers: Ctrl-C stops it as it does between batches.
  std::function<bool()> ctrl_c() {
    return [this] {
      nb::gil_scoped_acquire gil;
      if (PyErr_CheckSignals() == 0) return false;
      PyErr_Clear();
      interrupted = true;
      return true;
    };
  }
  nb::dict result(const model::Logs& logs) const {
    nb::dict d = logs_dict(logs);
    d["interrupted"] = interrupted;
    return d;
  }
};

// A host copy the batch loop owns: a tensor borrowing a NumPy array would take the GIL
// to let it go, from the loop, while producer threads hold it.
Tensor owned(const std::optional<Tensor>& t) { return t ? ops::clone(t->detach()) : Tensor(); }

}  // namespace

void init_model(nb::module_& parent) {
  nb::module_ m = parent.def_submodule("model", "Layers and the Sequential training loop.");
  using nb::arg;

  nb::class_<model::Layer>(m, "Layer")
      .def_prop_ro("name", &model::Layer::name)
      .def_prop_ro("kind", &model::Layer::kind)
      .def_prop_ro("built", &model::Layer::built)
      .def_prop_ro("input_shape", [](model::Layer& l) { return std::vector<int64_t>(l.input_shape().begin(), l.input_shape().end()); })
      .def_prop_ro("output_shape", [](model::Layer& l) { return std::vector<int64_t>(l.output_shape().begin(), l.output_shape().end()); })
      .def_prop_ro("weights", [](model::Layer& l) { return l.weights(); })
      .def("build", [](model::Layer& l, std::vector<int64_t> shape, uint64_t seed) {
             Dims out = l.build(Dims(shape.begin(), shape.end()), seed);
             return std::vector<int64_t>(out.begin(), out.end());
           }, arg("input_shape"), arg("seed"))
      .def("plan", [](model::Layer& l, std::vector<int64_t> shape) {
             auto [out, weights] = l.plan(Dims(shape.begin(), shape.end()));
             std::vector<std::pair<std::string, std::vector<int64_t>>> named;
             for (auto& [name, dims] : weights) named.emplace_back(name, std::vector<int64_t>(dims.begin(), dims.end()));
             return std::make_pair(std::vector<int64_t>(out.begin(), out.end()), named);
           }, arg("input_shape"),
           "(output shape, [(weight name, shape)]) that build would give, allocating nothing.")
      .def("forward",
           [](model::Layer& l, const Tensor& x, bool training, int64_t step) {
             // The layers index their weights without checks: an unbuilt one has none.
             if (!l.built())
               fail(l.name().c_str(), "forward before build: build the layer (or its model) first");
             return l.forward(x, model::Pass{training, step});
           },
           arg("x"), arg("training") = false, arg("step") = 0)
      .def_prop_ro("final_activation", [](model::Layer& l) { return std::string(activation_name(l.final_activation())); })
      .def_prop_rw(
          "compute_dtype", [](const model::Layer& l) { return std::string(dtype_name(l.compute_dtype())); },
          [](model::Layer& l, const std::string& dtype) { l.set_compute_dtype(dtype_from_name(dtype)); },
          "The dtype the forward pass computes in; the weights stay float32.");

  auto act = [](const std::string& name) { return model::activation_from_name(name); };
  auto reg = [](std::pair<double, double> r) { return model::Regularizer{r.first, r.second}; };

  nb::class_<model::Dense, model::Layer>(m, "Dense")
      .def("__init__", [act, reg](model::Dense* self, std::string name, int64_t units, std::string activation,
                                  bool use_bias, std::string kernel_init, std::string bias_init,
                                  std::pair<double, double> kernel_reg, std::pair<double, double> bias_reg) {
        new (self) model::Dense(std::move(name), units, act(activation), use_bias, std::move(kernel_init),
                                std::move(bias_init), reg(kernel_reg), reg(bias_reg));
      });
  // Conv1D, Conv2D and DepthwiseConv2D (options.rank / depth_multiplier tell them apart).
  nb::class_<model::Conv2D, model::Layer>(m, "Conv2D")
      .def("__init__", [act, reg](model::Conv2D* self, std::string name, int64_t filters,
                                  std::pair<int64_t, int64_t> kernel, std::pair<int64_t, int64_t> strides,
                                  bool same, std::string activation, bool use_bias, std::string kernel_init,
                                  std::pair<double, double> kernel_reg, const std::string& data_format,
                                  int rank, std::pair<int64_t, int64_t> dilation, int64_t groups,
                                  int64_t depth_multiplier, bool causal) {
        model::ConvOptions options;
        options.rank = rank;
        options.dilation = dilation;
        options.groups = groups;
        options.depth_multiplier = depth_multiplier;
        options.causal = causal;
        const char* op = rank == 1 ? "Conv1D" : depth_multiplier > 0 ? "DepthwiseConv2D" : "Conv2D";
        new (self) model::Conv2D(std::move(name), filters, kernel, strides, same, act(activation), use_bias,
                                 std::move(kernel_init), reg(kernel_reg),
                                 model::data_format_from_name(op, data_format), options);
      },
      nb::arg("name"), nb::arg("filters"), nb::arg("kernel"), nb::arg("strides"), nb::arg("same"),
      nb::arg("activation"), nb::arg("use_bias"), nb::arg("kernel_initializer"),
      nb::arg("kernel_regularizer"), nb::arg("data_format"), nb::arg("rank") = 2,
      nb::arg("dilation") = std::pair<int64_t, int64_t>{1, 1}, nb::arg("groups") = 1,
      nb::arg("depth_multiplier") = 0, nb::arg("causal") = false);
  nb::class_<model::Pool2D, model::Layer>(m, "Pool2D")
      .def("__init__", [](model::Pool2D* self, std::string name, bool max, std::pair<int64_t, int64_t> pool,
                          std::pair<int64_t, int64_t> strides, const std::string& data_format, bool same,
                          int rank) {
        const char* op = rank == 1 ? (max ? "MaxPooling1D" : "AveragePooling1D") : (max ? "MaxPool2D" : "AvgPool2D");
        new (self) model::Pool2D(std::move(name), max, pool, strides,
                                 model::data_format_from_name(op, data_format), same, rank);
      },
      nb::arg("name"), nb::arg("max"), nb::arg("pool"), nb::arg("strides"), nb::arg("data_format"),
      nb::arg("same") = false, nb::arg("rank") = 2);
  nb::class_<model::Flatten, model::Layer>(m, "Flatten").def(nb::init<std::string>());
  nb::class_<model::ActivationLayer, model::Layer>(m, "Activation")
      .def("__init__", [act](model::ActivationLayer* self, std::string name, std::string activation) {
        new (self) model::ActivationLayer(std::move(name), act(activation));
      });
  nb::class_<model::Dropout, model::Layer>(m, "Dropout").def(nb::init<std::string, double, uint64_t>());
  nb::class_<model::LayerNormalization, model::Layer>(m, "LayerNormalization")
      .def(nb::init<std::string, double, bool, bool>());
  nb::class_<model::Normalization, model::Layer>(m, "Normalization")
      .def(nb::init<std::string, bool, std::vector<double>, std::vector<double>>())
      .def("set_statistics", &model::Normalization::set_statistics, arg("mean"), arg("variance"));
  nb::class_<model::BatchNormalization, model::Layer>(m, "BatchNormalization")
      .def(nb::init<std::string, int64_t, double, double, bool, bool>(), nb::arg("name"),
           nb::arg("axis"), nb::arg("momentum"), nb::arg("epsilon"), nb::arg("center"),
           nb::arg("scale"));
  nb::class_<model::GlobalPool2D, model::Layer>(m, "GlobalPool2D")
      .def("__init__", [](model::GlobalPool2D* self, std::string name, bool max,
                          const std::string& data_format, bool keepdims) {
        const char* op = max ? "GlobalMaxPooling2D" : "GlobalAveragePooling2D";
        new (self) model::GlobalPool2D(std::move(name), max, model::data_format_from_name(op, data_format),
                                       keepdims);
      },
      nb::arg("name"), nb::arg("max"), nb::arg("data_format"), nb::arg("keepdims"));
  nb::class_<model::Reshape, model::Layer>(m, "Reshape")
      .def("__init__", [](model::Reshape* self, std::string name, std::vector<int64_t> target) {
        new (self) model::Reshape(std::move(name), Dims(target.begin(), target.end()));
      },
      nb::arg("name"), nb::arg("target_shape"));
  nb::class_<model::ZeroPadding2D, model::Layer>(m, "ZeroPadding2D")
      .def("__init__", [](model::ZeroPadding2D* self, std::string name, std::pair<int64_t, int64_t> rows,
                          std::pair<int64_t, int64_t> cols, const std::string& data_format) {
        new (self) model::ZeroPadding2D(std::move(name),
                                        ops::Padding2d(rows.first, rows.second, cols.first, cols.second),
                                        model::data_format_from_name("ZeroPadding2D", data_format));
      },
      nb::arg("name"), nb::arg("rows"), nb::arg("cols"), nb::arg("data_format"));
  nb::class_<model::TokenAndPositionEmbedding, model::Layer>(m, "TokenAndPositionEmbedding")
      .def(nb::init<std::string, int64_t, int64_t, int64_t>());
  nb::class_<model::TransformerBlock, model::Layer>(m, "TransformerBlock")
      .def(nb::init<std::string, int64_t, int64_t, int64_t, double, bool, bool, uint64_t>());
  nb::class_<model::Embedding, model::Layer>(m, "Embedding")
      .def(nb::init<std::string, int64_t, int64_t, std::string>());
  nb::class_<PyLayer, model::Layer>(m, "PyLayer",
                                    "The C++ side of a Python subclass of st.layers.Layer (see layers.py).")
      .def(nb::init<std::string, nb::handle, std::string>(), arg("name"), arg("owner"), arg("kind"))
      .def("add_weight", [](PyLayer& l, const std::string& name, const std::vector<int64_t>& shape,
                            const std::string& initializer, int64_t fan_in, int64_t fan_out, bool trainable) {
             return l.add_python_weight(name, Dims(shape.begin(), shape.end()), initializer, fan_in, fan_out, trainable);
           }, arg("name"), arg("shape"), arg("initializer"), arg("fan_in"), arg("fan_out"), arg("trainable"));

  nb::class_<model::BatchQueue>(m, "BatchQueue",
                                "A bounded queue of prepared batches that Python producer threads fill "
                                "and the C++ batch loop empties without the GIL.")
      .def(nb::init<int64_t>(), arg("capacity"))
      .def("put",
           [](model::BatchQueue& q, const Tensor& x, std::optional<Tensor> y, std::optional<Tensor> sample_weight) {
             model::Batch batch{owned(x), owned(y), owned(sample_weight), x.ndim() ? x.shape()[0] : 0};
             nb::gil_scoped_release release;
             return q.put(std::move(batch));
           },
           arg("x"), arg("y").none(), arg("sample_weight").none() = nb::none(),
           "Blocks while the queue is full; False once the consumer closed it.")
      .def("finish", &model::BatchQueue::finish, "No more batches.")
      .def("fail", &model::BatchQueue::fail, "The producer failed: the loop stops at the batches queued so far.")
      .def("close", &model::BatchQueue::close, "The consumer is done: blocked and later puts return False.")
      .def("__len__", &model::BatchQueue::size);

  nb::class_<model::DecodeState>(m, "DecodeState",
                                 "Key/value caches and position of an incremental decode "
                                 "(st.models.generate).")
      .def(nb::init<>())
      .def_ro("length", &model::DecodeState::length, "Tokens consumed so far.");
  nb::class_<model::Sequential>(m, "Sequential")
      .def(nb::init<>())
      .def("add", &model::Sequential::add, arg("layer"))
      .def_prop_ro("layers", &model::Sequential::layers)
      .def_prop_ro("built", &model::Sequential::built)
      .def_prop_ro("compiled", &model::Sequential::compiled)
      .def("build", [](model::Sequential& s, std::vector<int64_t> shape, uint64_t seed) {
             s.build(Dims(shape.begin(), shape.end()), seed);
           }, arg("input_shape"), arg("seed"))
      .def("parameters", &model::Sequential::parameters)
      .def("parameter_names", &model::Sequential::parameter_names)
      .def("to", [](model::Sequential& s, const std::string& device) { s.to(parse_device(device)); },
           arg("device"), "Moves the weights to the device; batches follow them there.")
      .def_prop_ro("device", [](const model::Sequential& s) { return s.device().str(); })
      .def("compile", [](model::Sequential& s, std::shared_ptr<optim::Optimizer> optimizer, const std::string& loss,
                         bool from_logits, const std::vector<std::string>& metrics,
                         const std::string& compute_dtype, std::shared_ptr<optim::LossScaler> loss_scaler,
                         bool shard_optimizer_state, nb::object custom_loss, const std::string& reduction,
                         nb::object custom_metrics, size_t custom_metric_count) {
             std::vector<model::Metric> parsed;
             for (const auto& name : metrics) parsed.push_back(metric_from_name(name));
             model::LossSpec spec;
             spec.reduction = losses::reduction_from_name("compile", reduction);
             if (spec.reduction == losses::Reduction::None)
               throw ValueError("[compile] a loss used by fit must reduce to a scalar: reduction must be "
                                "sum_over_batch_size, sum or mean_with_sample_weight, got 'none'");
             if (custom_loss.is_none()) {
               spec.spec = {losses::from_name("compile", loss).kind, from_logits};
             } else {
               auto custom = std::make_shared<model::CustomLoss>();
               custom->fn = [fn = shared_object(custom_loss)](const Tensor& y_true, const Tensor& y_pred) {
                 nb::gil_scoped_acquire gil;
                 return returned_tensor((*fn)(y_true, y_pred), "loss");
               };
               spec.custom = std::move(custom);
             }
             std::shared_ptr<model::CustomMetrics> extra;
             if (!custom_metrics.is_none() && custom_metric_count > 0) {
               extra = std::make_shared<model::CustomMetrics>();
               extra->count = custom_metric_count;
               auto object = shared_object(custom_metrics);
               extra->reset = [object] {
                 nb::gil_scoped_acquire gil;
                 object->attr("reset")();
               };
               extra->update = [object](const Tensor& y_true, const Tensor& y_pred) {
                 nb::gil_scoped_acquire gil;
                 return nb::cast<std::vector<double>>(object->attr("update")(y_true, y_pred));
               };
             }
             s.compile(std::move(optimizer), spec, parsed, dtype_from_name(compute_dtype), std::move(loss_scaler),
                       shard_optimizer_state, std::move(extra));
           }, arg("optimizer"), arg("loss"), arg("from_logits"), arg("metrics"),
           arg("compute_dtype") = "float32", arg("loss_scaler").none() = nb::none(),
           arg("shard_optimizer_state") = false, arg("custom_loss").none() = nb::none(),
           arg("reduction") = "sum_over_batch_size", arg("custom_metrics").none() = nb::none(),
           arg("custom_metric_count") = 0,
           "compute_dtype: the mixed-precision policy's; loss_scaler: dynamic loss scaling in fit; "
           "shard_optimizer_state: ZeRO stage 1 under data parallelism. custom_loss(y_true, y_pred) "
           "replaces `loss`; either is reduced by `reduction`; custom_metrics has reset() and update(y_true, y_pred) "
           "-> custom_metric_count floats, appended to the built-in metrics in the logs.")
      .def("gather_optimizer_state", &model::Sequential::gather_optimizer_state,
           nb::call_guard<nb::gil_scoped_release>(),
           "After a fit with sharded optimizer state: every rank gets the whole state (a collective).")
      .def("synchronize_replicas", &model::Sequential::synchronize_replicas,
           nb::call_guard<nb::gil_scoped_release>(),
           "Checks that every rank built the same model and gives all of them rank 0's weights.")
      .def_prop_ro("compute_dtype", [](const model::Sequential& s) { return std::string(dtype_name(s.compute_dtype())); })
      .def_prop_ro("loss_scaler", &model::Sequential::loss_scaler)
      .def("forward",
           [](const model::Sequential& s, const Tensor& x, bool training, int64_t step) {
             return s.forward(x, model::Pass{training, step});
           },
           arg("x"), arg("training") = false, arg("step") = 0)
      .def("supports_decode", &model::Sequential::supports_decode)
      .def("decode",
           [](const model::Sequential& s, const Tensor& tokens, model::DecodeState& state) {
             nb::gil_scoped_release release;
             return s.decode(tokens, state);
           },
           arg("tokens"), arg("state"),
           "Outputs for tokens that follow the state's, from cached keys and values.")
      .def("train_epoch",
           [](model::Sequential& s, const Tensor& x, const Tensor& y, int64_t batch_size,
              std::optional<nb::ndarray<int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>> order,
              bool stop_on_nan, nb::object callback, double report_seconds, int64_t accumulation_steps,
              std::optional<Tensor> sample_weight, int64_t steps, nb::object batch_begin) {
             model::Batching batching{batch_size, as_order(order), steps, accumulation_steps};
             bool interrupted = false;
             model::BatchCallbacks callbacks{throttled(callback, report_seconds, interrupted),
                                             with_gil<int64_t>(batch_begin)};
             model::Logs logs;
             {
               nb::gil_scoped_release release;
               logs = s.train_epoch(x, y, sample_weight.value_or(Tensor()), batching, on_nan_loss(stop_on_nan), callbacks);
             }
             nb::dict d = logs_dict(logs);
             d["interrupted"] = interrupted;
             return d;
           },
           arg("x"), arg("y"), arg("batch_size"), arg("order").none(), arg("stop_on_nan"),
           arg("callback").none(), arg("report_seconds") = 0.1, arg("accumulation_steps") = 1,
           arg("sample_weight").none() = nb::none(), arg("steps") = 0, arg("batch_begin").none() = nb::none(),
           "One epoch; steps > 0 runs only the first `steps` batches. callback(batches_done, total, logs) "
           "runs at most every report_seconds (0: after every batch), batch_begin(batch) before each batch.")
      .def("train_epoch_stream",
           [](model::Sequential& s, std::shared_ptr<model::BatchQueue> queue, int64_t steps, bool stop_on_nan,
              nb::object callback, double report_seconds, int64_t accumulation_steps, nb::object batch_begin) {
             model::Batching batching{1, {}, steps, accumulation_steps};
             LoopCallbacks loop(callback, report_seconds, batch_begin);
             model::QueueSource source(std::move(queue), steps, model::QueueSource::Share::PerRank, loop.ctrl_c());
             model::Logs logs;
             {
               nb::gil_scoped_release release;
               logs = s.train_epoch(source, batching, on_nan_loss(stop_on_nan), loop.callbacks);
             }
             return loop.result(logs);
           },
           arg("queue"), arg("steps"), arg("stop_on_nan"), arg("callback").none(), arg("report_seconds") = 0.1,
           arg("accumulation_steps") = 1, arg("batch_begin").none() = nb::none(),
           "One epoch of `steps` batches from the queue (0: until its producer finishes); "
           "logs['exhausted'] when it ran out first.")
      .def("evaluate_stream",
           [](model::Sequential& s, std::shared_ptr<model::BatchQueue> queue, int64_t steps, nb::object callback,
              double report_seconds, nb::object batch_begin) {
             LoopCallbacks loop(callback, report_seconds, batch_begin);
             model::QueueSource source(std::move(queue), steps, model::QueueSource::Share::PerRank, loop.ctrl_c());
             model::Logs logs;
             {
               nb::gil_scoped_release release;
               logs = s.evaluate(source, loop.callbacks);
             }
             return loop.result(logs);
           },
           arg("queue"), arg("steps"), arg("callback").none() = nb::none(), arg("report_seconds") = 0.25,
           arg("batch_begin").none() = nb::none())
      .def("predict_stream",
           [](const model::Sequential& s, std::shared_ptr<model::BatchQueue> queue, int64_t steps,
              nb::object batch_begin, nb::object batch_end) {
             model::QueueSource source(std::move(queue), steps, model::QueueSource::Share::WholeBatch);
             model::PredictCallbacks callbacks{with_gil<int64_t>(batch_begin),
                                               with_gil<int64_t, const Tensor&>(batch_end)};
             nb::gil_scoped_release release;
             return s.predict(source, callbacks);
           },
           arg("queue"), arg("steps"), arg("batch_begin").none() = nb::none(), arg("batch_end").none() = nb::none())
      .def("evaluate",
           [](model::Sequential& s, const Tensor& x, const Tensor& y, int64_t batch_size,
              std::optional<Tensor> sample_weight, int64_t steps, nb::object callback,
              double report_seconds, nb::object batch_begin) {
             model::Batching batching{batch_size, {}, steps, 1};
             bool interrupted = false;
             model::BatchCallbacks callbacks{throttled(callback, report_seconds, interrupted),
                                             with_gil<int64_t>(batch_begin)};
             model::Logs logs;
             {
               nb::gil_scoped_release release;
               logs = s.evaluate(x, y, sample_weight.value_or(Tensor()), batching, callbacks);
             }
             nb::dict d = logs_dict(logs);
             d["interrupted"] = interrupted;
             return d;
           },
           arg("x"), arg("y"), arg("batch_size"), arg("sample_weight").none() = nb::none(),
           arg("steps") = 0, arg("callback").none() = nb::none(), arg("report_seconds") = 0.25,
           arg("batch_begin").none() = nb::none())
      .def("predict",
           [](const model::Sequential& s, const Tensor& x, int64_t batch_size, nb::object batch_begin,
              nb::object batch_end) {
             model::PredictCallbacks callbacks{with_gil<int64_t>(batch_begin),
                                               with_gil<int64_t, const Tensor&>(batch_end)};
             nb::gil_scoped_release release;
             return s.predict(x, batch_size, callbacks);
           },
           arg("x"), arg("batch_size"), arg("batch_begin").none() = nb::none(),
           arg("batch_end").none() = nb::none(),
           "batch_begin(batch) and batch_end(batch, outputs) run around each batch when given.");
}

}  // namespace steepest::bindings
