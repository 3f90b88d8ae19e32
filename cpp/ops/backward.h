// The backward nodes of every differentiable op: what each saves in the forward pass.
// Their apply() bodies — the backward formulas — are together in backward.cpp.
#pragma once

#include <functional>
#include <vector>

#include "steepest/autograd.h"
#include "steepest/kernels.h"
#include "steepest/ops.h"

namespace steepest::ops {

// create_graph for a node whose first-order formula is a fused kernel: `forward` is the op
// written with differentiable ops. Its gradients with G are taken with create_graph on
// aliases of `inputs` (so they stop at this node's edges) and written into `out`; every
// higher order follows from the composite.
using CompositeForward = std::function<Tensor(const std::vector<Tensor>&)>;
void composite_backward(const Node& node, const CompositeForward& forward,
                        const std::vector<Tensor>& inputs, const Tensor& g,
                        std::vector<Tensor>& out);

// The first-order gradient x·y of `node`'s input i, whose tensor is `input` (its shape and
// dtype): added straight into the leaf's .grad when the engine offers it
// (Node::grad_destination) and the product has the input's shape, then undefined;
// otherwise the product summed to the input's shape.
Tensor product_gradient(Node& node, size_t i, const Tensor& x, const Tensor& y,
                        const Tensor& input);

#define STEEPEST_NODE_NAME(type) \
  const char* name() const override { return #type; }
// The node's formula is differentiable when grad mode is on (see Node::supports_create_graph).
#define STEEPEST_CREATE_GRAPH \
  bool supports_create_graph() const override { return true; }

struct AddBackward final : Node {
  AddBackward(Dims a, Dims b, bool subtract) : a_shape(a), b_shape(b), subtract(subtract) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  STEEPEST_NODE_NAME(AddBackward)
  STEEPEST_CREATE_GRAPH
  Dims a_shape, b_shape;
  bool subtract;
};

struct MulBackward final : Node {
  MulBackward(Tensor a, Tensor b) : a(std::move(a)), b(std::move(b)) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(a); visit(b); }
  STEEPEST_NODE_NAME(MulBackward)
  STEEPEST_CREATE_GRAPH
  Tensor a, b;
};

struct DivBackward final : Node {
  DivBackward(Tensor a, Tensor b) : a(std::move(a)), b(std::move(b)) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(a); visit(b); }
  STEEPEST_NODE_NAME(DivBackward)
  STEEPEST_CREATE_GRAPH
  Tensor a, b;
};

// The node of every elementwise unary op Y = f(X). It keeps the operand its line in
// unary_ops.def names (saves_of(op)): X, Y (detached) or nothing, whichever the
// derivative is cheapest from.
struct UnaryBackward final : Node {
  UnaryBackward(UnaryOp op, const Tensor& x, const Tensor& y, double scalar)
      : op(op), saves(saves_of(op)), saved(saves == Saves::Input    ? x
                                           : saves == Saves::Output ? y
                                                                    : Tensor()),
        scalar(scalar) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(saved); }
  const char* name() const override;
  STEEPEST_CREATE_GRAPH
  Tensor differentiable_grad(const Tensor& g);
  UnaryOp op;
  Saves saves;
  Tensor saved;  // X for Saves::Input, Y for Saves::Output
  double scalar;
};

struct SumBackward final : Node {
  SumBackward(Dims input_shape, Dims kept_shape, double scale)
      : input_shape(input_shape), kept_shape(kept_shape), scale(scale) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  STEEPEST_NODE_NAME(SumBackward)
  STEEPEST_CREATE_GRAPH
  Dims input_shape, kept_shape;  // kept_shape: the output with reduced axes as 1
  double scale;                  // 1 for sum, 1/extent for mean
};

// The gradient of a max reduction; `input` is x in the kernel's contiguous (outer,
// extent, inner) layout and `result` the maxima (outer, 1, inner).
struct MaxBackward final : Node {
  MaxBackward(Tensor input, Tensor result, Dims order, Dims permuted_shape)
      : input(std::move(input)), result(std::move(result)), order(order),
        permuted_shape(permuted_shape) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(input); visit(result); }
  STEEPEST_NODE_NAME(MaxBackward)
  STEEPEST_CREATE_GRAPH
  Tensor input, result;
  Dims order, permuted_shape;
};

struct MatmulBackward final : Node {
  MatmulBackward(Tensor a, Tensor b) : a(std::move(a)), b(std::move(b)) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(a); visit(b); }
  STEEPEST_NODE_NAME(MatmulBackward)
  STEEPEST_CREATE_GRAPH
  Tensor a, b;
};

