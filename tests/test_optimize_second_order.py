"""st.optimize.minimize with method="lbfgs" and "newton-cg" (issue 16): Rosenbrock from
(-1.2, 1) and a 50-dimensional quadratic of condition number 1e4, against scipy.optimize's
iteration counts (within 1.5×), and the seed's stopping rules and trajectory."""

import numpy as np
import pytest

import steepest as st

scipy_optimize = pytest.importorskip("scipy.optimize")


def rosenbrock(x):
    return (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2


def ill_conditioned_quadratic(n=50, condition=1e4, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = (q * np.logspace(0, np.log10(condition), n)) @ q.T
    b = rng.standard_normal(n)
    a_t, b_t = st.tensor(a, dtype="float64"), st.tensor(b, dtype="float64")
    return a, b, lambda x: 0.5 * (x * (a_t @ x)).sum() - (b_t * x).sum()


def test_lbfgs_solves_rosenbrock_within_scipys_iterations():
    r = st.optimize.minimize(rosenbrock, [-1.2, 1.0], method="lbfgs", grad_tol=1e-8)
    assert r.reason == "grad_tol"
    np.testing.assert_allclose(r.x, [1.0, 1.0], atol=1e-5)
    reference = scipy_optimize.minimize(scipy_optimize.rosen, [-1.2, 1.0], jac=scipy_optimize.rosen_der,
                                        method="L-BFGS-B", options={"gtol": 1e-8})
    assert r.steps <= 1.5 * reference.nit
    # Each step is one search direction with a strong-Wolfe step: J decreases every step.
    assert np.all(np.diff(r.fs) < 0)
    assert r.xs.shape == (r.steps + 1, 2) and r.evaluations >= r.steps + 1


def test_lbfgs_on_an_ill_conditioned_quadratic():
    a, b, fn = ill_conditioned_quadratic()
    r = st.optimize.minimize(fn, np.zeros(50), method="lbfgs", grad_tol=1e-4, max_steps=5000)
    assert r.reason == "grad_tol"
    solution = np.linalg.solve(a, b)
    np.testing.assert_allclose(r.x, solution, atol=1e-5)
    reference = scipy_optimize.minimize(lambda x: 0.5 * x @ a @ x - b @ x, np.zeros(50),
                                        jac=lambda x: a @ x - b, method="L-BFGS-B",
                                        options={"gtol": 1e-5, "ftol": 1e-15, "maxiter": 5000})
    assert np.abs(reference.x - solution).max() > 1e-7  # scipy reaches no better point
    assert r.steps <= 1.5 * reference.nit


def test_newton_cg_solves_rosenbrock_within_scipys_iterations():
    r = st.optimize.minimize(rosenbrock, [-1.2, 1.0], method="newton-cg", grad_tol=1e-8)
    assert r.reason == "grad_tol"
    np.testing.assert_allclose(r.x, [1.0, 1.0], atol=1e-5)
    reference = scipy_optimize.minimize(scipy_optimize.rosen, [-1.2, 1.0], jac=scipy_optimize.rosen_der,
                                        hessp=scipy_optimize.rosen_hess_prod, method="Newton-CG",
                                        options={"xtol": 1e-10})
    assert r.steps <= 1.5 * reference.nit


def test_newton_cg_on_an_ill_conditioned_quadratic():
    a, b, fn = ill_conditioned_quadratic()
    r = st.optimize.minimize(fn, np.zeros(50), method="newton-cg", grad_tol=1e-6)
    assert r.reason == "grad_tol"
    np.testing.assert_allclose(r.x, np.linalg.solve(a, b), atol=1e-7)
    reference = scipy_optimize.minimize(lambda x: 0.5 * x @ a @ x - b @ x, np.zeros(50),
                                        jac=lambda x: a @ x - b, hessp=lambda x, p: a @ p,
                                        method="Newton-CG", options={"xtol": 1e-8})
    assert r.steps <= 1.5 * reference.nit


@pytest.mark.parametrize("method", ["lbfgs", "newton-cg"])
def test_second_order_methods_keep_the_stopping_rules(method):
    r = st.optimize.minimize(rosenbrock, [-1.2, 1.0], method=method, max_steps=3)
    assert r.reason == "max_steps" and r.steps == 3 and len(r.trajectory) == 4
    r = st.optimize.minimize(rosenbrock, [-1.2, 1.0], method=method, grad_tol=0.0, f_tol=1e-3)
    assert r.reason == "f_tol" and abs(r.fs[-1] - r.fs[-2]) < 1e-3
    r = st.optimize.minimize(rosenbrock, [1.0, 1.0], method=method)
    assert r.reason == "grad_tol" and r.steps == 0
    r = st.optimize.minimize(rosenbrock, np.array([-1.2, 1.0], dtype=np.float32), method=method,
                             max_steps=5)
    assert r.x.dtype == np.float32


def test_method_argument_errors():
    with pytest.raises(ValueError, match="exactly one of optimizer"):
        st.optimize.minimize(rosenbrock, [0.0, 0.0])
    with pytest.raises(ValueError, match="exactly one of optimizer"):
        st.optimize.minimize(rosenbrock, [0.0, 0.0], st.optimizers.SGD(), method="lbfgs")
    with pytest.raises(ValueError, match="unknown method 'bfgs'"):
        st.optimize.minimize(rosenbrock, [0.0, 0.0], method="bfgs")
    with pytest.raises(ValueError, match="history_size"):
        st.optimize.minimize(rosenbrock, [0.0, 0.0], method="lbfgs", history_size=0)
    with pytest.raises(TypeError, match="one-element"):
        st.optimize.minimize(lambda x: x * 2.0, [1.0, 2.0], method="lbfgs")
