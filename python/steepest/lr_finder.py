"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural
Networks", §3.3): train a few steps while the learning rate grows exponentially from
``start`` to ``end``, and read a good learning rate off the loss curve.

The curve is the per-step training loss smoothed by a bias-corrected exponential moving
average, L̂_i = a_i / (1 − β^(i+1)) with a_i = β·a_{i−1} + (1 − β)·ℓ_i; the test stops
early once L̂ exceeds ``divergence`` times its minimum (the rate is then far too large).
The suggestion is the learning rate where L̂ falls fastest against log(lr) before its
minimum: the middle of the range where training makes progress, well below the rates
where it starts to diverge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Tuple

import numpy as np

from .callbacks import Callback

if TYPE_CHECKING:
    from .models import Sequential


class _RangeTest(Callback):
    """Sets each one-step epoch's learning rate and records its loss."""

    def __init__(self, rates: np.ndarray, smoothing: float, divergence: float) -> None:
        self.rates, self.smoothing, self.divergence = rates, smoothing, divergence
        self.smoothed: List[float] = []
        self._average = 0.0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.model.optimizer.set_learning_rate(float(self.rates[epoch]))

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        loss = float((logs or {}).get("loss", np.nan))
        if not np.isfinite(loss):
            self.model.stop_training = True
            return
        self._average = self.smoothing * self._average + (1.0 - self.smoothing) * loss
        smoothed = self._average / (1.0 - self.smoothing ** (len(self.smoothed) + 1))
        self.smoothed.append(smoothed)
        if smoothed > self.divergence * min(self.smoothed):
            self.model.stop_training = True


def find_learning_rate(model: "Sequential", x: Any, y: Any = None, start: float = 1e-7,
                       end: float = 10.0, steps: int = 100, batch_size: int = 32,
                       smoothing: float = 0.98, divergence: float = 4.0,
                       seed: Any = None) -> Tuple[np.ndarray, np.ndarray, float]:
    """Runs the range test on a compiled model (see the module docstring) and returns
    ``(learning_rates, smoothed_losses, suggestion)``: the rates tried, one per step up to
    the step where the loss diverged, the smoothed loss after each, and the suggested rate.

    The model's weights, its optimizer (state, step count and learning rate or schedule),
    its loss scaler and fit's epoch count are restored afterwards, so a later ``fit`` runs
    exactly as if the test had not been made. Each step is one batch of ``batch_size``
    drawn as ``fit`` draws them (``x``/``y`` as ``fit`` takes them).
    """
    op = "find_learning_rate"
    model._check_compiled(op)
    if not (isinstance(steps, int) and not isinstance(steps, bool)) or steps < 2:
        raise ValueError(f"[{op}] steps must be an int >= 2, got {steps!r}")
    if not (0 < start < end) or not np.isfinite(end):
        raise ValueError(f"[{op}] need 0 < start < end (finite), got start={start!r}, end={end!r}")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"[{op}] smoothing must be in [0, 1), got {smoothing!r}")
    if not divergence > 1.0:
        raise ValueError(f"[{op}] divergence must be > 1, got {divergence!r}")
    rates = start * (end / start) ** (np.arange(steps) / (steps - 1))
    optimizer = model.optimizer
    learning_rate = optimizer.get_config()["learning_rate"]
    weights = model.get_weights() if model.built else None
    optimizer_state = model._optimizer_state()
    scaler_state = model.loss_scaler.state_dict() if model.loss_scaler is not None else None
    epochs_done = model._epochs_done
    test = _RangeTest(rates, smoothing, divergence)
    try:
        model.fit(x, y, batch_size=batch_size, epochs=steps, steps_per_epoch=1, verbose=0,
                  callbacks=[test], seed=seed)
    finally:
        optimizer.load_state_dict(optimizer_state)
        # After the state: the snapshot holds a copy of a schedule, this puts back the object.
        optimizer.set_learning_rate(learning_rate)
        if scaler_state is not None:
            model.loss_scaler.load_state_dict(scaler_state)
        if weights is not None:
            model.set_weights(weights)
        model._epochs_done = epochs_done
    losses = np.asarray(test.smoothed)
    tried = rates[: len(losses)]
    if len(losses) < 2:
        raise RuntimeError(f"[{op}] the loss was not finite from the first step at learning rate "
                           f"{start:g}; lower start")
    # Past the minimum the curve can fall again from a diverged peak: not a usable rate.
    usable = int(np.argmin(losses)) + 1
    if usable < 2:
        return tried, losses, float(tried[0])
    slopes = np.gradient(losses[:usable], np.log(tried[:usable]))
    return tried, losses, float(tried[int(np.argmin(slopes))])
