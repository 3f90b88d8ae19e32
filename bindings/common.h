// Conversions shared by the binding files: Python axis/shape arguments and tensors
// backed by Python-owned memory.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <optional>
#include <vector>

#include "steepest/ops.h"
#include "steepest/tensor.h"

namespace nb = nanobind;

namespace steepest::bindings {

void init_tensor(nb::module_& m);
void init_ops(nb::module_& m);
void init_everyday_ops(nb::module_& m);  // after init_tensor and init_ops
void init_autograd(nb::module_& m);
void init_optim(nb::module_& m);
void init_model(nb::module_& m);
void init_build_info(nb::module_& m);
void init_dist(nb::module_& m);

// None -> all axes; int -> one axis; sequence of ints -> those axes.
ops::Axes parse_axes(const nb::handle& axis);
// A shape from a tuple/list of ints (or a single int).
Dims parse_shape(const char* op, const nb::handle& shape);
std::pair<int64_t, int64_t> parse_pair(const char* op, const char* name, const nb::handle& value);

// Keeps a Python object alive for as long as a Storage borrows its memory; the
// release takes the GIL, so it is safe from threads that run without it.
std::shared_ptr<void> python_owner(nb::handle object);

// A zero-copy NumPy/DLPack view of a CPU tensor (owner: a copy of the handle); `as`
// relabels the elements (bfloat16 as uint16 for NumPy).
nb::ndarray<> tensor_view(const Tensor& t, std::optional<nb::dlpack::dtype> as = std::nullopt);
// A tensor borrowing the memory of any DLPack-capable array; `as` reinterprets elements
// of the same size.
Tensor tensor_from_ndarray(const nb::ndarray<>& array, nb::handle owner,
                           std::optional<DType> as = std::nullopt);

}  // namespace steepest::bindings
