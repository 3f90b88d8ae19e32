"""Optimizers: each update rule against a NumPy transcription of its formula (float64,
20+ steps), against torch.optim where torch has the same algorithm, and the contract of
st.optimizers (state_dict round trips, skipped params, clipping, errors, choose/get).

The transcriptions below are the only NumPy copies of the maths; they follow the seed
(momentum, Nesterov, RMSProp, Adam, AdamW), optax (Lamb) and Shazeer & Stern 2018 /
torch.optim.Adafactor (Adafactor) line by line.
"""

import os

import numpy as np
import pytest

import steepest as st

optim = st.optimizers
S = st.schedules


@pytest.fixture
def torch():
    """torch, or a clean skip when it is missing or STEEPEST_TEST_NO_TORCH=1."""
    if os.environ.get("STEEPEST_TEST_NO_TORCH") == "1":
        pytest.skip("STEEPEST_TEST_NO_TORCH=1")
    return pytest.importorskip("torch")


# ---------------------------------------------------------------- NumPy transcriptions

def _lr(learning_rate, step):
    return learning_rate(step) if callable(learning_rate) else learning_rate


def _clip_scale(grads, clipnorm):
    if clipnorm is None:
        return 1.0
    norm = np.sqrt(sum(float(np.sum(g * g)) for g in grads if g is not None))
    return clipnorm / (norm + 1e-6) if norm > clipnorm else 1.0


class Reference:
    """Steps a list of float64 arrays in place; state per position, like st.optimizers."""

    def __init__(self, learning_rate, weight_decay=0.0, clipnorm=None, **hyper):
        self.learning_rate, self.wd, self.clipnorm = learning_rate, weight_decay, clipnorm
        self.h = hyper
        self.iterations = 0
        self.state = {}

    def step(self, params, grads):
        lr = _lr(self.learning_rate, self.iterations)
        scale = _clip_scale(grads, self.clipnorm)
        for i, (p, g) in enumerate(zip(params, grads)):
            if g is None:
                continue
            s = self.state.setdefault(i, {"t": 0})
            s["t"] += 1
            self.update(p, scale * g, s, lr)
        self.iterations += 1


class RefSGD(Reference):
    def update(self, theta, g, s, lr):
        beta, nesterov = self.h.get("momentum", 0.0), self.h.get("nesterov", False)
        d = self.h.get("dampening")
        d = beta if d is None else d
        g = g + self.wd * theta                       # L2 into the gradient
        if beta == 0.0:
            theta -= lr * g                           # θ = θ − η∇J(θ)
            return
        v = s.setdefault("v", np.zeros_like(theta))
        v[...] = beta * v + (1 - d) * g               # v_t = βv_{t−1} + (1−β)g_t
        if nesterov:
            theta -= lr * ((1 - d) * g + beta * v)    # look-ahead φ = θ − ηβv
        else:
            theta -= lr * v                           # θ_t = θ_{t−1} − ηv_t


class RefRMSprop(Reference):
    def update(self, theta, g, s, lr):
        rho, eps = self.h["rho"], self.h["epsilon"]
        g = g + self.wd * theta
        e = s.setdefault("E", np.zeros_like(theta))
        e[...] = rho * e + (1 - rho) * g * g          # E[g²]_t = ρE[g²]_{t−1} + (1−ρ)g²
        theta -= lr / (np.sqrt(e) + eps) * g          # θ_t = θ_{t−1} − η/(√E + ε) ⊙ g


class RefAdagrad(Reference):
    def update(self, theta, g, s, lr):
        g = g + self.wd * theta
        G = s.setdefault("G", np.full_like(theta, self.h["initial_accumulator_value"]))
        G[...] = G + g * g                            # G = Σ g²
        theta -= lr * g / (np.sqrt(G) + self.h["epsilon"])  # θ −= η g/(√G + ε)


class RefLion(Reference):
    def update(self, theta, g, s, lr):
        b1, b2 = self.h["beta_1"], self.h["beta_2"]
        m = s.setdefault("m", np.zeros_like(theta))
        c = b1 * m + (1 - b1) * g                     # c = β₁m + (1−β₁)g
        theta -= lr * (np.sign(c) + self.wd * theta)  # θ −= η(sign(c) + λθ)
        m[...] = b2 * m + (1 - b2) * g                # m = β₂m + (1−β₂)g


def newton_schulz(u, steps, eps, coefficients=(3.4445, -4.7750, 2.0315)):
    a, b, c = coefficients
    x = u.T if u.shape[0] > u.shape[1] else u
    x = x / max(np.linalg.norm(x), eps)             # X = U / max(‖U‖_F, ε)
    for _ in range(steps):
        gram = x @ x.T                                # A = XXᵀ
        x = a * x + (b * gram + c * gram @ gram) @ x  # X ← aX + (bA + cA²)X
    return x.T if u.shape[0] > u.shape[1] else x


