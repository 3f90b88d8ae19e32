"""K-FAC (st.optimizers.KFAC): the Kronecker factors the layers collect against their direct
computation, the preconditioned step against (A ⊗ G + λI)⁻¹ with numpy's kron and solve,
momentum and the inverse-update interval, training, configuration and bad input."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import steepest as st


def _slots(opt, index):
    return opt.state_dict()["state"][index]


def _dense_model(inputs, units, use_bias=True):
    model = st.Sequential([st.layers.Input((inputs,)), st.layers.Dense(units, use_bias=use_bias)])
    model.build()
    return model


def _mse_output_grad(y, target):
    """The gradient of Keras' mean squared error (mean over every element) at y."""
    return 2.0 * (y - target) / y.size


def _fit_one_step(model, opt, x, y, steps=1):
    model.compile(opt, "mse")
    model.fit(x, y, batch_size=len(x), epochs=steps, verbose=0, shuffle=False)


def test_dense_factors_equal_direct_computation():
    rng = np.random.default_rng(0)
    n, d, k = 8, 6, 4
    x = rng.normal(size=(n, d)).astype(np.float32)
    t = rng.normal(size=(n, k)).astype(np.float32)
    model = _dense_model(d, k)
    w, b = [a.astype(np.float64) for a in model.get_weights()]
    opt = st.optimizers.KFAC(learning_rate=0.1)
    _fit_one_step(model, opt, x, t)
    g = _mse_output_grad(x @ w + b, t)
    slots = _slots(opt, 0)
    np.testing.assert_allclose(slots["A"], x.T.astype(np.float64) @ x / n, rtol=1e-5, atol=1e-6)
    # Per-example gradients n·g; G is their second moment.
    np.testing.assert_allclose(slots["G"], (n * g).T @ (n * g) / n, rtol=1e-4, atol=1e-7)
    assert opt.preconditioned(model.parameters()[0])
    assert not opt.preconditioned(model.parameters()[1])
    assert set(_slots(opt, 1)) == {"step", "velocity"}


@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
@pytest.mark.parametrize("strides, padding, dilation", [(1, "valid", 1), (2, "same", 1), (2, "valid", 1),
                                                       (1, "valid", 2)])
