"""Sophia-H (issue 16): the update against a NumPy transcription of Liu et al. 2023's
Algorithm 3, Hutchinson's Hessian-diagonal estimate, the fit loop's curvature hook, the
custom-loop API, configuration, saving and errors."""

import numpy as np
import pytest

import steepest as st
from steepest import optimizers as optim


class RefSophia:
    """Liu et al. 2023, Algorithm 3 (Sophia-H), transcribed: m ← β₁m + (1−β₁)g; on steps
    t ≡ 0 (mod k), counting from 0, h ← β₂h + (1−β₂)ĥ; θ ← θ − ηλθ;
    θ ← θ − η·clip(m / max(γh, ε), 1)."""

    def __init__(self, lr, beta_1=0.965, beta_2=0.99, gamma=0.01, epsilon=1e-12, k=10,
                 weight_decay=0.1):
        self.lr, self.b1, self.b2, self.gamma = lr, beta_1, beta_2, gamma
        self.eps, self.k, self.wd = epsilon, k, weight_decay
        self.t = 0
        self.m = self.h = None

    def step(self, theta, g, hessian_diagonal):
        if self.m is None:
            self.m, self.h = np.zeros_like(theta), np.zeros_like(theta)
        self.m = self.b1 * self.m + (1 - self.b1) * g
        if self.t % self.k == 0:
            self.h = self.b2 * self.h + (1 - self.b2) * hessian_diagonal
        theta = theta - self.lr * self.wd * theta
        theta = theta - self.lr * np.clip(self.m / np.maximum(self.gamma * self.h, self.eps), -1, 1)
        self.t += 1
        return theta


# L(θ) = Σ aθ²/2 + cθ³/6: a diagonal Hessian a + cθ, so u ⊙ (H·u) = a + cθ exactly for any
# Rademacher u, and a < 0 exercises the ε floor of a negative curvature.
def _loss_terms(rng, shape):
    return rng.uniform(-0.5, 2.0, shape), rng.uniform(-1.0, 1.0, shape)


@pytest.mark.parametrize("gamma, k", [(0.01, 1), (1.0, 3), (2.0, 10)])
def test_sophia_matches_the_papers_algorithm_in_float64(gamma, k):
    rng = np.random.default_rng(0)
    shapes = [(3, 4), (5,)]
    terms = [_loss_terms(rng, s) for s in shapes]
    start = [rng.standard_normal(s) for s in shapes]
    params = [st.tensor(v, dtype="float64", requires_grad=True) for v in start]
    opt = optim.Sophia(learning_rate=0.05, gamma=gamma, update_period=k, weight_decay=0.2)
    refs = [RefSophia(0.05, gamma=gamma, k=k, weight_decay=0.2) for _ in shapes]
    thetas = [v.copy() for v in start]
    for step in range(25):
        loss = None
        for p, (a, c) in zip(params, terms):
            term = (st.tensor(a, dtype="float64") * p * p / 2
                    + st.tensor(c, dtype="float64") * p * p * p / 6).sum()
            loss = term if loss is None else loss + term
        assert opt.hessian_due == (step % k == 0)
        if opt.hessian_due:
            opt.update_hessian(loss, params)
        loss.backward()
        opt.step(params)
        opt.zero_grad(params)
        thetas = [ref.step(th, a * th + c * th ** 2 / 2, a + c * th)
                  for ref, th, (a, c) in zip(refs, thetas, terms)]
    for p, th in zip(params, thetas):
        np.testing.assert_allclose(p.numpy(), th, rtol=1e-12, atol=1e-14)
    state = opt.state_dict()["state"]
    for entry, ref in zip(state, refs):
        np.testing.assert_allclose(entry["m"], ref.m, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(entry["h"], ref.h, rtol=1e-12, atol=1e-15)


def test_hutchinson_estimate_is_unbiased_for_a_full_hessian():
    # u ⊙ (H·u) = diag(H) + Σ_{j≠i} u_i u_j H_ij: each draw is off by the cross terms,
    # their mean tends to diag(H).
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 4))
    hessian = a @ a.T
    theta = st.tensor(rng.standard_normal(4), dtype="float64", requires_grad=True)
    loss = (theta * (st.tensor(hessian, dtype="float64") @ theta)).sum() / 2
    (g,) = st.autograd.grad(loss, [theta], create_graph=True)
    st.manual_seed(5)
    draws = np.stack([st._core.optim.hutchinson_hessian_diagonal([theta], [g])[0].numpy()
                      for _ in range(4000)])
    off = draws - np.diag(hessian)
    assert np.all(np.abs(off) <= np.abs(hessian).sum(1) - np.abs(np.diag(hessian)) + 1e-12)
    np.testing.assert_allclose(draws.mean(0), np.diag(hessian), atol=0.15 * np.abs(hessian).max())


