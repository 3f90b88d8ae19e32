"""Tensor methods that are plain Python conveniences (repr, NumPy protocol)."""

from __future__ import annotations

import numpy as np

from ._core import Tensor


def _repr(self: Tensor) -> str:
    body = np.array2string(self.to("cpu").numpy(), separator=", ", prefix="tensor(")
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
    array = self.to("cpu").numpy()
    return array if dtype is None else array.astype(dtype)


def _float(self: Tensor) -> float:
    return self.item()


def install() -> None:
    Tensor.__repr__ = _repr
    Tensor.__array__ = _array
    Tensor.__float__ = _float
