"""The issue's accuracy bar on the bundled digits, with the recipe of `steepest train`:
a Normalization layer adapted to the training images, AdamW, batch 32, 20 epochs.

Each model is trained from five seeds and the mean test accuracy is checked, so the
test measures the recipe rather than one lucky initialisation.
"""

import numpy as np
import pytest

import steepest as st
from steepest.cli import build_model

SEEDS = range(5)


def _test_accuracy(kind: str, seed: int) -> float:
    (x, y), (x_test, y_test) = st.datasets.load_digits(flatten=kind == "mlp")
    st.manual_seed(seed)
    model = build_model(kind, x)
    model.compile(st.optimizers.AdamW(), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=20, verbose=0, seed=seed)
    return model.evaluate(x_test, y_test, return_dict=True)["accuracy"]


@pytest.mark.training
@pytest.mark.parametrize("kind, bar", [("mlp", 0.97), ("cnn", 0.98)])
def test_digits_accuracy(kind, bar):
    accuracies = [_test_accuracy(kind, seed) for seed in SEEDS]
    assert np.mean(accuracies) >= bar, f"{kind}: test accuracies {accuracies}"
    assert min(accuracies) >= bar - 0.015, f"{kind}: test accuracies {accuracies}"
