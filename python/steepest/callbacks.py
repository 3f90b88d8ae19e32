"""Keras callbacks (``st.callbacks``), called by ``fit`` at epoch boundaries (the batch
loop itself runs in C++)."""

from __future__ import annotations

import csv
import math
import os
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from . import distributed


class Callback:
    """Base class; ``self.model`` is the model being trained."""

    model: Any = None

    def set_model(self, model: Any) -> None:
        self.model = model

    def on_train_begin(self, logs: Optional[Dict[str, float]] = None) -> None: ...

    def on_train_end(self, logs: Optional[Dict[str, float]] = None) -> None: ...

    def on_epoch_begin(self, epoch: int, logs: Optional[Dict[str, float]] = None) -> None: ...

    def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, float]] = None) -> None: ...


class History(Callback):
    """Records every epoch's logs: ``history.history["loss"]`` and so on."""

    def __init__(self) -> None:
        self.history: Dict[str, List[float]] = {}
        self.epoch: List[int] = []

    def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, float]] = None) -> None:
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)


def _improved(mode: str, monitor: str, current: float, best: float, min_delta: float) -> bool:
    if mode == "auto":
        mode = "max" if ("acc" in monitor or "auc" in monitor) else "min"
    if mode == "min":
        return current < best - min_delta
    return current > best + min_delta


def _worst(mode: str, monitor: str) -> float:
    if mode == "auto":
        mode = "max" if ("acc" in monitor or "auc" in monitor) else "min"
    return math.inf if mode == "min" else -math.inf


class EarlyStopping(Callback):
    """Stops training when ``monitor`` has not improved for ``patience`` epochs."""

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0,
                 mode: str = "auto", restore_best_weights: bool = False) -> None:
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"[EarlyStopping] mode must be auto, min or max, got {mode!r}")
        self.monitor, self.min_delta, self.patience = monitor, abs(min_delta), patience
        self.mode, self.restore_best_weights = mode, restore_best_weights
        self.stopped_epoch = 0

    def on_train_begin(self, logs=None) -> None:
        self.wait = 0
        self.best = _worst(self.mode, self.monitor)
        self.best_weights = None

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        current = (logs or {}).get(self.monitor)
        if current is None:
            raise ValueError(
                f"[EarlyStopping] monitor {self.monitor!r} is not in the logs "
                f"({', '.join(logs or {})}); pass validation_data for val_* metrics"
            )
        if _improved(self.mode, self.monitor, current, self.best, self.min_delta):
            self.best, self.wait = current, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait > self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True
            if self.restore_best_weights and self.best_weights is not None:
                self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback):
    """Saves the model after every epoch (or only when ``monitor`` improves). In a
    data-parallel job every rank takes part (the logs are global, so all decide alike)
    and rank 0 writes the file.

    ``filepath`` may contain ``{epoch}`` and log keys, e.g. ``"ckpt-{epoch:02d}.steepest"``.
    """

    def __init__(self, filepath: str, monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto") -> None:
        self.filepath, self.monitor, self.save_best_only, self.mode = filepath, monitor, save_best_only, mode
        self.best = _worst(mode, monitor)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs or {}
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None or not _improved(self.mode, self.monitor, current, self.best, 0.0):
                return
            self.best = current
        self.model.save(self.filepath.format(epoch=epoch + 1, **logs))


class LearningRateScheduler(Callback):
    """Sets the learning rate at each epoch start to ``schedule(epoch, lr)``."""

    def __init__(self, schedule: Callable[[int, float], float], verbose: int = 0) -> None:
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        optimizer = self.model.optimizer
        lr = float(self.schedule(epoch, float(optimizer.learning_rate)))
        optimizer.set_learning_rate(lr)
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {lr}.")


class CSVLogger(Callback):
    """Appends each epoch's logs to a CSV file (in a data-parallel job, rank 0's)."""

    def __init__(self, filename: str, separator: str = ",", append: bool = False) -> None:
        self.filename, self.separator, self.append = filename, separator, append
        self._file = None

    def on_train_begin(self, logs=None) -> None:
        if distributed.rank() != 0:
            return
        self._write_header = not (self.append and os.path.exists(self.filename))
        self._file = open(self.filename, "a" if self.append else "w", newline="")

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if self._file is None:
            return
        logs = logs or {}
        keys = sorted(logs)
        writer = csv.writer(self._file, delimiter=self.separator)
        if self._write_header:
            writer.writerow(["epoch", *keys])
            self._write_header = False
        writer.writerow([epoch, *(logs[k] for k in keys)])
        self._file.flush()

    def on_train_end(self, logs=None) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TerminateOnNaN(Callback):
    """Stops training at the first batch whose loss is NaN or infinite.

    The check runs inside the C++ batch loop, before that batch's update, so the
    weights stay those of the last finite step.
    """

    stop_on_nan = True

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            self.model.stop_training = True


__all__ = ["CSVLogger", "Callback", "EarlyStopping", "History", "LearningRateScheduler",
           "ModelCheckpoint", "TerminateOnNaN"]