class RefMuon(Reference):
    def update(self, theta, g, s, lr):
        h = self.h
        if theta.ndim != 2:                           # AdamW at η·adam_lr_ratio
            adamw = RefAdamW(lr * h["adam_lr_ratio"], weight_decay=self.wd, beta_1=h["adam_beta_1"],
                             beta_2=h["adam_beta_2"], epsilon=h["epsilon"])
            adamw.update(theta, g, s, lr * h["adam_lr_ratio"])
            return
        mu = h["momentum"]
        b = s.setdefault("B", np.zeros_like(theta))
        b[...] = mu * b + (1 - mu) * g                # B = μB + (1−μ)G
        u = (1 - mu) * g + mu * b if h["nesterov"] else b
        rows, cols = theta.shape
        theta *= 1 - lr * self.wd                     # θ = (1 − ηλ)θ − η√max(1, r/c)·X
        theta -= lr * np.sqrt(max(1.0, rows / cols)) * newton_schulz(u, h["ns_steps"], h["epsilon"])


MUON_DEFAULTS = dict(momentum=0.95, nesterov=True, ns_steps=5, epsilon=1e-7, adam_beta_1=0.9,
                     adam_beta_2=0.999, adam_lr_ratio=0.1)


class RefAdam(Reference):
    decoupled = False

    def moments(self, g, s):
        b1, b2 = self.h["beta_1"], self.h["beta_2"]
        m = s.setdefault("m", np.zeros_like(g))
        v = s.setdefault("v", np.zeros_like(g))
        m[...] = b1 * m + (1 - b1) * g                # m_t = β₁m + (1−β₁)g
        v[...] = b2 * v + (1 - b2) * g * g            # v_t = β₂v + (1−β₂)g²
        m_hat = m / (1 - b1 ** s["t"])                # m̂ = m/(1−β₁ᵗ)
        v_hat = v / (1 - b2 ** s["t"])                # v̂ = v/(1−β₂ᵗ)
        return m_hat / (np.sqrt(v_hat) + self.h["epsilon"])

    def update(self, theta, g, s, lr):
        if self.decoupled:                            # AdamW: θ −= η(m̂/(√v̂+ε) + λθ)
            theta -= lr * (self.moments(g, s) + self.wd * theta)
        else:
            theta -= lr * self.moments(g + self.wd * theta, s)


class RefAdamW(RefAdam):
    decoupled = True


class RefLamb(RefAdam):
    def update(self, theta, g, s, lr):
        u = self.moments(g, s) + self.wd * theta     # optax: scale_by_adam, add_decayed_weights
        p_norm, u_norm = np.linalg.norm(theta), np.linalg.norm(u)
        ratio = 1.0 if p_norm == 0 or u_norm == 0 else p_norm / u_norm
        theta -= lr * ratio * u


class RefAdafactor(Reference):
    def update(self, theta, g, s, lr):
        h, t = self.h, s["t"]
        rms = lambda x: np.sqrt(np.mean(x * x))  # noqa: E731
        beta = 1 - t ** h["beta_2_decay"]             # β̂₂ = 1 − t^(−0.8)
        if h["relative_step"]:
            alpha = max(h["epsilon_2"], rms(theta)) * min(lr, 1 / np.sqrt(t))
        else:
            alpha = lr
        theta *= 1 - lr * self.wd                     # decoupled decay, as torch
        g2 = g * g + h["epsilon_1"]
        if theta.ndim >= 2:
            r = s.setdefault("r", np.zeros(theta.shape[:-1]))
            c = s.setdefault("c", np.zeros(theta.shape[:-2] + theta.shape[-1:]))
            r[...] = beta * r + (1 - beta) * g2.mean(axis=-1)
            c[...] = beta * c + (1 - beta) * g2.mean(axis=-2)
            v = r[..., :, None] * c[..., None, :] / r.mean(axis=-1)[..., None, None]
        else:
            v = s.setdefault("v", np.zeros_like(theta))
            v[...] = beta * v + (1 - beta) * g2
        u = g / np.sqrt(v)
        u /= max(1.0, rms(u) / h["clip_threshold"])
        theta -= alpha * u


ADAFACTOR_DEFAULTS = dict(beta_2_decay=-0.8, epsilon_1=1e-30, epsilon_2=1e-3,
                          clip_threshold=1.0, relative_step=True)

