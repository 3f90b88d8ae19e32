// The backward engine: counts, for every node reachable from the root, how many
// gradients it will receive, then runs nodes once all their gradients have arrived
// (Kahn's algorithm), summing gradients that meet at the same node.
#include <mutex>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "steepest/autograd.h"
#include "steepest/ops.h"
#include "steepest/profiler.h"

namespace steepest {
namespace {
thread_local bool g_grad_enabled = true;
}

namespace {
thread_local std::vector<std::shared_ptr<Node>>* g_release_queue = nullptr;
}  // namespace

void release_graph(std::shared_ptr<Node>&& node) {
  if (!node) return;
  if (g_release_queue) {
    g_release_queue->push_back(std::move(node));
    return;
  }
  std::vector<std::shared_ptr<Node>> queue;
  g_release_queue = &queue;
  queue.push_back(std::move(node));
  while (!queue.empty()) {
    std::shared_ptr<Node> next = std::move(queue.back());
    queue.pop_back();
    next.reset();  // may queue the nodes it held
  }
  g_release_queue = nullptr;
}

Node::~Node() {
  forget_saved_versions();
  for (auto& edge : next) release_graph(std::move(edge));
}

namespace {
struct ForEachSaved final : SavedVisitor {
  explicit ForEachSaved(std::function<void(Tensor&)> f) : f(std::move(f)) {}
  void operator()(Tensor& saved) const override { f(saved); }
  std::function<void(Tensor&)> f;
};
}  // namespace

void Node::record_saved_versions() {
  visit_saved(ForEachSaved([this](Tensor& saved) {
    if (!saved.defined()) return;
    const std::shared_ptr<Storage>& storage = saved.storage();
    storage->add_saver(1);
    saved_versions_.push_back({storage, storage->version()});
  }));
}

void Node::check_saved_versions() const {
  for (const SavedVersion& saved : saved_versions_)
    if (saved.storage->version() != saved.version)
      fail<StateError>("backward", "a tensor that ", name(),
                       " saved for the backward pass was modified in place after it was saved "
                       "(its version went from ", saved.version, " to ",
                       saved.storage->version(),
                       "); compute from a copy (t.clone()) or write it before the forward pass");
}

void Node::forget_saved_versions() {
  for (const SavedVersion& saved : saved_versions_) saved.storage->add_saver(-1);
  saved_versions_.clear();
}

void Node::release_saved() {
  forget_saved_versions();
  visit_saved(ForEachSaved([](Tensor& saved) { saved = Tensor(); }));
}

TensorImpl::~TensorImpl() { release_graph(std::move(grad_fn)); }

bool grad_enabled() { return g_grad_enabled; }
void set_grad_enabled(bool enabled) { g_grad_enabled = enabled; }

bool any_requires_grad(std::initializer_list<const Tensor*> inputs) {
  if (!g_grad_enabled) return false;
  for (const Tensor* t : inputs)
    if (t != nullptr && t->defined() && t->requires_grad()) return true;
  return false;
}

std::shared_ptr<Node> gradient_edge(const Tensor& t) {
  if (!t.defined() || !t.requires_grad()) return nullptr;
  if (t.grad_fn()) return t.grad_fn();
  TensorImpl* impl = t.impl();
  if (auto existing = impl->grad_accumulator.lock()) return existing;
  auto accumulator = std::make_shared<AccumulateGrad>(t.impl_ptr());
  impl->grad_accumulator = accumulator;
  return accumulator;
}

namespace {
template <class Inputs>
void attach_inputs(Tensor& output, std::shared_ptr<Node> node, const Inputs& inputs) {
  node->next.reserve(inputs.size());
  node->input_shapes.reserve(inputs.size());
  for (const Tensor* t : inputs) {
    node->next.push_back(t ? gradient_edge(*t) : nullptr);
    node->input_shapes.push_back(t && t->defined() ? t->shape() : Dims());
  }
  node->record_saved_versions();
  output.impl()->requires_grad = true;
  output.impl()->grad_fn = std::move(node);
}
}  // namespace

void attach(Tensor& output, std::shared_ptr<Node> node,
            std::initializer_list<const Tensor*> inputs) {
  attach_inputs(output, std::move(node), inputs);
}

void attach(Tensor& output, std::shared_ptr<Node> node, const std::vector<const Tensor*>& inputs) {
  attach_inputs(output, std::move(node), inputs);
}

Tensor Node::output_in_graph(const Tensor& output) {
  Tensor alias = output.detach();
  alias.impl()->requires_grad = true;
  alias.impl()->grad_fn = shared_from_this();
  return alias;
}

Tensor Node::grad_destination(size_t i) const {
  return i < grad_destinations_.size() ? grad_destinations_[i] : Tensor();
}

void Node::delivered_in_place(size_t i) {
  if (!grad_destination(i).defined())
    fail<StateError>("backward", name(), " wrote the gradient of input ", i,
                     " in place, but no destination was offered for it");
  delivered_in_place_[i] = true;
  grad_destinations_[i].storage()->bump_version();  // as AccumulateGrad's in-place add does
}

void Node::offer_grad_destinations(std::vector<Tensor> destinations) {
  grad_destinations_ = std::move(destinations);
  delivered_in_place_.assign(grad_destinations_.size(), false);
}

std::vector<bool> Node::take_delivered_in_place() {
  grad_destinations_ = {};
  return std::exchange(delivered_in_place_, {});
}

void AccumulateGrad::apply(const Tensor& grad_output, std::vector<Tensor>&) {
  TensorImpl* leaf = leaf_.get();
  if (grad_enabled()) {
    // create_graph: the gradient keeps its graph, so accumulation is out of place, and the
    // first gradient is stored as a (recorded) clone since it may alias another tensor.
    Tensor incoming = grad_output;
    if (incoming.shape() != leaf->shape) incoming = ops::sum_to(incoming, leaf->shape);
    leaf->grad = leaf->grad ? ops::add(Tensor(leaf->grad), incoming).impl_ptr()
                            : ops::clone(incoming).impl_ptr();
    return;
  }
  Tensor incoming = grad_output;
  if (incoming.shape() != leaf->shape) incoming = ops::sum_to(incoming, leaf->shape);
  if (!leaf->grad) {
    // The incoming gradient may alias another tensor (add passes G through): own a copy
    // unless nobody else can see it.
    bool exclusive = incoming.impl_ptr().use_count() <= 2 &&
                     incoming.storage().use_count() == 1 && incoming.is_contiguous() &&
                     incoming.offset() == 0;
    leaf->grad = exclusive ? incoming.detach().impl_ptr() : ops::clone(incoming).impl_ptr();
    return;
  }
  Tensor current(leaf->grad);
  if (current.requires_grad()) {
    // A gradient that a create_graph backward left with a graph is not written in place.
    leaf->grad = ops::add(current.detach(), incoming).impl_ptr();
    return;
  }
  // In place: the accumulated gradient is owned by the leaf.
  STEEPEST_KERNEL(current.device(), binary)(BinaryOp::Add, current, incoming, current, 0.0);
  current.storage()->bump_version();
}

namespace {
// One backward at a time in the process: two threads walking one graph would both run its
// nodes and free its saved tensors under each other. With the lock the later caller finds
// the graph released and gets the usual error. Recursive: a node's backward may run a
// backward of its own (attention's recomputation, checkpointing).
std::recursive_mutex g_backward_mutex;

class GradModeGuard {
 public:
  explicit GradModeGuard(bool enabled) : previous_(grad_enabled()) { set_grad_enabled(enabled); }
  ~GradModeGuard() { set_grad_enabled(previous_); }
  GradModeGuard(const GradModeGuard&) = delete;
  GradModeGuard& operator=(const GradModeGuard&) = delete;

