"""Metrics (``st.metrics``). ``fit`` and ``evaluate`` compute them in C++ by name; the
functions here compute the same quantities on NumPy arrays for checking by hand."""

from __future__ import annotations

import numpy as np

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


__all__ = ["NAMES", "binary_accuracy", "categorical_accuracy", "mae", "mse",
           "sparse_categorical_accuracy"]