# (id, steepest optimizer factory, reference factory)
CASES = [
    ("sgd", lambda: optim.SGD(0.1), lambda: RefSGD(0.1)),
    ("sgd-l2", lambda: optim.SGD(0.1, weight_decay=0.05), lambda: RefSGD(0.1, weight_decay=0.05)),
    ("momentum-seed", lambda: optim.SGD(0.1, momentum=0.9), lambda: RefSGD(0.1, momentum=0.9)),
    ("momentum-d0", lambda: optim.SGD(0.05, momentum=0.8, dampening=0.0),
     lambda: RefSGD(0.05, momentum=0.8, dampening=0.0)),
    ("nesterov", lambda: optim.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
     lambda: RefSGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("rmsprop", lambda: optim.RMSprop(0.01, rho=0.8, weight_decay=0.1),
     lambda: RefRMSprop(0.01, rho=0.8, epsilon=1e-8, weight_decay=0.1)),
    ("adagrad", lambda: optim.Adagrad(0.1, weight_decay=0.05),
     lambda: RefAdagrad(0.1, initial_accumulator_value=0.1, epsilon=1e-7, weight_decay=0.05)),
    ("adagrad-zero-start", lambda: optim.Adagrad(0.1, initial_accumulator_value=0.0, epsilon=1e-10),
     lambda: RefAdagrad(0.1, initial_accumulator_value=0.0, epsilon=1e-10)),
    ("lion", lambda: optim.Lion(0.01, weight_decay=0.5),
     lambda: RefLion(0.01, beta_1=0.9, beta_2=0.99, weight_decay=0.5)),
    ("lion-clip-schedule", lambda: optim.Lion(S.StepDecay(0.02, 5, 0.5), beta_1=0.8, beta_2=0.95, clipnorm=0.5),
     lambda: RefLion(S.StepDecay(0.02, 5, 0.5), beta_1=0.8, beta_2=0.95, clipnorm=0.5)),
    ("muon", lambda: optim.Muon(0.02), lambda: RefMuon(0.02, weight_decay=0.1, **MUON_DEFAULTS)),
    ("muon-plain-momentum-clip", lambda: optim.Muon(0.02, momentum=0.9, nesterov=False, ns_steps=3,
                                                    weight_decay=0.0, clipnorm=1.0, adam_lr_ratio=0.5),
     lambda: RefMuon(0.02, clipnorm=1.0, **{**MUON_DEFAULTS, "momentum": 0.9, "nesterov": False,
                                           "ns_steps": 3, "adam_lr_ratio": 0.5})),
    ("adam", lambda: optim.Adam(0.01, weight_decay=0.1),
     lambda: RefAdam(0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-8, weight_decay=0.1)),
    ("adamw", lambda: optim.AdamW(0.01, beta_1=0.8, beta_2=0.99, weight_decay=0.1),
     lambda: RefAdamW(0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-8, weight_decay=0.1)),
    ("adamw-clip-schedule", lambda: optim.AdamW(S.StepDecay(0.02, 5, 0.5), clipnorm=0.5),
     lambda: RefAdamW(S.StepDecay(0.02, 5, 0.5), beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                      weight_decay=0.01, clipnorm=0.5)),
    ("lamb", lambda: optim.Lamb(0.01),
     lambda: RefLamb(0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-6)),
    ("lamb-decay", lambda: optim.Lamb(0.01, weight_decay=0.1, clipnorm=1.0),
     lambda: RefLamb(0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-6, weight_decay=0.1, clipnorm=1.0)),
    ("adafactor", lambda: optim.Adafactor(), lambda: RefAdafactor(1e-2, **ADAFACTOR_DEFAULTS)),
    ("adafactor-lr-decay", lambda: optim.Adafactor(0.05, weight_decay=0.1, clip_threshold=0.5),
     lambda: RefAdafactor(0.05, weight_decay=0.1, **{**ADAFACTOR_DEFAULTS, "clip_threshold": 0.5})),
    ("adafactor-absolute", lambda: optim.Adafactor(S.CosineDecay(0.01, 30), relative_step=False),
     lambda: RefAdafactor(S.CosineDecay(0.01, 30),
                          **{**ADAFACTOR_DEFAULTS, "relative_step": False})),
]
CASE_IDS = [c[0] for c in CASES]

# A matrix, a vector, a scalar, a batch of matrices and a matrix large enough
# (> 32768 elements) to run the kernels' multi-threaded and chunked-reduction paths.
SHAPES = [(4, 3), (5,), (), (2, 3, 4), (256, 160)]


def _run(case, rng, dtype="float64", steps=25, shapes=SHAPES):
    _, make, make_ref = case
    start = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(steps)]
    opt, ref = make(), make_ref()
    params = [st.tensor(a, dtype=dtype) for a in start]
    ref_params = [a.copy() for a in start]
    for k in range(steps):
        for p, g in zip(params, grads[k]):
            p.grad = st.tensor(g, dtype=dtype)
        opt.step(params)
        ref.step(ref_params, grads[k])
    return params, ref_params, opt


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_numpy_transcription_float64(case, rng):
    params, ref_params, opt = _run(case, rng)
    assert opt.iterations == 25
    for p, r in zip(params, ref_params):
        np.testing.assert_allclose(p.numpy(), r, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_float32_kernels_follow_the_float64_ones(case, rng):
    params, ref_params, _ = _run(case, rng, dtype="float32", steps=10, shapes=SHAPES[:2])
    for p, r in zip(params, ref_params):
        assert p.dtype == "float32"
        np.testing.assert_allclose(p.numpy(), r, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------ torch

def _torch_run(torch, make_ours, make_theirs, rng, shapes=((6, 5), (7,)), steps=25):
    start = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(steps)]
    ours = [st.tensor(a, dtype="float64") for a in start]
    theirs = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in start]
    opt, topt = make_ours(), make_theirs(theirs)
    for k in range(steps):
        for p, tp, g in zip(ours, theirs, grads[k]):
            p.grad = st.tensor(g, dtype="float64")
            tp.grad = torch.tensor(g, dtype=torch.float64)
        opt.step(ours)
        topt.step()
    for p, tp in zip(ours, theirs):
        np.testing.assert_allclose(p.numpy(), tp.detach().numpy(), rtol=1e-7, atol=1e-12)


def test_sgd_seed_momentum_is_torch_momentum_with_scaled_lr(torch, rng):
    # v_seed = (1−β)·v_torch, so the seed's η equals torch's lr = η(1−β) with dampening 0.
    eta, beta = 0.1, 0.9
    _torch_run(torch, lambda: optim.SGD(eta, momentum=beta),
               lambda ps: torch.optim.SGD(ps, lr=eta * (1 - beta), momentum=beta), rng)


def test_sgd_nesterov_matches_torch(torch, rng):
    eta, beta = 0.1, 0.9
    _torch_run(torch, lambda: optim.SGD(eta, momentum=beta, nesterov=True),
               lambda ps: torch.optim.SGD(ps, lr=eta * (1 - beta), momentum=beta, nesterov=True),
               rng)


