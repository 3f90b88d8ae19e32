// steepest._core.dist: the job's communicator for st.distributed. Collectives run
// without the GIL, so other Python threads go on while a rank waits for the others.
#include <nanobind/stl/string.h>

#include "common.h"
#include "steepest/dist.h"

namespace steepest::bindings {
namespace {

dist::Communicator& joined(const char* op) {
  dist::Communicator* comm = dist::world();
  if (!comm)
    throw StateError(cat("[", op, "] st.distributed is not initialized; call st.distributed.init() first"));
  return *comm;
}

}  // namespace

void init_dist(nb::module_& parent) {
  nb::module_ m = parent.def_submodule("dist", "The communicator of a data-parallel job.");
  using nb::arg;
  using Release = nb::call_guard<nb::gil_scoped_release>;

  m.def("init", &dist::init, arg("backend"), Release(),
        "Joins the job: 'mpi', or '' for MPI under a launcher and a single process otherwise.");
  m.def("is_initialized", &dist::is_initialized);
  m.def("finalize", &dist::finalize, Release());
  m.def("launcher_world_size", &dist::launcher_world_size,
        "How many processes the launcher started (1 without one).");
  m.def("rank", []() { return joined("rank").rank(); });
  m.def("world_size", []() { return joined("world_size").world_size(); });
  m.def("local_rank", []() { return joined("local_rank").local_rank(); });
  m.def("backend", []() { return std::string(joined("backend").backend()); });
  m.def(
      "all_reduce",
      [](Tensor& t, const std::string& op) {
        dist::ReduceOp reduce = dist::reduce_op_from_name(op);
        nb::gil_scoped_release release;
        joined("all_reduce").all_reduce(t, reduce);
      },
      arg("t"), arg("op"));
  m.def("broadcast", [](Tensor& t, int root) { joined("broadcast").broadcast(t, root); }, arg("t"),
        arg("root"), Release());
  m.def("all_gather", [](const Tensor& t) { return joined("all_gather").all_gather(t); }, arg("t"),
        Release());
  m.def(
      "reduce_scatter",
      [](const Tensor& t, const std::string& op) {
        dist::ReduceOp reduce = dist::reduce_op_from_name(op);
        nb::gil_scoped_release release;
        return joined("reduce_scatter").reduce_scatter(t, reduce);
      },
      arg("t"), arg("op"));
  m.def("barrier", []() { joined("barrier").barrier(); }, Release());
  // Host-side exchanges for the Python front (a shuffle seed, stop decisions), over the
  // control transport whatever device the backend moves tensors on.
  m.def(
      "broadcast_bytes",
      [](nb::bytes data, int root) {
        dist::Transport& control = joined("broadcast").control();
        std::string buffer(data.c_str(), data.size());
        {
          nb::gil_scoped_release release;
          int64_t size = static_cast<int64_t>(buffer.size());
          control.broadcast(&size, sizeof size, root);
          buffer.resize(static_cast<size_t>(size));
          control.broadcast(buffer.data(), size, root);
        }
        return nb::bytes(buffer.data(), buffer.size());
      },
      arg("data"), arg("root"), "Rank root's bytes on every rank.");
  m.def(
      "any_rank",
      [](bool flag) {
        int32_t value = flag ? 1 : 0;
        nb::gil_scoped_release release;
        joined("all_reduce").control().all_reduce(&value, 1, DType::Int32, dist::ReduceOp::Max);
        return value != 0;
      },
      arg("flag"), "True on every rank when flag is true on any.");
  m.def("abort", [](int code) { joined("abort").abort(code); }, arg("code"), Release(),
        "Ends every process of the job with `code`.");
}

}  // namespace steepest::bindings
