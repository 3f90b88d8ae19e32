// The backward engine: counts, for every node reachable from the root, how many
// gradients it will receive, then runs nodes once all their gradients have arrived
// (Kahn's algorithm), summing gradients that meet at the same node.
#include <mutex>
#include <unordered_map>
#include <vector>

#include "steepest/autograd.h"
#include "steepest/ops.h"

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

void AccumulateGrad::apply(const Tensor& grad_output, std::vector<Tensor>&) {
  NoGradGuard no_grad;
  TensorImpl* leaf = leaf_.get();
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
}  // namespace

void backward(const Tensor& root, const Tensor& grad, bool retain_graph,
              const GradientReadyHook& on_gradient_ready) {
  std::lock_guard<std::recursive_mutex> lock(g_backward_mutex);
  if (!root.requires_grad())
    fail<StateError>("backward",
                     "the tensor does not require grad and has no grad_fn; call "
                     "requires_grad on an input before computing it");
  Tensor seed = grad;
  if (!seed.defined()) {
    if (root.numel() != 1)
      fail<StateError>("backward", "grad can be implicitly created only for scalar outputs; "
                                   "pass grad= of shape ",
                       root.shape());
    seed = Tensor::full(root.shape(), 1.0, root.dtype(), root.device());
  } else if (seed.shape() != root.shape() || seed.dtype() != root.dtype()) {
    fail("backward", "grad of shape ", seed.shape(), " and dtype ", dtype_name(seed.dtype()),
         " does not match the output of shape ", root.shape(), " and dtype ",
         dtype_name(root.dtype()));
  }
  std::shared_ptr<Node> start = gradient_edge(root);

  // Pass 1: dependency counts.
  std::unordered_map<Node*, int> dependencies;
  std::vector<Node*> stack{start.get()};
  dependencies[start.get()] = 0;
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

  // Pass 2: run nodes whose gradients are complete.
  NoGradGuard no_grad;
  std::unordered_map<Node*, Tensor> pending;
  pending[start.get()] = seed;
  std::vector<Node*> ready{start.get()};
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
    grad_inputs.assign(node->next.size(), Tensor());
    // A node that received no gradient still runs its bookkeeping so that nodes below
    // it see their dependency counts reach zero.
    if (grad_output.defined()) {
      node->apply(grad_output, grad_inputs);
      if (on_gradient_ready)
        if (auto* accumulator = dynamic_cast<AccumulateGrad*>(node)) on_gradient_ready(accumulator->leaf());
    }
    if (!retain_graph) {
      node->release_saved();
      node->released = !node->next.empty();
    }
    for (size_t i = 0; i < node->next.size(); ++i) {
      Node* next = node->next[i].get();
      if (!next) continue;
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

}  // namespace steepest