def test_sgd_dampening_zero_and_weight_decay_match_torch(torch, rng):
    _torch_run(torch, lambda: optim.SGD(0.05, momentum=0.8, dampening=0.0, weight_decay=0.01),
               lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.8, weight_decay=0.01), rng)
    _torch_run(torch, lambda: optim.SGD(0.05, momentum=0.8, dampening=0.0, nesterov=True),
               lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.8, nesterov=True), rng)


def test_rmsprop_matches_torch(torch, rng):
    # torch adds eps outside the square root, exactly as the seed's √E[g²] + ε.
    _torch_run(torch, lambda: optim.RMSprop(0.01, rho=0.9, epsilon=1e-8, weight_decay=0.01),
               lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.9, eps=1e-8, weight_decay=0.01),
               rng)


def test_adagrad_matches_torch(torch, rng):
    _torch_run(torch, lambda: optim.Adagrad(0.1, initial_accumulator_value=0.1, epsilon=1e-7,
                                            weight_decay=0.01),
               lambda ps: torch.optim.Adagrad(ps, lr=0.1, initial_accumulator_value=0.1, eps=1e-7,
                                              weight_decay=0.01), rng)


def test_muon_matches_torch_on_matrices(torch, rng):
    # torch runs the Newton-Schulz iteration in bfloat16, steepest in the parameter's type:
    # the steps agree to bfloat16's precision (our float64 transcription test is exact).
    shapes = [(6, 5), (5, 9)]
    start = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(5)]
    ours = [st.tensor(a, dtype="float64") for a in start]
    theirs = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in start]
    opt = optim.Muon(0.02, weight_decay=0.1)
    topt = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1)
    for k in range(5):
        for p, tp, g in zip(ours, theirs, grads[k]):
            p.grad = st.tensor(g, dtype="float64")
            tp.grad = torch.tensor(g, dtype=torch.float64)
        opt.step(ours)
        topt.step()
    for p, tp, a in zip(ours, theirs, start):
        moved, torch_moved = p.numpy() - a, tp.detach().numpy() - a
        np.testing.assert_allclose(moved, torch_moved, atol=0.03 * np.abs(torch_moved).max())


def test_adam_matches_torch(torch, rng):
    _torch_run(torch, lambda: optim.Adam(0.01, beta_1=0.85, beta_2=0.99, weight_decay=0.01),
               lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.85, 0.99), eps=1e-8,
                                           weight_decay=0.01), rng)


def test_adamw_matches_torch(torch, rng):
    _torch_run(torch, lambda: optim.AdamW(0.01, weight_decay=0.1),
               lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1), rng)


def test_adafactor_matches_torch(torch, rng):
    # torch.optim.Adafactor is the same algorithm with lr = the relative step's cap (1e-2 =
    # our learning_rate=None), decoupled decay θ −= lr·λ·θ and RMS(θ) taken before it.
    # One difference: torch clamps √v̂ at eps1 instead of adding ε₁ to g²; with non-zero
    # gradients both leave v̂ unchanged in float64.
    if not hasattr(torch.optim, "Adafactor"):
        pytest.skip("this torch has no Adafactor")
    shapes = ((6, 5), (7,), (2, 3, 4))
    _torch_run(torch, lambda: optim.Adafactor(),
               lambda ps: torch.optim.Adafactor(ps, lr=1e-2), rng, shapes=shapes)
    _torch_run(torch, lambda: optim.Adafactor(0.05, weight_decay=0.1, clip_threshold=2.0),
               lambda ps: torch.optim.Adafactor(ps, lr=0.05, d=2.0, weight_decay=0.1), rng,
               shapes=shapes)


# ---------------------------------------------------------------------------- Nesterov

