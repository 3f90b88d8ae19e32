"""Weight regularizers (``st.regularizers``): the seed's penalty terms.

Each is a callable on a weight tensor returning a scalar penalty tensor; adding it to the
loss makes autograd add its gradient: L1 gives λ·sign(W), L2 gives 2λW.
"""

from __future__ import annotations

import math
from typing import Any, Dict

from ._core import Tensor


def _check(owner: str, name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"[{owner}] {name} must be a finite number >= 0, got {value}")
    return value


class Regularizer:
    """Base class: ``penalty = regularizer(weight)``."""

    def __call__(self, weight: Tensor) -> Tensor:
        raise NotImplementedError

    def get_config(self) -> Dict[str, Any]:
        return dict(vars(self))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class L1L2(Regularizer):
    """The seed's L₁ and L₂ penalties together: l1·Σ|wᵢ| + l2·Σwᵢ² (Keras)."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0) -> None:
        self.l1 = _check(type(self).__name__, "l1", l1)
        self.l2 = _check(type(self).__name__, "l2", l2)

    def __call__(self, weight: Tensor) -> Tensor:
        penalty = None
        if self.l1:
            penalty = weight.abs().sum() * self.l1
        if self.l2:
            term = (weight * weight).sum() * self.l2
            penalty = term if penalty is None else penalty + term
        return penalty if penalty is not None else (weight * 0.0).sum()


class L1(L1L2):
    """The seed's L₁ penalty λ·Σ|wᵢ|."""

    def __init__(self, l1: float = 0.01) -> None:
        super().__init__(l1=l1)

    def get_config(self) -> Dict[str, Any]:
        return {"l1": self.l1}


class L2(L1L2):
    """The seed's L₂ penalty λ·Σwᵢ²."""

    def __init__(self, l2: float = 0.01) -> None:
        super().__init__(l2=l2)

    def get_config(self) -> Dict[str, Any]:
        return {"l2": self.l2}


__all__ = ["L1", "L1L2", "L2", "Regularizer"]
