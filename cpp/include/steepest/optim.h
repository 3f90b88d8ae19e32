// Optimizers, learning-rate schedules and gradient clipping: the update rules of the
// seed's 算法演进 and 主流 sections (SGD with the seed's momentum and Nesterov look-ahead,
// AdaGrad, RMSProp, Adam, AdamW) plus Lion, Lamb and Adafactor. The per-element arithmetic runs in the
// fused kernels of kernels.def; this layer validates hyperparameters, owns the
// per-parameter state, counts steps and computes the per-tensor and global scalars
// (clipping factor, Lamb's trust ratio, Adafactor's step size).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "steepest/tensor.h"

namespace steepest::dist {
class Communicator;
}

namespace steepest::optim {

// ---------------------------------------------------------------------------- schedules

// A learning rate as a function of the optimizer's step count (its `iterations`).
class Schedule {
 public:
  virtual ~Schedule() = default;
  virtual double operator()(int64_t step) const = 0;
};

class Constant final : public Schedule {
 public:
  // owner names the optimizer in the error for a bad value (a float learning_rate).
  explicit Constant(double learning_rate, const char* owner = "Constant");
  double operator()(int64_t step) const override { return learning_rate; }
  double learning_rate;
};

// Linear warmup from 0 to peak over warmup_steps, then a half cosine from peak down to
// final over the remaining total_steps − warmup_steps; final afterwards.
class WarmupCosine final : public Schedule {
 public:
  WarmupCosine(double peak_learning_rate, int64_t warmup_steps, int64_t total_steps,
               double final_learning_rate);
  double operator()(int64_t step) const override;
  double peak_learning_rate, final_learning_rate;
  int64_t warmup_steps, total_steps;
};

// Keras CosineDecay: initial · ((1 − α)·½(1 + cos(π·min(step, decay_steps)/decay_steps)) + α).
class CosineDecay final : public Schedule {
 public:
  CosineDecay(double initial_learning_rate, int64_t decay_steps, double alpha);
  double operator()(int64_t step) const override;
  double initial_learning_rate;
  int64_t decay_steps;
  double alpha;
};

// initial · gamma^⌊step / step_size⌋ (PyTorch's StepLR).
class StepDecay final : public Schedule {
 public:
  StepDecay(double initial_learning_rate, int64_t step_size, double gamma);
  double operator()(int64_t step) const override;
  double initial_learning_rate;
  int64_t step_size;
  double gamma;
};

// --------------------------------------------------------------------------- optimizers

// What an optimizer keeps for one parameter: how many updates it has applied (the t of
// bias correction and of Adafactor's decay) and its named slots (m, v, velocity ...).
// Slots have the parameter's dtype (float32, or float64 for float64 parameters).
struct ParamState {
  int64_t step = 0;
  std::vector<std::pair<std::string, Tensor>> slots;
  bool empty() const { return step == 0 && slots.empty(); }
};

struct SlotSpec {
  std::string name;
  Dims shape;
  double initial_value = 0.0;  // of every element when the state is created
};

// Which parameters of a step get weight decay, by position (what Keras'
// exclude_from_weight_decay decides per variable). An empty mask decays every parameter
// but those excluded by identity.
using DecayMask = std::vector<bool>;

class Optimizer {
 public:
  virtual ~Optimizer() = default;

  // Updates, in place, every parameter whose grad is defined; the others are skipped.
  // State is matched to parameters by their position in `params`, so pass the same
  // list in the same order on every call. shards: the group whose ranks each hold the grads
  // of their own parameters only (ZeRO stage 1), over which clipnorm takes the global norm.
  // decay: see DecayMask; a flat piece of a parameter (ZeRO) carries its parameter's choice.
  void step(const std::vector<Tensor>& params, dist::Communicator* shards = nullptr,
            const DecayMask& decay = {});

