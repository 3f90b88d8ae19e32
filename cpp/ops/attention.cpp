// Attention and activation checkpointing, the two pieces of the seed's LLM practice
// section that are more than one kernel: softmax(QKᵀ/√d + mask)·V, fused (the flash
// kernels of kernels.def, O(T) memory) where q, k and v share their batch axes and
// composed from matmul, softmax and add otherwise; and checkpoint(), which keeps only a
// function's inputs and recomputes its graph during backward.
#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>

#include "backward.h"
#include "internal.h"
#include "steepest/profiler.h"

namespace steepest::ops {

namespace {

// (Tq, Tk) with −inf where key j lies after query i (top-left aligned, as PyTorch's
// is_causal), 0 elsewhere: added to the scores, softmax gives those keys weight 0.
Tensor causal_mask(int64_t tq, int64_t tk, DType dtype, Device device) {
  Tensor mask = Tensor::empty({tq, tk}, DType::Float64);
  double* m = mask.data<double>();
  for (int64_t i = 0; i < tq; ++i)
    for (int64_t j = 0; j < tk; ++j)
      m[i * tk + j] = j > i ? -std::numeric_limits<double>::infinity() : 0.0;
  Tensor typed = astype(mask, dtype);
  return device.is_cpu() ? typed : to_device(typed, device);
}


// How the flash kernels read t (..., T, D) in place: its last axis contiguous, the axis
// before T its heads, and the axes before those merged into one stride; nullopt when
// they do not merge (t is then copied).
std::optional<AttentionLayout> layout_of(const Tensor& t) {
  const int nd = t.ndim();
  const Dims& shape = t.shape();
  const Dims& strides = t.strides();
  if (shape[nd - 1] > 1 && strides[nd - 1] != 1) return std::nullopt;
  AttentionLayout layout;
  layout.row = strides[nd - 2];
  if (nd >= 3) layout.head = strides[nd - 3];
  int64_t merged = -1;  // the stride the next outer axis needs to merge
  for (int i = nd - 4; i >= 0; --i) {
    if (shape[i] == 1) continue;
    if (merged >= 0 && strides[i] != merged) return std::nullopt;
    if (merged < 0) layout.outer = strides[i];
    merged = strides[i] * shape[i];
  }
  return layout;
}

// t detached, copied only when the kernels cannot read its layout.
Tensor readable(const Tensor& t, AttentionLayout& layout) {
  Tensor x = t.detach();
  if (auto direct = layout_of(x)) {
    layout = *direct;
    return x;
  }
  x = contiguous(x);
  layout = *layout_of(x);
  return x;
}

// A new (..., H, T, D) tensor whose memory is ordered (..., T, H, D): merging the heads
// back into (..., T, H·D), as a transformer does next, is then a view.
Tensor heads_last_empty(const Dims& shape, DType dtype, Device device, AttentionLayout& layout) {
  const int nd = shape.size();
  if (nd < 4) {
    Tensor t = Tensor::empty(shape, dtype, device);
    layout = *layout_of(t);
    return t;
  }
  Dims memory = shape;
  std::swap(memory[nd - 3], memory[nd - 2]);
  Tensor t = Tensor::empty(memory, dtype, device);
  Dims strides = t.strides();
  std::swap(strides[nd - 3], strides[nd - 2]);
  Tensor view = t.alias(shape, strides, t.offset());
  layout = *layout_of(view);
  return view;
}

// softmax(scale·q·kᵀ + mask)·v from ops, so autograd derives its backward: the path for
// broadcast batch axes, and the formula the fused backward differentiates under
// create_graph.
Tensor composed_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                          double scale) {
  Tensor scores = mul_scalar(matmul(q, transpose(k, -1, -2)), scale);
  if (causal) {
    int64_t tq = q.shape()[q.ndim() - 2], tk = k.shape()[k.ndim() - 2];
    scores = add(scores, causal_mask(tq, tk, q.dtype(), q.device()));
  }
  return matmul(softmax(scores, -1), v);
}

// seed: 注意力 — with P = softmax(S), S = scale·Q·Kᵀ (masked), O = P·V:
// dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P ∘ (dP − rowsum(dO ∘ O)) (the softmax backward, as
// rowsum(P ∘ dP) = rowsum(dO ∘ O)), dQ = scale·dS·K, dK = scale·dSᵀ·Q. The kernel
// recomputes P tile by tile from the saved log-sum-exp (FlashAttention-2).
struct AttentionBackward final : Node {
  AttentionBackward(AttentionArgs args, Tensor q, Tensor k, Tensor v, Tensor out,
                    Tensor logsumexp, Tensor q_input, Tensor k_input, Tensor v_input)
      : args(args), q(std::move(q)), k(std::move(k)), v(std::move(v)), out(std::move(out)),
        logsumexp(std::move(logsumexp)), q_input(std::move(q_input)),
        k_input(std::move(k_input)), v_input(std::move(v_input)) {}
  void apply(const Tensor& g, std::vector<Tensor>& grads) override {
    if (grad_enabled()) {
      const bool causal = args.causal;
      const double scale = args.scale;
      composite_backward(*this, [causal, scale](const std::vector<Tensor>& in) {
        return composed_attention(in[0], in[1], in[2], causal, scale);
      }, {q_input, k_input, v_input}, g, grads);
      return;
    }
    AttentionArgs a = args;
    Tensor gc = readable(g, a.grad_out);
    Tensor grad_q = heads_last_empty(q.shape(), q.dtype(), q.device(), a.grad_q);
    Tensor grad_k = heads_last_empty(k.shape(), k.dtype(), k.device(), a.grad_k);
    Tensor grad_v = heads_last_empty(v.shape(), v.dtype(), v.device(), a.grad_v);
    STEEPEST_KERNEL(q.device(), attention_backward)(a, q, k, v, out, gc, logsumexp, grad_q,
                                                    grad_k, grad_v);
    if (next[0]) grads[0] = grad_q;
    if (next[1]) grads[1] = grad_k;
    if (next[2]) grads[2] = grad_v;
  }
  void visit_saved(const SavedVisitor& visit) override {
    visit(q); visit(k); visit(v); visit(out); visit(logsumexp);
    visit(q_input); visit(k_input); visit(v_input);
  }
  const char* name() const override { return "AttentionBackward"; }
  bool supports_create_graph() const override { return true; }
  AttentionArgs args;
  Tensor q, k, v, out, logsumexp;
  // As the caller passed them, connected to the graph (create_graph).
  Tensor q_input, k_input, v_input;
};

}  // namespace

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                                    std::optional<double> scale) {
  STEEPEST_PROFILE_OP("scaled_dot_product_attention");
  const char* op = "scaled_dot_product_attention";
  detail::check_float(op, q, "q");
  detail::check_same_dtype(op, q, k);
  detail::check_same_dtype(op, q, v);
  detail::check_same_device(op, q, k);
  detail::check_same_device(op, q, v);
  if (q.ndim() < 2 || k.ndim() < 2 || v.ndim() < 2)
    fail(op, "q, k and v need (..., T, D) shapes, got ", q.shape(), ", ", k.shape(), ", ", v.shape());
  int64_t d = q.shape().back();
  if (k.shape().back() != d)
    fail(op, "q of shape ", q.shape(), " and k of shape ", k.shape(), " differ in the feature axis");
  if (k.shape()[k.ndim() - 2] != v.shape()[v.ndim() - 2])
    fail(op, "k of shape ", k.shape(), " and v of shape ", v.shape(), " differ in the sequence axis");
  double s = scale ? *scale : 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(d, 1)));
  if (is_half_float(q.dtype())) {
    // 16-bit q, k, v are attended in float32 and the output is rounded once: the
    // numerics of a fused attention kernel with fp32 accumulation.
    auto wide = [](const Tensor& t) { return astype(t, DType::Float32); };
    return astype(scaled_dot_product_attention(wide(q), wide(k), wide(v), causal, s), q.dtype());
  }
  const Dims batch_q(q.shape().begin(), q.shape().end() - 2);
  const Dims batch_k(k.shape().begin(), k.shape().end() - 2);
  const Dims batch_v(v.shape().begin(), v.shape().end() - 2);
  if (batch_q != batch_k || batch_q != batch_v) return composed_attention(q, k, v, causal, s);
  AttentionArgs args;
  args.batch = batch_q.product();
  args.heads = std::max<int64_t>(1, q.ndim() >= 3 ? q.shape()[q.ndim() - 3] : 1);
  args.tq = q.shape()[q.ndim() - 2];
  args.tk = k.shape()[k.ndim() - 2];
  args.d = d;
  args.dv = v.shape().back();
  args.causal = causal;
  args.scale = s;
  // Strided views (the heads of a fused projection) are read in place.
  Tensor qc = readable(q, args.q), kc = readable(k, args.k), vc = readable(v, args.v);
  Dims lse_shape = batch_q;
  lse_shape.push_back(args.tq);
  Dims out_shape = lse_shape;
  out_shape.push_back(args.dv);
  Tensor out = heads_last_empty(out_shape, q.dtype(), q.device(), args.out);
  Tensor logsumexp = Tensor::empty(lse_shape, q.dtype(), q.device());
  STEEPEST_KERNEL(q.device(), attention_forward)(args, qc, kc, vc, out, logsumexp);
  detail::record<AttentionBackward>(out, {&q, &k, &v}, args, qc, kc, vc, detail::saved_output(out),
                                    logsumexp, q, k, v);
  return out;
}