def test_nesterov_is_the_seeds_look_ahead_on_a_quadratic():
    # The seed, literally: g = ∇J(θ − ηβv); v = βv + (1−β)g; θ −= ηv, for J = ½θᵀAθ.
    a = np.array([[3.0, 0.5], [0.5, 1.0]])
    eta, beta = 0.1, 0.9
    theta, v = np.array([1.0, -2.0]), np.zeros(2)
    phi = st.tensor(theta, dtype="float64", requires_grad=True)
    opt = optim.SGD(eta, momentum=beta, nesterov=True)
    a_t = st.tensor(a, dtype="float64")
    for _ in range(30):
        g = a @ (theta - eta * beta * v)
        v = beta * v + (1 - beta) * g
        theta = theta - eta * v

        phi.grad = None
        (0.5 * (phi @ (a_t @ phi))).backward()  # the gradient where the weights are
        opt.step([phi])
        velocity = opt.state_dict()["state"][0]["velocity"]
        np.testing.assert_allclose(velocity, v, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(phi.numpy() + eta * beta * velocity, theta, rtol=1e-12,
                                   atol=1e-15)


# -------------------------------------------------------------------------- contract

# Factories, not instances: a parametrize list outlives the test session's objects.
ALL_OPTIMIZERS = {
    "sgd": lambda: optim.SGD(0.1),
    "momentum": lambda: optim.SGD(0.1, momentum=0.9),
    "nesterov": lambda: optim.SGD(0.1, momentum=0.9, nesterov=True),
    "adagrad": lambda: optim.Adagrad(0.01),
    "rmsprop": lambda: optim.RMSprop(0.01),
    "lion": lambda: optim.Lion(0.001, weight_decay=0.1),
    "muon": lambda: optim.Muon(0.01),
    "sophia": lambda: optim.Sophia(0.01),
    "adam": lambda: optim.Adam(0.01),
    "adamw": lambda: optim.AdamW(0.01),
    "lamb": lambda: optim.Lamb(0.01),
    "adafactor": lambda: optim.Adafactor(),
    "adafactor-absolute": lambda: optim.Adafactor(0.01, relative_step=False),
}
each_optimizer = pytest.mark.parametrize("make", ALL_OPTIMIZERS.values(), ids=ALL_OPTIMIZERS.keys())


@each_optimizer
def test_state_dict_round_trip_continues_bit_exactly(make, rng):
    opt = make()
    kwargs = opt.get_config()
    if kwargs["learning_rate"] is not None:
        kwargs["learning_rate"] = S.WarmupCosine(0.02, 3, 30)
    opt = type(opt)(**kwargs)
    shapes = [(8, 6), (6,), (3, 4, 5)]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(20)]
    params = [st.tensor(rng.standard_normal(s), dtype="float32") for s in shapes]

    def run(optimizer, params, steps):
        for g in steps:
            for p, gi in zip(params, g):
                p.grad = st.tensor(gi)
            optimizer.step(params)

    run(opt, params, grads[:10])
    snapshot = opt.state_dict()
    saved = [p.numpy().copy() for p in params]
    run(opt, params, grads[10:])

    fresh = type(opt)()
    fresh.load_state_dict(snapshot)
    assert fresh.iterations == 10 and fresh.get_config().keys() == opt.get_config().keys()
    restored = [st.tensor(a) for a in saved]
    run(fresh, restored, grads[10:])
    for p, q in zip(params, restored):
        np.testing.assert_array_equal(p.numpy(), q.numpy())
    for a, b in zip(opt.state_dict()["state"], fresh.state_dict()["state"]):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_state_dict_holds_copies_and_numpy_arrays():
    p = st.tensor([1.0, 2.0], dtype="float64")
    opt = optim.Adam(0.1)
    p.grad = st.tensor([1.0, 1.0], dtype="float64")
    opt.step([p])
    sd = opt.state_dict()
    m = sd["state"][0]["m"]
    assert isinstance(m, np.ndarray) and m.dtype == np.float64 and sd["state"][0]["step"] == 1
    np.testing.assert_allclose(m, [0.1, 0.1], rtol=1e-15)
    before = m.copy()
    opt.step([p])
    np.testing.assert_array_equal(m, before)  # the snapshot did not move
    assert sd["config"]["learning_rate"] == 0.1 and sd["iterations"] == 1


def test_load_state_dict_rejects_another_optimizer_and_mismatched_state():
    p = st.tensor(np.ones((2, 3)))
    p.grad = st.tensor(np.ones((2, 3)))
    adam = optim.Adam()
    adam.step([p])
    with pytest.raises(ValueError, match="Adam"):
        optim.SGD().load_state_dict(adam.state_dict())
    other = optim.Adam()
    other.load_state_dict(adam.state_dict())
    q = st.tensor(np.ones(4))
    q.grad = st.tensor(np.ones(4))
    with pytest.raises(ValueError, match=r"same order"):
        other.step([q])  # position 0 now holds a parameter of another shape


@each_optimizer
def test_zero_grads_without_decay_change_nothing(make, rng):
    opt = make()
    opt = type(opt)(**{**opt.get_config(), "weight_decay": 0.0})
    params = [st.tensor(rng.standard_normal(s)) for s in [(5, 4), (3,), ()]]
    before = [p.numpy().copy() for p in params]
    for _ in range(3):
        for p in params:
            p.grad = st.zeros(p.shape)
        opt.step(params)
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.numpy(), b)


@each_optimizer
def test_params_without_grad_are_skipped(make, rng):
    opt = make()
    a = st.tensor(rng.standard_normal((3, 2)))
    b = st.tensor(rng.standard_normal(4))
    b_before = b.numpy().copy()
    a.grad = st.tensor(rng.standard_normal((3, 2)))
    opt.step([a, b])
    np.testing.assert_array_equal(b.numpy(), b_before)
    state = opt.state_dict()["state"]
    assert state[0]["step"] == 1 and state[1] is None
    b.grad = st.tensor(rng.standard_normal(4))
    opt.step([a, b])
    state = opt.state_dict()["state"]
    assert state[0]["step"] == 2 and state[1]["step"] == 1  # b's bias correction starts at t=1


def test_zero_grad_sets_grads_to_none():
    p = st.tensor([1.0], requires_grad=True)
    p.grad = st.tensor([2.0])
    optim.SGD().zero_grad([p])
    assert p.grad is None


def test_skipped_step_does_not_advance_iterations_or_the_schedule():
    seen = []

    def schedule(step):
        seen.append(step)
        return 0.1 * (step + 1)

    p = st.tensor([0.0], dtype="float64")
    opt = optim.SGD(schedule)
    p.grad = st.tensor([1.0], dtype="float64")
    opt.step([p])
    opt.step([p], skip=True)
    assert opt.iterations == 1 and p.numpy()[0] == pytest.approx(-0.1)
    opt.step([p])
    assert opt.iterations == 2 and p.numpy()[0] == pytest.approx(-0.3)
    assert seen == [0, 1]
    assert opt.learning_rate == pytest.approx(0.3)  # the schedule at iterations = 2