  // Keras' exclude_from_weight_decay: the tensors of var_list, and parameters whose name
  // (Keras' variable path, "dense/bias") contains one of var_names, get no weight decay
  // (decoupled or L2). Replaces earlier exclusions.
  void exclude_from_weight_decay(std::vector<Tensor> var_list, std::vector<std::string> var_names);
  const std::vector<std::string>& excluded_names() const { return excluded_names_; }
  // The weight-decay choice of each of `params`, named by `names` (same length).
  DecayMask decay_mask(const std::vector<Tensor>& params, const std::vector<std::string>& names) const;

  const std::string& name() const { return name_; }
  // Number of steps taken; the schedule is evaluated here.
  int64_t iterations() const { return iterations_; }
  // The schedule's value at iterations(), checked to be finite and non-negative.
  double learning_rate() const;
  const std::shared_ptr<const Schedule>& schedule() const { return schedule_; }
  // Replaces the learning rate in place (a LearningRateScheduler callback between
  // epochs); state and iterations are kept.
  void set_learning_rate(std::shared_ptr<const Schedule> learning_rate);

  // The slots this optimizer keeps for `param`, in the order updates use them.
  virtual std::vector<SlotSpec> slot_specs(const Tensor& param) const = 0;
  // Whether an element's update depends only on that element and on scalars shared by
  // all (learning rate, clip factor): then any slice of a parameter can be updated on its
  // own, with slots of the slice's shape — what ZeRO's flat shards need.
  virtual bool elementwise() const { return true; }
  // Bytes of state for `params` once each has been stepped (step counters excluded).
  int64_t state_size_bytes(const std::vector<Tensor>& params) const;

  // Curvature-aware rules (Sophia): whether the next step() wants an estimate of the
  // diagonal of the loss's Hessian, handed to update_curvature() before it. The fit loop
  // computes one (hutchinson_hessian_diagonal) only when asked.
  virtual bool wants_curvature() const { return false; }
  // Takes such an estimate for `params` (by position, as step() gets them; an undefined
  // entry for a parameter without one). Fails for a rule that keeps no curvature.
  virtual void update_curvature(const std::vector<Tensor>& params,
                                const std::vector<Tensor>& estimates);

  // Per-parameter state by position; an entry is empty() for a parameter never stepped.
  const std::vector<ParamState>& state() const { return state_; }
  // Replaces all state; slots are checked against each parameter on its next step.
  void load_state(std::vector<ParamState> state, int64_t iterations);

 protected:
  Optimizer(std::string name, std::shared_ptr<const Schedule> learning_rate,
            double weight_decay, std::optional<double> clipnorm);
  // One parameter's update: state.step already counts this step, state.slots follow
  // slot_specs(param); grad is contiguous, to be read as grad_scale · grad. weight_decay
  // is the optimizer's, or 0 for a parameter excluded from it.
  virtual void update(Tensor& param, const Tensor& grad, ParamState& state, double lr,
                      double grad_scale, double weight_decay) = 0;
  // The state of parameter `index`, created or checked as step() does: for a rule that
  // changes its state between steps (update_curvature).
  ParamState& state_for(size_t index, const Tensor& param);

 private:
  // Creates the zero state of parameter `index` or checks a loaded one against it.
  void prepare_state(size_t index, const Tensor& param);
  bool excluded_by_identity(const Tensor& param) const;

  double weight_decay_;
  std::vector<Tensor> excluded_tensors_;
  std::vector<std::string> excluded_names_;

  std::string name_;
  std::shared_ptr<const Schedule> schedule_;
  std::optional<double> clipnorm_;
  int64_t iterations_ = 0;
  std::vector<ParamState> state_;
};

// The seed's SGD with momentum β: v = βv + (1−d)g, θ −= ηv, where dampening d defaults
// to β (the seed's EMA) and d = 0 gives PyTorch's v = βv + g. nesterov evaluates the
// gradient at the seed's look-ahead θ − ηβv by storing the look-ahead point itself as
// the parameter: the model's weights are the look-ahead weights φ = θ − ηβv.
class SGD final : public Optimizer {
 public:
  SGD(std::shared_ptr<const Schedule> learning_rate, double momentum, bool nesterov,
      std::optional<double> dampening, double weight_decay, std::optional<double> clipnorm);
  std::vector<SlotSpec> slot_specs(const Tensor& param) const override;