struct ReshapeBackward final : Node {
  explicit ReshapeBackward(Dims input_shape) : input_shape(input_shape) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  STEEPEST_NODE_NAME(ReshapeBackward)
  STEEPEST_CREATE_GRAPH
  Dims input_shape;
};

struct PermuteBackward final : Node {
  explicit PermuteBackward(Dims order) : order(order) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  STEEPEST_NODE_NAME(PermuteBackward)
  STEEPEST_CREATE_GRAPH
  Dims order;
};

struct ExpandBackward final : Node {
  explicit ExpandBackward(Dims input_shape) : input_shape(input_shape) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  STEEPEST_NODE_NAME(ExpandBackward)
  STEEPEST_CREATE_GRAPH
  Dims input_shape;
};

// Slicing one axis (select drops it): the gradient is written into a zero tensor of
// the input's shape through the same view. start/count are normalised, step may be < 0.
struct SliceBackward final : Node {
  SliceBackward(Dims input_shape, int axis, int64_t start, int64_t count, int64_t step, bool select)
      : input_shape(input_shape), axis(axis), start(start), count(count), step(step), select(select) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  STEEPEST_NODE_NAME(SliceBackward)
  STEEPEST_CREATE_GRAPH
  Dims input_shape;
  int axis;
  int64_t start, count, step;
  bool select;
};

// The backward of SliceBackward's formula (create_graph): it wrote G into zeros through
// the slice, so its own gradient is the slice of GG.
struct SliceScatterBackward final : Node {
  explicit SliceScatterBackward(const SliceBackward& slice) : slice(slice.input_shape, slice.axis, slice.start, slice.count, slice.step, slice.select) {}
  void apply(const Tensor& gg, std::vector<Tensor>& out) override;
  STEEPEST_NODE_NAME(SliceScatterBackward)
  STEEPEST_CREATE_GRAPH
  SliceBackward slice;  // the parameters, never run as a node
};

struct IdentityBackward final : Node {
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  STEEPEST_NODE_NAME(IdentityBackward)
  STEEPEST_CREATE_GRAPH
};

struct CastBackward final : Node {
  explicit CastBackward(DType input_dtype) : input_dtype(input_dtype) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  STEEPEST_NODE_NAME(CastBackward)
  STEEPEST_CREATE_GRAPH
  DType input_dtype;
};

struct ToDeviceBackward final : Node {
  explicit ToDeviceBackward(Device input_device) : input_device(input_device) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  STEEPEST_NODE_NAME(ToDeviceBackward)
  STEEPEST_CREATE_GRAPH
  Device input_device;
};

struct SoftmaxBackward final : Node {
  SoftmaxBackward(Tensor y_last, int axis, bool log) : y_last(std::move(y_last)), axis(axis), log(log) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(y_last); }
  const char* name() const override { return log ? "LogSoftmaxBackward" : "SoftmaxBackward"; }
  STEEPEST_CREATE_GRAPH
  Tensor y_last;  // the output with `axis` moved last, contiguous
  int axis;
  bool log;
};

struct CrossEntropyBackward final : Node {
  CrossEntropyBackward(Tensor logits, Tensor labels, Tensor logsumexp, Reduction reduction,
                       Dims logits_shape, Dims labels_shape, Tensor logits_input,
                       Tensor labels_input)
      : logits(std::move(logits)), labels(std::move(labels)), logsumexp(std::move(logsumexp)),
        logits_input(std::move(logits_input)), labels_input(std::move(labels_input)),
        reduction(reduction), logits_shape(logits_shape), labels_shape(labels_shape) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void differentiable_grad(const Tensor& per_row, std::vector<Tensor>& out);
  void visit_saved(const SavedVisitor& visit) override {
    visit(logits); visit(labels); visit(logsumexp); visit(logits_input); visit(labels_input);
  }
  STEEPEST_NODE_NAME(CrossEntropyBackward)
  STEEPEST_CREATE_GRAPH
  Tensor logits, labels, logsumexp;  // logits (rows, classes); logsumexp (rows, 2): max, log Σ
  // The caller's logits and soft labels (undefined for class indices), connected to the
  // graph: create_graph differentiates the formula through them.
  Tensor logits_input, labels_input;
  Reduction reduction;
  Dims logits_shape, labels_shape;  // as the caller passed them, e.g. (B, T, V)
};

