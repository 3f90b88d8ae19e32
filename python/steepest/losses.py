"""Losses (``st.losses``). In ``Sequential.fit`` the loss is computed in C++; these
objects name it (with ``from_logits``) and can also be called in a custom loop."""

from __future__ import annotations

from typing import Any, Dict

from . import ops
from ._core import Tensor


class Loss:
    """``loss(y_true, y_pred) -> scalar Tensor``."""

    name: str

    def __init__(self, from_logits: bool = False) -> None:
        self.from_logits = bool(from_logits)

    def get_config(self) -> Dict[str, Any]:
        return {"from_logits": self.from_logits}

    def __call__(self, y_true: Tensor, y_pred: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(from_logits={self.from_logits})"


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
    """A loss object from a name or a Loss instance.

    By name, cross-entropies default to ``from_logits=False`` as in Keras; a model whose
    last layer has no softmax/sigmoid is then treated as producing logits (see
    ``Sequential.compile``).
    """
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str) and identifier in _BY_NAME:
        return _BY_NAME[identifier]()
    raise ValueError(
        f"[compile] unknown loss {identifier!r}; use one of {', '.join(sorted(_BY_NAME))} "
        "or an st.losses object"
    )


__all__ = ["BinaryCrossentropy", "CategoricalCrossentropy", "CausalLMCrossEntropy", "Loss", "MeanAbsoluteError",
           "MeanSquaredError", "SparseCategoricalCrossentropy", "get"]
