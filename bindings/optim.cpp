// steepest._core.optim: the optimizers, learning-rate schedules and gradient clipping of
// st.optimizers / st.schedules. A learning rate may be a float, a schedule, or any
// Python callable step -> float; a step runs without the GIL and takes it back only to
// call such a callable. Defaults live in the Python front (python/steepest/optimizers.py).
#include <nanobind/stl/optional.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "common.h"
#include "steepest/kfac.h"
#include "steepest/optim.h"

namespace steepest::bindings {
namespace {

using OptionalTensors = std::vector<std::optional<Tensor>>;

std::vector<Tensor> defined_or_empty(const OptionalTensors& tensors) {
  std::vector<Tensor> out;
  for (const std::optional<Tensor>& t : tensors) out.push_back(t ? *t : Tensor());
  return out;
}

using optim::Schedule;

class PythonSchedule final : public Schedule {
 public:
  PythonSchedule(nb::object fn, std::string owner) : fn_(std::move(fn)), owner_(std::move(owner)) {}
  ~PythonSchedule() override {
    if (!Py_IsInitialized()) {
      fn_.release();  // the interpreter is gone: nothing left to decref
      return;
    }
    nb::gil_scoped_acquire gil;
    fn_.reset();
  }
  nb::handle callable() const { return fn_; }
  // Drops the callable when the garbage collector breaks a cycle through it (the
  // optimizer is unreachable then, so the schedule is never called again).
  void clear() const { fn_.reset(); }
  double operator()(int64_t step) const override {
    nb::gil_scoped_acquire gil;
    if (!fn_.is_valid()) fail<StateError>(owner_.c_str(), "the learning_rate schedule was cleared");
    nb::object value = fn_(step);
    double result = 0.0;
    if (!nb::try_cast(value, result))
      fail<TypeError>(owner_.c_str(), "the learning_rate schedule must return a float, got ",
                      nb::type_name(value.type()).c_str());
    return result;
  }