 private:
  void update(Tensor& param, const Tensor& grad, ParamState& state, double lr,
              double grad_scale, double weight_decay) override;
  double momentum_, dampening_;
  bool nesterov_;
};

class RMSprop final : public Optimizer {
 public:
  RMSprop(std::shared_ptr<const Schedule> learning_rate, double rho, double epsilon,
          double weight_decay, std::optional<double> clipnorm);
  std::vector<SlotSpec> slot_specs(const Tensor& param) const override;

 private:
  void update(Tensor& param, const Tensor& grad, ParamState& state, double lr,
              double grad_scale, double weight_decay) override;
  double rho_, epsilon_;
};

// AdaGrad (Duchi et al. 2011) in torch's form: G = Σg² (from initial_accumulator_value),
// θ −= ηg/(√G + ε); weight decay as L2 in the gradient.
class Adagrad final : public Optimizer {
 public:
  Adagrad(std::shared_ptr<const Schedule> learning_rate, double initial_accumulator_value,
          double epsilon, double weight_decay, std::optional<double> clipnorm);
  std::vector<SlotSpec> slot_specs(const Tensor& param) const override;

 private:
  void update(Tensor& param, const Tensor& grad, ParamState& state, double lr,
              double grad_scale, double weight_decay) override;
  double initial_accumulator_value_, epsilon_;
};

// Lion (Chen et al. 2023): the sign of an interpolated momentum, decoupled weight decay.
class Lion final : public Optimizer {
 public:
  Lion(std::shared_ptr<const Schedule> learning_rate, double beta_1, double beta_2,
       double weight_decay, std::optional<double> clipnorm);
  std::vector<SlotSpec> slot_specs(const Tensor& param) const override;

 private:
  void update(Tensor& param, const Tensor& grad, ParamState& state, double lr,
              double grad_scale, double weight_decay) override;
  double beta_1_, beta_2_;
};

// Sophia-H (Liu et al. 2023, "Sophia: A Scalable Stochastic Second-order Optimizer",
// Algorithm 3): m = β₁m + (1−β₁)g; every update_period steps (the first included)
// h = β₂h + (1−β₂)ĥ with Hutchinson's ĥ = u ⊙ (H·u) (update_curvature); θ −= ηλθ;
// θ −= η·clip(m / max(γh, ε), 1), clipped elementwise to [−1, 1].
class Sophia final : public Optimizer {
 public:
  Sophia(std::shared_ptr<const Schedule> learning_rate, double beta_1, double beta_2, double gamma,
         double epsilon, int64_t update_period, double weight_decay,
         std::optional<double> clipnorm);
  std::vector<SlotSpec> slot_specs(const Tensor& param) const override;
  bool wants_curvature() const override { return iterations() % update_period_ == 0; }
  void update_curvature(const std::vector<Tensor>& params,
                        const std::vector<Tensor>& estimates) override;

 private:
  void update(Tensor& param, const Tensor& grad, ParamState& state, double lr,
              double grad_scale, double weight_decay) override;
  double beta_1_, beta_2_, gamma_, epsilon_;
  int64_t update_period_;
};

// Hutchinson's estimate of the diagonal of the Hessian H of a loss L (Sophia-H): u ⊙ (H·u)
// per parameter, with u a Rademacher (±1) vector from the global generator. `grads` are ∇L
// for `params`, recorded with create_graph; H·u = ∇(Σ ∇L·u). An undefined grad gives an
// undefined estimate; a parameter the gradients do not depend on gets zeros. The graph
// of the gradients is kept.
std::vector<Tensor> hutchinson_hessian_diagonal(const std::vector<Tensor>& params,
                                                const std::vector<Tensor>& grads);

// Adam with L2 weight decay in the gradient; AdamW decouples it.
class Adam : public Optimizer {
 public:
  Adam(std::shared_ptr<const Schedule> learning_rate, double beta_1, double beta_2,
       double epsilon, double weight_decay, std::optional<double> clipnorm);
  std::vector<SlotSpec> slot_specs(const Tensor& param) const override;