struct BceWithLogitsBackward final : Node {
  BceWithLogitsBackward(Tensor logits, Tensor targets) : logits(std::move(logits)), targets(std::move(targets)) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(logits); visit(targets); }
  STEEPEST_NODE_NAME(BceWithLogitsBackward)
  STEEPEST_CREATE_GRAPH
  Tensor logits, targets;
};

// The fused Transformer pieces (fused.cpp).
struct ResidualAddBackward final : Node {
  explicit ResidualAddBackward(Dims bias_shape) : bias_shape(std::move(bias_shape)) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  STEEPEST_NODE_NAME(ResidualAddBackward)
  STEEPEST_CREATE_GRAPH
  Dims bias_shape;
};

struct BiasGeluBackward final : Node {
  BiasGeluBackward(Tensor x, Tensor bias, Tensor x_input, Tensor bias_input)
      : x(std::move(x)), bias(std::move(bias)), x_input(std::move(x_input)),
        bias_input(std::move(bias_input)) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override {
    visit(x); visit(bias); visit(x_input); visit(bias_input);
  }
  STEEPEST_NODE_NAME(BiasGeluBackward)
  STEEPEST_CREATE_GRAPH
  Tensor x, bias;  // contiguous, detached
  // As the caller passed them, connected to the graph (create_graph).
  Tensor x_input, bias_input;
};

struct LayerNormBackward final : Node {
  LayerNormBackward(Tensor x, Tensor weight, Tensor mean, Tensor rstd, bool has_bias, double eps,
                    Tensor x_input, Tensor weight_input, Tensor bias_input)
      : x(std::move(x)), weight(std::move(weight)), mean(std::move(mean)), rstd(std::move(rstd)),
        has_bias(has_bias), eps(eps), x_input(std::move(x_input)),
        weight_input(std::move(weight_input)), bias_input(std::move(bias_input)) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override {
    visit(x); visit(weight); visit(mean); visit(rstd);
    visit(x_input); visit(weight_input); visit(bias_input);
  }
  STEEPEST_NODE_NAME(LayerNormBackward)
  STEEPEST_CREATE_GRAPH
  Tensor x, weight, mean, rstd;
  bool has_bias;
  double eps;
  // As the caller passed them, connected to the graph (create_graph).
  Tensor x_input, weight_input, bias_input;
};

struct BatchNormBackward final : Node {
  BatchNormBackward(Tensor x, Tensor weight, Tensor mean, Tensor rstd, int64_t outer,
                    int64_t channels, int64_t inner, bool batch_stats, bool has_bias, double eps,
                    Tensor x_input, Tensor weight_input, Tensor bias_input)
      : x(std::move(x)), weight(std::move(weight)), mean(std::move(mean)), rstd(std::move(rstd)),
        outer(outer), channels(channels), inner(inner), batch_stats(batch_stats),
        has_bias(has_bias), eps(eps), x_input(std::move(x_input)),
        weight_input(std::move(weight_input)), bias_input(std::move(bias_input)) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override {
    visit(x); visit(weight); visit(mean); visit(rstd);
    visit(x_input); visit(weight_input); visit(bias_input);
  }
  STEEPEST_NODE_NAME(BatchNormBackward)
  STEEPEST_CREATE_GRAPH
  Tensor x, weight, mean, rstd;
  int64_t outer, channels, inner;
  bool batch_stats, has_bias;
  double eps;
  // As the caller passed them, connected to the graph (create_graph).
  Tensor x_input, weight_input, bias_input;
};

struct EmbeddingBackward final : Node {
  EmbeddingBackward(Tensor indices, Dims table_shape) : indices(std::move(indices)), table_shape(table_shape) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(indices); }
  STEEPEST_NODE_NAME(EmbeddingBackward)
  STEEPEST_CREATE_GRAPH
  Tensor indices;
  Dims table_shape;
};

// The backward of EmbeddingBackward's formula (create_graph): G was scattered into the
// table's rows, so its own gradient gathers those rows of GG: embedding(indices, GG).
struct EmbeddingScatterBackward final : Node {
  explicit EmbeddingScatterBackward(Tensor indices) : indices(std::move(indices)) {}
  void apply(const Tensor& gg, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(indices); }
  STEEPEST_NODE_NAME(EmbeddingScatterBackward)
  STEEPEST_CREATE_GRAPH
  Tensor indices;
};

