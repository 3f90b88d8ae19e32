#include "common.h"

#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <tuple>

#include "steepest/autograd.h"
#include "steepest/profiler.h"

namespace steepest::bindings {

void init_autograd(nb::module_& m) {
  m.def("is_grad_enabled", &grad_enabled, "Whether operations record a graph for backward.");
  m.def("set_grad_enabled", &set_grad_enabled, nb::arg("enabled"),
        "Turns graph recording on or off for the current thread.");
  m.def(
      "grad",
      [](const std::vector<Tensor>& outputs, const std::vector<std::optional<Tensor>>& grad_outputs,
         const std::vector<Tensor>& inputs, bool retain_graph, bool create_graph,
         bool allow_unused) {
        std::vector<Tensor> seeds;
        for (const auto& g : grad_outputs) seeds.push_back(g ? *g : Tensor());
        std::vector<Tensor> grads;
        {
          nb::gil_scoped_release release;
          BackwardOptions options;
          options.retain_graph = retain_graph;
          options.create_graph = create_graph;
          options.allow_unused = allow_unused;
          grads = grad(outputs, seeds, inputs, options);
        }
        std::vector<std::optional<Tensor>> result;
        for (Tensor& g : grads) result.push_back(g.defined() ? std::optional<Tensor>(g) : std::nullopt);
        return result;
      },
      nb::arg("outputs"), nb::arg("grad_outputs"), nb::arg("inputs"), nb::arg("retain_graph"),
      nb::arg("create_graph"), nb::arg("allow_unused"),
      "The engine behind st.autograd.grad (which normalises the arguments).");
  m.def("manual_seed", &manual_seed, nb::arg("seed"),
        "Seeds the global generator used by random ops called without seed=.");
  m.def("next_seed", &next_seed,
        "The next key of the global generator (what a random op without seed= uses).");
  m.def("_profiler_start", &profiler::start,
        "Starts summing per-op times (clearing the previous session's); st.profiler's engine.");
  m.def("_profiler_stop", &profiler::stop, "Stops summing per-op times.");
  m.def(
      "_profiler_stats",
      [] {
        std::vector<std::tuple<std::string, bool, int64_t, double, double>> rows;
        for (const profiler::OpStat& s : profiler::stats())
          rows.emplace_back(s.name, s.phase == profiler::Phase::Backward, s.calls,
                            s.total_seconds, s.self_seconds);
        return rows;
      },
      "(name, in_backward, calls, total_seconds, self_seconds) per op, largest self time "
      "first.");
}

}  // namespace steepest::bindings