 protected:
  Adam(std::string name, std::shared_ptr<const Schedule> learning_rate, double beta_1,
       double beta_2, double epsilon, double weight_decay, std::optional<double> clipnorm,
       bool decoupled);

 private:
  void update(Tensor& param, const Tensor& grad, ParamState& state, double lr,
              double grad_scale, double weight_decay) override;
  double beta_1_, beta_2_, epsilon_;
  bool decoupled_;
};

class AdamW final : public Adam {
 public:
  AdamW(std::shared_ptr<const Schedule> learning_rate, double beta_1, double beta_2,
        double epsilon, double weight_decay, std::optional<double> clipnorm);
};

// Muon (Jordan et al. 2024; torch.optim.Muon's rule): a 2-D weight's momentum
// B = μB + (1−μ)G — Nesterov: U = (1−μ)G + μB, else U = B — is orthogonalised by
// ns_steps quintic Newton–Schulz iterations X ← aX + (bA + cA²)X, A = XXᵀ, started from
// X = U/max(‖U‖_F, ε) in the wide orientation; then θ = (1 − ηλ)θ − η·√max(1, rows/cols)·X.
// Every other parameter (biases, norms, convolution kernels, embeddings' vectors) takes
// AdamW's step with learning rate η·adam_lr_ratio (Keras' Muon).
class Muon final : public Optimizer {
 public:
  Muon(std::shared_ptr<const Schedule> learning_rate, double momentum, bool nesterov,
       int64_t ns_steps, double epsilon, double adam_beta_1, double adam_beta_2,
       double adam_lr_ratio, double weight_decay, std::optional<double> clipnorm);
  std::vector<SlotSpec> slot_specs(const Tensor& param) const override;
  bool elementwise() const override { return false; }

  // The quintic's coefficients (Jordan et al.): the largest slope at 0 that still maps
  // singular values in (0, 1] into about [0.7, 1.2] within five steps.
  static constexpr double kA = 3.4445, kB = -4.7750, kC = 2.0315;

 private:
  void update(Tensor& param, const Tensor& grad, ParamState& state, double lr,
              double grad_scale, double weight_decay) override;
  Tensor orthogonalize(const Tensor& u) const;
  double momentum_;
  bool nesterov_;
  int64_t ns_steps_;
  double epsilon_, adam_beta_1_, adam_beta_2_, adam_lr_ratio_;
};

// You et al. 2019 as optax implements it: r = m̂/(√v̂+ε), u = r + λθ, and per parameter
// tensor θ −= η·(‖θ‖/‖u‖)·u, the ratio taken as 1 when either norm is 0.
class Lamb final : public Optimizer {
 public:
  Lamb(std::shared_ptr<const Schedule> learning_rate, double beta_1, double beta_2,
       double epsilon, double weight_decay, std::optional<double> clipnorm);
  std::vector<SlotSpec> slot_specs(const Tensor& param) const override;
  bool elementwise() const override { return false; }

