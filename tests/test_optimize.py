"""st.optimize.minimize: the seed's iteration with its three stopping rules."""

import numpy as np
import pytest

import steepest as st


def bowl(x):
    return (x * x).sum()


def test_stops_on_the_gradient_norm():
    r = st.optimize.minimize(bowl, [1.0, -2.0], st.optimizers.SGD(0.1), grad_tol=1e-6)
    assert r.reason == "grad_tol"
    # Plain GD on Σx² contracts by (1 − 2η) per step: the seed's θ −= η∇J exactly.
    assert r.steps == int(np.ceil(np.log(1e-6 / (2 * np.sqrt(5))) / np.log(0.8)))
    assert np.linalg.norm(2 * r.x) < 1e-6 and r.fun == pytest.approx(float(r.x @ r.x))
    np.testing.assert_allclose(r.xs[1], [0.8, -1.6])


def test_stops_on_the_change_of_J():
    r = st.optimize.minimize(bowl, [1.0], st.optimizers.SGD(0.01), grad_tol=0.0, f_tol=1e-3)
    assert r.reason == "f_tol"
    fs = r.fs
    assert abs(fs[-1] - fs[-2]) < 1e-3 <= abs(fs[-2] - fs[-3])


def test_stops_at_max_steps_and_records_the_trajectory():
    x0 = np.array([3.0, 4.0])
    r = st.optimize.minimize(bowl, x0, st.optimizers.Adam(0.1), max_steps=7)
    assert r.reason == "max_steps" and r.steps == 7
    assert len(r.trajectory) == 8 and r.xs.shape == (8, 2) and r.fs.shape == (8,)
    np.testing.assert_array_equal(r.trajectory[0][0], x0)
    assert r.trajectory[0][1] == 25.0
    np.testing.assert_array_equal(r.x, r.xs[-1])
    assert r.fun == r.fs[-1]
    assert np.all(np.diff(r.fs) < 0)
    x0[0] = 100.0  # x0 was copied
    assert r.trajectory[0][0][0] == 3.0


def test_zero_steps_when_already_at_the_minimum():
    r = st.optimize.minimize(bowl, [0.0, 0.0], st.optimizers.SGD(0.1))
    assert r.steps == 0 and r.reason == "grad_tol" and r.fun == 0.0


def test_keeps_float32_and_uses_any_tensor_function():
    def rosenbrock(x):
        return (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2

    r = st.optimize.minimize(rosenbrock, np.array([-1.2, 1.0], dtype=np.float32),
                             st.optimizers.Adam(0.05), max_steps=50)
    assert r.x.dtype == np.float32 and r.fun < rosenbrock(st.tensor([-1.2, 1.0])).item()


def test_bad_inputs():
    with pytest.raises(TypeError, match="one-element"):
        st.optimize.minimize(lambda x: x * 2.0, [1.0, 2.0], st.optimizers.SGD())
    with pytest.raises(ValueError, match="max_steps"):
        st.optimize.minimize(bowl, [1.0], st.optimizers.SGD(), max_steps=-1)
    with pytest.raises(ValueError, match="grad_tol"):
        st.optimize.minimize(bowl, [1.0], st.optimizers.SGD(), grad_tol=-1.0)
