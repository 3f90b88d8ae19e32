"""Mixed precision (``st.mixed_precision``), as Keras' ``keras.mixed_precision``.

The seed's 混合精度训练: forward and backward run in float16 or bfloat16 while a float32
master copy of the weights receives the updates. Under ``"mixed_float16"`` and
``"mixed_bfloat16"`` a model compiled with the policy

- keeps float32 variables and casts them to the compute dtype in every forward pass
  (the cast is differentiable: the gradient reaches the master weight in float32);
- casts its floating input to the compute dtype at the first layer, and its output back
  to float32, where the loss and the metrics are computed (``predict`` returns float32);
- lets the optimizer update the float32 master weights.

``"mixed_float16"`` also scales the loss dynamically (:class:`LossScaler`), because
float16 flushes gradients below 6e-8 to zero; bfloat16 has float32's exponent range
and trains without scaling. Matrix products and convolutions accumulate in float32.

    st.mixed_precision.set_global_policy("mixed_bfloat16")
    model = st.Sequential([...])
    model.compile(optimizer="adamw", loss="sparse_categorical_crossentropy")  # takes the policy
    model.fit(x, y)
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Union

from . import _core
from ._core import Tensor

_COMPUTE_DTYPES = {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}


class Policy:
    """A dtype policy: variables in ``variable_dtype``, computations in ``compute_dtype``."""

    def __init__(self, name: str) -> None:
        if name not in _COMPUTE_DTYPES:
            raise ValueError(
                f"[mixed_precision] unknown policy {name!r}; expected one of "
                f"{', '.join(repr(n) for n in _COMPUTE_DTYPES)}"
            )
        self.name = name

    @property
    def compute_dtype(self) -> str:
        return _COMPUTE_DTYPES[self.name]

    @property
    def variable_dtype(self) -> str:
        return "float32"

    @property
    def loss_scaling(self) -> bool:
        """Whether training under this policy scales the loss (float16 only)."""
        return self.name == "mixed_float16"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f'<Policy "{self.name}">'


_global_policy = Policy("float32")


def set_global_policy(policy: Union[str, Policy, None]) -> None:
    """Sets the policy that ``model.compile`` picks up: ``"float32"`` (also for None),
    ``"mixed_float16"`` or ``"mixed_bfloat16"``."""
    global _global_policy
    if policy is None:
        policy = "float32"
    if isinstance(policy, Policy):
        policy = policy.name
    if not isinstance(policy, str):
        raise TypeError(
            f"[set_global_policy] expected a policy name or Policy, got {type(policy).__name__}"
        )
    _global_policy = Policy(policy)


def global_policy() -> Policy:
    """The current global policy (``Policy("float32")`` unless set)."""
    return _global_policy


class LossScaler:
    """Dynamic loss scaling with the state machine of PyTorch's ``GradScaler``.

    ``scale(loss)`` multiplies the loss by the current scale (in float32) before
    backward, so that small float16 gradients do not underflow. ``step(optimizer,
    params)`` divides the gradients by the scale again (in place, in float32: exact for a
    power of two), then steps the optimizer — or, when a gradient holds inf or NaN,
    skips the step entirely: parameters, optimizer state, ``optimizer.iterations`` and
    the learning-rate schedule stay as they were. ``update()`` then multiplies the scale
    by ``backoff_factor`` after a skipped step (no floor), or by ``growth_factor`` after
    ``growth_interval`` consecutive finite steps (kept only while finite in float32).

    A custom training loop::

        scaler = st.mixed_precision.LossScaler()
        loss = st.ops.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.unscale(params)                 # optional: to clip or inspect the grads
        stepped = scaler.step(optimizer, params)
        scaler.update()

    ``model.fit`` does this in C++ under ``"mixed_float16"`` (``model.loss_scaler``).
    """

    def __init__(
        self,
        initial_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ) -> None:
        if not isinstance(growth_interval, int) or isinstance(growth_interval, bool):
            raise TypeError(f"[LossScaler] growth_interval must be an int, got {growth_interval!r}")
        self._impl = _core.optim.LossScaler(
            initial_scale=float(initial_scale),
            growth_factor=float(growth_factor),
            backoff_factor=float(backoff_factor),
            growth_interval=growth_interval,
        )

    def scale(self, loss: Tensor) -> Tensor:
        """``loss`` times the current scale, as a float32 tensor (differentiable)."""
        return self._impl.scale(loss)

    def unscale(self, params: Iterable[Tensor]) -> bool:
        """Divides every grad by the scale, in place; returns whether all are finite.
        At most once per step, before :meth:`step` (which otherwise does it)."""
        return self._impl.unscale(list(params))

    def step(self, optimizer: Any, params: Iterable[Tensor]) -> bool:
        """Unscales the grads if :meth:`unscale` did not, then ``optimizer.step(params)``
        unless a grad holds inf/NaN. Returns whether the optimizer stepped."""
        return self._impl.step(optimizer._impl, list(params))

    def update(self) -> None:
        """Adjusts the scale after :meth:`step` (back off, or grow) for the next step."""
        self._impl.update()

    def get_scale(self) -> float:
        """The current scale."""
        return self._impl.get_scale()

    @property
    def growth_tracker(self) -> int:
        """Consecutive finite steps since the scale last changed."""
        return self._impl.growth_tracker

    def get_config(self) -> Dict[str, Any]:
        return {
            "initial_scale": self.get_scale(),
            "growth_factor": self._impl.growth_factor,
            "backoff_factor": self._impl.backoff_factor,
            "growth_interval": self._impl.growth_interval,
        }

    def state_dict(self) -> Dict[str, Any]:
        """The scale, the hyperparameters and the growth tracker (as torch's GradScaler)."""
        return {
            "scale": self.get_scale(),
            "growth_factor": self._impl.growth_factor,
            "backoff_factor": self._impl.backoff_factor,
            "growth_interval": self._impl.growth_interval,
            "_growth_tracker": self.growth_tracker,
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores :meth:`state_dict`. With other hyperparameters the scaler is rebuilt
        (a model compiled with it takes the new one at its next fit)."""
        config = {
            "growth_factor": float(state_dict["growth_factor"]),
            "backoff_factor": float(state_dict["backoff_factor"]),
            "growth_interval": int(state_dict["growth_interval"]),
        }
        current = {k: v for k, v in self.get_config().items() if k != "initial_scale"}
        if config != current:
            self._impl = _core.optim.LossScaler(initial_scale=float(state_dict["scale"]), **config)
        self._impl.load_state(float(state_dict["scale"]), int(state_dict["_growth_tracker"]))

    def __repr__(self) -> str:
        return (
            f"LossScaler(scale={self.get_scale():g}, growth_factor={self._impl.growth_factor:g}, "
            f"backoff_factor={self._impl.backoff_factor:g}, "
            f"growth_interval={self._impl.growth_interval})"
        )


__all__ = ["LossScaler", "Policy", "global_policy", "set_global_policy"]
