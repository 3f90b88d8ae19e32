// The extension module steepest._core: one init_<area>() per binding file, and the
// translation of steepest's C++ exceptions into Python's.
#include "common.h"

#include "steepest/common.h"

NB_MODULE(_core, m) {
  m.doc() = "steepest's C++ engine: tensors, autograd and operators";
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const steepest::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const steepest::StateError& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    } catch (const steepest::MemoryError& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    }
  });
  steepest::bindings::init_tensor(m);
  steepest::bindings::init_ops(m);
  steepest::bindings::init_everyday_ops(m);
  steepest::bindings::init_autograd(m);
  steepest::bindings::init_optim(m);
  steepest::bindings::init_model(m);
  steepest::bindings::init_build_info(m);
  steepest::bindings::init_dist(m);
}
