"""Creating tensors from Python data, NumPy arrays and DLPack producers."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _core
from ._core import Tensor

_NUMPY_TO_DTYPE = {
    np.dtype(np.float16): "float16",
    np.dtype(np.float32): "float32",
    np.dtype(np.float64): "float64",
    np.dtype(np.int32): "int32",
    np.dtype(np.int64): "int64",
    np.dtype(np.bool_): "bool",
}


def _default_dtype(array: np.ndarray) -> str:
    # Python floats become float32 (the training dtype), integers int64 (labels).
    if array.dtype.kind == "f":
        return "float32"
    if array.dtype.kind in "iu":
        return "int64"
    if array.dtype.kind == "b":
        return "bool"
    raise TypeError(f"[tensor] cannot make a tensor from data of dtype {array.dtype}")


def _is_bfloat16(dtype: np.dtype) -> bool:
    # ml_dtypes' bfloat16 (NumPy has none); recognised by name, without importing it.
    return dtype.name == "bfloat16" and dtype.itemsize == 2


def from_numpy(array: np.ndarray) -> Tensor:
    """A tensor sharing ``array``'s memory (a copy only for negative or odd strides and for
    read-only arrays).
    float16 arrays are NumPy's; bfloat16 arrays come from the ml_dtypes package."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"[from_numpy] expected a numpy.ndarray, got {type(array).__name__}")
    bfloat16 = _is_bfloat16(array.dtype)
    if array.dtype not in _NUMPY_TO_DTYPE and not bfloat16:
        raise TypeError(
            f"[from_numpy] unsupported dtype {array.dtype}; "
            "expected float16, bfloat16 (ml_dtypes), float32, float64, int32, int64 or bool"
        )
    if any(s < 0 or s % array.itemsize for s in array.strides):
        array = np.ascontiguousarray(array)
    if not array.flags.writeable:
        # Tensors are writable (in-place ops, optimizers), so a read-only array (np.load
        # with mmap_mode="r", a broadcast view) is copied rather than shared.
        array = np.array(array, copy=True)
    if bfloat16:  # the bits travel as uint16, relabelled on the C++ side
        return _core.from_dlpack(array.view(np.uint16), array, "bfloat16")
    return _core.from_dlpack(array, array)


def from_dlpack(obj: Any) -> Tensor:
    """A tensor sharing the memory of any object that implements ``__dlpack__``."""
    return _core.from_dlpack(obj, obj)


def _check_integer_range(array: np.ndarray, target: str) -> None:
    # NumPy's cast wraps out-of-range values and turns NaN into -2**63 without a word.
    if array.size == 0 or array.dtype.kind not in "fiu":
        return
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ValueError(f"[tensor] cannot convert NaN or infinity to {target}")
    info = np.iinfo(target)
    low, high = array.min(), array.max()
    if low < info.min or high > info.max:
        bad = high if high > info.max else low
        raise OverflowError(f"[tensor] {bad} is out of the range of {target} [{info.min}, {info.max}]")


def tensor(
    data: Any,
    dtype: Optional[str] = None,
    device: str = "cpu",
    requires_grad: bool = False,
) -> Tensor:
    """A new tensor holding a copy of ``data`` (numpy array, nested lists, scalar, Tensor).

    ``dtype=None`` picks float32 for floating data, int64 for integers, bool for bools.
    float16 and bfloat16 values are rounded to nearest-even from the data (without
    ml_dtypes: bfloat16 is converted by steepest).
    """
    if isinstance(data, Tensor):
        array = data.astype("float32").numpy() if data.dtype == "bfloat16" else data.numpy()
    else:
        array = np.asarray(data)
    target = dtype if dtype is not None else _default_dtype(array)
    if target not in ("float16", "bfloat16", "float32", "float64", "int32", "int64", "bool"):
        raise TypeError(
            f"[tensor] unknown dtype '{target}'; expected float16, bfloat16, float32, float64, "
            "int32, int64 or bool"
        )
    if target in ("int32", "int64"):
        _check_integer_range(array, target)
    if target in ("float16", "bfloat16"):
        # Every float16/bfloat16/float32 value is exact in float64: one rounding, in C++.
        wide = np.array(array, dtype=np.float64, order="C", copy=True)
        result = _core.from_dlpack(wide, wide).astype(target)
    else:
        array = np.array(array, dtype=target, order="C", copy=True)
        result = _core.from_dlpack(array, array)
    if device != "cpu":
        result = result.to(device)
    if requires_grad:
        result.requires_grad = True
    return result


def _shape(args: tuple) -> tuple:
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        return tuple(args[0])
    return tuple(args)


def empty(*shape, dtype: str = "float32", device: str = "cpu", requires_grad: bool = False) -> Tensor:
    t = _core.empty(_shape(shape), dtype, device)
    t.requires_grad = requires_grad
    return t


def full(shape, fill_value: float, dtype: str = "float32", device: str = "cpu",
         requires_grad: bool = False) -> Tensor:
    t = _core.full(_shape((shape,)), fill_value, dtype, device)
    t.requires_grad = requires_grad
    return t


def zeros(*shape, dtype: str = "float32", device: str = "cpu", requires_grad: bool = False) -> Tensor:
    return full(_shape(shape), 0.0, dtype=dtype, device=device, requires_grad=requires_grad)


def ones(*shape, dtype: str = "float32", device: str = "cpu", requires_grad: bool = False) -> Tensor:
    return full(_shape(shape), 1.0, dtype=dtype, device=device, requires_grad=requires_grad)


def zeros_like(t: Tensor, requires_grad: bool = False) -> Tensor:
    return zeros(t.shape, dtype=t.dtype, device=t.device, requires_grad=requires_grad)


def ones_like(t: Tensor, requires_grad: bool = False) -> Tensor:
    return ones(t.shape, dtype=t.dtype, device=t.device, requires_grad=requires_grad)


def randn(*shape, seed: Optional[int] = None, dtype: str = "float32", device: str = "cpu",
          requires_grad: bool = False) -> Tensor:
    """Standard normal samples; the same seed gives the same values on every backend."""
    t = _core.randn(_shape(shape), seed, dtype, device)
    t.requires_grad = requires_grad
    return t


def rand(*shape, seed: Optional[int] = None, dtype: str = "float32", device: str = "cpu",
         requires_grad: bool = False) -> Tensor:
    """Uniform samples in [0, 1)."""
    t = _core.rand(_shape(shape), seed, dtype, device)
    t.requires_grad = requires_grad
    return t


def arange(start, stop=None, step=1, dtype: Optional[str] = None,
           device: str = "cpu") -> Tensor:
    """Values from ``start`` up to (not including) ``stop`` in steps of ``step``, as
    ``numpy.arange``/``torch.arange``: int64 when every argument is an integer, float32
    (the default float dtype) when any is a float."""
    if stop is None:
        start, stop = 0, start
    bounds = (start, stop, step)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in bounds):
        return _core.arange(int(start), int(stop), int(step), dtype or "int64", device)
    if step == 0:
        raise ValueError("[arange] step must not be zero")
    if not all(np.isfinite(float(v)) for v in bounds):
        raise ValueError(f"[arange] bounds must be finite, got {bounds}")
    # Computed as start + i * step in float64 (torch's CPU accumulation), rounded once.
    count = max(0, int(np.ceil((float(stop) - float(start)) / float(step))))
    values = float(start) + np.arange(count, dtype=np.float64) * float(step)
    return tensor(values, dtype=dtype or "float32", device=device)