def test_set_learning_rate_keeps_state_and_iterations():
    p = st.tensor([1.0, -1.0], dtype="float64")
    opt = optim.Adam(0.1)
    impl = opt._impl  # what a compiled model holds
    p.grad = st.tensor([1.0, 1.0], dtype="float64")
    opt.step([p])
    before = opt.state_dict()["state"]
    opt.set_learning_rate(S.StepDecay(0.5, 1, 0.5))
    assert opt._impl is impl and opt.iterations == 1 and opt.learning_rate == 0.25
    np.testing.assert_array_equal(opt.state_dict()["state"][0]["m"], before[0]["m"])
    opt.learning_rate = 0.01
    assert opt.learning_rate == 0.01 and opt.get_config()["learning_rate"] == 0.01
    with pytest.raises(ValueError, match="-2"):
        opt.learning_rate = -2.0


def test_bad_schedule_values_raise():
    p = st.tensor([0.0])
    p.grad = st.tensor([1.0])
    with pytest.raises(ValueError, match="-1"):
        optim.SGD(lambda step: -1.0).step([p])
    with pytest.raises(TypeError, match="float"):
        optim.SGD(lambda step: "fast").step([p])
    with pytest.raises(TypeError, match="learning_rate"):
        optim.SGD(learning_rate="fast")


def test_parameter_checks_name_the_parameter():
    p = st.tensor(np.ones(3, dtype=np.int64))
    p.grad = st.tensor(np.ones(3, dtype=np.int64))
    with pytest.raises(TypeError, match="parameter 1 is int64"):
        optim.Adam().step([st.tensor([1.0]), p])
    q = st.tensor(np.ones((4, 3)), dtype="float64")[:, :2]
    q.grad = st.tensor(np.ones((4, 2)), dtype="float64")
    with pytest.raises(ValueError, match="contiguous"):
        optim.Adam().step([q])


def test_non_contiguous_grad_is_read_correctly():
    p = st.tensor(np.zeros((2, 3)), dtype="float64")
    p.grad = st.tensor(np.arange(6.0).reshape(3, 2), dtype="float64").T
    optim.SGD(1.0).step([p])
    np.testing.assert_array_equal(p.numpy(), -np.arange(6.0).reshape(3, 2).T)


def test_clipnorm_scales_the_step_but_not_the_grad():
    p = st.tensor([0.0, 0.0], dtype="float64")
    p.grad = st.tensor([3.0, 4.0], dtype="float64")  # norm 5
    optim.SGD(1.0, clipnorm=1.0).step([p])
    np.testing.assert_allclose(p.numpy(), -np.array([3.0, 4.0]) / (5 + 1e-6), rtol=1e-12)
    np.testing.assert_array_equal(p.grad.numpy(), [3.0, 4.0])


# --------------------------------------------------------------------- convergence

def ravine(x):
    return 0.5 * (x[0] ** 2 + 100.0 * x[1] ** 2)  # the seed's ill-conditioned 沟壑


