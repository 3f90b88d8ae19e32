// Attention and activation checkpointing, the two pieces of the seed's LLM practice
// section that are more than one kernel: softmax(QKᵀ/√d + mask)·V, fused (the flash
// kernels of kernels.def, O(T) memory) where q, k and v share their batch axes and
// composed from matmul, softmax and add otherwise (qkv_attention runs it on a fused
// projection, reading the heads and writing their gradients in place); and checkpoint(),
// which keeps only a function's inputs and recomputes its graph during backward.
#include <algorithm>
#include <array>
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
Tensor heads_last_empty(const Dims& shape, DType dtype, Device device) {
  const int nd = shape.size();
  if (nd < 4) return Tensor::empty(shape, dtype, device);
  Dims memory = shape;
  std::swap(memory[nd - 3], memory[nd - 2]);
  Tensor t = Tensor::empty(memory, dtype, device);
  Dims strides = t.strides();
  std::swap(strides[nd - 3], strides[nd - 2]);
  return t.alias(shape, strides, t.offset());
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

// x (B, T, H·D) as (B, H, T, D), a view when x is contiguous.
Tensor split_heads(const Tensor& x, int64_t heads) {
  const Dims& s = x.shape();
  return permute(reshape(x, {s[0], s[1], heads, s[2] / heads}), {0, 2, 1, 3});
}

// q, k and v (B, H, T, D) of a fused projection qkv (B, T, 3·H·D): views of its three
// thirds, each split into its heads.
std::array<Tensor, 3> split_qkv(const Tensor& qkv, int64_t heads) {
  const Dims& s = qkv.shape();
  Tensor all = permute(reshape(qkv, {s[0], s[1], 3, heads, s[2] / (3 * heads)}), {2, 0, 3, 1, 4});
  return {select(all, 0, 0), select(all, 0, 1), select(all, 0, 2)};
}

// qkv_attention composed from ops: the formula its fused backward differentiates under
// create_graph.
Tensor composed_qkv_attention(const Tensor& qkv, int64_t heads, bool causal, double scale) {
  auto [q, k, v] = split_qkv(qkv, heads);
  Tensor out = composed_attention(q, k, v, causal, scale);
  const Dims& s = out.shape();
  return reshape(permute(out, {0, 2, 1, 3}), {s[0], s[2], s[1] * s[3]});
}

double scale_or_default(std::optional<double> scale, int64_t d) {
  return scale ? *scale : 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(d, 1)));
}

// 16-bit inputs are attended in float32 and the output is rounded once: the numerics of
// a fused attention kernel with fp32 accumulation. nullopt for other dtypes.
template <class Attend>
std::optional<Tensor> attended_in_float32(std::vector<Tensor> inputs, const Attend& attend) {
  const DType dtype = inputs[0].dtype();
  if (!is_half_float(dtype)) return std::nullopt;
  for (Tensor& t : inputs) t = astype(t, DType::Float32);
  return astype(attend(inputs), dtype);
}

// seed: 注意力 — with P = softmax(S), S = scale·Q·Kᵀ (masked), O = P·V:
// dV = Pᵀ·dO, dP = dO·Vᵀ, dS = P ∘ (dP − rowsum(dO ∘ O)) (the softmax backward, as
// rowsum(P ∘ dP) = rowsum(dO ∘ O)), dQ = scale·dS·K, dK = scale·dSᵀ·Q. The kernel
// recomputes P tile by tile from the saved log-sum-exp (FlashAttention-2).
// The inputs are scaled_dot_product_attention's q, k and v, or, when fused_heads > 0,
// qkv_attention's fused projection alone: its gradient is then one buffer whose thirds
// the kernel writes dQ, dK and dV into, and the incoming gradient is the merged (B, T, d).
struct AttentionBackward final : Node {
  AttentionBackward(AttentionArgs args, Tensor q, Tensor k, Tensor v, Tensor out,
                    Tensor logsumexp, std::vector<Tensor> inputs, int64_t fused_heads)
      : args(args), q(std::move(q)), k(std::move(k)), v(std::move(v)), out(std::move(out)),
        logsumexp(std::move(logsumexp)), inputs(std::move(inputs)), fused_heads(fused_heads) {}
  void apply(const Tensor& g, std::vector<Tensor>& grads) override {
    if (grad_enabled()) {
      const bool causal = args.causal;
      const double scale = args.scale;
      const int64_t heads = fused_heads;
      composite_backward(*this, [causal, scale, heads](const std::vector<Tensor>& in) {
        return heads ? composed_qkv_attention(in[0], heads, causal, scale)
                     : composed_attention(in[0], in[1], in[2], causal, scale);
      }, inputs, g, grads);
      return;
    }
    AttentionArgs a = args;
    Tensor gc = readable(fused_heads ? split_heads(g, fused_heads) : g, a.grad_out);
    Tensor grad_qkv;
    std::array<Tensor, 3> grad;
    if (fused_heads) {
      grad_qkv = Tensor::empty(inputs[0].shape(), q.dtype(), q.device());
      grad = split_qkv(grad_qkv, fused_heads);
    } else {
      grad = {heads_last_empty(q.shape(), q.dtype(), q.device()),
              heads_last_empty(k.shape(), k.dtype(), k.device()),
              heads_last_empty(v.shape(), v.dtype(), v.device())};
    }
    a.grad_q = *layout_of(grad[0]);
    a.grad_k = *layout_of(grad[1]);
    a.grad_v = *layout_of(grad[2]);
    STEEPEST_KERNEL(q.device(), attention_backward)(a, q, k, v, out, gc, logsumexp, grad[0],
                                                    grad[1], grad[2]);
    if (fused_heads) {
      grads[0] = grad_qkv;
      return;
    }
    for (size_t i = 0; i < grad.size(); ++i)
      if (next[i]) grads[i] = grad[i];
  }
  void visit_saved(const SavedVisitor& visit) override {
    visit(q); visit(k); visit(v); visit(out); visit(logsumexp);
    for (Tensor& input : inputs) visit(input);
  }
  const char* name() const override { return "AttentionBackward"; }
  bool supports_create_graph() const override { return true; }
  AttentionArgs args;
  // As the kernels read them: q, k, v and the output (..., H, T, D).
  Tensor q, k, v, out, logsumexp;
  // As the caller passed them, connected to the graph (create_graph).
  std::vector<Tensor> inputs;
  int64_t fused_heads;
};