def _digits_like(rng, n=96):
    x = rng.standard_normal((n, 6)).astype(np.float32)
    y = (x @ rng.standard_normal((6, 3))).argmax(1)
    return x, y


def _mlp():
    return st.Sequential([st.layers.Dense(8, activation="tanh"), st.layers.Dense(3)])


def test_fit_refreshes_the_curvature_as_a_custom_loop_does():
    # fit's hook (wants_curvature → Hutchinson on the step's own loss) against the
    # documented custom loop with the same seed: the same draws, the same weights.
    rng = np.random.default_rng(2)
    x = rng.standard_normal((96, 6)).astype(np.float32)
    y = np.tanh(x @ rng.standard_normal((6, 3))).astype(np.float32)
    st.manual_seed(0)
    model = _mlp()
    model.build((6,))
    start = model.get_weights()
    model.compile(optimizer=optim.Sophia(learning_rate=0.01, update_period=2), loss="mse")
    st.manual_seed(7)
    model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)

    twin = _mlp()
    twin.build((6,))
    twin.set_weights(start)
    params = twin.parameters()
    opt = optim.Sophia(learning_rate=0.01, update_period=2)
    loss_fn = st.losses.MeanSquaredError()
    st.manual_seed(7)
    for _ in range(2):
        for b in range(0, len(x), 32):
            loss = loss_fn(st.tensor(y[b:b + 32]), twin(st.tensor(x[b:b + 32])))
            if opt.hessian_due:
                opt.update_hessian(loss, params)
            loss.backward()
            opt.step(params)
            opt.zero_grad(params)
    assert model.optimizer.iterations == opt.iterations == 6
    for p, q in zip(model.parameters(), params):
        np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=1e-5, atol=1e-6)
    assert any(np.any(entry["h"]) for entry in model.optimizer.state_dict()["state"])


@pytest.mark.training
def test_sophia_trains_a_classifier():
    rng = np.random.default_rng(3)
    x, y = _digits_like(rng, 256)
    st.manual_seed(1)
    model = _mlp()
    model.compile(optimizer="sophia", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.optimizer.set_learning_rate(0.02)
    history = model.fit(x, y, batch_size=32, epochs=15, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.6 * losses[0]


def test_sophia_config_get_and_saving(tmp_path):
    opt = optim.get("sophia")
    assert isinstance(opt, optim.Sophia)
    config = opt.get_config()
    assert config == {"learning_rate": 1e-4, "beta_1": 0.965, "beta_2": 0.99, "gamma": 0.01,
                      "epsilon": 1e-12, "update_period": 10, "weight_decay": 0.1,
                      "clipnorm": None}
    assert optim.Sophia.from_config(config).get_config() == config

    rng = np.random.default_rng(4)
    x, y = _digits_like(rng)
    model = _mlp()
    model.compile(optimizer=optim.Sophia(learning_rate=0.01, update_period=3),
                  loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    path = tmp_path / "sophia.steepest"
    model.save(str(path))
    loaded = st.models.load_model(str(path))
    assert isinstance(loaded.optimizer, optim.Sophia)
    assert loaded.optimizer.get_config()["update_period"] == 3
    a, b = model.optimizer.state_dict(), loaded.optimizer.state_dict()
    assert a["iterations"] == b["iterations"] == 3
    for ea, eb in zip(a["state"], b["state"]):
        np.testing.assert_array_equal(ea["h"], eb["h"])
        np.testing.assert_array_equal(ea["m"], eb["m"])


@pytest.mark.parametrize("kwargs, match", [
    ({"beta_1": 1.0}, "beta_1"),
    ({"beta_2": -0.1}, "beta_2"),
    ({"gamma": 0.0}, "gamma"),
    ({"epsilon": -1.0}, "epsilon"),
    ({"update_period": 0}, "update_period"),
    ({"weight_decay": -1.0}, "weight_decay"),
])
def test_sophia_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=rf"\[Sophia\].*{match}"):
        optim.Sophia(**kwargs)
    with pytest.raises(TypeError, match="update_period"):
        optim.Sophia(update_period=2.5)


def test_curvature_errors_are_clear():
    p = st.tensor(np.ones(3), dtype="float64", requires_grad=True)
    with pytest.raises(RuntimeError, match=r"\[Adam\].*curvature"):
        optim.Adam()._impl.update_curvature([p], [st.tensor(np.ones(3), dtype="float64")])
    with pytest.raises(ValueError, match=r"\[Sophia\].*estimate of parameter 0"):
        optim.Sophia()._impl.update_curvature([p], [st.tensor(np.ones(2), dtype="float64")])
    with pytest.raises(ValueError, match=r"\[Sophia\].*2 Hessian estimates for 1"):
        optim.Sophia()._impl.update_curvature([p], [None, None])
    assert not optim.Adam()._impl.wants_curvature


def test_cli_knows_sophia():
    from steepest import cli
    assert isinstance(cli.make_optimizer("sophia", 0.01), optim.Sophia)
