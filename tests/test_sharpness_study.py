"""examples/sharpness_study.py: the loss slice between two solutions and the sharpness
(largest Hessian eigenvalue, st.analysis.hessian_eigenvalues) of a large-batch solution."""

import os
import sys

import numpy as np
import pytest

import steepest as st

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
import sharpness_study as ss  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return ss.load_data()


def test_slice_interpolates_between_the_solutions(data):
    a, b = ss.init_params(0), ss.init_params(1)
    alphas = np.array([-0.5, 0.0, 0.5, 1.0, 1.5])
    out = ss.loss_slice(a, b, data.x, data.y, alphas)
    assert out.shape == (5, 2)
    assert out[1] == pytest.approx(ss.evaluate(a, data.x, data.y))
    assert out[3] == pytest.approx(ss.evaluate(b, data.x, data.y))
    mid = [(p + q) / 2 for p, q in zip(a, b)]
    assert out[2] == pytest.approx(ss.evaluate(mid, data.x, data.y))
    extrapolated = [2 * q - p for p, q in zip(a, b)]  # α = 1.5 is b + ½(b − a)
    assert out[4, 0] == pytest.approx(ss.evaluate([(q + e) / 2 for q, e in zip(b, extrapolated)],
                                                  data.x, data.y)[0])


def test_sharpness_of_a_known_quadratic():
    # J = ½ Σ d_j p_j²: the Hessian is diag(d), its largest eigenvalue 7.
    d = [np.array([1.0, 7.0, 2.0]), np.array([[3.0, 0.5]])]
    weights = [st.tensor(x, dtype="float64") for x in d]

    def loss_fn(params):
        return 0.5 * ((weights[0] * params[0] * params[0]).sum()
                      + (weights[1] * params[1] * params[1]).sum())

    assert ss.sharpness(loss_fn, [np.ones(3), np.ones((1, 2))]) == pytest.approx(7.0, rel=1e-6)


def test_sharpness_of_a_large_batch_solution_is_finite(data):
    arrays, steps = ss.train(data, seed=0, batch_size=len(data.y_np), learning_rate=0.5,
                             target=0.5)
    assert steps > 0
    assert ss.evaluate(arrays, data.x, data.y)[0] < 0.5
    value = ss.sharpness(lambda p: ss.loss(p, data.x, data.y), arrays)
    assert np.isfinite(value) and value > 0


def test_sharpness_is_the_largest_eigenvalue_not_the_largest_in_magnitude():
    # Hessian diag(2, −9): the largest eigenvalue is 2 although |−9| dominates.
    d = st.tensor(np.array([2.0, -9.0]), dtype="float64")

    def loss_fn(params):
        return 0.5 * (d * params[0] * params[0]).sum()

    assert ss.sharpness(loss_fn, [np.ones(2)]) == pytest.approx(2.0, rel=1e-6)
