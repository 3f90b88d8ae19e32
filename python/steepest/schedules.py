"""Learning-rate schedules (``st.schedules``): callables ``sched(step) -> float``.

An optimizer given a schedule as its ``learning_rate`` evaluates it at
``opt.iterations``, the number of steps it has taken, so a skipped step (a loss-scaled
step whose gradients overflowed) does not advance the schedule. Any Python callable
``step -> float`` works as a schedule too; the built-in ones below run in C++.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Union

from ._core.optim import Constant, CosineDecay, Schedule, StepDecay, WarmupCosine

LearningRate = Union[float, Callable[[int], float]]

_BUILT_IN = {cls.__name__: cls for cls in (Constant, CosineDecay, StepDecay, WarmupCosine)}


def serialize(learning_rate: LearningRate) -> Union[float, Dict[str, Any], Callable[[int], float]]:
    """A float stays a float, a built-in schedule becomes ``{"class_name", "config"}``;
    any other callable is returned as is (it cannot be written to a file)."""
    if isinstance(learning_rate, Schedule):
        return {"class_name": type(learning_rate).__name__, "config": learning_rate.get_config()}
    return learning_rate


def deserialize(value: Any) -> LearningRate:
    """The inverse of :func:`serialize`."""
    if isinstance(value, dict):
        name = value.get("class_name")
        if name not in _BUILT_IN:
            valid = ", ".join(sorted(_BUILT_IN))
            raise ValueError(f"[schedules] unknown schedule {name!r}; valid names: {valid}")
        return _BUILT_IN[name](**value["config"])
    return value


__all__ = [
    "Constant",
    "CosineDecay",
    "LearningRate",
    "Schedule",
    "StepDecay",
    "WarmupCosine",
    "deserialize",
    "serialize",
]
