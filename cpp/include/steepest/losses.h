// Keras' losses, defined once. Sequential's fit (cpp/model) and st.losses (through the
// bindings) call these same functions, so a loss computed in a custom loop equals the one
// fit trains on: the same probability clamps, reductions and sample-weight handling.
// The losses are composites of differentiable ops: their backward is the chain rule
// through those ops (e.g. the fused softmax + cross-entropy's p − y).
#pragma once

#include <string>
#include <vector>

#include "steepest/ops.h"
#include "steepest/tensor.h"

namespace steepest::losses {

enum class Kind { SparseCategoricalCrossentropy, CategoricalCrossentropy, BinaryCrossentropy,
                  MeanSquaredError, MeanAbsoluteError, CausalLanguageModel };

// What a loss's labels are: values shaped like the output, class indices (one per
// position), or the input's token ids (scored against the next position's prediction).
enum class Labels { Values, ClassIndices, NextTokens };

// The one table of loss names: Python's st.losses.get, compile and the bindings read it.
struct Info {
  Kind kind;
  const char* name;                  // Keras' name, e.g. "mse"
  std::vector<const char*> aliases;  // other Keras spellings, e.g. "mean_squared_error"
  Labels labels;
  bool crossentropy;  // a softmax output fuses into log-softmax; "accuracy" means argmax
};
const std::vector<Info>& table();
const Info& info(Kind kind);
// The entry whose name or alias is `name`; otherwise a ValueError naming op and listing
// the names.
const Info& from_name(const char* op, const std::string& name);

// Keras' reductions of the loss values, each weighted by its sample weight:
// Σ/number of values, Σ, Σ/Σ weights, or the weighted values themselves.
enum class Reduction { SumOverBatchSize, Sum, MeanWithSampleWeight, None };
Reduction reduction_from_name(const char* op, const std::string& name);
// Every accepted name ("mean" is Keras' older spelling of "sum_over_batch_size").
std::vector<const char*> reduction_names();

struct Spec {
  Kind kind = Kind::MeanSquaredError;
  bool from_logits = true;
};

// The loss values: one per element of the output, or one per position (all but the
// class axis) for the cross-entropies. Probabilities are clipped to [1e-7, 1 − 1e-7]
// before a log, as Keras does.
Tensor values(Spec spec, const Tensor& y_true, const Tensor& y_pred);

// `values` weighted by sample_weight (undefined: none) and reduced. The weights cover a
// leading part of the values' shape (one per sample, or per sample and time step) and
// broadcast over the rest; a scalar value is a loss already averaged over the batch and
// stands for each sample's. op names the caller in errors.
Tensor reduce(const char* op, const Tensor& values, const Tensor& sample_weight, Reduction reduction);

// The reduced loss: values() then reduce(), with the mean fused into the loss kernel
// when nothing is weighted. For the causal LM loss, (B, T) weights weigh each target
// token, i.e. the prediction made one step before it.
Tensor loss(const char* op, Spec spec, const Tensor& y_true, const Tensor& y_pred,
            const Tensor& sample_weight = {}, Reduction reduction = Reduction::SumOverBatchSize);

}  // namespace steepest::losses
