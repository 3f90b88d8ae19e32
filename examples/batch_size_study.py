"""The seed's batch-size claims (梯度下降算法 with Batch Size), measured on a convex problem.

The problem: L2-regularised softmax (multinomial logistic) regression on the bundled
digits, 10 classes, 64 pixels plus a bias column, in float64:

    J(θ) = (1/N) Σᵢ CE(xᵢ θ, yᵢ) + ½ λ ‖θ‖²,     θ ∈ R^{65×10}, N = 1,437.

It is L-smooth with L ≤ λ + ½ λ_max(XᵀX/N) ≈ 5.7 and λ-strongly convex. With λ = 1e-4
the strong convexity only shows after ~1/(ηλ) ≈ 6·10⁴ full-batch steps, so over the
horizons below the problem behaves as the "general convex function" (一般凸函数) of the
seed's statements. J* comes from a long full-batch Nesterov solve (stopped at ‖∇J‖ < 1e-10).

Measured, and compared with the seed's claims:

1. pure SGD (b = 1) with η_k = η₀/√k — the step of the O(1/√k) theorem for general convex
   functions; the seed: O(1/√k). (With η_k ∝ 1/(λk), the strongly convex rate O(1/k)
   applies instead, but only once k ≫ 1/(ηλ): far beyond these horizons for λ = 1e-4.)
2. full-batch GD with η = 1/L; the seed: O(1/ε) iterations, i.e. J − J* = O(1/k).
3. mini-batch SGD with η_k = min(1/L, η₀√(b/k)) (the √ batch rule of
   ``st.optimizers.scale_learning_rate``); the seed: O(1/√(bk) + 1/k).
4. the mini-batch gradient variance E‖g_b − ∇J‖² at a fixed θ for b = 1 … 1024; the
   seed: it shrinks as 1/b. Batches are drawn without replacement, so the exact law is
   σ²/b · (N − b)/(N − 1) (the finite-population correction); the slope is fitted both
   on the corrected values over all b and on the raw values for b ≤ 64 ≪ N.

Suboptimality is the mean over seeds of J(θ_k) − J* at the last iterate, and for pure SGD
also at the running average θ̄_k = (θ₁ + … + θ_k)/k (the iterate the O(1/√k) theorem is
stated for; the last iterate's tight bound is O(log k/√k), Shamir & Zhang 2013), recorded
at log-spaced steps; slopes are least-squares fits of log(J − J*) on log k over
the second half of the recorded steps (past the transient).

    python examples/batch_size_study.py [--steps 20000] [--seeds 2] \
        [--plot docs/img/batch_size_study.png]
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

import steepest as st

LAMBDA = 1e-4
VARIANCE_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Problem(NamedTuple):
    x: np.ndarray  # (N, 65) float64, pixels then a constant 1 (the bias)
    y: np.ndarray  # (N,) int64
    lam: float
    smoothness: float  # L, an upper bound on the Hessian's largest eigenvalue


def load_problem(lam: float = LAMBDA, n: Optional[int] = None) -> Problem:
    """The digits training split as a softmax-regression problem (first ``n`` rows)."""
    (x, y), _ = st.datasets.load_digits()
    if n is not None:
        x, y = x[:n], y[:n]
    x = np.hstack([x.astype(np.float64), np.ones((len(x), 1))])
    # The softmax cross-entropy's Hessian in the logits is ≤ ½ I (Böhning's bound), so
    # ∇²J ≤ ½ λ_max(XᵀX/N) + λ.
    smoothness = 0.5 * float(np.linalg.eigvalsh(x.T @ x / len(x))[-1]) + lam
    return Problem(x, y.astype(np.int64), lam, smoothness)


def objective(theta: st.Tensor, x: st.Tensor, y: st.Tensor, lam: float) -> st.Tensor:
    """J on the rows (x, y): mean cross-entropy plus ½λ‖θ‖²."""
    return st.ops.cross_entropy(x @ theta, y) + (0.5 * lam) * (theta * theta).sum()


class _Data:
    """The problem's arrays as steepest tensors, made once."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.x = st.tensor(problem.x, dtype="float64")
        self.y = st.tensor(problem.y, dtype="int64")

    def loss(self, theta: np.ndarray) -> float:
        with st.no_grad():
            t = st.tensor(theta, dtype="float64")
            return objective(t, self.x, self.y, self.problem.lam).item()

    def gradient(self, theta: np.ndarray, rows: Optional[np.ndarray] = None) -> np.ndarray:
        """∇ of J restricted to ``rows`` (all rows when None): the mini-batch gradient."""
        t = st.tensor(theta, dtype="float64", requires_grad=True)
        if rows is None:
            x, y = self.x, self.y
        else:
            x = st.tensor(self.problem.x[rows], dtype="float64")
            y = st.tensor(self.problem.y[rows], dtype="int64")
        objective(t, x, y, self.problem.lam).backward()
        return t.grad.numpy()


