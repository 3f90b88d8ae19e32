// Keras' losses as composites of differentiable ops (see steepest/losses.h).
#include "steepest/losses.h"

#include <algorithm>

#include "steepest/common.h"

namespace steepest::losses {

const std::vector<Info>& table() {
  static const std::vector<Info> entries{
      {Kind::SparseCategoricalCrossentropy, "sparse_categorical_crossentropy", {}, Labels::ClassIndices, true},
      {Kind::CategoricalCrossentropy, "categorical_crossentropy", {}, Labels::Values, true},
      {Kind::BinaryCrossentropy, "binary_crossentropy", {}, Labels::Values, false},
      {Kind::MeanSquaredError, "mse", {"mean_squared_error"}, Labels::Values, false},
      {Kind::MeanAbsoluteError, "mae", {"mean_absolute_error"}, Labels::Values, false},
      {Kind::CausalLanguageModel, "causal_lm_crossentropy", {}, Labels::NextTokens, true},
  };
  return entries;
}

const Info& info(Kind kind) {
  for (const Info& entry : table())
    if (entry.kind == kind) return entry;
  fail("loss", "no table entry for loss kind ", static_cast<int>(kind));
}

const Info& from_name(const char* op, const std::string& name) {
  std::string known;
  for (const Info& entry : table()) {
    if (name == entry.name || std::find(entry.aliases.begin(), entry.aliases.end(), name) != entry.aliases.end())
      return entry;
    known += known.empty() ? "" : ", ";
    known += entry.name;
    for (const char* alias : entry.aliases) known += cat(", ", alias);
  }
  fail(op, "unknown loss '", name, "'; expected one of ", known);
}

namespace {

struct ReductionName {
  Reduction reduction;
  const char* name;
};
// "mean" is Keras' older spelling of "sum_over_batch_size".
constexpr ReductionName kReductions[] = {{Reduction::SumOverBatchSize, "sum_over_batch_size"},
                                         {Reduction::SumOverBatchSize, "mean"},
                                         {Reduction::Sum, "sum"},
                                         {Reduction::MeanWithSampleWeight, "mean_with_sample_weight"},
                                         {Reduction::None, "none"}};

// Probabilities are clipped away from 0 and 1 before the log, as Keras does.
constexpr double kProbabilityFloor = 1e-7;

Tensor log_probabilities(const Tensor& p) { return ops::log(ops::clamp_min(p, kProbabilityFloor)); }

// The loss averaged (ops::Reduction::Mean) or per term (ops::Reduction::None).
Tensor terms(Spec spec, const Tensor& y_true, const Tensor& y_pred, ops::Reduction reduction) {
  const bool crossentropy = info(spec.kind).crossentropy;
  Tensor target = y_true;
  if (!crossentropy && y_true.shape() != y_pred.shape() && y_true.numel() == y_pred.numel())
    target = ops::reshape(y_true, y_pred.shape());
  switch (spec.kind) {
    case Kind::SparseCategoricalCrossentropy:
    case Kind::CategoricalCrossentropy:
      // From probabilities: softmax(log p) = p / Σp, so the log-probabilities can go
      // through the fused kernel (Keras also renormalises p).
      return ops::cross_entropy(spec.from_logits ? y_pred : log_probabilities(y_pred), target, reduction);
    case Kind::BinaryCrossentropy: {
      if (spec.from_logits) return ops::binary_cross_entropy(y_pred, target, true, reduction);
      // p clipped to [ε, 1 − ε]: 1 − max(1 − max(p, ε), ε).
      Tensor p = ops::clamp_min(y_pred, kProbabilityFloor);
      p = ops::add_scalar(ops::neg(ops::clamp_min(ops::add_scalar(ops::neg(p), 1.0), kProbabilityFloor)), 1.0);
      return ops::binary_cross_entropy(p, target, false, reduction);
    }
    case Kind::MeanSquaredError:
      return ops::mse_loss(y_pred, target, reduction);
    case Kind::MeanAbsoluteError: {
      Tensor t = ops::abs(ops::sub(y_pred, target));
      return reduction == ops::Reduction::Mean ? ops::mean(t) : t;
    }
    case Kind::CausalLanguageModel: {
      // seed: L = −1/T Σ_t log P(x_t | x_<t): the logits at t predict token t + 1.
      if (y_pred.ndim() != 3 || target.ndim() != 2 || y_pred.shape()[1] != target.shape()[1])
        fail("causal_lm", "expects (batch, time, vocab) logits and (batch, time) tokens, got ",
             y_pred.shape(), " and ", target.shape());
      int64_t t = y_pred.shape()[1];
      if (!spec.from_logits)
        return ops::cross_entropy(log_probabilities(ops::slice(y_pred, 1, 0, t - 1, 1)),
                                  ops::slice(target, 1, 1, t, 1), reduction);
      // Every position is scored, the last against a repeat of the last token (a valid
      // class), and its loss dropped afterwards: the kernel reads the (B, T, V) logits in
      // place instead of a copy of the shifted slice, and the backward writes their
      // gradient in one pass (zero rows at the dropped positions) instead of scattering
      // the slice's into zeros.
      Tensor next_tokens =
          ops::cat({ops::slice(target, 1, 1, t, 1), ops::slice(target, 1, t - 1, t, 1)}, 1);
      Tensor per_position = ops::slice(
          ops::cross_entropy(y_pred, next_tokens, ops::Reduction::None), 1, 0, t - 1, 1);
      return reduction == ops::Reduction::Mean ? ops::mean(per_position) : per_position;
    }
  }
  return {};
}

// w (a leading part of the values' shape) shaped to broadcast over the values.
Tensor broadcast_weights(const char* op, const Tensor& values, const Tensor& w, const Tensor& sample_weight) {
  Dims shape = w.shape();
  bool prefix = shape.size() <= values.shape().size() &&
                std::equal(shape.begin(), shape.end(), values.shape().begin());
  if (!prefix)
    fail(op, "sample weights of shape ", sample_weight.shape(), " do not fit loss terms of shape ",
         values.shape(), "; expected one weight per sample or per leading position");
  while (shape.size() < values.shape().size()) shape.push_back(1);
  return ops::reshape(w, shape);
}

double inverse_count(int64_t count) { return 1.0 / static_cast<double>(std::max<int64_t>(count, 1)); }

// reduce() with `w` the weights to apply (sample_weight itself, or a slice of it).
Tensor reduce_weighted(const char* op, const Tensor& values, const Tensor& w, const Tensor& sample_weight,
                       Reduction reduction) {
  if (!w.defined()) {
    if (values.ndim() == 0 || reduction == Reduction::None) return values;
    return reduction == Reduction::Sum ? ops::sum(values) : ops::mean(values);
  }
  if (values.ndim() == 0) {
    switch (reduction) {
      case Reduction::SumOverBatchSize:
      case Reduction::None:
        return ops::mul(values, ops::mean(w));
      case Reduction::Sum:
        return ops::mul(values, ops::sum(w));
      case Reduction::MeanWithSampleWeight:
        return values;
    }
  }
  Tensor wb = broadcast_weights(op, values, w, sample_weight);
  Tensor weighted = ops::mul(values, wb);
  if (reduction == Reduction::None) return weighted;
  Tensor total = ops::sum(weighted);
  switch (reduction) {
    case Reduction::SumOverBatchSize:
    case Reduction::None:
      return ops::mul_scalar(total, inverse_count(values.numel()));
    case Reduction::Sum:
      return total;
    case Reduction::MeanWithSampleWeight:
      // Σw over the values: each weight counts once per value it weighs.
      return ops::div(total, ops::mul_scalar(ops::sum(wb), static_cast<double>(values.numel() /
                                                                               std::max<int64_t>(wb.numel(), 1))));
  }
  return total;
}

}  // namespace

Reduction reduction_from_name(const char* op, const std::string& name) {
  for (const ReductionName& entry : kReductions)
    if (name == entry.name) return entry.reduction;
  std::string known;
  for (const ReductionName& entry : kReductions) known += cat(known.empty() ? "" : ", ", entry.name);
  fail(op, "unknown reduction '", name, "'; expected one of ", known);
}

std::vector<const char*> reduction_names() {
  std::vector<const char*> names;
  for (const ReductionName& entry : kReductions) names.push_back(entry.name);
  return names;
}

Tensor values(Spec spec, const Tensor& y_true, const Tensor& y_pred) {
  return terms(spec, y_true, y_pred, ops::Reduction::None);
}

Tensor reduce(const char* op, const Tensor& values, const Tensor& sample_weight, Reduction reduction) {
  return reduce_weighted(op, values, sample_weight, sample_weight, reduction);
}

Tensor loss(const char* op, Spec spec, const Tensor& y_true, const Tensor& y_pred, const Tensor& sample_weight,
            Reduction reduction) {
  if (!sample_weight.defined() && reduction == Reduction::SumOverBatchSize)
    return terms(spec, y_true, y_pred, ops::Reduction::Mean);
  Tensor t = values(spec, y_true, y_pred);
  Tensor w = sample_weight;
  // The token at t weighs the prediction made at t − 1.
  if (spec.kind == Kind::CausalLanguageModel && w.defined() && w.ndim() == 2)
    w = ops::slice(w, 1, 1, w.shape()[1], 1);
  return reduce_weighted(op, t, w, sample_weight, reduction);
}

}  // namespace steepest::losses