struct Conv2dBackward final : Node {
  Conv2dBackward(Tensor x, Tensor weight, Conv2dGeometry geometry, bool has_bias,
                 Tensor x_input, Tensor weight_input)
      : x(std::move(x)), weight(std::move(weight)), geometry(geometry), has_bias(has_bias),
        x_input(std::move(x_input)), weight_input(std::move(weight_input)) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override {
    visit(x); visit(weight); visit(x_input); visit(weight_input);
  }
  STEEPEST_NODE_NAME(Conv2dBackward)
  STEEPEST_CREATE_GRAPH
  Tensor x, weight;
  Conv2dGeometry geometry;
  bool has_bias;
  Tensor x_input, weight_input;  // as the caller passed them, connected (create_graph)
};

// The convolution's two backward products as recorded ops (create_graph). With
// Y = conv(X, W) and B = <G, Y>, bilinear in each pair: dX = ∂B/∂X = convᵀ_X(G; W) and
// dW = ∂B/∂W = convᵀ_W(G; X). Differentiating <GG_X, dX> and <GG_W, dW> again gives only
// convolutions and these two products (conv_2nd_order in backward.cpp).
struct ConvInputGradBackward final : Node {
  ConvInputGradBackward(Tensor g, Tensor weight, Conv2dGeometry geometry)
      : g(std::move(g)), weight(std::move(weight)), geometry(geometry) {}
  void apply(const Tensor& gg, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(g); visit(weight); }
  STEEPEST_NODE_NAME(ConvInputGradBackward)
  STEEPEST_CREATE_GRAPH
  Tensor g, weight;
  Conv2dGeometry geometry;
};

struct ConvWeightGradBackward final : Node {
  ConvWeightGradBackward(Tensor g, Tensor x, Conv2dGeometry geometry)
      : g(std::move(g)), x(std::move(x)), geometry(geometry) {}
  void apply(const Tensor& gg, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(g); visit(x); }
  STEEPEST_NODE_NAME(ConvWeightGradBackward)
  STEEPEST_CREATE_GRAPH
  Tensor g, x;
  Conv2dGeometry geometry;
};

struct Pool2dBackward final : Node {
  Pool2dBackward(PoolKind kind, Tensor argmax, Tensor x, Conv2dGeometry geometry, DType dtype)
      : kind(kind), argmax(std::move(argmax)), x(std::move(x)), geometry(geometry), dtype(dtype) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(argmax); visit(x); }
  const char* name() const override { return kind == PoolKind::Max ? "MaxPool2dBackward" : "AvgPool2dBackward"; }
  // Pooling is linear in x with a locally constant Jacobian P: the backward's own
  // gradient is P·GG (Avg/MaxPool2dScatterBackward), with no other second-order term.
  bool supports_create_graph() const override { return true; }
  PoolKind kind;
  // Max pooling: the window maxima (see kNoPixel) and the input (in the compute dtype),
  // which locates tied maxima.
  Tensor argmax, x;
  Conv2dGeometry geometry;
  DType dtype;
};

// The backward of average pooling's backward (create_graph): G was spread over the
// windows, so its own gradient is the average pooling of GG.
struct AvgPool2dScatterBackward final : Node {
  AvgPool2dScatterBackward(Conv2dGeometry geometry, DType dtype) : geometry(geometry), dtype(dtype) {}
  void apply(const Tensor& gg, std::vector<Tensor>& out) override;
  STEEPEST_NODE_NAME(AvgPool2dScatterBackward)
  STEEPEST_CREATE_GRAPH
  Conv2dGeometry geometry;
  DType dtype;  // of the pooled tensor (16-bit ones are pooled in float32)
};

// The backward of max pooling's backward (create_graph): G went to each window's maxima,
// split evenly among tied ones, so its own gradient is each window's share-weighted sum
// of GG over those pixels (max_pool_shares; windows without pixels give 0).
struct MaxPool2dScatterBackward final : Node {
  MaxPool2dScatterBackward(Tensor index, Tensor weight, Conv2dGeometry geometry)
      : index(std::move(index)), weight(std::move(weight)), geometry(geometry) {}
  void apply(const Tensor& gg, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(index); visit(weight); }
  STEEPEST_NODE_NAME(MaxPool2dScatterBackward)
  STEEPEST_CREATE_GRAPH
  Tensor index, weight;
  Conv2dGeometry geometry;
};

void max_pool_shares(const Tensor& argmax, const Tensor& x, const Conv2dGeometry& geo,
                     DType dtype, Tensor& index, Tensor& weight);

#undef STEEPEST_NODE_NAME
#undef STEEPEST_CREATE_GRAPH

}  // namespace steepest::ops
