"""Tensor methods that are plain Python conveniences (repr, NumPy protocol)."""

from __future__ import annotations

import numpy as np

from ._core import Tensor


def _host_array(t: Tensor) -> np.ndarray:
    # bfloat16 values are exact in float32, which NumPy prints without ml_dtypes.
    host = t.to("cpu")
    return host.astype("float32").numpy() if host.dtype == "bfloat16" else host.numpy()


def _repr(self: Tensor) -> str:
    body = np.array2string(_host_array(self), separator=", ", prefix="tensor(")
    extras = []
    if self.dtype not in ("float32", "int64", "bool"):
        extras.append(f"dtype={self.dtype}")
    if self.device != "cpu":
        extras.append(f"device='{self.device}'")
    if self.grad_fn is not None:
        extras.append(f"grad_fn=<{self.grad_fn}>")
    elif self.requires_grad:
        extras.append("requires_grad=True")
    return "tensor(" + ", ".join([body] + extras) + ")"


def _array(self: Tensor, dtype=None, copy=None):
    if dtype is not None:  # also bfloat16 without ml_dtypes
        return _host_array(self).astype(dtype)
    return self.to("cpu").numpy()


def _float(self: Tensor) -> float:
    return self.item()


def install() -> None:
    Tensor.__repr__ = _repr
    Tensor.__array__ = _array
    Tensor.__float__ = _float