 private:
  mutable nb::object fn_;
  std::string owner_;
};

// Garbage-collector support for optimizers: a Python schedule often refers back to the
// optimizer (a lambda over module globals), a cycle only the collector can break.
const PythonSchedule* python_schedule(PyObject* self) {
  if (!nb::inst_ready(self)) return nullptr;
  return dynamic_cast<const PythonSchedule*>(
      nb::inst_ptr<optim::Optimizer>(self)->schedule().get());
}

int optimizer_traverse(PyObject* self, visitproc visit, void* arg) {
  if (const PythonSchedule* schedule = python_schedule(self)) Py_VISIT(schedule->callable().ptr());
  Py_VISIT(Py_TYPE(self));
  return 0;
}

int optimizer_clear(PyObject* self) {
  if (const PythonSchedule* schedule = python_schedule(self)) schedule->clear();
  return 0;
}

PyType_Slot optimizer_slots[] = {{Py_tp_traverse, reinterpret_cast<void*>(optimizer_traverse)},
                                 {Py_tp_clear, reinterpret_cast<void*>(optimizer_clear)},
                                 {0, nullptr}};

std::shared_ptr<const Schedule> to_schedule(const char* owner, nb::handle learning_rate) {
  if (learning_rate.is_none()) return nullptr;
  if (nb::isinstance<Schedule>(learning_rate))
    return nb::cast<std::shared_ptr<Schedule>>(learning_rate);
  if (PyCallable_Check(learning_rate.ptr()))
    return std::make_shared<PythonSchedule>(nb::borrow(learning_rate), owner);
  double value = 0.0;
  if (!PyBool_Check(learning_rate.ptr()) && nb::try_cast(learning_rate, value))
    return std::make_shared<optim::Constant>(value, owner);
  fail<TypeError>(owner,
                  "learning_rate must be a float or a schedule (a callable step -> float), got ",
                  nb::type_name(learning_rate.type()).c_str());
}

nb::object state_entry(const optim::ParamState& state) {
  if (state.empty()) return nb::none();
  nb::dict entry;
  entry["step"] = state.step;
  for (const auto& [name, tensor] : state.slots) entry[name.c_str()] = ops::clone(tensor);
  return std::move(entry);
}

optim::ParamState parse_state_entry(const char* owner, size_t index, nb::handle entry) {
  optim::ParamState state;
  if (entry.is_none()) return state;
  if (!nb::isinstance<nb::dict>(entry))
    fail<TypeError>(owner, "state entry ", index, " must be None or a dict, got ",
                    nb::type_name(entry.type()).c_str());
  for (auto [key, value] : nb::borrow<nb::dict>(entry)) {
    const std::string name = nb::cast<std::string>(key);
    if (name == "step") {
      state.step = nb::cast<int64_t>(value);
    } else if (nb::isinstance<Tensor>(value)) {
      state.slots.emplace_back(name, nb::cast<Tensor>(value));
    } else {
      fail<TypeError>(owner, "slot '", name, "' of state entry ", index, " must be a Tensor, got ",
                      nb::type_name(value.type()).c_str());
    }
  }
  return state;
}

// "WarmupCosine(peak_learning_rate=0.1, ...)" from the schedule's get_config().
nb::str schedule_repr(nb::handle self) {
  std::string out = nb::type_name(self.type()).c_str();
  out = out.substr(out.rfind('.') + 1) + "(";
  bool first = true;
  for (auto [key, value] : nb::borrow<nb::dict>(self.attr("get_config")())) {
    out += (first ? "" : ", ") + nb::cast<std::string>(nb::str(key)) + "=" +
           nb::cast<std::string>(nb::repr(value));
    first = false;
  }
  return nb::str((out + ")").c_str());
}

}  // namespace

void init_optim(nb::module_& parent) {
  nb::module_ m = parent.def_submodule("optim", "Optimizers, learning-rate schedules, clipping.");
  using nb::arg;
  using Release = nb::call_guard<nb::gil_scoped_release>;

  // ------------------------------------------------------------------------ schedules
  nb::class_<Schedule>(m, "Schedule", "A learning rate as a function of the step count.")
      .def("__call__", [](const Schedule& s, int64_t step) { return s(step); }, arg("step"),
           "The learning rate at `step` (an optimizer passes its `iterations`).")
      .def("__repr__", &schedule_repr);

  nb::class_<optim::Constant, Schedule>(m, "Constant", "The same learning rate at every step.")
      .def("__init__", [](optim::Constant* self, double lr) { new (self) optim::Constant(lr); },
           arg("learning_rate"))
      .def("get_config", [](const optim::Constant& s) {
        nb::dict d;
        d["learning_rate"] = s.learning_rate;
        return d;
      });

  nb::class_<optim::WarmupCosine, Schedule>(
      m, "WarmupCosine",
      "Linear warmup from 0 to peak_learning_rate over warmup_steps, then a half cosine down "
      "to final_learning_rate at total_steps (and final_learning_rate afterwards).")
      .def(nb::init<double, int64_t, int64_t, double>(), arg("peak_learning_rate"),
           arg("warmup_steps"), arg("total_steps"), arg("final_learning_rate") = 0.0)
      .def("get_config", [](const optim::WarmupCosine& s) {
        nb::dict d;
        d["peak_learning_rate"] = s.peak_learning_rate;
        d["warmup_steps"] = s.warmup_steps;
        d["total_steps"] = s.total_steps;
        d["final_learning_rate"] = s.final_learning_rate;
        return d;
      });

  nb::class_<optim::CosineDecay, Schedule>(
      m, "CosineDecay",
      "Keras CosineDecay: initial_learning_rate · ((1 − alpha)·½(1 + cos(π·min(step, "
      "decay_steps)/decay_steps)) + alpha).")
      .def(nb::init<double, int64_t, double>(), arg("initial_learning_rate"), arg("decay_steps"),
           arg("alpha") = 0.0)
      .def("get_config", [](const optim::CosineDecay& s) {
        nb::dict d;
        d["initial_learning_rate"] = s.initial_learning_rate;
        d["decay_steps"] = s.decay_steps;
        d["alpha"] = s.alpha;
        return d;
      });

  nb::class_<optim::StepDecay, Schedule>(
      m, "StepDecay", "initial_learning_rate · gamma^⌊step / step_size⌋ (PyTorch's StepLR).")
      .def(nb::init<double, int64_t, double>(), arg("initial_learning_rate"), arg("step_size"),
           arg("gamma"))
      .def("get_config", [](const optim::StepDecay& s) {
        nb::dict d;
        d["initial_learning_rate"] = s.initial_learning_rate;
        d["step_size"] = s.step_size;
        d["gamma"] = s.gamma;
        return d;
      });

  // ----------------------------------------------------------------------- optimizers
  nb::class_<optim::Optimizer>(m, "Optimizer", nb::type_slots(optimizer_slots),
                              "The C++ optimizer behind st.optimizers.")
      .def("step",
           [](optim::Optimizer& o, const std::vector<Tensor>& params, bool skip) {
             if (!skip) o.step(params);
           },
           arg("params"), arg("skip") = false, Release(),
           "Updates every param that has a grad, in place; state is matched by position. "
           "skip=True does nothing at all: the step does not count (iterations and the schedule "
           "do not advance), as for a step whose gradients overflowed.")
      .def("exclude_from_weight_decay", &optim::Optimizer::exclude_from_weight_decay,
           arg("var_list"), arg("var_names"),
           "No weight decay for the tensors of var_list and the parameters whose name contains "
           "one of var_names (replaces earlier exclusions).")
      .def_prop_ro("excluded_names", &optim::Optimizer::excluded_names)
      .def_prop_ro("name", &optim::Optimizer::name)
      .def_prop_ro("iterations", &optim::Optimizer::iterations)
      .def_prop_ro("learning_rate", &optim::Optimizer::learning_rate,
                   "The learning rate the next step uses.")
      .def(
          "set_learning_rate",
          [](optim::Optimizer& o, nb::handle lr) {
            o.set_learning_rate(to_schedule(o.name().c_str(), lr));
          },
          arg("learning_rate").none(), "A new float or schedule; state and iterations are kept.")
      .def("state_size_bytes", &optim::Optimizer::state_size_bytes, arg("params"))
      .def(
          "state",
          [](const optim::Optimizer& o) {
            nb::list out;
            for (const optim::ParamState& s : o.state()) out.append(state_entry(s));
            return out;
          },
          "Per-parameter state (None or {'step': int, slot: Tensor copy}) by position.")
      .def(
          "load_state",
          [](optim::Optimizer& o, const nb::list& state, int64_t iterations) {
            std::vector<optim::ParamState> parsed;
            for (size_t i = 0; i < state.size(); ++i)
              parsed.push_back(parse_state_entry(o.name().c_str(), i, state[i]));
            o.load_state(std::move(parsed), iterations);
          },
          arg("state"), arg("iterations"))
      .def_prop_ro("wants_curvature", &optim::Optimizer::wants_curvature,
                   "Whether the next step wants a Hessian-diagonal estimate (Sophia).")
      .def(
          "update_curvature",
          [](optim::Optimizer& o, const std::vector<Tensor>& params, const OptionalTensors& estimates) {
            o.update_curvature(params, defined_or_empty(estimates));
          },
          arg("params"), arg("estimates"), Release(),
          "Hands the optimizer a Hessian-diagonal estimate per parameter (None: none).");

  nb::class_<optim::SGD, optim::Optimizer>(m, "SGD", nb::type_slots(optimizer_slots)).def(
      "__init__",
      [](optim::SGD* self, nb::handle lr, double momentum, bool nesterov,
         std::optional<double> dampening, double weight_decay, std::optional<double> clipnorm) {
        new (self) optim::SGD(to_schedule("SGD", lr), momentum, nesterov, dampening,
                              weight_decay, clipnorm);
      },
      nb::kw_only(), arg("learning_rate"), arg("momentum"), arg("nesterov"),
      arg("dampening").none(), arg("weight_decay"), arg("clipnorm").none());

  nb::class_<optim::RMSprop, optim::Optimizer>(m, "RMSprop", nb::type_slots(optimizer_slots))
      .def(
          "__init__",
          [](optim::RMSprop* self, nb::handle lr, double rho, double epsilon, double weight_decay,
             std::optional<double> clipnorm) {
            new (self) optim::RMSprop(to_schedule("RMSprop", lr), rho, epsilon, weight_decay,
                                      clipnorm);
          },
          nb::kw_only(), arg("learning_rate"), arg("rho"), arg("epsilon"), arg("weight_decay"),
          arg("clipnorm").none());

  nb::class_<optim::Adagrad, optim::Optimizer>(m, "Adagrad", nb::type_slots(optimizer_slots))
      .def(
          "__init__",
          [](optim::Adagrad* self, nb::handle lr, double initial_accumulator_value, double epsilon,
             double weight_decay, std::optional<double> clipnorm) {
            new (self) optim::Adagrad(to_schedule("Adagrad", lr), initial_accumulator_value,
                                      epsilon, weight_decay, clipnorm);
          },
          nb::kw_only(), arg("learning_rate"), arg("initial_accumulator_value"), arg("epsilon"),
          arg("weight_decay"), arg("clipnorm").none());

  nb::class_<optim::Lion, optim::Optimizer>(m, "Lion", nb::type_slots(optimizer_slots))
      .def(
          "__init__",
          [](optim::Lion* self, nb::handle lr, double beta_1, double beta_2, double weight_decay,
             std::optional<double> clipnorm) {
            new (self) optim::Lion(to_schedule("Lion", lr), beta_1, beta_2, weight_decay, clipnorm);
          },
          nb::kw_only(), arg("learning_rate"), arg("beta_1"), arg("beta_2"), arg("weight_decay"),
          arg("clipnorm").none());

  nb::class_<optim::Muon, optim::Optimizer>(m, "Muon", nb::type_slots(optimizer_slots))
      .def(
          "__init__",
          [](optim::Muon* self, nb::handle lr, double momentum, bool nesterov, int64_t ns_steps,
             double epsilon, double adam_beta_1, double adam_beta_2, double adam_lr_ratio,
             double weight_decay, std::optional<double> clipnorm) {
            new (self) optim::Muon(to_schedule("Muon", lr), momentum, nesterov, ns_steps, epsilon,
                                   adam_beta_1, adam_beta_2, adam_lr_ratio, weight_decay, clipnorm);
          },
          nb::kw_only(), arg("learning_rate"), arg("momentum"), arg("nesterov"), arg("ns_steps"),
          arg("epsilon"), arg("adam_beta_1"), arg("adam_beta_2"), arg("adam_lr_ratio"),
          arg("weight_decay"), arg("clipnorm").none());

  nb::class_<optim::Sophia, optim::Optimizer>(m, "Sophia", nb::type_slots(optimizer_slots))
      .def(
          "__init__",
          [](optim::Sophia* self, nb::handle lr, double beta_1, double beta_2, double gamma,
             double epsilon, int64_t update_period, double weight_decay,
             std::optional<double> clipnorm) {
            new (self) optim::Sophia(to_schedule("Sophia", lr), beta_1, beta_2, gamma, epsilon,
                                     update_period, weight_decay, clipnorm);
          },
          nb::kw_only(), arg("learning_rate"), arg("beta_1"), arg("beta_2"), arg("gamma"),
          arg("epsilon"), arg("update_period"), arg("weight_decay"), arg("clipnorm").none());

  nb::class_<optim::KFAC, optim::Optimizer>(m, "KFAC", nb::type_slots(optimizer_slots))
      .def(
          "__init__",
          [](optim::KFAC* self, nb::handle lr, double damping, double momentum, double weight_decay,
             double stats_decay, int64_t inverse_update_interval, std::optional<double> kl_clip,
             std::optional<double> clipnorm) {
            new (self) optim::KFAC(to_schedule("KFAC", lr), damping, momentum, weight_decay,
                                   stats_decay, inverse_update_interval, kl_clip, clipnorm);
          },
          nb::kw_only(), arg("learning_rate"), arg("damping"), arg("momentum"), arg("weight_decay"),
          arg("stats_decay"), arg("inverse_update_interval"), arg("kl_clip").none(),
          arg("clipnorm").none())
      .def("preconditioned", [](const optim::KFAC& self, const Tensor& param) {
        return self.layout_of(param) != optim::KfacLayout::None;
      }, arg("param"), "Whether `param` is a kernel K-FAC preconditions (once a fit has begun).");

#define STEEPEST_ADAM_FAMILY(Class)                                                           \
  nb::class_<optim::Class, optim::Optimizer>(m, #Class, nb::type_slots(optimizer_slots))      \
      .def(                                                                                   \
          "__init__",                                                                         \
          [](optim::Class* self, nb::handle lr, double beta_1, double beta_2, double epsilon,  \
             double weight_decay, std::optional<double> clipnorm) {                           \
            new (self) optim::Class(to_schedule(#Class, lr), beta_1, beta_2, epsilon,         \
                                    weight_decay, clipnorm);                                  \
          },                                                                                  \
          nb::kw_only(), arg("learning_rate"), arg("beta_1"), arg("beta_2"), arg("epsilon"),  \
          arg("weight_decay"), arg("clipnorm").none());
  STEEPEST_ADAM_FAMILY(Adam)
  STEEPEST_ADAM_FAMILY(AdamW)
  STEEPEST_ADAM_FAMILY(Lamb)
#undef STEEPEST_ADAM_FAMILY

  nb::class_<optim::Adafactor, optim::Optimizer>(m, "Adafactor", nb::type_slots(optimizer_slots))
      .def(
          "__init__",
          [](optim::Adafactor* self, nb::handle lr, double beta_2_decay, double epsilon_1,
             double epsilon_2, double clip_threshold, bool relative_step, double weight_decay,
             std::optional<double> clipnorm) {
            new (self) optim::Adafactor(to_schedule("Adafactor", lr), beta_2_decay, epsilon_1,
                                        epsilon_2, clip_threshold, relative_step, weight_decay,
                                        clipnorm);
          },
          nb::kw_only(), arg("learning_rate").none(), arg("beta_2_decay"), arg("epsilon_1"),
          arg("epsilon_2"), arg("clip_threshold"), arg("relative_step"), arg("weight_decay"),
          arg("clipnorm").none());

  // --------------------------------------------------------------------- loss scaling
  nb::class_<optim::LossScaler>(m, "LossScaler",
                                "Dynamic loss scaling with PyTorch GradScaler's state machine.")
      .def(nb::init<double, double, double, int64_t>(), nb::kw_only(), arg("initial_scale"),
           arg("growth_factor"), arg("backoff_factor"), arg("growth_interval"))
      .def("scale", &optim::LossScaler::scale, arg("loss"), "loss · scale, in float32.")
      .def("unscale", [](optim::LossScaler& s, const std::vector<Tensor>& params) { return s.unscale(params); },
           arg("params"), Release(),
           "Divides the grads by the scale in place; returns whether all are finite.")
      .def("step", [](optim::LossScaler& s, optim::Optimizer& optimizer, const std::vector<Tensor>& params) {
             return s.step(optimizer, params);
           }, arg("optimizer"), arg("params"), Release(),
           "Unscales if needed, then steps the optimizer unless a grad is inf/NaN; returns "
           "whether it stepped.")
      .def("update", &optim::LossScaler::update, "Backs off after a skipped step, grows after "
                                                 "growth_interval finite ones.")
      .def("get_scale", &optim::LossScaler::get_scale)
      .def_prop_ro("growth_tracker", &optim::LossScaler::growth_tracker)
      .def_prop_ro("growth_factor", &optim::LossScaler::growth_factor)
      .def_prop_ro("backoff_factor", &optim::LossScaler::backoff_factor)
      .def_prop_ro("growth_interval", &optim::LossScaler::growth_interval)
      .def("load_state", &optim::LossScaler::load_state, arg("scale"), arg("growth_tracker"));

  // ------------------------------------------------------------------------- clipping
  m.def(
      "hutchinson_hessian_diagonal",
      [](const std::vector<Tensor>& params, const OptionalTensors& grads) {
        OptionalTensors out;
        for (Tensor& e : optim::hutchinson_hessian_diagonal(params, defined_or_empty(grads)))
          out.push_back(e.defined() ? std::optional<Tensor>(e) : std::nullopt);
        return out;
      },
      arg("params"), arg("grads"),
      "u ⊙ (H·u) per parameter, u Rademacher, from gradients recorded with create_graph.");
  m.def("clip_grad_norm", &optim::clip_grad_norm, arg("params"), arg("max_norm"), Release(),
        "Scales every grad in place by max_norm / (norm + 1e-6) when the global norm exceeds "
        "max_norm; returns the norm before clipping.");
}

}  // namespace steepest::bindings