def rosenbrock(x):
    return (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2


# Per-optimizer settings that reach J < 1e-6 (AdamW without decay: with it, the minimum of
# J + decay is elsewhere). Constant-step adaptive methods circle the Rosenbrock minimum
# at the scale of η, so they get a decaying schedule there.
CONVERGENCE = [
    ("sgd", lambda: optim.SGD(0.015), lambda: optim.SGD(1e-3), 20000),
    ("momentum", lambda: optim.SGD(0.015, momentum=0.9), lambda: optim.SGD(0.015, momentum=0.9),
     5000),
    ("nesterov", lambda: optim.SGD(0.015, momentum=0.9, nesterov=True),
     lambda: optim.SGD(0.01, momentum=0.9, nesterov=True), 5000),
    ("rmsprop", lambda: optim.RMSprop(0.01),
     lambda: optim.RMSprop(S.StepDecay(0.01, 1000, 0.7)), 20000),
    ("adam", lambda: optim.Adam(0.1), lambda: optim.Adam(0.1), 5000),
    ("adamw", lambda: optim.AdamW(0.05, weight_decay=0.0),
     lambda: optim.AdamW(0.05, weight_decay=0.0), 5000),
    ("lamb", lambda: optim.Lamb(0.1), lambda: optim.Lamb(S.CosineDecay(0.02, 20000)), 20000),
    ("adafactor", lambda: optim.Adafactor(),
     lambda: optim.Adafactor(S.StepDecay(0.05, 1000, 0.7), relative_step=False), 12000),
]


@pytest.mark.parametrize("name,on_ravine,on_rosenbrock,steps", CONVERGENCE,
                         ids=[c[0] for c in CONVERGENCE])
def test_converges_on_the_ravine_and_rosenbrock(name, on_ravine, on_rosenbrock, steps):
    r = st.optimize.minimize(ravine, [1.0, 1.0], on_ravine(), max_steps=5000, grad_tol=1e-7)
    assert r.fun < 1e-6 and np.abs(r.x).max() < 1e-3, (name, r.fun, r.x)
    r = st.optimize.minimize(rosenbrock, [-1.2, 1.0], on_rosenbrock(), max_steps=steps,
                             grad_tol=1e-7)
    assert r.fun < 1e-6 and np.abs(r.x - 1.0).max() < 1e-2, (name, r.fun, r.x)


# ------------------------------------------------------------------------ Adafactor

def test_adafactor_state_is_factored():
    opt = optim.Adafactor()
    matrix, batch, vector = st.zeros((300, 200)), st.zeros((4, 30, 20)), st.zeros(50)
    assert opt.state_size_bytes([matrix]) == (300 + 200) * 4
    assert opt.state_size_bytes([batch]) == 4 * (30 + 20) * 4
    assert opt.state_size_bytes([vector]) == 50 * 4
    assert opt.state_size_bytes([st.zeros((300, 200), dtype="float64")]) == (300 + 200) * 8
    assert optim.Adam().state_size_bytes([matrix]) == 2 * 300 * 200 * 4
    assert optim.SGD().state_size_bytes([matrix]) == 0
    for p in (matrix, batch, vector):
        p.grad = st.ones(p.shape)
    opt.step([matrix, batch, vector])
    shapes = [{k: v.shape for k, v in s.items() if k != "step"} for s in opt.state_dict()["state"]]
    assert shapes == [{"v_row": (300,), "v_col": (200,)},
                      {"v_row": (4, 30), "v_col": (4, 20)},
                      {"v": (50,)}]


# ------------------------------------------------------------------------- clipping

def test_clip_grad_norm_matches_torch_semantics(rng):
    grads = [rng.standard_normal((5, 4)), rng.standard_normal(3)]
    params = [st.tensor(np.zeros_like(g), dtype="float64") for g in grads]
    for p, g in zip(params, grads):
        p.grad = st.tensor(g, dtype="float64")
    held = params[0].grad
    norm = np.sqrt(sum(np.sum(g * g) for g in grads))
    assert st.clip_grad_norm(params, 1.0) == pytest.approx(norm, rel=1e-12)
    for p, g in zip(params, grads):
        np.testing.assert_allclose(p.grad.numpy(), g * (1.0 / (norm + 1e-6)), rtol=1e-12)
    np.testing.assert_allclose(held.numpy(), params[0].grad.numpy())  # in place
    small = [g * 1e-3 for g in grads]
    for p, g in zip(params, small):
        p.grad = st.tensor(g, dtype="float64")
    assert st.clip_grad_norm(params, 1.0) == pytest.approx(norm * 1e-3, rel=1e-12)
    np.testing.assert_array_equal(params[1].grad.numpy(), small[1])  # under the limit


def test_clip_grad_norm_agrees_with_torch(torch, rng):
    g = rng.standard_normal((6, 7))
    p = st.tensor(np.zeros((6, 7)), dtype="float64")
    p.grad = st.tensor(g, dtype="float64")
    tp = torch.zeros(6, 7, dtype=torch.float64, requires_grad=True)
    tp.grad = torch.tensor(g)
    total = st.clip_grad_norm([p], 0.5)
    assert total == pytest.approx(torch.nn.utils.clip_grad_norm_([tp], 0.5).item(), rel=1e-12)
    np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=1e-12)


def test_clip_grad_norm_non_contiguous_grad_and_errors():
    p = st.tensor(np.zeros((2, 3)), dtype="float64")
    p.grad = st.tensor(np.full((3, 2), 10.0), dtype="float64").T
    st.clip_grad_norm([p, st.tensor([1.0])], 1.0)
    np.testing.assert_allclose(np.linalg.norm(p.grad.numpy()), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="-1"):
        st.clip_grad_norm([p], -1.0)


# ----------------------------------------------------------------------- arguments

BAD_ARGUMENTS = [
    (optim.SGD, {"learning_rate": -0.1}, "learning_rate.*-0.1"),
    (optim.SGD, {"momentum": 1.0}, "momentum.*1"),
    (optim.SGD, {"momentum": -0.5}, "momentum.*-0.5"),
    (optim.SGD, {"momentum": 0.9, "dampening": 1.5}, "dampening.*1.5"),
    (optim.SGD, {"nesterov": True}, "nesterov.*momentum=0"),
    (optim.SGD, {"weight_decay": -1e-4}, "weight_decay.*-0.0001"),
    (optim.RMSprop, {"rho": 1.2}, "rho.*1.2"),
    (optim.RMSprop, {"epsilon": 0.0}, "epsilon.*0"),
    (optim.Adam, {"beta_1": 1.0}, "beta_1.*1"),
    (optim.Adam, {"beta_2": -0.1}, "beta_2.*-0.1"),
    (optim.Adam, {"epsilon": -1e-8}, "epsilon.*-1e-08"),
    (optim.Adam, {"learning_rate": float("nan")}, "learning_rate.*nan"),
    (optim.AdamW, {"weight_decay": -0.01}, "weight_decay.*-0.01"),
    (optim.AdamW, {"clipnorm": 0.0}, "clipnorm.*0"),
    (optim.Lamb, {"epsilon": 0.0}, "epsilon.*0"),
    (optim.Lamb, {"beta_1": 2.0}, "beta_1.*2"),
    (optim.Adagrad, {"initial_accumulator_value": -0.1}, "initial_accumulator_value.*-0.1"),
    (optim.Adagrad, {"epsilon": 0.0}, "epsilon.*0"),
    (optim.Muon, {"momentum": 1.0}, "momentum.*1"),
    (optim.Muon, {"ns_steps": 0}, "ns_steps.*0"),
    (optim.Muon, {"adam_lr_ratio": -1.0}, "adam_lr_ratio.*-1"),
    (optim.Lion, {"beta_1": 1.0}, "beta_1.*1"),
    (optim.Lion, {"beta_2": -0.5}, "beta_2.*-0.5"),
    (optim.Lion, {"weight_decay": -1.0}, "weight_decay.*-1"),
    (optim.Adafactor, {"epsilon_1": 0.0}, "epsilon_1.*0"),
    (optim.Adafactor, {"epsilon_2": -1.0}, "epsilon_2.*-1"),
    (optim.Adafactor, {"clip_threshold": 0.0}, "clip_threshold.*0"),
    (optim.Adafactor, {"beta_2_decay": 0.5}, "beta_2_decay.*0.5"),
    (optim.Adafactor, {"relative_step": False}, "relative_step.*None"),
    (optim.Adafactor, {"learning_rate": -1.0}, "learning_rate.*-1"),
]


