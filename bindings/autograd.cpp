#include "common.h"

#include "steepest/autograd.h"

namespace steepest::bindings {

void init_autograd(nb::module_& m) {
  m.def("is_grad_enabled", &grad_enabled, "Whether operations record a graph for backward.");
  m.def("set_grad_enabled", &set_grad_enabled, nb::arg("enabled"),
        "Turns graph recording on or off for the current thread.");
  m.def("manual_seed", &manual_seed, nb::arg("seed"),
        "Seeds the global generator used by random ops called without seed=.");
  m.def("next_seed", &next_seed,
        "The next key of the global generator (what a random op without seed= uses).");
}

}  // namespace steepest::bindings
