// The optimizers' per-element update rules and their coefficients, shared by the CPU
// loops (cpp/cpu/optim.cpp) and the CUDA kernels (cuda/optim.cu), so that both backends
// evaluate the seed's formulas in the same order and in the parameter's type T. A rule
// updates one element; the backends own the loops, the threads and the reductions.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define STEEPEST_RULE __host__ __device__ inline
#else
#define STEEPEST_RULE inline
#endif

namespace steepest::rules {

template <class T>
STEEPEST_RULE T square_root(T x) {
#ifdef __CUDA_ARCH__
  return ::sqrt(x);  // CUDA's device overloads (float and double)
#else
  return std::sqrt(x);
#endif
}

// ------------------------------------------------------------------ SGD and RMSProp

template <class T>
struct Sgd {
  T lr, momentum, keep, weight_decay, scale;  // keep = 1 − dampening
  T from_grad, from_velocity;                 // the step: from_grad·g + from_velocity·v
};

template <class T>
Sgd<T> sgd_coefficients(double lr, double momentum, double dampening, bool nesterov,
                        double weight_decay, double scale) {
  return {T(lr),
          T(momentum),
          T(1.0 - dampening),
          T(weight_decay),
          T(scale),
          nesterov ? T(1.0 - dampening) : T(0),
          nesterov ? T(momentum) : T(1)};
}

// seed: θ = θ − η∇J(θ)
template <class T>
STEEPEST_RULE void sgd_step(T& p, T g, const Sgd<T>& c) {
  p -= c.lr * (c.scale * g + c.weight_decay * p);
}

template <class T>
STEEPEST_RULE void sgd_momentum_step(T& p, T g, T& v, const Sgd<T>& c) {
  const T gi = c.scale * g + c.weight_decay * p;
  const T vi = c.momentum * v + c.keep * gi;  // seed: v = βv + (1−β)g when d = β
  v = vi;
  // seed: momentum θ −= ηv; Nesterov kept at the look-ahead φ = θ − ηβv:
  // φ −= η((1−d)g + βv)
  p -= c.lr * (c.from_grad * gi + c.from_velocity * vi);
}

template <class T>
struct Rmsprop {
  T lr, rho, mix, eps, weight_decay, scale;
};

template <class T>
Rmsprop<T> rmsprop_coefficients(double lr, double rho, double eps, double weight_decay,
                                double scale) {
  return {T(lr), T(rho), T(1.0 - rho), T(eps), T(weight_decay), T(scale)};
}

template <class T>
STEEPEST_RULE void rmsprop_step(T& p, T g, T& mean_square, const Rmsprop<T>& c) {
  const T gi = c.scale * g + c.weight_decay * p;
  // seed: RMSProp — E[g²] = ρE[g²] + (1−ρ)g², θ −= η g/(√E[g²] + ε)
  const T ei = c.rho * mean_square + c.mix * gi * gi;
  mean_square = ei;
  p -= c.lr * gi / (square_root(ei) + c.eps);
}

// ------------------------------------------------------------------ AdaGrad and Lion

template <class T>
struct Adagrad {
  T lr, eps, weight_decay, scale;
};

template <class T>
Adagrad<T> adagrad_coefficients(double lr, double eps, double weight_decay, double scale) {
  return {T(lr), T(eps), T(weight_decay), T(scale)};
}

template <class T>
STEEPEST_RULE void adagrad_step(T& p, T g, T& sum_square, const Adagrad<T>& c) {
  const T gi = c.scale * g + c.weight_decay * p;
  // AdaGrad (the seed's RMSProp without the decay): G = Σg², θ −= η g/(√G + ε)
  const T si = sum_square + gi * gi;
  sum_square = si;
  p -= c.lr * gi / (square_root(si) + c.eps);
}

template <class T>
struct Lion {
  T lr, beta1, mix1, beta2, mix2, decay, scale;
};

template <class T>
Lion<T> lion_coefficients(double lr, double beta1, double beta2, double decay, double scale) {
  return {T(lr), T(beta1), T(1.0 - beta1), T(beta2), T(1.0 - beta2), T(decay), T(scale)};
}

// Chen et al. 2023, Algorithm 2: c = β₁m + (1−β₁)g, θ −= η(sign(c) + λθ),
// m = β₂m + (1−β₂)g.
template <class T>
STEEPEST_RULE void lion_step(T& p, T g, T& m, const Lion<T>& c) {
  const T gi = c.scale * g;
  const T interpolated = c.beta1 * m + c.mix1 * gi;
  const T sign = interpolated > T(0) ? T(1) : interpolated < T(0) ? T(-1) : T(0);
  p -= c.lr * (sign + c.decay * p);
  m = c.beta2 * m + c.mix2 * gi;
}

// ------------------------------------------------------------------------ Sophia

template <class T>
struct Sophia {
  T lr, beta1, mix1, gamma, eps, decay, scale;
};

template <class T>
Sophia<T> sophia_coefficients(double lr, double beta1, double gamma, double eps, double decay,
                              double scale) {
  return {T(lr), T(beta1), T(1.0 - beta1), T(gamma), T(eps), T(decay), T(scale)};
}

// Liu et al. 2023, Algorithm 3 (h, the Hessian-diagonal EMA, is refreshed outside, every
// k steps): m = β₁m + (1−β₁)g; θ −= ηλθ; θ −= η·clip(m / max(γh, ε), 1). A negative or
// tiny h gives max(γh, ε) = ε, so the step falls back to η·sign(m).
template <class T>
STEEPEST_RULE void sophia_step(T& p, T g, T& m, T h, const Sophia<T>& c) {
  const T mi = c.beta1 * m + c.mix1 * c.scale * g;
  m = mi;
  p -= c.lr * c.decay * p;
  const T curvature = c.gamma * h > c.eps ? c.gamma * h : c.eps;
  const T ratio = mi / curvature;
  p -= c.lr * (ratio > T(1) ? T(1) : ratio < T(-1) ? T(-1) : ratio);
}

// --------------------------------------------------------------------- Adam family

template <class T>
struct Adam {
  T lr, beta1, mix1, beta2, mix2, eps, inv_bc1, inv_bc2;
  T l2, decay, scale;  // λ into the gradient, decoupled λ, clip factor
};

template <class T>
Adam<T> adam_coefficients(double lr, double beta1, double beta2, double eps, int64_t step,
                          double l2, double decay, double scale) {
  // seed: Adam's bias correction divides by 1 − βᵗ
  const double t = static_cast<double>(step);
  return {T(lr),    T(beta1), T(1.0 - beta1), T(beta2), T(1.0 - beta2), T(eps),
          T(1.0 / (1.0 - std::pow(beta1, t))), T(1.0 / (1.0 - std::pow(beta2, t))),
          T(l2),    T(decay), T(scale)};
}

// seed: Adam — m̂/(√v̂ + ε) with m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ)
template <class T>
STEEPEST_RULE T adam_direction(T m, T v, const Adam<T>& c) {
  return (m * c.inv_bc1) / (square_root(v * c.inv_bc2) + c.eps);
}

template <class T>
STEEPEST_RULE void adam_step(T& p, T g, T& m, T& v, const Adam<T>& c) {
  const T gi = c.scale * g + c.l2 * p;
  const T mi = c.beta1 * m + c.mix1 * gi;       // m = β₁m + (1−β₁)g
  const T vi = c.beta2 * v + c.mix2 * gi * gi;  // v = β₂v + (1−β₂)g²
  m = mi;
  v = vi;
  // AdamW: θ −= η(m̂/(√v̂+ε) + λθ); decay is 0 for Adam
  p -= c.lr * (adam_direction(mi, vi, c) + c.decay * p);
}

// Lamb's moments; returns r + λθ, the update whose norm the trust ratio divides by.
template <class T>
STEEPEST_RULE T lamb_moments_step(T p, T g, T& m, T& v, const Adam<T>& c) {
  const T gi = c.scale * g;
  const T mi = c.beta1 * m + c.mix1 * gi;
  const T vi = c.beta2 * v + c.mix2 * gi * gi;
  m = mi;
  v = vi;
  return adam_direction(mi, vi, c) + c.decay * p;
}

// θ −= lr·(r + λθ), lr already multiplied by the trust ratio.
template <class T>
STEEPEST_RULE void lamb_apply_step(T& p, T m, T v, const Adam<T>& c) {
  p -= c.lr * (adam_direction(m, v, c) + c.decay * p);
}

// ------------------------------------------------------------------------ Adafactor

// (s·g)² in double after rounding s·g to T: the term of the factored moments' means.
template <class T>
STEEPEST_RULE double scaled_square(T s, T g) {
  const double gs = static_cast<T>(s * g);
  return gs * gs;
}

// A factor's EMA: F = β̂F + (1−β̂)·(mean(g²) + ε₁).
template <class T>
STEEPEST_RULE T factor_ema(T factor, double mean_square, double beta, double eps1) {
  return static_cast<T>(beta * factor + (1.0 - beta) * (mean_square + eps1));
}

// v̂_ij = R_i C_j / mean(R) as 1/√(R_i/mean(R)) and 1/√C_j: each factor is O(1) or at
// least ε₁, so neither underflows in float32 the way the product R_i C_j (≥ ε₁²) would.
STEEPEST_RULE double inverse_root(double x) { return 1.0 / square_root(x); }

// U = s·g·inv_row·inv_col: Σ U² (moments) and θ = keep·θ − α·U (apply) must see the
// same U, so both go through this expression.
template <class T>
STEEPEST_RULE T factored_u(T s, T g, T inv_row, T inv_col) {
  return s * g * inv_row * inv_col;
}

// The full (unfactored) second moment v = β̂v + (1−β̂)(g² + ε₁) of gs = s·g, and
// U = s·g/√v.
template <class T>
STEEPEST_RULE T full_moment(T gs, T v, T beta, T mix, T eps1) {
  return beta * v + mix * (gs * gs + eps1);
}

template <class T>
STEEPEST_RULE T full_u(T s, T g, T v) {
  return s * g / square_root(v);
}

}  // namespace steepest::rules
