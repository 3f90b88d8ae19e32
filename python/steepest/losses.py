"""Losses (``st.losses``). The built-in losses are defined once, in C++
(``steepest/losses.h``): calling one of these objects in a custom loop runs the same op,
with the same clamps, reduction and sample-weight handling, as ``Sequential.fit``. Their
names and the reductions' come from the C++ tables. A custom loss is a subclass that
overrides ``call(y_true, y_pred)``, or any callable ``fn(y_true, y_pred) -> Tensor``
(wrapped in ``LossFunctionWrapper``); fit calls it inside its C++ loop and reduces its
values with the same function as a direct call (``st.ops.reduce_loss``)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from . import ops
from ._core import Tensor
from ._core.ops import loss_reductions, loss_table
from .layers import _snake

REDUCTIONS = tuple(loss_reductions())


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
        return ops.reduce_loss(self.call(y_true, y_pred), sample_weight=sample_weight, reduction=self.reduction)

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


# The C++ table of built-in losses, by Keras name and alias.
_TABLE = {entry["name"]: entry for entry in loss_table()}


class _BuiltinLoss(Loss):
    """A loss of the C++ table, named by the class attribute ``name``: fit and a call
    run the same op (``st.ops.loss``)."""

    @property
    def loss_name(self) -> str:
        """The name of the C++ loss this object computes (its table entry)."""
        return type(self).name

    @property
    def labels(self) -> str:
        """What the loss takes as ``y_true``: "values", "class_indices" or "next_tokens"."""
        return str(_TABLE[self.loss_name]["labels"])

    def get_config(self) -> Dict[str, Any]:
        config: Dict[str, Any] = {"from_logits": self.from_logits}
        if self.reduction != "sum_over_batch_size":
            config["reduction"] = self.reduction
        return config

    def __call__(self, y_true: Tensor, y_pred: Tensor, sample_weight: Optional[Tensor] = None) -> Tensor:
        return ops.loss(self.loss_name, y_true, y_pred, from_logits=self.from_logits,
                          sample_weight=sample_weight, reduction=self.reduction)


class _RegressionLoss(_BuiltinLoss):
    """A loss on values (no logits): ``from_logits`` does not apply."""

    def __init__(self, name: Optional[str] = None, reduction: Optional[str] = "sum_over_batch_size",
                 dtype: Optional[str] = None) -> None:
        super().__init__(from_logits=True, name=name, reduction=reduction, dtype=dtype)

    def get_config(self) -> Dict[str, Any]:
        config = super().get_config()
        del config["from_logits"]
        return config


class SparseCategoricalCrossentropy(_BuiltinLoss):
    """Cross-entropy against integer class labels (softmax + CE fused on logits)."""

    name = "sparse_categorical_crossentropy"


class CategoricalCrossentropy(_BuiltinLoss):
    """Cross-entropy against one-hot or probability labels."""

    name = "categorical_crossentropy"


class BinaryCrossentropy(_BuiltinLoss):
    """Binary cross-entropy; on logits it uses the overflow-free form, on probabilities
    it clips them to [1e-7, 1 - 1e-7] first, as Keras does."""

    name = "binary_crossentropy"


class MeanSquaredError(_RegressionLoss):
    """mean((y_pred - y_true)²)."""

    name = "mse"


class MeanAbsoluteError(_RegressionLoss):
    """mean(|y_pred - y_true|)."""

    name = "mae"


class CausalLMCrossEntropy(_BuiltinLoss):
    """The seed's causal language-modelling loss −1/T Σ log P(x_t | x_<t): logits of shape
    (B, T, V) at position t are scored against the token at t + 1 of ``y_true`` (B, T),
    so ``y_true`` is the input sequence itself; mean over the B·(T−1) predictions."""

    name = "causal_lm_crossentropy"

    def __init__(self, from_logits: bool = True, name: Optional[str] = None,
                 reduction: Optional[str] = "sum_over_batch_size", dtype: Optional[str] = None) -> None:
        super().__init__(from_logits=from_logits, name=name, reduction=reduction, dtype=dtype)


_CLASSES = {cls.name: cls for cls in (SparseCategoricalCrossentropy, CategoricalCrossentropy, BinaryCrossentropy,
                                      MeanSquaredError, MeanAbsoluteError, CausalLMCrossEntropy)}
_BY_NAME = {alias: _CLASSES[entry["name"]] for entry in _TABLE.values()
            for alias in (entry["name"], *entry["aliases"])}


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
