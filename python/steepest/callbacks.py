"""Keras callbacks (``st.callbacks``). ``fit`` calls the epoch hooks between epochs; the
batch loop runs in C++ and hands control back to Python per batch only while some
callback overrides a batch hook (``on_train_batch_end`` and the like), so a model trained
without one keeps the C++ loop's speed."""

from __future__ import annotations

import csv
import inspect
import math
import os
import warnings
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from . import distributed


Logs = Optional[Dict[str, Any]]


class Callback:
    """Base class; ``self.model`` is the model being trained. Batch hooks get the batch
    index within the epoch and, at a batch's end, the epoch's running logs so far."""

    model: Any = None

    def set_model(self, model: Any) -> None:
        self.model = model

    def on_train_begin(self, logs: Logs = None) -> None: ...

    def on_train_end(self, logs: Logs = None) -> None: ...

    def on_epoch_begin(self, epoch: int, logs: Logs = None) -> None: ...

    def on_epoch_end(self, epoch: int, logs: Logs = None) -> None: ...

    def on_test_begin(self, logs: Logs = None) -> None: ...

    def on_test_end(self, logs: Logs = None) -> None: ...

    def on_predict_begin(self, logs: Logs = None) -> None: ...

    def on_predict_end(self, logs: Logs = None) -> None: ...

    def on_train_batch_begin(self, batch: int, logs: Logs = None) -> None: ...

    def on_train_batch_end(self, batch: int, logs: Logs = None) -> None: ...

    def on_test_batch_begin(self, batch: int, logs: Logs = None) -> None: ...

    def on_test_batch_end(self, batch: int, logs: Logs = None) -> None: ...

    def on_predict_batch_begin(self, batch: int, logs: Logs = None) -> None: ...

    def on_predict_batch_end(self, batch: int, logs: Logs = None) -> None: ...


def overriding(callbacks: List[Callback], hook: str) -> List[Callback]:
    """The callbacks whose ``hook`` does something: a method other than the base
    class's, or a function given to LambdaCallback."""
    base = getattr(Callback, hook)
    return [cb for cb in callbacks if getattr(getattr(cb, hook), "__func__", getattr(cb, hook)) is not base]


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
    With ``save_best_only``, epochs whose logs lack ``monitor`` save nothing (a warning
    says so once per fit).
    """

    def __init__(self, filepath: str, monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto") -> None:
        self.filepath, self.monitor, self.save_best_only, self.mode = filepath, monitor, save_best_only, mode
        self.best = _worst(mode, monitor)
        self._warned = False

    def on_train_begin(self, logs=None) -> None:
        self._warned = False

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs or {}
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None:
                if not self._warned:
                    self._warned = True
                    warnings.warn(f"[ModelCheckpoint] monitor {self.monitor!r} is not in the logs "
                                  f"({', '.join(logs)}), so no checkpoint is saved; pass validation_data "
                                  f"for val_* metrics", stacklevel=2)
                return
            if not _improved(self.mode, self.monitor, current, self.best, 0.0):
                return
            self.best = current
        try:
            path = self.filepath.format(epoch=epoch + 1, **logs)
        except KeyError as e:
            raise ValueError(f"[ModelCheckpoint] filepath {self.filepath!r} names {e}, which is not in this "
                             f"epoch's logs; available: epoch, {', '.join(logs)}") from None
        self.model.save(path)


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


def _positional_arity(fn: Callable[..., Any]) -> int:
    """How many positional arguments ``fn`` takes (a large number for ``*args``, or when
    the signature cannot be read)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2**31
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return 2**31
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)


class BatchSizeScheduler(Callback):
    """Sets fit's batch size at each epoch start to ``schedule(epoch, batch_size)`` (the
    size the previous epoch used; a schedule of one argument gets the epoch alone), the
    seed's Future Work 5 (dynamic batch sizes).

    Growing the batch instead of decaying the learning rate (Smith et al. 2017, "Don't
    decay the learning rate, increase the batch size") keeps SGD's noise scale
    ε·N/B falling the same way with fewer, larger steps. Under data parallelism the
    batch size is the global one, so every rank grows its share together. The new size
    takes effect for the epoch that is starting; the optimizer's state and step count carry
    on. fit on arrays only: a generator or PyDataset fixes its own batches."""

    def __init__(self, schedule: Callable[..., int], verbose: int = 0) -> None:
        if not callable(schedule):
            raise TypeError(f"[BatchSizeScheduler] schedule must be a callable (epoch[, batch_size]) -> "
                            f"int, got {schedule!r}")
        self.schedule, self.verbose = schedule, verbose
        self._takes_size = _positional_arity(schedule) >= 2

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        current = self.model._batch_size
        size = self.schedule(epoch, current) if self._takes_size else self.schedule(epoch)
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"[BatchSizeScheduler] the schedule must return a positive int batch "
                             f"size, got {size!r} at epoch {epoch}")
        self.model._batch_size = int(size)
        if self.verbose and int(size) != current:
            print(f"\nEpoch {epoch + 1}: BatchSizeScheduler setting batch size to {int(size)}.")


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
        self._close()

    def _close(self) -> None:
        """fit calls it also when it ends by an exception (a callback's error, Ctrl-C)."""
        if self._file is not None:
            self._file.close()
            self._file = None