namespace {

// Where a checkpointed function's recomputation (under create_graph) meets its inputs:
// an alias of the input whose node, during the inner backward, keeps the gradient that
// reaches it and has no edge below (the outer backward carries that gradient on from
// CheckpointBackward). Afterwards it is given its edge to the input, so that the
// recorded gradients, which depend on the aliases, differentiate through to the inputs.
class CheckpointBoundary final : public Node {
 public:
  explicit CheckpointBoundary(Tensor* captured) : captured_(captured) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override {
    if (!captured_) {
      out[0] = g;
      return;
    }
    *captured_ = captured_->defined() ? add(*captured_, g) : g;
  }
  // Ends the capture: from now on gradients pass through to `input`.
  void connect(const Tensor& input) {
    captured_ = nullptr;
    next = {gradient_edge(input)};
    input_shapes = {input.shape()};
  }
  bool supports_create_graph() const override { return true; }
  const char* name() const override { return "CheckpointBoundary"; }

 private:
  Tensor* captured_;
};

// Backward of checkpoint(): runs the function again with grad enabled on fresh leaves
// holding the saved inputs, and backpropagates g through that new graph. Weights used by
// the function receive their gradient through their own accumulators during that inner
// backward; the inputs' gradients come back from the fresh leaves.
class CheckpointBackward final : public Node {
 public:
  CheckpointBackward(CheckpointFunction fn, std::vector<Tensor> inputs)
      : fn_(std::move(fn)), inputs_(std::move(inputs)) {}

