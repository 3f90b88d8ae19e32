"""Minimising a function of a tensor with any optimizer (``st.optimize``): the seed's
iterative procedure with its three stopping rules (梯度足够小, J 变化不明显, 最大迭代次数)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Tuple

import numpy as np

from ._core import Tensor
from .creation import tensor
from .optimizers import Optimizer


@dataclass
class OptimizeResult:
    """What :func:`minimize` found.

    x: the final point; fun: J there; steps: optimizer steps taken; reason: which rule
    stopped the iteration ("grad_tol", "f_tol" or "max_steps"); trajectory: (x, J) at
    the start and after every step. For SGD with nesterov=True the points are the
    look-ahead points the optimizer stores.
    """

    x: np.ndarray
    fun: float
    steps: int
    reason: str
    trajectory: List[Tuple[np.ndarray, float]] = field(repr=False)

    @property
    def xs(self) -> np.ndarray:
        """The trajectory's points, shape (len(trajectory), *x.shape)."""
        return np.stack([x for x, _ in self.trajectory])

    @property
    def fs(self) -> np.ndarray:
        """The trajectory's values of J."""
        return np.array([f for _, f in self.trajectory])


def minimize(
    fn: Callable[[Tensor], Tensor],
    x0: Any,
    optimizer: Optimizer,
    max_steps: int = 1000,
    grad_tol: float = 1e-6,
    f_tol: float = 0.0,
) -> OptimizeResult:
    """Minimises ``fn`` (a function of one tensor returning a scalar tensor) from ``x0``.

    Iterates ``optimizer.step`` until ‖∇J‖ < grad_tol, |J_k − J_{k−1}| < f_tol, or
    max_steps steps. x0 is copied; a float array keeps its dtype (lists become float64).
    """
    if max_steps < 0:
        raise ValueError(f"[minimize] max_steps must be >= 0, got {max_steps}")
    if grad_tol < 0 or f_tol < 0:
        raise ValueError(
            f"[minimize] tolerances must be >= 0, got grad_tol={grad_tol}, f_tol={f_tol}"
        )
    start = np.asarray(x0)
    dtype = str(start.dtype) if start.dtype in (np.float32, np.float64) else "float64"
    x = tensor(start, dtype=dtype, requires_grad=True)

    def evaluate() -> Tuple[float, float]:
        x.grad = None
        value = fn(x)
        if not isinstance(value, Tensor) or value.numel() != 1:
            raise TypeError("[minimize] fn must return a one-element steepest tensor")
        value.backward()
        grad = x.grad.numpy() if x.grad is not None else np.zeros(x.shape)
        return value.item(), float(np.linalg.norm(grad))

    fun, grad_norm = evaluate()
    trajectory = [(x.numpy().copy(), fun)]
    steps, reason = 0, "max_steps"
    while True:
        if grad_norm < grad_tol:
            reason = "grad_tol"
            break
        if steps > 0 and abs(trajectory[-1][1] - trajectory[-2][1]) < f_tol:
            reason = "f_tol"
            break
        if steps >= max_steps:
            break
        optimizer.step([x])
        steps += 1
        fun, grad_norm = evaluate()
        trajectory.append((x.numpy().copy(), fun))
    x.grad = None
    return OptimizeResult(x=trajectory[-1][0], fun=fun, steps=steps, reason=reason,
                          trajectory=trajectory)
