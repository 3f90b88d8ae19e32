"""Code written the way a Keras 3 user writes it runs unchanged on steepest."""

import numpy as np
import pytest

import steepest as st


def _blobs(n=256, features=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, features)) * 3
    y = rng.integers(0, classes, n)
    x = (centers[y] + rng.standard_normal((n, features))).astype(np.float32)
    return x, y.astype(np.int64)


def _classifier(features=8, classes=3, metrics=("accuracy",), optimizer="adam"):
    st.manual_seed(0)
    model = st.Sequential([
        st.layers.Input((features,)),
        st.layers.Dense(16, activation="relu"),
        st.layers.Dense(classes),
    ])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=list(metrics))
    return model


# ---------------------------------------------------------------- evaluate's return value

def test_evaluate_returns_loss_and_metrics_as_a_list():
    x, y = _blobs()
    model = _classifier()
    model.fit(x, y, epochs=2, verbose=0, seed=0)
    loss, accuracy = model.evaluate(x, y, verbose=0)
    assert isinstance(loss, float) and isinstance(accuracy, float)
    assert model.evaluate(x, y, return_dict=True) == {"loss": loss, "accuracy": accuracy}


def test_evaluate_without_metrics_returns_a_float():
    x, y = _blobs()
    model = _classifier(metrics=())
    loss = model.evaluate(x, y)
    assert isinstance(loss, float) and loss > 0
    assert model.evaluate(x, y, return_dict=True) == {"loss": loss}


def test_predict_takes_verbose():
    x, _ = _blobs()
    assert _classifier().predict(x, batch_size=64, verbose=0).shape == (len(x), 3)
