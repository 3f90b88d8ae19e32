"""Hyper-parameter search with Optuna (``pip install steepest[tune]``).

:class:`PruningCallback` reports a monitored value to an Optuna trial after every epoch and
stops a trial the study's pruner gives up on (successive halving, median, ...), as
Optuna's Keras integration does. :func:`tune_digits` is ``steepest tune``: learning rate,
batch size and weight decay of AdamW for the digits networks.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Optional

from ..callbacks import Callback


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ImportError("steepest.integrations.optuna needs Optuna: pip install 'steepest[tune]' "
                          "(or pip install optuna)") from None
    return optuna


class PruningCallback(Callback):
    """Reports ``logs[monitor]`` to ``trial`` at each epoch end (step = epoch) and raises
    ``optuna.TrialPruned`` when the pruner says so; fit then ends with that exception,
    which Optuna's ``study.optimize`` records as a pruned trial. The study's direction must
    match the monitor (minimize for a loss, maximize for an accuracy)."""

    def __init__(self, trial: Any, monitor: str = "val_loss") -> None:
        self._optuna = _optuna()
        self.trial, self.monitor = trial, monitor

    def on_epoch_end(self, epoch: int, logs: Optional[Dict[str, float]] = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None:
            warnings.warn(f"PruningCallback: the logs have no {self.monitor!r} (they have "
                          f"{sorted(logs or {})}); the trial is not reported this epoch",
                          RuntimeWarning, stacklevel=2)
            return
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            raise self._optuna.TrialPruned(f"pruned at epoch {epoch} ({self.monitor} = {value:.4g})")


def tune_digits(model_kind: str = "cnn", trials: int = 20, epochs: int = 10, seed: int = 0,
                timeout: Optional[float] = None, verbose: bool = True) -> Any:
    """Searches AdamW's learning rate (log-uniform 1e-4..3e-2), the batch size (16..128)
    and the weight decay (log-uniform 1e-6..1e-1) for the digits ``model_kind`` network
    of ``steepest train``, minimising the validation loss (the last 20% of the training
    images) after ``epochs`` epochs, with successive-halving pruning on val_loss. Returns
    the Optuna study; its best trial carries the validation accuracy as a user attribute.
    """
    optuna = _optuna()
    import steepest as st
    from ..cli import build_model

    (x_train, y_train), _ = st.datasets.load_digits(flatten=model_kind == "mlp")

    def objective(trial: Any) -> float:
        learning_rate = trial.suggest_float("learning_rate", 1e-4, 3e-2, log=True)
        batch_size = trial.suggest_categorical("batch_size", [16, 32, 64, 128])
        weight_decay = trial.suggest_float("weight_decay", 1e-6, 1e-1, log=True)
        st.manual_seed(seed)
        model = build_model(model_kind, x_train)
        model.compile(optimizer=st.optimizers.AdamW(learning_rate, weight_decay=weight_decay),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        history = model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs,
                            validation_split=0.2, verbose=0, seed=seed,
                            callbacks=[PruningCallback(trial, monitor="val_loss")]).history
        trial.set_user_attr("val_accuracy", history["val_accuracy"][-1])
        return history["val_loss"][-1]

    if not verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.SuccessiveHalvingPruner())
    study.optimize(objective, n_trials=trials, timeout=timeout)
    return study
