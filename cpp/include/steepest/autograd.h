// Define-by-run reverse-mode autograd. Every differentiable op result points at a Node;
// Node::next holds the nodes of its inputs (null where an input needs no gradient).
// backward() walks the graph in topological order and releases saved tensors as it
// goes, so a second backward through the same graph is detected and refused.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "steepest/tensor.h"

namespace steepest {

// Drops a reference to a graph node. The last reference to a node frees it, and it frees
// the nodes only it held: a chain of 200,000 ops would overflow the C stack if each
// destructor freed the next one itself, so nodes freed inside another's destruction wait
// in a per-thread queue that the outermost call drains.
void release_graph(std::shared_ptr<Node>&& node);

// Calls back with each tensor a node saved for its backward.
struct SavedVisitor {
  virtual void operator()(Tensor& saved) const = 0;

 protected:
  ~SavedVisitor() = default;
};

class Node : public std::enable_shared_from_this<Node> {
 public:
  virtual ~Node();
  // grad_inputs has one slot per entry of `next`; leave a slot undefined for "no gradient".
  virtual void apply(const Tensor& grad_output, std::vector<Tensor>& grad_inputs) = 0;
  virtual const char* name() const = 0;
  // Whether apply() records a differentiable graph when grad mode is on (the engine turns
  // it on only for create_graph=True): its formula is made of differentiable ops of g and
  // of saved tensors that are connected to the forward graph. A node that answers false
  // makes create_graph through it fail with its name, never a silently wrong derivative.
  virtual bool supports_create_graph() const { return false; }
  // Every node that keeps tensors for its backward lists them here, once: the engine
  // drops them after backward and checks their versions before it.
  virtual void visit_saved(const SavedVisitor& visit) {}
  // Drops saved tensors after backward (the graph cannot be replayed afterwards).
  virtual void release_saved();

  // Remembers the version of every saved tensor's storage (attach calls it).
  void record_saved_versions();
  // Fails when a saved tensor was written in place after it was saved: its backward
  // would silently use the new values.
  void check_saved_versions() const;

  // Under create_graph, a saved *output* of this node rejoined to the graph: an alias of
  // `output` (a view of the data with the output's shape) whose grad_fn is this node
  // (what torch's SavedVariable does for outputs; storing the output with its grad_fn
  // would be a reference cycle).
  Tensor output_in_graph(const Tensor& output);

  // In-place delivery of a leaf's gradient. While apply() runs in a first-order backward,
  // grad_destination(i) may be the existing .grad of the leaf behind next[i] (run_engine
  // says when it is offered; otherwise it is undefined). A node may add its gradient for
  // input i straight into it (a GEMM with beta = 1) instead of returning a tensor that
  // AccumulateGrad would add: it then calls delivered_in_place(i) and leaves out[i]
  // undefined, which saves the temporary and a pass over it.
  Tensor grad_destination(size_t i) const;
  void delivered_in_place(size_t i);
  // The engine's side: offer one destination per input (undefined where none) for the
  // next apply(), then take back which of them were written.
  void offer_grad_destinations(std::vector<Tensor> destinations);
  std::vector<bool> take_delivered_in_place();

  std::vector<std::shared_ptr<Node>> next;
  // Shapes of the inputs behind `next`: the engine checks every gradient against them,
  // so a backward formula that returns a wrongly shaped gradient fails loudly.
  std::vector<Dims> input_shapes;
  bool released = false;

 private:
  void forget_saved_versions();
  struct SavedVersion {
    // Owned: ~Node runs after the derived node has dropped its saved tensors.
    std::shared_ptr<Storage> storage;
    uint64_t version;
  };
  std::vector<SavedVersion> saved_versions_;
  std::vector<Tensor> grad_destinations_;
  std::vector<bool> delivered_in_place_;
};

// The sink for gradients of a leaf: adds into leaf.grad. It runs once all its edges have
// delivered, also when every contribution was written into leaf.grad in place
// (Node::grad_destination) and none is left to add, so on_gradient_ready still fires.
class AccumulateGrad final : public Node {
 public:
  explicit AccumulateGrad(std::shared_ptr<TensorImpl> leaf) : leaf_(std::move(leaf)) {}
  void apply(const Tensor& grad_output, std::vector<Tensor>& grad_inputs) override;
  const char* name() const override { return "AccumulateGrad"; }
  bool supports_create_graph() const override { return true; }
  Tensor leaf() const { return Tensor(leaf_); }

 private:
  std::shared_ptr<TensorImpl> leaf_;
};

// Gradient mode (thread-local, like PyTorch): under NoGradGuard no graph is recorded.
bool grad_enabled();
void set_grad_enabled(bool enabled);

class NoGradGuard {
 public:
  NoGradGuard() : previous_(grad_enabled()) { set_grad_enabled(false); }
  ~NoGradGuard() { set_grad_enabled(previous_); }
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};

// The node that receives the gradient flowing into `t` (its grad_fn, or the accumulator
// of a leaf that requires grad), or null when no gradient is wanted.
std::shared_ptr<Node> gradient_edge(const Tensor& t);

// True when grad mode is on and any input requires grad.
bool any_requires_grad(std::initializer_list<const Tensor*> inputs);

// Makes `node` the grad_fn of `output`, with edges to `inputs`.
void attach(Tensor& output, std::shared_ptr<Node> node,
            std::initializer_list<const Tensor*> inputs);
// The same for a list of inputs whose length is known only at run time (cat, stack).
void attach(Tensor& output, std::shared_ptr<Node> node, const std::vector<const Tensor*>& inputs);

// Called with a leaf once backward has accumulated all of its gradient (data-parallel
// training starts the leaf's all-reduce there, while backward goes on).
using GradientReadyHook = std::function<void(const Tensor& leaf)>;

// How a backward pass runs (torch's names).
struct BackwardOptions {
  // Keep the saved tensors, so that the graph can be walked again.
  bool retain_graph = false;
  // Run the backward formulas with grad mode on, so the gradients carry a graph of their
  // own (higher-order derivatives).
  bool create_graph = false;
  // grad only: an input the outputs do not depend on gets an undefined tensor instead
  // of an error.
  bool allow_unused = false;
  // backward only: called as each leaf's gradient is complete.
  GradientReadyHook on_gradient_ready;
};

// Runs backpropagation from `root`, accumulating into the leaves' .grad. grad may be
// undefined only for a one-element root.
void backward(const Tensor& root, const Tensor& grad, const BackwardOptions& options = {});

// d(Σ outputs·grad_outputs)/d(inputs), returned instead of accumulated into .grad (torch's
// autograd.grad). An undefined grad_outputs entry stands for ones of a one-element output.
std::vector<Tensor> grad(const std::vector<Tensor>& outputs,
                         const std::vector<Tensor>& grad_outputs,
                         const std::vector<Tensor>& inputs, const BackwardOptions& options);

}  // namespace steepest