@pytest.mark.parametrize("cls,kwargs,message", BAD_ARGUMENTS,
                         ids=[f"{c.__name__}-{next(iter(k))}" for c, k, _ in BAD_ARGUMENTS])
def test_bad_arguments_raise_value_error_naming_the_value(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


# ------------------------------------------------------------------------ get, choose

@pytest.mark.parametrize("name,cls", [
    ("sgd", optim.SGD), ("momentum", optim.SGD), ("nesterov", optim.SGD),
    ("rmsprop", optim.RMSprop), ("Adam", optim.Adam), ("adamw", optim.AdamW),
    ("lamb", optim.Lamb), ("adafactor", optim.Adafactor), ("adagrad", optim.Adagrad),
    ("Lion", optim.Lion), ("muon", optim.Muon)])
def test_get_returns_defaults(name, cls):
    opt = optim.get(name)
    assert type(opt) is cls and opt.iterations == 0
    assert optim.get(opt) is opt


def test_get_defaults_and_unknown_names():
    assert optim.get("adamw").get_config()["weight_decay"] == 0.01
    assert optim.get("momentum").get_config()["momentum"] == 0.9
    with pytest.raises(ValueError, match="adamax.*sgd.*adagrad.*lion"):
        optim.get("adamax")


CHOOSE_BRANCHES = [
    # (arguments, optimizer type, configuration it must have, words in the reason)
    (dict(data="sparse", num_params=10**6), optim.AdamW, {}, ["sparse", "keep AdamW"]),
    (dict(data="dense", goal="generalization", num_params=10**6), optim.SGD, {"momentum": 0.9},
     ["generalization", "SGD + momentum"]),
    (dict(data="dense", goal="speed", num_params=10**6), optim.AdamW, {}, ["speed", "AdamW"]),
    (dict(data="sparse", num_params=5 * 10**9), optim.Lamb, {}, ["LAMB"]),
    (dict(data="dense", goal="generalization", num_params=5 * 10**9, memory="tight"),
     optim.Adafactor, {}, ["Adafactor", "tight"]),
    (dict(data="dense", goal="speed", num_params=10**5, memory="tight"), optim.SGD,
     {"momentum": 0.0}, ["tight memory", "plain SGD"]),
]


@pytest.mark.parametrize("kwargs,cls,config,words", CHOOSE_BRANCHES,
                         ids=["sparse", "dense-generalization", "dense-speed", "billions",
                              "billions-tight", "tight"])
def test_choose_follows_the_seed_flowchart(kwargs, cls, config, words):
    opt, reason = optim.choose(**kwargs)
    assert type(opt) is cls
    for k, v in config.items():
        assert opt.get_config()[k] == v
    for w in words:
        assert w in reason


def test_choose_rejects_unknown_branches():
    with pytest.raises(ValueError, match="'tabular'"):
        optim.choose(data="tabular")
    with pytest.raises(ValueError, match="'accuracy'"):
        optim.choose(goal="accuracy")
    with pytest.raises(ValueError, match="'low'"):
        optim.choose(memory="low")
    with pytest.raises(ValueError, match="-3"):
        optim.choose(num_params=-3)


# --------------------------------------------------------------------- regularizers

def test_regularizers_are_the_seeds_penalties(rng):
    w0 = rng.standard_normal((4, 3))
    for reg, value, grad in [
        (st.regularizers.L1(0.1), 0.1 * np.abs(w0).sum(), 0.1 * np.sign(w0)),
        (st.regularizers.L2(0.2), 0.2 * (w0 ** 2).sum(), 0.4 * w0),
        (st.regularizers.L1L2(0.1, 0.2), 0.1 * np.abs(w0).sum() + 0.2 * (w0 ** 2).sum(),
         0.1 * np.sign(w0) + 0.4 * w0),
        (st.regularizers.L1L2(), 0.0, np.zeros_like(w0)),
    ]:
        w = st.tensor(w0, dtype="float64", requires_grad=True)
        penalty = reg(w)
        assert penalty.shape == ()
        assert penalty.item() == pytest.approx(value, rel=1e-12)
        penalty.backward()
        np.testing.assert_allclose(w.grad.numpy(), grad, rtol=1e-12)
    assert st.regularizers.L2(1e-4).get_config() == {"l2": 1e-4}
    with pytest.raises(ValueError, match="-0.5"):
        st.regularizers.L1(-0.5)
