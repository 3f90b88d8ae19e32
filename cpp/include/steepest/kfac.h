// K-FAC, Kronecker-factored approximate curvature (Martens & Grosse 2015; Grosse & Martens
// 2016, "KFC", for convolutions). The Fisher block of a layer's kernel is approximated by
// A ⊗ G, A = E[a aᵀ] over the layer's inputs a (a Conv2D layer's im2col patches) and
// G = E[g gᵀ] over the per-example gradients g at its pre-activation output. The layers
// collect both while a model trains (KfacFactors, fed by the forward and by an identity
// autograd node on the output); the optimizer keeps their running averages and steps with
// (A ⊗ G + λI)⁻¹ applied to the kernel's gradient, through the eigenbases of A and G.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "steepest/optim.h"
#include "steepest/tensor.h"

namespace steepest::optim {

// How a tracked kernel's gradient is read as a matrix against the factors: Dense keeps
// (in, out) — rows are A's — and Conv2D (out, in, kh, kw), read as (out, in·kh·kw) — rows
// are G's.
enum class KfacLayout { None, InputRows, OutputRows };

// The statistics one layer gathered since the optimizer last took them. For a batch of N
// examples with T positions each (T = 1 for a Dense layer on (N, in); a Conv2D layer's
// output pixels; the middle axes of a Dense layer on (N, ..., in)), with the rows of a and
// g running over the N·T (example, position) pairs, KFC's estimates are
//   A = (1/N) Σ a aᵀ                (the expected sum over positions),
//   G = (1/(N·T)) Σ (N·g)(N·g)ᵀ     (the per-example gradient N·g undoes the loss's
//                                     1/N mean; averaged over positions).
// Several batches before one step (gradient accumulation, or forwards without a step) are
// averaged.
class KfacFactors {
 public:
  // a: (N·T, K) inputs of the layer.
  void add_inputs(const Tensor& a, int64_t batch);
  // g: (N·T, out) gradient of the mean loss at the layer's pre-activation output.
  void add_output_grads(const Tensor& g, int64_t batch);
  // The averages since the last take (either undefined when none came), and a reset.
  std::pair<Tensor, Tensor> take();

 private:
  Tensor a_sum_, g_sum_;
  int64_t a_batches_ = 0, g_batches_ = 0;
};

// `output` itself, on a node whose backward adds the gradient reaching it to `factors`
// (channel_axis: the axis of the layer's output units) and passes that gradient on
// unchanged. Outside grad mode it returns `output`.
Tensor kfac_output_tap(const Tensor& output, std::shared_ptr<KfacFactors> factors,
                       int64_t channel_axis);

// Conv2D's patches: x (N, C, H, W) as the (N·H'·W', C·kh·kw) matrix of its receptive
// fields, columns in the kernel's (c, i, j) order, for a window of `kernel` taps with
// `stride`, `dilation` and zero `padding` (top, bottom, left, right).
Tensor im2col_rows(const Tensor& x, std::pair<int64_t, int64_t> kernel,
                   std::pair<int64_t, int64_t> stride, std::pair<int64_t, int64_t> dilation,
                   const std::vector<int64_t>& padding);

// Eigendecomposition of the symmetric matrix m (n, n) on the host in float64 (Householder
// tridiagonalisation and implicit QL): m = Q diag(s) Qᵀ, Q's columns the eigenvectors,
// negative eigenvalues (rounding, for a factor) clamped to 0. Returned on m's device in
// m's dtype.
std::pair<Tensor, Tensor> symmetric_eigen(const Tensor& m);

class KFAC final : public Optimizer {
 public:
  // kl_clip (Ba, Grosse & Martens 2017, taken per kernel here): a kernel's preconditioned
  // direction P of gradient V is scaled by min(1, √(kl_clip / (η²⟨P, V⟩))), which bounds
  // the step's predicted change of the model's output distribution; none: unscaled.
  KFAC(std::shared_ptr<const Schedule> learning_rate, double damping, double momentum,
       double weight_decay, double stats_decay, int64_t inverse_update_interval,
       std::optional<double> kl_clip, std::optional<double> clipnorm);
  std::vector<SlotSpec> slot_specs(const Tensor& param) const override;
  bool elementwise() const override { return false; }

  // Preconditions `kernel` from now on with the factors its layer collects into the
  // returned object (the same object when the kernel is already tracked).
  std::shared_ptr<KfacFactors> track(const Tensor& kernel, KfacLayout layout);
  // The layout `param` is tracked with (None: it takes SGD with momentum).
  KfacLayout layout_of(const Tensor& param) const;

  double damping() const { return damping_; }

 private:
  void update(Tensor& param, const Tensor& grad, ParamState& state, double lr,
              double grad_scale, double weight_decay) override;
  struct Tracked {
    Tensor kernel;
    KfacLayout layout;
    std::shared_ptr<KfacFactors> factors;
  };
  const Tracked* find(const Tensor& param) const;

  double damping_, momentum_, stats_decay_;
  int64_t inverse_update_interval_;
  std::optional<double> kl_clip_;
  std::vector<Tracked> tracked_;
};

}  // namespace steepest::optim