 private:
  bool previous_;
};

// The gradient that starts backward at `root`: `grad`, or ones for a one-element root.
Tensor seed_for(const char* op, const Tensor& root, const Tensor& grad) {
  if (!grad.defined()) {
    if (root.numel() != 1)
      fail<StateError>(op, "grad can be implicitly created only for scalar outputs; "
                           "pass grad= of shape ",
                       root.shape());
    return Tensor::full(root.shape(), 1.0, root.dtype(), root.device());
  }
  if (grad.shape() != root.shape() || grad.dtype() != root.dtype())
    fail(op, "grad of shape ", grad.shape(), " and dtype ", dtype_name(grad.dtype()),
         " does not match the output of shape ", root.shape(), " and dtype ",
         dtype_name(root.dtype()));
  return grad;
}

struct Root {
  std::shared_ptr<Node> node;
  Tensor seed;
};

// The .grad that `node` may add its gradient for input i into (Node::grad_destination), or
// undefined. The edge must lead to a leaf's AccumulateGrad, which would only add the
// gradient into that .grad (no create_graph, no autograd.grad). The grad must be a plain tensor (no graph of its own) with the leaf's
// shape, dtype and device, contiguous (data-parallel buckets hand out offset views) so that
// kernels can write it as a dense block, and read by nothing that could see the write
// early: no live node saved its memory and it is not the node's incoming gradient.
Tensor in_place_destination(const Node& node, size_t i, const Tensor& grad_output) {
  const auto* accumulator = dynamic_cast<const AccumulateGrad*>(node.next[i].get());
  if (!accumulator) return Tensor();
  const Tensor leaf = accumulator->leaf();
  Tensor grad = leaf.grad();
  bool usable = grad.defined() && !grad.requires_grad() && grad.shape() == leaf.shape() &&
                grad.dtype() == leaf.dtype() && grad.device() == leaf.device() &&
                grad.is_contiguous() && !grad.storage()->saved_for_backward() &&
                grad.storage() != grad_output.storage();
  return usable ? grad : Tensor();
}

// Offers `node` the destinations in_place_destination finds, if any; returns whether
// it did. Most nodes have none, and then nothing is allocated.
bool offer_in_place(Node& node, const Tensor& grad_output) {
  std::vector<Tensor> destinations;
  for (size_t i = 0; i < node.next.size(); ++i) {
    Tensor destination = in_place_destination(node, i, grad_output);
    if (!destination.defined()) continue;
    destinations.resize(node.next.size());
    destinations[i] = std::move(destination);
  }
  if (destinations.empty()) return false;
  node.offer_grad_destinations(std::move(destinations));
  return true;
}

// Runs the graph below `roots`. With `targets` (torch's autograd.grad) only the nodes that
// lead to a target run, no leaf accumulates, and the total gradient reaching each target
// node is stored in `captured` instead.
void run_engine(const std::vector<Root>& roots, bool retain_graph, bool create_graph,
                const GradientReadyHook& on_gradient_ready,
                const std::unordered_map<Node*, Tensor>* targets,
                std::unordered_map<Node*, Tensor>* captured) {
  // Pass 1: every reachable node, checked, with its number of incoming edges.
  std::unordered_map<Node*, int> dependencies;
  std::vector<Node*> stack;
  for (const Root& root : roots)
    if (dependencies.emplace(root.node.get(), 0).second) stack.push_back(root.node.get());
  while (!stack.empty()) {
    Node* node = stack.back();
    stack.pop_back();
    if (node->released)
      fail<StateError>("backward", "trying to backward through the graph a second time (",
                       node->name(), " already freed its saved tensors); pass "
                                     "retain_graph=True to the first backward");
    node->check_saved_versions();
    for (const auto& next : node->next) {
      if (!next) continue;
      auto [it, inserted] = dependencies.emplace(next.get(), 0);
      ++it->second;
      if (inserted) stack.push_back(next.get());
    }
  }

  // With targets, a node runs only when a target lies below it: mark those in reverse
  // topological order, then count only the edges between such nodes.
  std::unordered_map<Node*, bool> needed;
  auto is_needed = [&](Node* node) { return !targets || needed[node]; };
  if (targets) {
    std::unordered_map<Node*, int> remaining = dependencies;
    std::vector<Node*> topological, ready;
    for (const Root& root : roots)
      if (remaining[root.node.get()] == 0) {
        remaining[root.node.get()] = -1;
        ready.push_back(root.node.get());
      }
    while (!ready.empty()) {
      Node* node = ready.back();
      ready.pop_back();
      topological.push_back(node);
      for (const auto& next : node->next)
        if (next && --remaining[next.get()] == 0) ready.push_back(next.get());
    }
    for (auto it = topological.rbegin(); it != topological.rend(); ++it) {
      bool below = targets->count(*it) > 0;
      for (const auto& next : (*it)->next) below = below || (next && needed[next.get()]);
      needed[*it] = below;
    }
    for (auto& [node, count] : dependencies) count = 0;
    for (Node* node : topological)
      if (needed[node])
        for (const auto& next : node->next)
          if (next && needed[next.get()]) ++dependencies[next.get()];
  }

  // Pass 2: run nodes whose gradients are complete. Formulas record a graph only for
  // create_graph; otherwise they run under no-grad, on the fused first-order kernels.
  GradModeGuard grad_mode(create_graph);
  profiler::BackwardPhase backward_phase;
  std::unordered_map<Node*, Tensor> pending;
  std::vector<Node*> ready;
  for (const Root& root : roots) {
    Node* node = root.node.get();
    if (!is_needed(node)) continue;
    Tensor& slot = pending[node];
    if (slot.defined()) {
      slot = ops::add(slot, root.seed);
    } else {
      slot = root.seed;
      if (dependencies[node] == 0) ready.push_back(node);
    }
  }
  // A first-order backward into the leaves lets nodes write leaf gradients in place.
  const bool in_place = !create_graph && !targets;
  // The AccumulateGrad nodes that received a gradient in place: they run even without
  // a gradient tensor, so that on_gradient_ready sees every finished leaf.
  std::unordered_set<Node*> written_in_place;
  std::vector<Tensor> grad_inputs;
  while (!ready.empty()) {
    Node* node = ready.back();
    ready.pop_back();
    auto it = pending.find(node);
    Tensor grad_output;
    if (it != pending.end()) {
      grad_output = std::move(it->second);
      pending.erase(it);
    }
    if (targets && targets->count(node)) {
      (*captured)[node] = grad_output;
      if (dynamic_cast<AccumulateGrad*>(node)) continue;
    }
    grad_inputs.assign(node->next.size(), Tensor());
    // A node that received no gradient still runs its bookkeeping so that nodes below
    // it see their dependency counts reach zero.
    if (grad_output.defined()) {
      if (create_graph && !node->supports_create_graph())
        fail<StateError>(
            "backward", "create_graph=True: the double backward of ", node->name(),
            " is not implemented, so higher-order gradients through it are not available");
      const bool offered = in_place && offer_in_place(*node, grad_output);
      try {
        profiler::Scope scope(node->name());
        node->apply(grad_output, grad_inputs);
      } catch (...) {
        // A later backward must not find this offer still standing.
        if (offered) node->take_delivered_in_place();
        throw;
      }
      if (offered) {
        const std::vector<bool> delivered = node->take_delivered_in_place();
        for (size_t i = 0; i < delivered.size(); ++i)
          if (delivered[i]) written_in_place.insert(node->next[i].get());
      }
    }
    if (grad_output.defined() || written_in_place.erase(node) > 0)
      if (on_gradient_ready)
        if (auto* accumulator = dynamic_cast<AccumulateGrad*>(node)) on_gradient_ready(accumulator->leaf());
    if (!retain_graph) {
      node->release_saved();
      node->released = !node->next.empty();
    }
    for (size_t i = 0; i < node->next.size(); ++i) {
      Node* next = node->next[i].get();
      if (!next || !is_needed(next)) continue;
      Tensor& g = grad_inputs[i];
      if (g.defined() && i < node->input_shapes.size() && g.shape() != node->input_shapes[i])
        fail<StateError>("backward", node->name(), " returned a gradient of shape ", g.shape(),
                         " for input ", i, " of shape ", node->input_shapes[i]);
      if (g.defined()) {
        Tensor& slot = pending[next];
        slot = slot.defined() ? ops::add(slot, g) : std::move(g);
      }
      if (--dependencies[next] == 0) ready.push_back(next);
    }
  }
}
}  // namespace

void backward(const Tensor& root, const Tensor& grad, const BackwardOptions& options) {
  std::lock_guard<std::recursive_mutex> lock(g_backward_mutex);
  if (!root.requires_grad())
    fail<StateError>("backward",
                     "the tensor does not require grad and has no grad_fn; call "
                     "requires_grad on an input before computing it");
  Tensor seed = seed_for("backward", root, grad);
  run_engine({Root{gradient_edge(root), seed}}, options.retain_graph, options.create_graph,
             options.on_gradient_ready, nullptr, nullptr);
}

std::vector<Tensor> grad(const std::vector<Tensor>& outputs,
                         const std::vector<Tensor>& grad_outputs,
                         const std::vector<Tensor>& inputs, const BackwardOptions& options) {
  std::lock_guard<std::recursive_mutex> lock(g_backward_mutex);
  if (outputs.empty()) fail("grad", "outputs is empty; pass at least one tensor");
  if (!grad_outputs.empty() && grad_outputs.size() != outputs.size())
    fail("grad", "got ", grad_outputs.size(), " grad_outputs for ", outputs.size(), " outputs");
  std::vector<Root> roots;
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (!outputs[i].defined() || !outputs[i].requires_grad())
      fail<StateError>("grad", "output ", i,
                       " does not require grad and has no grad_fn; nothing to differentiate");
    roots.push_back({gradient_edge(outputs[i]),
                     seed_for("grad", outputs[i], grad_outputs.empty() ? Tensor() : grad_outputs[i])});
  }
  std::vector<std::shared_ptr<Node>> edges;
  std::unordered_map<Node*, Tensor> targets;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].defined() || !inputs[i].requires_grad())
      fail<StateError>("grad", "input ", i, " does not require grad; call requires_grad_() on "
                                            "it before computing the outputs");
    edges.push_back(gradient_edge(inputs[i]));
    targets.emplace(edges.back().get(), Tensor());
  }
  std::unordered_map<Node*, Tensor> captured;
  run_engine(roots, options.retain_graph, options.create_graph, {}, &targets, &captured);
  std::vector<Tensor> result;
  GradModeGuard grad_mode(options.create_graph);
  for (size_t i = 0; i < inputs.size(); ++i) {
    auto it = captured.find(edges[i].get());
    Tensor g = it == captured.end() ? Tensor() : it->second;
    if (!g.defined()) {
      if (!options.allow_unused)
        fail("grad", "input ", i, " of shape ", inputs[i].shape(),
             " was not used to compute the outputs; pass allow_unused=True to get None for it");
      result.push_back(g);
      continue;
    }
    if (g.shape() != inputs[i].shape()) g = ops::sum_to(g, inputs[i].shape());
    result.push_back(options.create_graph ? g : g.detach());
  }
  return result;
}

}  // namespace steepest
