"""Losses (``st.losses``). In ``Sequential.fit`` the built-in losses are computed in
C++; these objects name them (with ``from_logits``) and can also be called in a custom
loop. A custom loss is a subclass that overrides ``call(y_true, y_pred)``, or any
callable ``fn(y_true, y_pred) -> Tensor`` (wrapped in ``LossFunctionWrapper``); fit
calls it inside its C++ loop and reduces its values Keras' way."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from . import ops
from ._core import Tensor
from .layers import _snake

REDUCTIONS = ("sum_over_batch_size", "mean", "sum", "mean_with_sample_weight", "none")


class Loss:
    """``loss(y_true, y_pred) -> scalar Tensor``.

    Custom losses override ``call(y_true, y_pred)``, returning a scalar or one value per
    sample (shape ``(N,)``, or ``(N, ...)``); ``reduction`` turns those into the loss as
    Keras does, each value weighted by its sample weight: "sum_over_batch_size" (Σ/number
    of values, the default), "sum", "mean_with_sample_weight" (Σ/Σ weights), or "none"
    (only when called directly: fit needs a scalar).
    """

    name: str

    def __init__(self, from_logits: bool = False, name: Optional[str] = None,
                 reduction: Optional[str] = "sum_over_batch_size", dtype: Optional[str] = None) -> None:
        self.from_logits = bool(from_logits)
        reduction = "none" if reduction is None else reduction
        if reduction not in REDUCTIONS:
            raise ValueError(f"[{type(self).__name__}] reduction must be one of {', '.join(REDUCTIONS)}, "
                             f"got {reduction!r}")
        self.reduction = reduction
        if name is not None or _is_custom(self):
            self.name = name or _snake(type(self).__name__)

    def get_config(self) -> Dict[str, Any]:
        if _is_custom(self):
            return {"name": self.name, "reduction": self.reduction}
        return {"from_logits": self.from_logits}

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "Loss":
        return cls(**config)

    def call(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        """The loss values of a custom loss (see the class docstring)."""
        raise NotImplementedError(f"[{type(self).__name__}] a custom loss must define call(y_true, y_pred)")

    def __call__(self, y_true: Tensor, y_pred: Tensor, sample_weight: Optional[Tensor] = None) -> Tensor:
        values = self.call(y_true, y_pred)
        if sample_weight is not None and values.ndim > 0:
            w = sample_weight.reshape(tuple(sample_weight.shape) + (1,) * (values.ndim - sample_weight.ndim))
            weighted = values * w
        else:
            weighted = values if sample_weight is None else values * sample_weight.mean()
        if self.reduction == "none":
            return weighted
        if self.reduction == "sum":
            return weighted.sum()
        if self.reduction == "mean_with_sample_weight" and sample_weight is not None and values.ndim > 0:
            return weighted.sum() / (w.sum() * (values.numel() // w.numel()))
        return weighted.mean()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(from_logits={self.from_logits})"


def _is_custom(loss: Loss) -> bool:
    """Whether fit must call the loss back in Python (it overrides ``call``) rather than
    run a built-in C++ loss."""
    return type(loss).call is not Loss.call


class LossFunctionWrapper(Loss):
    """A function ``fn(y_true, y_pred) -> Tensor`` as a Loss, named by ``fn.__name__``."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], name: Optional[str] = None,
                 reduction: str = "sum_over_batch_size") -> None:
        self.fn = fn
        super().__init__(name=name or getattr(fn, "__name__", "loss"), reduction=reduction)

    def call(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        return self.fn(y_true, y_pred)

    def __repr__(self) -> str:
        return f"LossFunctionWrapper({self.name})"


def _log_probabilities(y_pred: Tensor) -> Tensor:
    # Keras clips probabilities away from 0 before the log.
    return ops.log(ops.clamp_min(y_pred, 1e-7))


class SparseCategoricalCrossentropy(Loss):
    """Cross-entropy against integer class labels (softmax + CE fused on logits)."""

    name = "sparse_categorical_crossentropy"

    def __call__(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        logits = y_pred if self.from_logits else _log_probabilities(y_pred)
        return ops.cross_entropy(logits, y_true)


class CategoricalCrossentropy(Loss):
    """Cross-entropy against one-hot or probability labels."""

    name = "categorical_crossentropy"

    def __call__(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        logits = y_pred if self.from_logits else _log_probabilities(y_pred)
        return ops.cross_entropy(logits, y_true)


class BinaryCrossentropy(Loss):
    """Binary cross-entropy; on logits it uses the overflow-free form."""

    name = "binary_crossentropy"

    def __call__(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        return ops.binary_cross_entropy(y_pred, y_true, from_logits=self.from_logits)


class MeanSquaredError(Loss):
    """mean((y_pred - y_true)²)."""

    name = "mse"

    def __init__(self) -> None:
        super().__init__(from_logits=True)

    def get_config(self) -> Dict[str, Any]:
        return {}

    def __call__(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        return ops.mse_loss(y_pred, y_true)


class MeanAbsoluteError(Loss):
    """mean(|y_pred - y_true|)."""

    name = "mae"

    def __init__(self) -> None:
        super().__init__(from_logits=True)

    def get_config(self) -> Dict[str, Any]:
        return {}

    def __call__(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        return (y_pred - y_true).abs().mean()


class CausalLMCrossEntropy(Loss):
    """The seed's causal language-modelling loss −1/T Σ log P(x_t | x_<t): logits of shape
    (B, T, V) at position t are scored against the token at t + 1 of ``y_true`` (B, T),
    so ``y_true`` is the input sequence itself; mean over the B·(T−1) predictions."""

    name = "causal_lm_crossentropy"

    def __init__(self, from_logits: bool = True) -> None:
        super().__init__(from_logits=from_logits)

    def __call__(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        logits = y_pred if self.from_logits else _log_probabilities(y_pred)
        t = logits.shape[1]
        return ops.cross_entropy(logits[:, : t - 1], y_true[:, 1:])


_BY_NAME = {
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "mse": MeanSquaredError,
    "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError,
    "mean_absolute_error": MeanAbsoluteError,
    "causal_lm_crossentropy": CausalLMCrossEntropy,
}


def get(identifier: Any) -> Loss:
    """A loss object from a name, a Loss instance or a callable ``fn(y_true, y_pred)``.

    By name, cross-entropies default to ``from_logits=False`` as in Keras; a model whose
    last layer has no softmax/sigmoid is then treated as producing logits (see
    ``Sequential.compile``).
    """
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str) and identifier in _BY_NAME:
        return _BY_NAME[identifier]()
    if callable(identifier) and not isinstance(identifier, (str, type)):
        return LossFunctionWrapper(identifier)
    raise ValueError(
        f"[compile] unknown loss {identifier!r}; use one of {', '.join(sorted(_BY_NAME))}, "
        "an st.losses object or a function fn(y_true, y_pred) -> Tensor"
    )


__all__ = ["BinaryCrossentropy", "CategoricalCrossentropy", "CausalLMCrossEntropy", "Loss", "LossFunctionWrapper",
           "MeanAbsoluteError",
           "MeanSquaredError", "SparseCategoricalCrossentropy", "get"]
