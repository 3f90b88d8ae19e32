"""Finite-difference gradient checking (the float64 test that every op passes)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ._core import Tensor
from .autograd import no_grad


def _as_array(t: Tensor) -> np.ndarray:
    return np.array(t.detach().numpy(), dtype=np.float64)


def grad_check(
    fn: Callable[..., Tensor],
    inputs: Sequence[Tensor],
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    seed: int = 0,
    raise_exception: bool = False,
) -> bool:
    """Compares autograd gradients of ``fn`` with central finite differences.

    Every input with ``requires_grad`` must be float64. A non-scalar output is reduced
    as ``sum(out * w)`` with fixed random weights ``w``, which checks the whole
    vector-Jacobian product. Returns True when every gradient entry satisfies
    ``|analytic - numeric| <= atol + rtol * |numeric|``.
    """
    inputs = list(inputs)
    for i, t in enumerate(inputs):
        if t.requires_grad and t.dtype != "float64":
            raise TypeError(f"[grad_check] input {i} is {t.dtype}; gradcheck needs float64")
    from .creation import from_numpy

    # Without a graph: one kept alive would hold the inputs read-only (Tensor.numpy).
    with no_grad():
        out_shape = fn(*inputs).shape
    weights = from_numpy(np.random.default_rng(seed).standard_normal(out_shape).astype(np.float64))

    def objective() -> Tensor:
        result = fn(*inputs)
        return (result * weights).sum() if result.ndim else result * weights

    for t in inputs:
        if t.requires_grad:
            t.grad = None
    objective().backward()

    ok = True
    messages = []
    for index, t in enumerate(inputs):
        if not t.requires_grad:
            continue
        analytic = _as_array(t.grad) if t.grad is not None else np.zeros(t.shape)
        # Perturb through a writable view of the input's own memory.
        data = t.detach().numpy()
        numeric = np.zeros(t.shape)
        with no_grad():
            for position in np.ndindex(*t.shape):
                original = data[position]
                data[position] = original + eps
                plus = objective().item()
                data[position] = original - eps
                minus = objective().item()
                data[position] = original
                numeric[position] = (plus - minus) / (2 * eps)
        error = np.abs(analytic - numeric)
        bound = atol + rtol * np.abs(numeric)
        if not np.all(error <= bound):
            ok = False
            worst = np.unravel_index(np.argmax(error - bound), error.shape) if error.size else ()
            messages.append(
                f"input {index}: max |analytic - numeric| = {error.max():.3e} at {worst} "
                f"(analytic {analytic[worst]:.6e}, numeric {numeric[worst]:.6e})"
            )
    if not ok and raise_exception:
        raise AssertionError("[grad_check] " + "; ".join(messages))
    return ok
