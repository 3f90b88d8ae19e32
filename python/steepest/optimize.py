"""Minimising a function of a tensor (``st.optimize``): the seed's iterative procedure with
its three stopping rules (梯度足够小, J 变化不明显, 最大迭代次数), driven by any first-order
optimizer or by a quasi-Newton / Newton method (the seed's Future Work 2: second-order
optimisation).

* ``method="lbfgs"``: limited-memory BFGS (Nocedal & Wright, *Numerical Optimization*,
  Algorithm 7.4/7.5): the two-loop recursion applies an approximation of H⁻¹ built from
  the last ``history_size`` pairs s = x_{k+1} − x_k, y = ∇J_{k+1} − ∇J_k, scaled by
  γ = sᵀy / yᵀy; the step length satisfies the strong Wolfe conditions.
* ``method="newton-cg"``: truncated Newton (N&W Algorithm 7.1): the Newton system
  ∇²J p = −∇J is solved approximately by conjugate gradients on Hessian-vector products
  (double backward, :func:`steepest.autograd.hvp`'s rule), stopping when the residual
  falls below min(0.5, √‖∇J‖)·‖∇J‖ or at negative curvature; then the same line search.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

from . import autograd
from ._core import Tensor
from .creation import tensor
from .optimizers import Optimizer


@dataclass
class OptimizeResult:
    """What :func:`minimize` found.

    x: the final point; fun: J there; steps: optimizer steps taken; reason: which rule
    stopped the iteration ("grad_tol", "f_tol", "max_steps", or for the line-search
    methods "line_search" when no step along the search direction decreases J any more,
    at the limit of floating-point precision); trajectory: (x, J) at the start and after
    every step. For SGD with nesterov=True the points are the look-ahead points the
    optimizer stores. evaluations: how many times J (with its gradient) was evaluated.
    """

    x: np.ndarray
    fun: float
    steps: int
    reason: str
    trajectory: List[Tuple[np.ndarray, float]] = field(repr=False)
    evaluations: int = 0

    @property
    def xs(self) -> np.ndarray:
        """The trajectory's points, shape (len(trajectory), *x.shape)."""
        return np.stack([x for x, _ in self.trajectory])

    @property
    def fs(self) -> np.ndarray:
        """The trajectory's values of J."""
        return np.array([f for _, f in self.trajectory])


METHODS = ("lbfgs", "newton-cg")


def minimize(
    fn: Callable[[Tensor], Tensor],
    x0: Any,
    optimizer: Optional[Optimizer] = None,
    method: Optional[str] = None,
    max_steps: int = 1000,
    grad_tol: float = 1e-6,
    f_tol: float = 0.0,
    history_size: int = 10,
) -> OptimizeResult:
    """Minimises ``fn`` (a function of one tensor returning a scalar tensor) from ``x0``,
    with either a first-order ``optimizer`` or a second-order ``method`` ("lbfgs" or
    "newton-cg", see the module docstring; ``history_size`` is L-BFGS's memory).

    Iterates until ‖∇J‖ < grad_tol, |J_k − J_{k−1}| < f_tol, or max_steps steps (one step:
    one optimizer step, or one search direction and its line search). x0 is copied; a
    float array keeps its dtype (lists become float64).
    """
    if (optimizer is None) == (method is None):
        raise ValueError("[minimize] pass exactly one of optimizer= (a steepest optimizer) "
                         f"or method= (one of {', '.join(METHODS)})")
    if method is not None and method not in METHODS:
        raise ValueError(f"[minimize] unknown method {method!r}; expected one of {', '.join(METHODS)}")
    if max_steps < 0:
        raise ValueError(f"[minimize] max_steps must be >= 0, got {max_steps}")
    if grad_tol < 0 or f_tol < 0:
        raise ValueError(
            f"[minimize] tolerances must be >= 0, got grad_tol={grad_tol}, f_tol={f_tol}"
        )
    if history_size < 1:
        raise ValueError(f"[minimize] history_size must be >= 1, got {history_size}")
    start = np.asarray(x0)
    dtype = str(start.dtype) if start.dtype in (np.float32, np.float64) else "float64"
    if optimizer is not None:
        return _first_order(fn, start, dtype, optimizer, max_steps, grad_tol, f_tol)
    return _line_search_method(fn, start, dtype, method, max_steps, grad_tol, f_tol, history_size)


