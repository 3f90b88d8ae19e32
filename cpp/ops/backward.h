// The backward nodes of every differentiable op: what each saves in the forward pass.
// Their apply() bodies — the backward formulas — are together in backward.cpp.
#pragma once

#include <vector>

#include "steepest/autograd.h"
#include "steepest/kernels.h"
#include "steepest/ops.h"

namespace steepest::ops {

#define STEEPEST_NODE_NAME(type) \
  const char* name() const override { return #type; }

struct AddBackward final : Node {
  AddBackward(Dims a, Dims b, bool subtract) : a_shape(a), b_shape(b), subtract(subtract) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  STEEPEST_NODE_NAME(AddBackward)
  Dims a_shape, b_shape;
  bool subtract;
};

struct MulBackward final : Node {
  MulBackward(Tensor a, Tensor b) : a(std::move(a)), b(std::move(b)) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(a); visit(b); }
  STEEPEST_NODE_NAME(MulBackward)
  Tensor a, b;
};

struct DivBackward final : Node {
  DivBackward(Tensor a, Tensor b) : a(std::move(a)), b(std::move(b)) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(a); visit(b); }
  STEEPEST_NODE_NAME(DivBackward)
  Tensor a, b;
};

// One node for every unary op; `saved` is the input or the output, whichever the
// derivative is cheaper from.
struct UnaryBackward final : Node {
  UnaryBackward(UnaryOp op, Tensor saved, double scalar)
      : op(op), saved(std::move(saved)), scalar(scalar) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(saved); }
  const char* name() const override;
  UnaryOp op;
  Tensor saved;
  double scalar;
};

struct SumBackward final : Node {
  SumBackward(Dims input_shape, Dims kept_shape, double scale)
      : input_shape(input_shape), kept_shape(kept_shape), scale(scale) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  STEEPEST_NODE_NAME(SumBackward)
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
  Tensor input, result;
  Dims order, permuted_shape;
};

struct MatmulBackward final : Node {
  MatmulBackward(Tensor a, Tensor b) : a(std::move(a)), b(std::move(b)) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(a); visit(b); }
  STEEPEST_NODE_NAME(MatmulBackward)
  Tensor a, b;
};

struct ReshapeBackward final : Node {
  explicit ReshapeBackward(Dims input_shape) : input_shape(input_shape) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  STEEPEST_NODE_NAME(ReshapeBackward)
  Dims input_shape;
};

struct PermuteBackward final : Node {
  explicit PermuteBackward(Dims order) : order(order) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  STEEPEST_NODE_NAME(PermuteBackward)
  Dims order;
};

struct ExpandBackward final : Node {
  explicit ExpandBackward(Dims input_shape) : input_shape(input_shape) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  STEEPEST_NODE_NAME(ExpandBackward)
  Dims input_shape;
};

// Slicing one axis (select drops it): the gradient is written into a zero tensor of
// the input's shape through the same view. start/count are normalised, step may be < 0.
struct SliceBackward final : Node {
  SliceBackward(Dims input_shape, int axis, int64_t start, int64_t count, int64_t step, bool select)
      : input_shape(input_shape), axis(axis), start(start), count(count), step(step), select(select) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  STEEPEST_NODE_NAME(SliceBackward)
  Dims input_shape;
  int axis;
  int64_t start, count, step;
  bool select;
};

struct IdentityBackward final : Node {
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  STEEPEST_NODE_NAME(IdentityBackward)
};

struct CastBackward final : Node {
  explicit CastBackward(DType input_dtype) : input_dtype(input_dtype) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  STEEPEST_NODE_NAME(CastBackward)
  DType input_dtype;
};

struct ToDeviceBackward final : Node {
  explicit ToDeviceBackward(Device input_device) : input_device(input_device) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  STEEPEST_NODE_NAME(ToDeviceBackward)
  Device input_device;
};

struct SoftmaxBackward final : Node {
  SoftmaxBackward(Tensor y_last, int axis, bool log) : y_last(std::move(y_last)), axis(axis), log(log) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(y_last); }
  const char* name() const override { return log ? "LogSoftmaxBackward" : "SoftmaxBackward"; }
  Tensor y_last;  // the output with `axis` moved last, contiguous
  int axis;
  bool log;
};