// The fused kernels' attention of q, k and v (..., H, T, D), whose batch axes are equal,
// read in place where their layouts allow, written into out_heads (..., H, Tq, Dv), a view
// of `out`, which the op returns. Records the backward on out when any of `inputs` (q, k
// and v, or the fused projection when fused_heads > 0) requires grad.
void fused_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale,
                     Tensor& out, Tensor out_heads, std::initializer_list<const Tensor*> inputs,
                     int64_t fused_heads) {
  const Dims batch(q.shape().begin(), q.shape().end() - 2);
  AttentionArgs args;
  args.batch = batch.product();
  args.heads = std::max<int64_t>(1, q.ndim() >= 3 ? q.shape()[q.ndim() - 3] : 1);
  args.tq = q.shape()[q.ndim() - 2];
  args.tk = k.shape()[k.ndim() - 2];
  args.d = q.shape().back();
  args.dv = v.shape().back();
  args.causal = causal;
  args.scale = scale;
  // Strided views (the heads of a fused projection) are read in place.
  Tensor qc = readable(q, args.q), kc = readable(k, args.k), vc = readable(v, args.v);
  args.out = *layout_of(out_heads);
  Dims lse_shape = batch;
  lse_shape.push_back(args.tq);
  Tensor logsumexp = Tensor::empty(lse_shape, q.dtype(), q.device());
  STEEPEST_KERNEL(q.device(), attention_forward)(args, qc, kc, vc, out_heads, logsumexp);
  std::vector<Tensor> connected;
  for (const Tensor* input : inputs) connected.push_back(*input);
  detail::record<AttentionBackward>(out, inputs, args, qc, kc, vc,
                                    detail::saved_output(out_heads), logsumexp,
                                    std::move(connected), fused_heads);
}

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
  const double s = scale_or_default(scale, d);
  if (auto wide = attended_in_float32({q, k, v}, [&](const std::vector<Tensor>& in) {
        return scaled_dot_product_attention(in[0], in[1], in[2], causal, s);
      }))
    return *wide;
  const Dims batch_q(q.shape().begin(), q.shape().end() - 2);
  const Dims batch_k(k.shape().begin(), k.shape().end() - 2);
  const Dims batch_v(v.shape().begin(), v.shape().end() - 2);
  if (batch_q != batch_k || batch_q != batch_v) return composed_attention(q, k, v, causal, s);
  Dims out_shape(q.shape().begin(), q.shape().end() - 1);
  out_shape.push_back(v.shape().back());
  Tensor out = heads_last_empty(out_shape, q.dtype(), q.device());
  fused_attention(q, k, v, causal, s, out, out, {&q, &k, &v}, 0);
  return out;
}

Tensor qkv_attention(const Tensor& qkv, int64_t heads, bool causal, std::optional<double> scale) {
  STEEPEST_PROFILE_OP("qkv_attention");
  const char* op = "qkv_attention";
  detail::check_float(op, qkv, "qkv");
  if (heads <= 0) fail(op, "heads must be positive, got ", heads);
  // Divisibility by 3 first: 3·heads may overflow.
  if (qkv.ndim() != 3 || qkv.shape()[2] % 3 != 0 || (qkv.shape()[2] / 3) % heads != 0)
    fail(op, "qkv needs a (batch, time, 3·heads·head_dim) shape with heads = ", heads,
         ", got ", qkv.shape());
  const int64_t b = qkv.shape()[0], t = qkv.shape()[1], d = qkv.shape()[2] / 3;
  const double s = scale_or_default(scale, d / heads);
  if (auto wide = attended_in_float32({qkv}, [&](const std::vector<Tensor>& in) {
        return qkv_attention(in[0], heads, causal, s);
      }))
    return *wide;
  auto [q, k, v] = split_qkv(qkv.detach(), heads);
  // The kernel writes the heads in (B, T, H, D) order: the merged output itself.
  Tensor out = Tensor::empty({b, t, d}, qkv.dtype(), qkv.device());
  fused_attention(q, k, v, causal, s, out, split_heads(out, heads), {&qkv}, heads);
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