def test_conv2d_factors_equal_direct_computation(data_format, strides, padding, dilation):
    rng = np.random.default_rng(1)
    n, c, h, w, filters, ks = 3, 2, 7, 6, 3, 3
    x_cf = rng.normal(size=(n, c, h, w)).astype(np.float32)
    x = x_cf if data_format == "channels_first" else x_cf.transpose(0, 2, 3, 1).copy()
    layer = st.layers.Conv2D(filters, ks, strides=strides, padding=padding, data_format=data_format,
                             dilation_rate=dilation)
    model = st.Sequential([st.layers.Input(x.shape[1:]), layer, st.layers.Flatten()])
    model.build()
    kernel, bias = model.get_weights()

    # The reference: torch's conv on the same weights, gradient of the mean squared error
    # at the channels-first output.
    xt = torch.tensor(x_cf, dtype=torch.float64)
    pad = [0, 0, 0, 0]
    if padding == "same":
        for axis, size in ((0, h), (1, w)):
            out = -(-size // strides)
            total = max((out - 1) * strides + ks - size, 0)
            pad[2 * axis], pad[2 * axis + 1] = total // 2, total - total // 2
    xp = F.pad(xt, (pad[2], pad[3], pad[0], pad[1]))
    yt = F.conv2d(xp, torch.tensor(kernel, dtype=torch.float64), torch.tensor(bias, dtype=torch.float64),
                  stride=strides, dilation=dilation)
    yt.requires_grad_(True)
    t = rng.normal(size=(n, yt[0].numel())).astype(np.float32)
    flat = yt.reshape(n, -1) if data_format == "channels_first" else yt.permute(0, 2, 3, 1).reshape(n, -1)
    ((flat - torch.tensor(t, dtype=torch.float64)) ** 2).mean().backward()
    g = yt.grad.numpy()  # (N, O, H', W')
    positions = g.shape[2] * g.shape[3]
    patches = F.unfold(xp, ks, stride=strides, dilation=dilation).numpy()  # (N, C·kh·kw, H'·W'), (c, i, j) order
    rows_a = patches.transpose(0, 2, 1).reshape(-1, c * ks * ks)
    rows_g = g.transpose(0, 2, 3, 1).reshape(-1, filters)
    expected_a = rows_a.T @ rows_a / n
    expected_g = (n * rows_g).T @ (n * rows_g) / (n * positions)

    opt = st.optimizers.KFAC(learning_rate=0.01)
    _fit_one_step(model, opt, x, t)
    slots = _slots(opt, 0)
    np.testing.assert_allclose(slots["A"], expected_a, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(slots["G"], expected_g, rtol=1e-4, atol=1e-8)


def _kron_solve(a, g, damping, v):
    """(A ⊗ G + λI)⁻¹ vec(V) for V (in, out) flattened row-major (vec(a gᵀ) = a ⊗ g)."""
    matrix = np.kron(a, g) + damping * np.eye(a.shape[0] * g.shape[0])
    return np.linalg.solve(matrix, v.ravel()).reshape(v.shape)


def _linear_problem(seed=2, n=16, d=5, k=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    t = rng.normal(size=(n, k)).astype(np.float32)
    return x, t


@pytest.mark.parametrize("damping", [1e-3, 0.1])
def test_single_linear_layer_step_is_kron_solve(damping):
    x, t = _linear_problem()
    n = len(x)
    model = _dense_model(x.shape[1], t.shape[1], use_bias=False)
    (w0,) = [a.astype(np.float64) for a in model.get_weights()]
    lr = 0.05
    opt = st.optimizers.KFAC(learning_rate=lr, damping=damping, momentum=0.0, kl_clip=None)
    _fit_one_step(model, opt, x, t)
    xd = x.astype(np.float64)
    g = _mse_output_grad(xd @ w0, t)
    a = xd.T @ xd / n
    gg = (n * g).T @ (n * g) / n
    v = xd.T @ g  # the kernel's gradient
    expected = w0 - lr * _kron_solve(a, gg, damping, v)
    (w1,) = model.get_weights()
    np.testing.assert_allclose(w1, expected, rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(_slots(opt, 0)["velocity"], _kron_solve(a, gg, damping, v),
                               rtol=2e-3, atol=1e-5)


def test_kl_clip_scales_the_step():
    x, t = _linear_problem(seed=5)
    n = len(x)
    model = _dense_model(x.shape[1], t.shape[1], use_bias=False)
    (w0,) = [a.astype(np.float64) for a in model.get_weights()]
    lr, damping, kappa = 0.5, 0.01, 1e-6
    opt = st.optimizers.KFAC(learning_rate=lr, damping=damping, momentum=0.0, kl_clip=kappa)
    _fit_one_step(model, opt, x, t)
    xd = x.astype(np.float64)
    g = _mse_output_grad(xd @ w0, t)
    v = xd.T @ g
    p = _kron_solve(xd.T @ xd / n, (n * g).T @ (n * g) / n, damping, v)
    nu = np.sqrt(kappa / (lr ** 2 * np.sum(p * v)))
    assert nu < 1
    np.testing.assert_allclose(_slots(opt, 0)["velocity"], nu * p, rtol=2e-3, atol=1e-7)


def test_momentum_and_inverse_update_interval():
    x, t = _linear_problem(seed=3)
    n = len(x)
    model = _dense_model(x.shape[1], t.shape[1])
    lr, mu, damping, beta = 0.05, 0.9, 0.01, 0.8
    opt = st.optimizers.KFAC(learning_rate=lr, momentum=mu, damping=damping, stats_decay=beta,
                             inverse_update_interval=2, kl_clip=None)
    _fit_one_step(model, opt, x, t)
    first = _slots(opt, 0)
    bias_first = _slots(opt, 1)
    w1, b1 = [a.astype(np.float64) for a in model.get_weights()]
    model.fit(x, t, batch_size=n, epochs=1, verbose=0, shuffle=False)
    second = _slots(opt, 0)
    xd = x.astype(np.float64)
    g = _mse_output_grad(xd @ w1 + b1, t)
    # Step 2 is not an inverse update: the eigenbases stay those of step 1 while the
    # running factors move on.
    for name in ("A_basis", "A_eigenvalues", "G_basis", "G_eigenvalues"):
        np.testing.assert_array_equal(second[name], first[name])
    np.testing.assert_allclose(second["A"], first["A"], rtol=1e-6)  # same inputs
    gg = (n * g).T @ (n * g) / n
    np.testing.assert_allclose(second["G"], beta * first["G"] + (1 - beta) * gg, rtol=1e-4, atol=1e-8)
    qa, sa, qg, sg = (first[k].astype(np.float64) for k in ("A_basis", "A_eigenvalues", "G_basis", "G_eigenvalues"))
    v = xd.T @ g
    p = qa @ ((qa.T @ v @ qg) / (np.outer(sa, sg) + damping)) @ qg.T
    np.testing.assert_allclose(second["velocity"], mu * first["velocity"] + p, rtol=2e-3, atol=1e-6)
    # The bias takes SGD with the same momentum.
    np.testing.assert_allclose(_slots(opt, 1)["velocity"], mu * bias_first["velocity"] + g.sum(0),
                               rtol=1e-4, atol=1e-7)
    # Step 3 is one: the bases diagonalise the running factors again.
    model.fit(x, t, batch_size=n, epochs=1, verbose=0, shuffle=False)
    third = _slots(opt, 0)
    for f in ("A", "G"):
        q, s = third[f + "_basis"].astype(np.float64), third[f + "_eigenvalues"].astype(np.float64)
        np.testing.assert_allclose(q @ np.diag(s) @ q.T, third[f], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(q.T @ q, np.eye(len(s)), atol=1e-5)


def test_state_round_trip_continues_identically(tmp_path):
    (x, y), _ = st.datasets.load_digits(flatten=True)
    x, y = x[:256], y[:256]

    def fresh():
        st.manual_seed(0)
        model = st.Sequential([st.layers.Input((64,)), st.layers.Dense(16, activation="relu"),
                               st.layers.Dense(10)])
        model.compile(st.optimizers.KFAC(learning_rate=0.01, inverse_update_interval=3),
                      "sparse_categorical_crossentropy")
        return model

    straight = fresh()
    straight.fit(x, y, batch_size=64, epochs=2, verbose=0, shuffle=False)
    resumed = fresh()
    resumed.fit(x, y, batch_size=64, epochs=1, verbose=0, shuffle=False)
    path = str(tmp_path / "kfac.safetensors")
    resumed.save(path)
    loaded = st.models.load_model(path)
    assert isinstance(loaded.optimizer, st.optimizers.KFAC)
    assert loaded.optimizer.get_config() == resumed.optimizer.get_config()
    loaded.fit(x, y, batch_size=64, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(loaded.get_weights(), straight.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_config_and_names():
    opt = st.optimizers.KFAC(learning_rate=st.schedules.CosineDecay(0.1, 100), damping=0.01,
                             momentum=0.5, weight_decay=1e-4, stats_decay=0.9,
                             inverse_update_interval=5, clipnorm=1.0)
    again = st.optimizers.KFAC.from_config(opt.get_config())
    assert again.get_config() == opt.get_config()
    assert isinstance(st.optimizers.get("kfac"), st.optimizers.KFAC)
    from steepest.cli import OPTIMIZERS
    assert OPTIMIZERS["kfac"] is st.optimizers.KFAC


@pytest.mark.parametrize("kwargs, error", [
    ({"damping": 0.0}, ValueError),
    ({"damping": float("nan")}, ValueError),
    ({"momentum": 1.0}, ValueError),
    ({"stats_decay": -0.1}, ValueError),
    ({"inverse_update_interval": 0}, ValueError),
    ({"inverse_update_interval": 2.5}, TypeError),
    ({"learning_rate": -1.0}, ValueError),
    ({"kl_clip": 0.0}, ValueError),
])
def test_bad_arguments(kwargs, error):
    with pytest.raises(error, match="KFAC"):
        st.optimizers.KFAC(**kwargs)


def test_plain_step_outside_fit_is_sgd_with_momentum():
    p = st.tensor(np.ones((3, 2), np.float32), requires_grad=True)
    p.grad = st.tensor(np.full((3, 2), 0.5, np.float32))
    opt = st.optimizers.KFAC(learning_rate=0.1, momentum=0.9)
    opt.step([p])
    np.testing.assert_allclose(p.numpy(), 1 - 0.1 * 0.5)
    assert not opt.preconditioned(p)


def test_unsupported_layers_and_switching_back():
    x = np.random.default_rng(4).normal(size=(8, 2, 5, 5)).astype(np.float32)
    y = np.zeros((8,), np.int64)
    model = st.Sequential([st.layers.Input((2, 5, 5)), st.layers.DepthwiseConv2D(3),
                           st.layers.Conv2D(4, 3, groups=2), st.layers.Flatten(), st.layers.Dense(3)])
    opt = st.optimizers.KFAC()
    model.compile(opt, "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    kernels = [p for p in model.parameters() if p.ndim >= 2]
    assert [opt.preconditioned(k) for k in kernels] == [False, False, True]
    # Another optimizer afterwards: the layers stop collecting.
    model.compile(st.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)


def test_mixed_precision_loss_scaling_is_refused():
    x = np.zeros((4, 3), np.float32)
    model = _dense_model(3, 2)
    st.mixed_precision.set_global_policy("mixed_float16")
    try:
        model.compile(st.optimizers.KFAC(), "mse")
    finally:
        st.mixed_precision.set_global_policy("float32")
    with pytest.raises(ValueError, match="KFAC"):
        model.fit(x, np.zeros((4, 2), np.float32), verbose=0)


@pytest.mark.training
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_trains_digits(kind):
    from steepest.cli import build_model
    (x, y), (x_test, y_test) = st.datasets.load_digits(flatten=kind == "mlp")
    st.manual_seed(0)
    model = build_model(kind, x)
    model.compile(st.optimizers.KFAC(), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=4, verbose=0, seed=0)
    assert model.evaluate(x_test, y_test, return_dict=True)["accuracy"] >= 0.93


def test_collecting_layer_supports_create_graph():
    x_np, t = _linear_problem(seed=6)
    model = _dense_model(x_np.shape[1], t.shape[1], use_bias=False)
    _fit_one_step(model, st.optimizers.KFAC(learning_rate=0.01), x_np, t)  # now collecting
    (w,) = model.get_weights()
    x = st.tensor(x_np, requires_grad=True)
    loss = (model(x, training=True) ** 2).sum()
    (gx,) = st.autograd.grad([loss], [x], create_graph=True)
    (gw,) = st.autograd.grad([gx.sum()], [model.parameters()[0]])
    xt = torch.tensor(x_np, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    (gxt,) = torch.autograd.grad(((xt @ wt) ** 2).sum(), [xt], create_graph=True)
    (gwt,) = torch.autograd.grad(gxt.sum(), [wt])
    np.testing.assert_allclose(gx.numpy(), gxt.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gw.numpy(), gwt.numpy(), rtol=1e-4, atol=1e-4)