struct CrossEntropyBackward final : Node {
  CrossEntropyBackward(Tensor logits, Tensor labels, Tensor logsumexp, Reduction reduction,
                       Dims logits_shape, Dims labels_shape)
      : logits(std::move(logits)), labels(std::move(labels)), logsumexp(std::move(logsumexp)),
        reduction(reduction), logits_shape(logits_shape), labels_shape(labels_shape) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(logits); visit(labels); visit(logsumexp); }
  STEEPEST_NODE_NAME(CrossEntropyBackward)
  Tensor logits, labels, logsumexp;  // logits (rows, classes); logsumexp (rows, 2): max, log Σ
  Reduction reduction;
  Dims logits_shape, labels_shape;  // as the caller passed them, e.g. (B, T, V)
};

struct BceWithLogitsBackward final : Node {
  BceWithLogitsBackward(Tensor logits, Tensor targets) : logits(std::move(logits)), targets(std::move(targets)) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(logits); visit(targets); }
  STEEPEST_NODE_NAME(BceWithLogitsBackward)
  Tensor logits, targets;
};

struct LayerNormBackward final : Node {
  LayerNormBackward(Tensor x, Tensor weight, Tensor mean, Tensor rstd, bool has_bias)
      : x(std::move(x)), weight(std::move(weight)), mean(std::move(mean)), rstd(std::move(rstd)),
        has_bias(has_bias) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(x); visit(weight); visit(mean); visit(rstd); }
  STEEPEST_NODE_NAME(LayerNormBackward)
  Tensor x, weight, mean, rstd;
  bool has_bias;
};

struct BatchNormBackward final : Node {
  BatchNormBackward(Tensor x, Tensor weight, Tensor mean, Tensor rstd, int64_t outer,
                    int64_t channels, int64_t inner, bool batch_stats, bool has_bias)
      : x(std::move(x)), weight(std::move(weight)), mean(std::move(mean)), rstd(std::move(rstd)),
        outer(outer), channels(channels), inner(inner), batch_stats(batch_stats),
        has_bias(has_bias) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(x); visit(weight); visit(mean); visit(rstd); }
  STEEPEST_NODE_NAME(BatchNormBackward)
  Tensor x, weight, mean, rstd;
  int64_t outer, channels, inner;
  bool batch_stats, has_bias;
};

struct EmbeddingBackward final : Node {
  EmbeddingBackward(Tensor indices, Dims table_shape) : indices(std::move(indices)), table_shape(table_shape) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(indices); }
  STEEPEST_NODE_NAME(EmbeddingBackward)
  Tensor indices;
  Dims table_shape;
};

struct Conv2dBackward final : Node {
  Conv2dBackward(Tensor x, Tensor weight, Conv2dGeometry geometry, bool has_bias)
      : x(std::move(x)), weight(std::move(weight)), geometry(geometry), has_bias(has_bias) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(x); visit(weight); }
  STEEPEST_NODE_NAME(Conv2dBackward)
  Tensor x, weight;
  Conv2dGeometry geometry;
  bool has_bias;
};

struct Pool2dBackward final : Node {
  Pool2dBackward(PoolKind kind, Tensor argmax, Tensor x, Conv2dGeometry geometry, DType dtype)
      : kind(kind), argmax(std::move(argmax)), x(std::move(x)), geometry(geometry), dtype(dtype) {}
  void apply(const Tensor& g, std::vector<Tensor>& out) override;
  void visit_saved(const SavedVisitor& visit) override { visit(argmax); visit(x); }
  const char* name() const override { return kind == PoolKind::Max ? "MaxPool2dBackward" : "AvgPool2dBackward"; }
  PoolKind kind;
  // Max pooling: the window maxima (see kNoPixel) and the input (in the compute dtype),
  // which locates tied maxima.
  Tensor argmax, x;
  Conv2dGeometry geometry;
  DType dtype;
};

#undef STEEPEST_NODE_NAME

}  // namespace steepest::ops
