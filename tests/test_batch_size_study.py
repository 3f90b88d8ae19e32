"""examples/batch_size_study.py in a small configuration: the fitted slopes against the
seed's claims (gradient variance ∝ 1/b; SGD with η₀/√k steps at O(1/√k); GD at least
O(1/k); a larger batch, at the same step count, closer to GD)."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
import batch_size_study as bss  # noqa: E402


@pytest.fixture(scope="module")
def problem():
    p = bss.load_problem(lam=1e-3, n=300)
    return p, bss.solve_reference(p)


def test_reference_is_a_minimum(problem):
    p, theta_star = problem
    data = bss._Data(p)
    assert np.linalg.norm(data.gradient(theta_star)) < 1e-9
    rng = np.random.default_rng(0)
    j_star = data.loss(theta_star)
    for _ in range(3):
        assert data.loss(theta_star + 1e-3 * rng.standard_normal(theta_star.shape)) > j_star


def test_population_correction():
    assert bss.population_correction(100, 1) == 1.0
    assert bss.population_correction(100, 100) == 0.0
    assert bss.population_correction(1437, 1024) == pytest.approx(413 / 1436)


def test_fit_slope_recovers_a_power_law():
    k = np.geomspace(1, 1e4, 20)
    assert bss.fit_slope(k, 3.0 * k ** -0.5) == pytest.approx(-0.5)


def test_gradient_variance_slope_is_minus_one(problem):
    p, theta_star = problem
    n = len(p.y)
    sizes = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    for theta in (np.zeros_like(theta_star), theta_star):
        v = bss.gradient_variance(p, theta, sizes, trials=40)
        corrected = [v[b] / bss.population_correction(n, b) for b in sizes]
        assert bss.fit_slope(sizes, corrected) == pytest.approx(-1.0, abs=0.1)
        small = [b for b in sizes if b <= 16]  # b ≪ N: the correction is within 5%
        assert bss.fit_slope(small, [v[b] for b in small]) == pytest.approx(-1.0, abs=0.1)


def test_gradient_variance_bad_batch(problem):
    p, theta_star = problem
    with pytest.raises(ValueError, match=r"\[gradient_variance\] batch size 301"):
        bss.gradient_variance(p, theta_star, (301,), trials=1)


def test_rates(problem):
    p, theta_star = problem
    rates = bss.rates_study(p, theta_star, steps=1000, seeds=2, batch_sizes=(4, 64))
    sgd, averaged, gd, mb4, mb64 = rates.curves
    assert "averaged" in averaged and rates.batch[averaged] == 1
    for c in rates.curves.values():
        assert np.all(np.isfinite(c)) and np.all(c > 0)
    # Pure SGD with η₀/√k: the seed's O(1/√k).
    assert rates.slopes[sgd] == pytest.approx(-0.5, abs=0.15)
    assert rates.slopes[averaged] < -0.2  # decreasing; it lags θ_k while early iterates weigh in
    # Full-batch GD with η = 1/L: at least O(1/k) (faster once strong convexity shows).
    assert rates.slopes[gd] < -0.9
    # At equal steps a larger batch is closer to GD: O(1/√(bk)) + O(1/k).
    final = {name: c[-1] for name, c in rates.curves.items()}
    assert final[sgd] > final[mb4] > final[mb64] > 0.9 * final[gd]
