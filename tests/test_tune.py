"""st.integrations.optuna: the pruning callback and `steepest tune` (a few real trials)."""

import pytest

import steepest as st
from steepest.cli import main

optuna = pytest.importorskip("optuna")
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def digits():
    (x, y), _ = st.datasets.load_digits(flatten=True)
    return x[:600], y[:600]


def model():
    st.manual_seed(0)
    m = st.Sequential([st.layers.Input((64,)), st.layers.Dense(32, activation="relu"), st.layers.Dense(10)])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


def test_reports_every_epoch_and_the_pruner_stops_the_trial(digits):
    x, y = digits
    reported = {}

    def objective(trial):
        callback = st.integrations.optuna.PruningCallback(trial, monitor="val_loss")
        try:
            history = model().fit(x, y, epochs=5, validation_split=0.2, verbose=0, callbacks=[callback])
        finally:
            reported[trial.number] = dict(trial.storage.get_trial(trial._trial_id).intermediate_values)
        return history.history["val_loss"][-1]

    kept = optuna.create_study(pruner=optuna.pruners.NopPruner())
    kept.optimize(objective, n_trials=1)
    assert kept.trials[0].state == optuna.trial.TrialState.COMPLETE
    assert sorted(reported[0]) == [0, 1, 2, 3, 4]
    assert reported[0][4] == pytest.approx(kept.trials[0].value)
    # A threshold below every loss prunes at the first report: fit ends after epoch 0.
    pruned = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1e-9))
    pruned.optimize(objective, n_trials=1)
    assert pruned.trials[0].state == optuna.trial.TrialState.PRUNED
    assert list(pruned.trials[0].intermediate_values) == [0]


def test_a_missing_monitor_warns_and_reports_nothing(digits):
    x, y = digits
    study = optuna.create_study()
    trial = study.ask()
    with pytest.warns(RuntimeWarning, match="no 'val_loss'"):
        model().fit(x, y, epochs=1, verbose=0,
                    callbacks=[st.integrations.optuna.PruningCallback(trial, monitor="val_loss")])
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {}


def test_cli_tune_prints_the_best_trial(capsys):
    rc = main(["tune", "--model", "mlp", "--trials", "3", "--epochs", "2", "--seed", "1"])
    out, _ = capsys.readouterr()
    assert rc == 0, out
    assert "3 trials:" in out and "Best trial #" in out
    for name in ("learning_rate", "batch_size", "weight_decay"):
        assert f"  {name}: " in out