 private:
  void update(Tensor& param, const Tensor& grad, ParamState& state, double lr,
              double grad_scale, double weight_decay) override;
  double beta_1_, beta_2_, epsilon_;
};

// Shazeer & Stern 2018 without momentum: the second moment of g² + ε₁ with decay
// β̂₂ = 1 − t^beta_2_decay, factored into row and column means over the last two axes
// for ndim ≥ 2 (state n + m for an n×m matrix); U = g/√v̂ clipped to
// U / max(1, RMS(U)/clip_threshold). relative_step: α = max(ε₂, RMS(θ))·min(η, 1/√t),
// with η = 1e-2 when no learning rate is given; else α = η. Decoupled weight decay
// θ −= ηλθ, as torch.optim.Adafactor does.
class Adafactor final : public Optimizer {
 public:
  // learning_rate may be null (relative_step only).
  Adafactor(std::shared_ptr<const Schedule> learning_rate, double beta_2_decay,
            double epsilon_1, double epsilon_2, double clip_threshold, bool relative_step,
            double weight_decay, std::optional<double> clipnorm);
  std::vector<SlotSpec> slot_specs(const Tensor& param) const override;
  bool elementwise() const override { return false; }

  static constexpr double kDefaultLearningRate = 1e-2;

 private:
  void update(Tensor& param, const Tensor& grad, ParamState& state, double lr,
              double grad_scale, double weight_decay) override;
  double beta_2_decay_, epsilon_1_, epsilon_2_, clip_threshold_;
  bool relative_step_;
};

// ------------------------------------------------------------------------- loss scaling

// Dynamic loss scaling for float16 mixed precision (混合精度训练), with the state machine
// of PyTorch's GradScaler. backward runs on loss · scale so that small gradients do not
// flush to zero in float16; the float32 gradients are divided by the scale again before
// clipping and the update (exact for the power-of-two scales the defaults produce). A
// step whose gradients hold inf or NaN is skipped entirely — parameters, optimizer
// state, step count and learning-rate schedule untouched — and the scale is multiplied
// by backoff_factor (no floor); after growth_interval consecutive finite steps it is
// multiplied by growth_factor, adopted only while it stays finite in float32.
//
// Per step: scale(loss).backward(); [unscale(params), e.g. to clip or inspect];
// step(optimizer, params); update().
class LossScaler {
 public:
  LossScaler(double initial_scale, double growth_factor, double backoff_factor,
             int64_t growth_interval);

  // loss · scale in float32 (a 16-bit loss is widened first); differentiable.
  Tensor scale(const Tensor& loss) const;
  // Divides every defined grad by the scale in place and records whether all are
  // finite; returns that. At most once between two update() calls, before step().
  // shards (ZeRO stage 1): the ranks that hold the other gradients; a step is finite only
  // when it is on every one of them.
  bool unscale(const std::vector<Tensor>& params, dist::Communicator* shards = nullptr);
  // Unscales (unless unscale() ran), then steps the optimizer, or skips the step when
  // a gradient is not finite. Returns whether the optimizer stepped.
  bool step(Optimizer& optimizer, const std::vector<Tensor>& params,
            dist::Communicator* shards = nullptr, const DecayMask& decay = {});
  // Backs the scale off after a skipped step, grows it after growth_interval finite
  // steps in a row; then the next step may begin.
  void update();

  double get_scale() const { return scale_; }
  // Finite steps since the scale last changed.
  int64_t growth_tracker() const { return growth_tracker_; }
  double growth_factor() const { return growth_factor_; }
  double backoff_factor() const { return backoff_factor_; }
  int64_t growth_interval() const { return growth_interval_; }
  // Restores the state saved from get_scale() and growth_tracker().
  void load_state(double scale, int64_t growth_tracker);

 private:
  enum class Stage { Ready, Unscaled, Stepped };
  float scale_;  // float32, as the gradients it multiplies (and as torch keeps it)
  double growth_factor_, backoff_factor_;
  int64_t growth_interval_, growth_tracker_ = 0;
  Stage stage_ = Stage::Ready;
  bool found_inf_ = false;
};

// ----------------------------------------------------------------------------- clipping

// √(Σ‖grad‖²) over the params that have a grad.
double global_grad_norm(const std::vector<Tensor>& params);
// Returns the total norm before clipping; when it exceeds max_norm, every grad is
// scaled in place by max_norm / (norm + 1e-6), as torch.nn.utils.clip_grad_norm_.
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

}  // namespace steepest::optim
