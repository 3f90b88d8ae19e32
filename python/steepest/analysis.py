"""Loss-landscape analysis: the top eigenvalues of a loss Hessian (sharpness)."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ._core import Tensor
from .autograd import _HessianOperator


def hessian_eigenvalues(
    loss_fn: Callable[..., Tensor],
    params: Sequence[Tensor],
    k: int = 1,
    max_iter: int = 100,
    tol: float = 1e-6,
    seed: int = 0,
) -> list[float]:
    """The ``k`` largest (algebraic) eigenvalues of the Hessian of ``loss_fn`` with respect
    to ``params``, largest first; ``[0]`` is the sharpness λ_max.

    Lanczos iteration with full reorthogonalisation on Hessian-vector products (double
    backward through one retained gradient graph; the Hessian is never formed). The
    Krylov basis is kept in float64 on the host. Stops when the k top Ritz values have
    residuals ``|β_m·s_m| <= tol·max(1, |θ|)``, when the Krylov space is exhausted (exact
    for problems of at most ``max_iter`` parameters), or after ``max_iter`` products. The
    start vector is drawn from ``seed``. ``loss_fn`` is called as ``loss_fn()`` when it
    takes no arguments, else as ``loss_fn(*params)`` (as st.autograd.hvp).
    """
    from .creation import tensor

    params = list(params)
    if not params:
        raise ValueError("[hessian_eigenvalues] params is empty")
    if k < 1:
        raise ValueError(f"[hessian_eigenvalues] k must be at least 1, got {k}")
    if max_iter < 1:
        raise ValueError(f"[hessian_eigenvalues] max_iter must be at least 1, got {max_iter}")
    operator = _HessianOperator(loss_fn, params)
    sizes = [p.numel() for p in params]
    n = sum(sizes)
    if k > n:
        raise ValueError(f"[hessian_eigenvalues] k={k} exceeds the {n} parameters")
    offsets = np.cumsum([0] + sizes)

    def matvec(x: np.ndarray) -> np.ndarray:
        pieces = [
            tensor(x[offsets[i]:offsets[i + 1]].reshape(p.shape), dtype=p.dtype, device=p.device)
            for i, p in enumerate(params)
        ]
        out = operator(pieces)
        return np.concatenate([np.asarray(o.numpy(), dtype=np.float64).reshape(-1) for o in out])

    q = np.random.default_rng(seed).standard_normal(n)
    q /= np.linalg.norm(q)
    basis = [q]
    alphas: list[float] = []
    betas: list[float] = []
    steps = min(max_iter, n)
    for m in range(steps):
        w = matvec(basis[m])
        alphas.append(float(basis[m] @ w))
        # Full reorthogonalisation (twice is enough): Lanczos vectors lose orthogonality
        # as Ritz values converge, which would otherwise duplicate eigenvalues.
        stacked = np.stack(basis)
        for _ in range(2):
            w = w - stacked.T @ (stacked @ w)
        beta = float(np.linalg.norm(w))
        theta, vectors = np.linalg.eigh(
            np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1))
        if m + 1 >= k:
            top = np.argsort(theta)[::-1][:k]
            residual = np.abs(beta * vectors[-1, top])
            if np.all(residual <= tol * np.maximum(1.0, np.abs(theta[top]))):
                break
        if beta <= 1e-12 * max(1.0, float(np.max(np.abs(theta)))) or m + 1 == steps:
            break
        betas.append(beta)
        basis.append(w / beta)
    theta = np.linalg.eigvalsh(np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1))
    if len(theta) < k:
        # An invariant subspace smaller than k (e.g. a Hessian of rank < k seen from this
        # start vector): the remaining eigenvalues are not reachable by Lanczos from it.
        raise ArithmeticError(
            f"[hessian_eigenvalues] the Krylov space closed after {len(theta)} vectors, "
            f"fewer than k={k}; try another seed")
    return [float(t) for t in np.sort(theta)[::-1][:k]]