def solve_reference(problem: Problem, grad_tol: float = 1e-9,
                    max_steps: int = 50000) -> np.ndarray:
    """θ* by full-batch Nesterov descent (η = 1/L, β = (√κ − 1)/(√κ + 1)) with function-value
    restarts (O'Donoghue & Candès 2015: the momentum is dropped whenever J goes up), run
    until ‖∇J‖ < grad_tol, so that J(θ) − J* ≤ ‖∇J‖²/(2λ) ≈ 5e-15 at the end."""
    data = _Data(problem)
    kappa = problem.smoothness / problem.lam
    beta = (np.sqrt(kappa) - 1.0) / (np.sqrt(kappa) + 1.0)
    theta = st.zeros((problem.x.shape[1], 10), dtype="float64", requires_grad=True)

    def fresh() -> st.optimizers.SGD:
        return st.optimizers.SGD(1.0 / problem.smoothness, momentum=beta, nesterov=True,
                                 dampening=0.0)

    opt, previous = fresh(), np.inf
    for _ in range(max_steps):
        theta.grad = None
        value = objective(theta, data.x, data.y, problem.lam)
        value.backward()
        if np.linalg.norm(theta.grad.numpy()) < grad_tol:
            return theta.numpy().copy()
        if value.item() > previous:
            opt = fresh()
        previous = value.item()
        opt.step([theta])
    raise RuntimeError(f"[solve_reference] ‖∇J‖ ≥ {grad_tol} after {max_steps} steps")


def checkpoints(steps: int, count: int = 40) -> np.ndarray:
    """About ``count`` log-spaced step numbers in [1, steps]."""
    return np.unique(np.geomspace(1, steps, count).round().astype(np.int64))


def run_sgd(problem: Problem, batch_size: int, steps: int,
            learning_rate: Callable[[int], float], seed: int,
            record: Sequence[int], j_star: float) -> np.ndarray:
    """J − J* at the steps in ``record`` for mini-batch SGD from θ₀ = 0: row 0 at the last
    iterate θ_k, row 1 at the running average θ̄_k = (θ₁ + … + θ_k)/k.

    Each step draws ``batch_size`` distinct rows uniformly (batch_size = N is full-batch
    GD); ``learning_rate(k)`` is the step size of step k = 1, 2, …
    """
    data = _Data(problem)
    n = len(problem.y)
    rng = np.random.default_rng(seed)
    theta = st.zeros((problem.x.shape[1], 10), dtype="float64", requires_grad=True)
    # The optimizer's schedule is evaluated at opt.iterations = k − 1.
    opt = st.optimizers.SGD(lambda it: learning_rate(it + 1))
    wanted = set(int(k) for k in record)
    average = np.zeros(theta.shape)
    out: List[List[float]] = []
    for k in range(1, steps + 1):
        if batch_size >= n:
            x, y = data.x, data.y
        else:
            rows = (rng.choice(n, batch_size, replace=False) if batch_size > 1
                    else rng.integers(n, size=1))
            x = st.tensor(problem.x[rows], dtype="float64")
            y = st.tensor(problem.y[rows], dtype="int64")
        theta.grad = None
        objective(theta, x, y, problem.lam).backward()
        opt.step([theta])
        current = theta.numpy()
        average += (current - average) / k
        if k in wanted:
            out.append([data.loss(current) - j_star, data.loss(average) - j_star])
    return np.array(out).T