def _value(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    value = fn(x)
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise TypeError("[minimize] fn must return a one-element steepest tensor")
    return value


def _stop_reason(steps: int, max_steps: int, grad_norm: float, grad_tol: float,
                 trajectory: List[Tuple[np.ndarray, float]], f_tol: float) -> Optional[str]:
    """The seed's three stopping rules, in its order."""
    if grad_norm < grad_tol:
        return "grad_tol"
    if steps > 0 and abs(trajectory[-1][1] - trajectory[-2][1]) < f_tol:
        return "f_tol"
    if steps >= max_steps:
        return "max_steps"
    return None


def _first_order(fn: Callable[[Tensor], Tensor], start: np.ndarray, dtype: str,
                 optimizer: Optimizer, max_steps: int, grad_tol: float,
                 f_tol: float) -> OptimizeResult:
    x = tensor(start, dtype=dtype, requires_grad=True)
    evaluations = 0

    def evaluate() -> Tuple[float, float]:
        nonlocal evaluations
        evaluations += 1
        x.grad = None
        value = _value(fn, x)
        if optimizer.hessian_due:  # a curvature-aware rule (Sophia) asks for H's diagonal
            optimizer.update_hessian(value, [x])
        value.backward()
        grad = x.grad.numpy() if x.grad is not None else np.zeros(x.shape)
        return value.item(), float(np.linalg.norm(grad))

    fun, grad_norm = evaluate()
    trajectory = [(x.numpy().copy(), fun)]
    steps = 0
    while (reason := _stop_reason(steps, max_steps, grad_norm, grad_tol, trajectory, f_tol)) is None:
        optimizer.step([x])
        steps += 1
        fun, grad_norm = evaluate()
        trajectory.append((x.numpy().copy(), fun))
    x.grad = None
    return OptimizeResult(x=trajectory[-1][0], fun=fun, steps=steps, reason=reason,
                          trajectory=trajectory, evaluations=evaluations)


class _Objective:
    """J and ∇J at numpy points (float64 arithmetic for the method's own algebra), and
    Hessian-vector products at the last point whose gradient was taken with
    ``keep_graph``."""

    def __init__(self, fn: Callable[[Tensor], Tensor], shape: Tuple[int, ...], dtype: str) -> None:
        self.fn, self.shape, self.dtype = fn, shape, dtype
        self.evaluations = 0
        self._x: Optional[Tensor] = None
        self._grad: Optional[Tensor] = None

    def __call__(self, point: np.ndarray, keep_graph: bool = False) -> Tuple[float, np.ndarray]:
        self.evaluations += 1
        x = tensor(point.reshape(self.shape), dtype=self.dtype, requires_grad=True)
        value = _value(self.fn, x)
        if keep_graph:
            (grad,) = autograd.grad([value], [x], create_graph=True, allow_unused=True)
        else:
            value.backward()
            grad = x.grad
        flat = np.zeros(point.size) if grad is None else grad.numpy().astype(np.float64).ravel()
        self._x, self._grad = (x, grad) if keep_graph else (None, None)
        return value.item(), flat

    def hvp(self, v: np.ndarray) -> np.ndarray:
        """∇²J·v at the last point evaluated with keep_graph: the gradient of ∇Jᵀv."""
        if self._grad is None or self._x is None:
            return np.zeros_like(v)
        direction = tensor(v.reshape(self.shape), dtype=self.dtype)
        (product,) = autograd.grad([(self._grad * direction).sum()], [self._x], retain_graph=True,
                                   allow_unused=True)
        return np.zeros_like(v) if product is None else product.numpy().astype(np.float64).ravel()


def _cubic_minimizer(a: float, fa: float, da: float, b: float, fb: float, db: float) -> Optional[float]:
    """The minimiser of the cubic through (a, fa, da) and (b, fb, db) (N&W eq. 3.59), or
    None when the cubic has no minimiser."""
    d1 = da + db - 3.0 * (fa - fb) / (a - b)
    radicand = d1 * d1 - da * db
    if radicand < 0:
        return None
    d2 = np.copysign(np.sqrt(radicand), b - a)
    denominator = db - da + 2.0 * d2
    if denominator == 0:
        return None
    return float(b - (b - a) * (db + d2 - d1) / denominator)


def _strong_wolfe(phi: Callable[[float], Tuple[float, float]], f0: float, d0: float,
                  step: float, c1: float = 1e-4, c2: float = 0.9,
                  max_evaluations: int = 30) -> Optional[float]:
    """A step α along a descent direction with J(α) ≤ J(0) + c1·α·J'(0) and
    |J'(α)| ≤ c2·|J'(0)| (N&W Algorithms 3.5 and 3.6: bracket, then zoom by safeguarded
    cubic interpolation), or None when none is found within max_evaluations."""
    evaluations = 0

    def zoom(lo: float, f_lo: float, d_lo: float, hi: float, f_hi: float,
             d_hi: float) -> Optional[float]:
        nonlocal evaluations
        while evaluations < max_evaluations:
            width = hi - lo
            trial = _cubic_minimizer(lo, f_lo, d_lo, hi, f_hi, d_hi)
            # Stay inside the bracket, away from its ends, or the bracket stops shrinking.
            inner_lo, inner_hi = sorted((lo + 0.1 * width, hi - 0.1 * width))
            if trial is None or not inner_lo <= trial <= inner_hi:
                trial = lo + 0.5 * width
            f, d = phi(trial)
            evaluations += 1
            if f > f0 + c1 * trial * d0 or f >= f_lo:
                hi, f_hi, d_hi = trial, f, d
            else:
                if abs(d) <= -c2 * d0:
                    return trial
                if d * (hi - lo) >= 0:
                    hi, f_hi, d_hi = lo, f_lo, d_lo
                lo, f_lo, d_lo = trial, f, d
            if abs(hi - lo) <= 1e-16 * max(1.0, abs(lo)):
                break
        return lo if lo > 0 and f_lo < f0 else None

    previous, f_previous, d_previous = 0.0, f0, d0
    while evaluations < max_evaluations:
        f, d = phi(step)
        evaluations += 1
        if not np.isfinite(f) or f > f0 + c1 * step * d0 or (previous > 0 and f >= f_previous):
            if not np.isfinite(f):
                d = np.inf
            return zoom(previous, f_previous, d_previous, step, f if np.isfinite(f) else np.inf, d)
        if abs(d) <= -c2 * d0:
            return step
        if d >= 0:
            return zoom(step, f, d, previous, f_previous, d_previous)
        previous, f_previous, d_previous = step, f, d
        step *= 2.0
    return None


def _lbfgs_direction(grad: np.ndarray, pairs: List[Tuple[np.ndarray, np.ndarray, float]]) -> np.ndarray:
    """−H·∇J by the two-loop recursion over the stored (s, y, 1/sᵀy) pairs, oldest first."""
    q = grad.copy()
    alphas = []
    for s, y, rho in reversed(pairs):
        alpha = rho * float(s @ q)
        q -= alpha * y
        alphas.append(alpha)
    if pairs:
        s, y, _ = pairs[-1]
        q *= float(s @ y) / float(y @ y)
    for (s, y, rho), alpha in zip(pairs, reversed(alphas)):
        beta = rho * float(y @ q)
        q += (alpha - beta) * s
    return -q


def _newton_cg_direction(grad: np.ndarray, hvp: Callable[[np.ndarray], np.ndarray],
                         max_iterations: int) -> np.ndarray:
    """An approximate solution p of ∇²J·p = −∇J by conjugate gradients, truncated at the
    residual min(0.5, √‖∇J‖)·‖∇J‖ (superlinear convergence, N&W Theorem 7.2) or at the
    first direction of non-positive curvature (then the steepest descent −∇J if no CG step
    was taken yet)."""
    grad_norm = float(np.linalg.norm(grad))
    tolerance = min(0.5, np.sqrt(grad_norm)) * grad_norm
    p = np.zeros_like(grad)
    residual = grad.copy()
    direction = -residual
    residual_sq = float(residual @ residual)
    for iteration in range(max_iterations):
        if np.sqrt(residual_sq) <= tolerance:
            break
        curved = hvp(direction)
        curvature = float(direction @ curved)
        if curvature <= np.finfo(np.float64).eps * float(direction @ direction):
            return -grad if iteration == 0 else p
        alpha = residual_sq / curvature
        p += alpha * direction
        residual += alpha * curved
        new_residual_sq = float(residual @ residual)
        direction = -residual + (new_residual_sq / residual_sq) * direction
        residual_sq = new_residual_sq
    return p


def _line_search_method(fn: Callable[[Tensor], Tensor], start: np.ndarray, dtype: str,
                        method: str, max_steps: int, grad_tol: float, f_tol: float,
                        history_size: int) -> OptimizeResult:
    objective = _Objective(fn, start.shape, dtype)
    newton = method == "newton-cg"
    x = start.astype(np.float64).ravel()
    fun, grad = objective(x, keep_graph=newton)
    trajectory = [(x.reshape(start.shape).astype(dtype), fun)]
    pairs: List[Tuple[np.ndarray, np.ndarray, float]] = []
    steps = 0
    while (reason := _stop_reason(steps, max_steps, float(np.linalg.norm(grad)), grad_tol,
                                  trajectory, f_tol)) is None:
        if newton:
            direction = _newton_cg_direction(grad, objective.hvp, max_iterations=20 * x.size)
            first_step = 1.0
        else:
            direction = _lbfgs_direction(grad, pairs)
            # Without curvature pairs the direction is −∇J, whose natural length is unknown.
            first_step = 1.0 if pairs else min(1.0, 1.0 / float(np.linalg.norm(grad)))
        slope = float(grad @ direction)
        if slope >= 0:  # not a descent direction (rounding): restart from −∇J
            pairs.clear()
            direction, slope = -grad, -float(grad @ grad)
        probes = {}

        def phi(alpha: float) -> Tuple[float, float]:
            f, g = objective(x + alpha * direction)
            probes[alpha] = (f, g)
            return f, float(g @ direction)

        alpha = _strong_wolfe(phi, fun, slope, first_step)
        if alpha is None:
            reason = "line_search"
            break
        x_new = x + alpha * direction
        fun_new, grad_new = probes[alpha]
        if newton:
            fun_new, grad_new = objective(x_new, keep_graph=True)
        s, y = x_new - x, grad_new - grad
        curvature = float(s @ y)
        if curvature > 1e-10 * float(y @ y):
            pairs.append((s, y, 1.0 / curvature))
            del pairs[:-history_size]
        x, fun, grad = x_new, fun_new, grad_new
        steps += 1
        trajectory.append((x.reshape(start.shape).astype(dtype), fun))
    return OptimizeResult(x=trajectory[-1][0], fun=fun, steps=steps, reason=reason,
                          trajectory=trajectory, evaluations=objective.evaluations)