  void apply(const Tensor& g, std::vector<Tensor>& out) override {
    if (grad_enabled()) {
      apply_in_graph(g, out);
      return;
    }
    std::vector<Tensor> leaves;
    leaves.reserve(inputs_.size());
    for (const Tensor& input : inputs_) {
      Tensor leaf = input.detach();
      if (is_floating(leaf.dtype()) && input.requires_grad()) leaf.set_requires_grad(true);
      leaves.push_back(leaf);
    }
    Tensor output;
    {
      bool previous = grad_enabled();
      set_grad_enabled(true);
      try {
        output = fn_(leaves);
      } catch (...) {
        set_grad_enabled(previous);
        throw;
      }
      set_grad_enabled(previous);
    }
    if (output.requires_grad()) steepest::backward(output, g);
    for (size_t i = 0; i < leaves.size(); ++i)
      if (next[i]) out[i] = leaves[i].grad();
  }
  // create_graph: the recomputation runs on aliases of the inputs themselves (boundaries),
  // so the gradients it records for the inputs and, through their accumulators, for the
  // weights stay connected to both.
  void apply_in_graph(const Tensor& g, std::vector<Tensor>& out) {
    std::vector<Tensor> captured(inputs_.size()), aliases;
    std::vector<std::shared_ptr<CheckpointBoundary>> boundaries(inputs_.size());
    for (size_t i = 0; i < inputs_.size(); ++i) {
      Tensor alias = inputs_[i].detach();
      if (next[i]) {
        boundaries[i] = std::make_shared<CheckpointBoundary>(&captured[i]);
        alias.impl()->requires_grad = true;
        alias.impl()->grad_fn = boundaries[i];
      }
      aliases.push_back(alias);
    }
    struct Connect {  // also when fn or the inner backward throws
      std::vector<std::shared_ptr<CheckpointBoundary>>& boundaries;
      const std::vector<Tensor>& inputs;
      ~Connect() {
        for (size_t i = 0; i < inputs.size(); ++i)
          if (boundaries[i]) boundaries[i]->connect(inputs[i]);
      }
    } connect{boundaries, inputs_};
    Tensor output = fn_(aliases);
    BackwardOptions recorded;
    recorded.retain_graph = true;
    recorded.create_graph = true;
    if (output.requires_grad()) steepest::backward(output, g, recorded);
    for (size_t i = 0; i < inputs_.size(); ++i)
      if (next[i]) out[i] = captured[i];
  }
  bool supports_create_graph() const override { return true; }
  void visit_saved(const SavedVisitor& visit) override {
    for (Tensor& input : inputs_) visit(input);
  }
  void release_saved() override {
    Node::release_saved();
    inputs_.clear();
    fn_ = nullptr;
  }
  const char* name() const override { return "CheckpointBackward"; }

 private:
  CheckpointFunction fn_;
  std::vector<Tensor> inputs_;
};

}  // namespace

Tensor checkpoint(const CheckpointFunction& fn, const std::vector<Tensor>& inputs) {
  STEEPEST_PROFILE_OP("checkpoint");
  Tensor output;
  {
    NoGradGuard no_grad;  // the forward keeps nothing but the inputs
    output = fn(inputs);
  }
  if (!grad_enabled()) return output;
  // Recorded even when no input requires grad: the function's weights may.
  output = output.detach();
  auto node = std::make_shared<CheckpointBackward>(fn, inputs);
  node->next.reserve(inputs.size());
  for (const Tensor& t : inputs) {
    node->next.push_back(gradient_edge(t));
    node->input_shapes.push_back(t.shape());
  }
  node->record_saved_versions();
  output.impl()->requires_grad = true;
  output.impl()->grad_fn = std::move(node);
  return output;
}

}  // namespace steepest::ops
