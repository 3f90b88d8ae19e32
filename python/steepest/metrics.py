"""Metrics (``st.metrics``). ``fit`` and ``evaluate`` compute the built-in ones in C++
by name; the functions here compute the same quantities on NumPy arrays for checking by
hand. Custom metrics are ``Metric`` subclasses (``update_state``, ``result``,
``reset_state``) or callables ``fn(y_true, y_pred) -> Tensor`` averaged over the samples
(``MeanMetricWrapper``); fit calls them after each batch and resets them before each
epoch and each evaluation."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ._core import Tensor
from .layers import _snake

NAMES = ("accuracy", "sparse_categorical_accuracy", "categorical_accuracy", "binary_accuracy",
         "mae", "mse")


def sparse_categorical_accuracy(y_true, y_pred) -> float:
    return float(np.mean(np.argmax(np.asarray(y_pred), axis=-1) == np.asarray(y_true)))


def categorical_accuracy(y_true, y_pred) -> float:
    return float(np.mean(np.argmax(np.asarray(y_pred), axis=-1) == np.argmax(np.asarray(y_true), axis=-1)))


def binary_accuracy(y_true, y_pred, threshold: float = 0.5) -> float:
    y_true = np.asarray(y_true).reshape(np.asarray(y_pred).shape)
    return float(np.mean((np.asarray(y_pred) > threshold) == (y_true > 0.5)))


def mae(y_true, y_pred) -> float:
    return float(np.mean(np.abs(np.asarray(y_pred) - np.asarray(y_true).reshape(np.shape(y_pred)))))


def mse(y_true, y_pred) -> float:
    return float(np.mean((np.asarray(y_pred) - np.asarray(y_true).reshape(np.shape(y_pred))) ** 2))


def _number(value: Any) -> float:
    if isinstance(value, Tensor):
        value = value.numpy()
    return float(np.asarray(value, dtype=np.float64))


class Metric:
    """A stateful metric, as in Keras: ``update_state(y_true, y_pred, sample_weight=None)``
    accumulates a batch, ``result()`` gives the value so far (a float or a 0-d Tensor),
    ``reset_state()`` starts again. fit passes the batch's labels and the model's
    (float32) outputs as Tensors; metrics are not weighted by sample_weight there."""

    def __init__(self, name: Optional[str] = None, dtype: Optional[str] = None) -> None:
        self.name = name or _snake(type(self).__name__)

    def update_state(self, y_true: Tensor, y_pred: Tensor, sample_weight: Optional[Tensor] = None) -> None:
        raise NotImplementedError(f"[{type(self).__name__}] a metric must define update_state")

    def result(self) -> Any:
        raise NotImplementedError(f"[{type(self).__name__}] a metric must define result")

    def reset_state(self) -> None:
        raise NotImplementedError(f"[{type(self).__name__}] a metric must define reset_state")

    def get_config(self) -> Dict[str, Any]:
        return {"name": self.name}

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "Metric":
        return cls(**config)

    def __call__(self, y_true: Tensor, y_pred: Tensor, sample_weight: Optional[Tensor] = None) -> Any:
        self.update_state(y_true, y_pred, sample_weight)
        return self.result()


class MeanMetricWrapper(Metric):
    """``fn(y_true, y_pred) -> Tensor`` (a batch mean, or one value per sample) averaged
    over all samples seen, weighted by ``sample_weight`` when given; named by
    ``fn.__name__``."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Any], name: Optional[str] = None) -> None:
        super().__init__(name=name or getattr(fn, "__name__", "metric"))
        self.fn = fn
        self.total = self.count = 0.0

    def update_state(self, y_true: Tensor, y_pred: Tensor, sample_weight: Optional[Tensor] = None) -> None:
        values = self.fn(y_true, y_pred)
        if not isinstance(values, Tensor):
            raise TypeError(f"[metric {self.name}] must return a steepest Tensor, got {type(values).__name__}")
        array = np.asarray(values.numpy(), dtype=np.float64)
        n = int(y_pred.shape[0]) if y_pred.ndim else 1
        if array.ndim == 0:
            array = np.full(n, float(array))
        if array.shape[0] != n:
            raise ValueError(f"[metric {self.name}] returned values of shape {array.shape} for a batch of {n} "
                             f"samples; expected a scalar or one value per sample, shape ({n},)")
        per_sample = array.reshape(n, -1).mean(axis=1) if n else array.reshape(0)
        w = np.ones(n) if sample_weight is None else np.asarray(sample_weight.numpy(), dtype=np.float64).reshape(n, -1).mean(axis=1)
        self.total += float((per_sample * w).sum())
        self.count += float(w.sum())

    def result(self) -> float:
        return self.total / self.count if self.count else 0.0

    def reset_state(self) -> None:
        self.total = self.count = 0.0


def get(identifier: Any) -> Any:
    """A built-in metric's name, or a Metric for a Metric or a callable."""
    if isinstance(identifier, str):
        return identifier
    if isinstance(identifier, Metric):
        return identifier
    if callable(identifier) and not isinstance(identifier, type):
        return MeanMetricWrapper(identifier)
    raise TypeError(f"[compile] a metric is a name, an st.metrics.Metric or a function fn(y_true, y_pred), "
                    f"got {identifier!r}")


class _MetricSet:
    """The custom metrics of a compiled model, as the C++ loop calls them."""

    def __init__(self, metrics: Sequence[Metric]) -> None:
        self.metrics = list(metrics)

    def reset(self) -> None:
        for m in self.metrics:
            m.reset_state()

    def update(self, y_true: Tensor, y_pred: Tensor) -> List[float]:
        for m in self.metrics:
            m.update_state(y_true, y_pred)
        return [_number(m.result()) for m in self.metrics]


__all__ = ["Metric", "MeanMetricWrapper", "NAMES", "binary_accuracy", "categorical_accuracy", "mae", "mse",
           "sparse_categorical_accuracy"]