def mean_suboptimality(problem: Problem, batch_size: int, steps: int,
                       learning_rate: Callable[[int], float], seeds: int,
                       record: Sequence[int], j_star: float) -> np.ndarray:
    """:func:`run_sgd` averaged over ``seeds`` runs (one run for full-batch GD)."""
    runs = 1 if batch_size >= len(problem.y) else seeds
    return np.mean([run_sgd(problem, batch_size, steps, learning_rate, s, record, j_star)
                    for s in range(runs)], axis=0)


def fit_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log y on log x."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def tail_slope(record: np.ndarray, values: np.ndarray) -> float:
    """:func:`fit_slope` over the second half (in log k) of the recorded steps."""
    keep = record >= np.sqrt(record[-1])
    return fit_slope(record[keep], values[keep])


def gradient_variance(problem: Problem, theta: np.ndarray,
                      batch_sizes: Sequence[int] = VARIANCE_BATCHES, trials: int = 200,
                      seed: int = 0) -> Dict[int, float]:
    """E‖g_b − ∇J‖² at θ, estimated from ``trials`` batches of each size b drawn without
    replacement; g_b is the autograd gradient of J on the batch (the ½λ‖θ‖² term is
    exact in every g_b, so only the data term contributes)."""
    data = _Data(problem)
    rng = np.random.default_rng(seed)
    full = data.gradient(theta)
    n = len(problem.y)
    out: Dict[int, float] = {}
    for b in batch_sizes:
        if not 1 <= b <= n:
            raise ValueError(f"[gradient_variance] batch size {b} is not in [1, {n}]")
        out[b] = float(np.mean([np.sum((data.gradient(theta, rng.choice(n, b, replace=False))
                                        - full) ** 2) for _ in range(trials)]))
    return out


def population_correction(n: int, b: int) -> float:
    """(N − b)/(N − 1): the variance of a without-replacement mean of b of N values,
    relative to σ²/b."""
    return (n - b) / (n - 1)


class Rates(NamedTuple):
    record: np.ndarray
    curves: Dict[str, np.ndarray]  # name -> mean J − J* at record
    batch: Dict[str, int]
    slopes: Dict[str, float]


def rates_study(problem: Problem, theta_star: np.ndarray, steps: int, seeds: int,
                batch_sizes: Sequence[int] = (4, 16, 64), eta0: float = 0.5) -> Rates:
    """Suboptimality curves of pure SGD, GD and mini-batch SGD, and their tail slopes."""
    j_star = _Data(problem).loss(theta_star)
    lr_max = 1.0 / problem.smoothness
    record = checkpoints(steps)
    variants: Dict[str, tuple] = {
        "SGD b=1, η=η₀/√k": (1, lambda k: min(lr_max, eta0 / np.sqrt(k))),
        "GD b=N, η=1/L": (len(problem.y), lambda k: lr_max),
    }
    for b in batch_sizes:
        variants[f"mini-batch b={b}, η=min(1/L, η₀√(b/k))"] = (
            b, lambda k, b=b: min(lr_max, eta0 * np.sqrt(b / k)))
    curves: Dict[str, np.ndarray] = {}
    batch: Dict[str, int] = {}
    for name, (b, lr) in variants.items():
        last, averaged = mean_suboptimality(problem, b, steps, lr, seeds, record, j_star)
        curves[name], batch[name] = last, b
        if b == 1:
            name = "SGD b=1, averaged iterate θ̄_k"
            curves[name], batch[name] = averaged, b
    slopes = {name: tail_slope(record, c) for name, c in curves.items()}
    return Rates(record, curves, batch, slopes)