class ReduceLROnPlateau(Callback):
    """Multiplies the learning rate by ``factor`` when ``monitor`` has not improved for
    ``patience`` epochs, then waits ``cooldown`` epochs before counting again; never
    below ``min_lr``. The epoch's logs gain "learning_rate"."""

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10,
                 verbose: int = 0, mode: str = "auto", min_delta: float = 1e-4, cooldown: int = 0,
                 min_lr: float = 0.0) -> None:
        if not 0.0 < factor < 1.0:
            raise ValueError(f"[ReduceLROnPlateau] factor must be in (0, 1), got {factor}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"[ReduceLROnPlateau] mode must be auto, min or max, got {mode!r}")
        self.monitor, self.factor, self.patience, self.verbose = monitor, factor, patience, verbose
        self.mode, self.min_delta, self.cooldown, self.min_lr = mode, abs(min_delta), cooldown, min_lr

    def on_train_begin(self, logs=None) -> None:
        learning_rate = self.model.optimizer.get_config()["learning_rate"]
        if not isinstance(learning_rate, (int, float)):
            raise TypeError(
                f"[ReduceLROnPlateau] needs a float learning rate, got the schedule {learning_rate!r}"
            )
        self.wait, self.cooldown_counter = 0, 0
        self.best = _worst(self.mode, self.monitor)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs if logs is not None else {}
        optimizer = self.model.optimizer
        logs["learning_rate"] = float(optimizer.learning_rate)
        current = logs.get(self.monitor)
        if current is None:
            raise ValueError(
                f"[ReduceLROnPlateau] monitor {self.monitor!r} is not in the logs "
                f"({', '.join(logs)}); pass validation_data for val_* metrics"
            )
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if _improved(self.mode, self.monitor, current, self.best, self.min_delta):
            self.best, self.wait = current, 0
            return
        if self.cooldown_counter > 0:
            return
        self.wait += 1
        if self.wait < self.patience:
            return
        old = float(optimizer.learning_rate)
        if old > self.min_lr:
            new = max(old * self.factor, self.min_lr)
            optimizer.set_learning_rate(new)
            if self.verbose:
                print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}.")
            self.cooldown_counter, self.wait = self.cooldown, 0


class LambdaCallback(Callback):
    """A callback from functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)``.
    Any hook of Callback may be given; batch hooks take (batch, logs), epoch hooks
    (epoch, logs), the others (logs). Only the hooks given are called, so a
    LambdaCallback without batch hooks keeps the batch loop in C++."""

    _ALIASES = {"on_batch_begin": "on_train_batch_begin", "on_batch_end": "on_train_batch_end"}

    def __init__(self, **hooks: Callable[..., Any]) -> None:
        for name, function in hooks.items():
            name = self._ALIASES.get(name, name)
            if not name.startswith("on_") or not hasattr(Callback, name):
                raise ValueError(f"[LambdaCallback] unknown hook {name!r}")
            if function is not None:
                setattr(self, name, function)


class BackupAndRestore(Callback):
    """Fault tolerance: saves the whole training state (weights, optimizer state, loss
    scale, shuffling seed, epoch) to ``backup_dir`` after every epoch. When ``fit`` is run
    again after a crash, it resumes after the last finished epoch, as if never stopped.
    The backup is deleted when training ends other than by Ctrl-C (``delete_checkpoint``).
    In a data-parallel job every rank reads the backup and rank 0 writes it."""

    def __init__(self, backup_dir: str, save_freq: str = "epoch", delete_checkpoint: bool = True) -> None:
        if not backup_dir:
            raise ValueError("[BackupAndRestore] backup_dir is required")
        if save_freq != "epoch":
            raise ValueError(f"[BackupAndRestore] save_freq must be 'epoch', got {save_freq!r}")
        self.backup_dir, self.delete_checkpoint = backup_dir, delete_checkpoint
        self._path = os.path.join(backup_dir, "latest.steepest")

    def on_train_begin(self, logs=None) -> None:
        if os.path.exists(self._path):
            self.model._restore_backup(self._path)

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if distributed.rank() == 0:
            os.makedirs(self.backup_dir, exist_ok=True)
        self.model._save_backup(self._path, epoch + 1)

    def on_train_end(self, logs=None) -> None:
        if (self.delete_checkpoint and not self.model._interrupted and distributed.rank() == 0
                and os.path.exists(self._path)):
            os.remove(self._path)


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


__all__ = ["BackupAndRestore", "BatchSizeScheduler", "CSVLogger", "Callback", "EarlyStopping",
           "History", "LambdaCallback", "LearningRateScheduler", "ModelCheckpoint",
           "ReduceLROnPlateau", "TerminateOnNaN"]