def plot(rates: Rates, variance: Dict[int, float], n: int, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: {path} not written")
        return
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for name, c in rates.curves.items():
        axes[0].loglog(rates.record, c, label=name)
        axes[1].loglog(rates.record * rates.batch[name], c, label=name)
    k = rates.record.astype(float)
    ref = rates.curves[next(iter(rates.curves))][-1]
    axes[0].loglog(k, ref * np.sqrt(k[-1] / k), "k:", label="∝ 1/√k")
    axes[0].set(xlabel="step k", ylabel="J(θ_k) − J*", title="suboptimality vs steps")
    axes[1].set(xlabel="samples seen b·k", ylabel="J(θ_k) − J*", title="suboptimality vs samples")
    axes[0].legend(fontsize=7)
    bs = np.array(sorted(variance), float)
    v = np.array([variance[int(b)] for b in bs])
    corrected = v / np.array([population_correction(n, int(b)) for b in bs])
    axes[2].loglog(bs, v, "o-", label="measured E‖g_b − ∇J‖²")
    axes[2].loglog(bs, corrected, "s--", label="measured / ((N−b)/(N−1))")
    axes[2].loglog(bs, corrected[0] / bs, "k:", label="σ²/b")
    axes[2].set(xlabel="batch size b", title="mini-batch gradient variance at θ₀ = 0")
    axes[2].legend(fontsize=7)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"saved {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--plot", default="batch_size_study.png")
    args = parser.parse_args()
    st.manual_seed(0)
    start = time.perf_counter()
    problem = load_problem()
    n = len(problem.y)
    theta_star = solve_reference(problem)
    print(f"N = {n}, λ = {problem.lam:g}, L = {problem.smoothness:.3f}, "
          f"J* = {_Data(problem).loss(theta_star):.12f}")

    variance = {}
    for where, theta in (("θ₀ = 0", np.zeros_like(theta_star)), ("θ*", theta_star)):
        variance[where] = v = gradient_variance(problem, theta, trials=args.trials)
        print(f"\nmini-batch gradient variance at {where} "
              f"({args.trials} batches per size, drawn without replacement)")
        print(f"{'b':>6} {'E‖g_b − ∇J‖²':>14} {'(N−b)/(N−1)':>12} {'corrected':>11} "
              f"{'b·corrected':>12}")
        for b in v:
            c = v[b] / population_correction(n, b)
            print(f"{b:>6} {v[b]:>14.5f} {population_correction(n, b):>12.4f} {c:>11.5f} "
                  f"{b * c:>12.4f}")
        bs = list(v)
        corrected = [v[b] / population_correction(n, b) for b in bs]
        small = [b for b in bs if b <= 64]
        print(f"slope, corrected, all b: {fit_slope(bs, corrected):+.3f}   "
              f"slope, raw, b ≤ 64: {fit_slope(small, [v[b] for b in small]):+.3f}   "
              f"slope, raw, all b: {fit_slope(bs, [v[b] for b in bs]):+.3f}   (seed: −1)")

    rates = rates_study(problem, theta_star, args.steps, args.seeds)
    print(f"\nsuboptimality J(θ_k) − J*, mean of {args.seeds} seeds, η₀ = 0.5, "
          f"1/L = {1 / problem.smoothness:.3f}")
    idx = sorted({int(np.argmin(np.abs(np.log(rates.record) - np.log(k))))
                  for k in (10, 100, 1000, 10000, args.steps) if k <= args.steps})
    print(f"{'variant':<42}" + "".join(f"{f'k={rates.record[i]}':>11}" for i in idx)
          + f"{'slope':>8}")
    for name, c in rates.curves.items():
        print(f"{name:<42}" + "".join(f"{c[i]:>11.3e}" for i in idx)
              + f"{rates.slopes[name]:>+8.3f}")
    print("seed: SGD −0.5 (O(1/√k)), GD −1 (O(1/k)), mini-batch O(1/√(bk) + 1/k)")
    gd_last = next(c[-1] for name, c in rates.curves.items() if rates.batch[name] == n)
    last = {rates.batch[name]: c[-1] for name, c in rates.curves.items()
            if rates.batch[name] < n and "averaged" not in name}
    print(f"at k = {args.steps}: slope of J − J* against b (b = {sorted(last)}): "
          f"{fit_slope(sorted(last), [last[b] for b in sorted(last)]):+.3f}; of the excess over "
          f"GD, J − J_GD: "
          f"{fit_slope(sorted(last), [last[b] - gd_last for b in sorted(last)]):+.3f} "
          f"(seed: 1/√b, −0.5)")
    print(f"\n{time.perf_counter() - start:.0f} s")
    plot(rates, variance["θ₀ = 0"], n, args.plot)


if __name__ == "__main__":
    main()
