"""Higher-order autograd (issue 16 items 1 and 2): st.autograd.grad with create_graph,
t.backward(create_graph=True), st.autograd.hvp / hessian and
st.analysis.hessian_eigenvalues. Per-op second-order checks live in check_op."""

import numpy as np
import pytest

import steepest as st
from helpers import check_op, requires_torch, torch


def leaf(values, dtype="float64"):
    return st.tensor(np.asarray(values, dtype=np.float64), dtype=dtype, requires_grad=True)


def test_grad_returns_gradients_without_touching_dot_grad():
    x = leaf([1.0, 2.0, 3.0])
    y = (x * x * x).sum()
    (g,) = st.autograd.grad(y, [x])
    np.testing.assert_allclose(g.numpy(), 3 * np.array([1.0, 4.0, 9.0]))
    assert x.grad is None
    assert not g.requires_grad


def test_second_and_third_derivatives_of_a_cube():
    x = leaf([0.5, -1.5])
    (g,) = st.autograd.grad((x * x * x).sum(), [x], create_graph=True)
    assert g.requires_grad
    (h,) = st.autograd.grad(g.sum(), [x], create_graph=True)
    np.testing.assert_allclose(h.numpy(), 6 * x.detach().numpy())
    (t,) = st.autograd.grad(h.sum(), [x])
    np.testing.assert_allclose(t.numpy(), [6.0, 6.0])


def test_backward_create_graph_leaves_a_differentiable_grad():
    x = leaf([1.0, 2.0])
    (x.exp() * x).sum().backward(create_graph=True)
    g = x.grad
    assert g.requires_grad
    xv = x.detach().numpy()
    np.testing.assert_allclose(g.numpy(), np.exp(xv) * (1 + xv))
    (h,) = st.autograd.grad(g.sum(), [x])
    np.testing.assert_allclose(h.numpy(), np.exp(xv) * (2 + xv))


def test_create_graph_accumulates_out_of_place_and_a_plain_backward_adds_on():
    x = leaf([1.0, 2.0])
    (x * x).sum().backward(create_graph=True)
    first = x.grad
    (x * x).sum().backward()
    np.testing.assert_allclose(first.numpy(), [2.0, 4.0])  # not written in place
    np.testing.assert_allclose(x.grad.numpy(), [4.0, 8.0])


def test_grad_unused_input_is_an_error_unless_allowed():
    x, z = leaf([1.0]), leaf([2.0])
    y = (x * 3.0).sum()
    with pytest.raises(ValueError, match=r"\[grad\].*input 1.*allow_unused"):
        st.autograd.grad(y, [x, z], retain_graph=True)
    gx, gz = st.autograd.grad(y, [x, z], allow_unused=True)
    np.testing.assert_allclose(gx.numpy(), [3.0])
    assert gz is None


def test_grad_argument_errors():
    x = leaf([1.0, 2.0])
    y = x * 2.0
    with pytest.raises(RuntimeError, match="scalar outputs"):
        st.autograd.grad(y, [x])
    with pytest.raises(ValueError, match="grad_outputs"):
        st.autograd.grad([y], [x], grad_outputs=[None, None])
    with pytest.raises(RuntimeError, match="does not require grad"):
        st.autograd.grad(y, [st.tensor([1.0])], grad_outputs=[st.ones(2, dtype="float64")])
    with pytest.raises(RuntimeError, match="does not require grad"):
        st.autograd.grad(st.tensor([1.0]).sum(), [x])


def test_grad_of_several_outputs_and_of_an_intermediate():
    x = leaf([1.0, 2.0])
    h = x * x
    a, b = h.sum(), (h * 3.0).sum()
    (gh,) = st.autograd.grad([a, b], [h], retain_graph=True)
    np.testing.assert_allclose(gh.numpy(), [4.0, 4.0])
    (gx,) = st.autograd.grad([a, b], [x])
    np.testing.assert_allclose(gx.numpy(), [8.0, 16.0])


def test_retain_graph_defaults_to_create_graph():
    x = leaf([1.0, 2.0])
    y = (x * x).sum()
    st.autograd.grad(y, [x])
    with pytest.raises(RuntimeError, match="second time"):
        st.autograd.grad(y, [x])
    y = (x * x).sum()
    st.autograd.grad(y, [x], create_graph=True)
    st.autograd.grad(y, [x])  # still there


def test_double_backward_of_max_pool_splits_among_tied_maxima():
    # The backward sends each window's G to its maxima, 1/ties each (overlapping windows
    # included: stride 1). Its own derivative in G is therefore, per window, the mean of
    # the direction V over the window's tied maxima; in x it is zero (piecewise linear).
    x_np = np.array([[1.0, 3.0, 3.0], [3.0, 0.0, 2.0], [2.0, 2.0, 2.0]]).reshape(1, 1, 3, 3)
    x = st.tensor(x_np, dtype="float64", requires_grad=True)
    g_np = np.array([[1.0, -2.0], [0.5, 4.0]]).reshape(1, 1, 2, 2)
    g = st.tensor(g_np, dtype="float64", requires_grad=True)
    v_np = np.arange(9.0).reshape(1, 1, 3, 3) - 3.0
    (gx,) = st.autograd.grad(st.ops.max_pool2d(x, 2, stride=1), [x], grad_outputs=g,
                             create_graph=True)
    dg, dx = st.autograd.grad((gx * st.tensor(v_np, dtype="float64")).sum(), [g, x],
                              allow_unused=True)
    want_gx = np.zeros((3, 3))
    want_dg = np.zeros((2, 2))
    for i in range(2):
        for j in range(2):
            window = x_np[0, 0, i:i + 2, j:j + 2]
            tied = np.argwhere(window == window.max())
            for a, b in tied:
                want_gx[i + a, j + b] += g_np[0, 0, i, j] / len(tied)
                want_dg[i, j] += v_np[0, 0, i + a, j + b] / len(tied)
    np.testing.assert_allclose(gx.numpy()[0, 0], want_gx, rtol=1e-15)
    np.testing.assert_allclose(dg.numpy()[0, 0], want_dg, rtol=1e-15)
    assert dx is None or not np.any(dx.numpy())


def _block(a, w):
    return (a @ w).tanh() * a.sum()


def _checkpointed_hvp(checkpointed):
    """H·v of L(x, w) = Σ block(block(x, w), w)² through checkpointed blocks or plain ones:
    the weight gradient of a checkpointed block arrives through its accumulator."""
    rng = np.random.default_rng(3)
    x = st.tensor(rng.standard_normal((3, 4)), dtype="float64", requires_grad=True)
    w = st.tensor(rng.standard_normal((4, 4)) * 0.5, dtype="float64", requires_grad=True)
    h = x
    for _ in range(2):
        h = st.checkpoint(lambda a: _block(a, w), h) if checkpointed else _block(h, w)
    (h ** 2).sum().backward(create_graph=True)
    vx, vw = rng.standard_normal((3, 4)), rng.standard_normal((4, 4))
    s = (x.grad * st.tensor(vx, dtype="float64")).sum() + (w.grad * st.tensor(vw, dtype="float64")).sum()
    # backward, not autograd.grad: the first block's recomputation hands w its part
    # through w's accumulator, which autograd.grad's targets do not see.
    x.grad = w.grad = None
    s.backward()
    return [x.grad.numpy(), w.grad.numpy()]


def test_checkpoint_supports_double_backward():
    # create_graph through st.checkpoint recomputes on the inputs themselves, so second
    # derivatives reach both the inputs and the weights the function closes over.
    for plain, checkpointed in zip(_checkpointed_hvp(False), _checkpointed_hvp(True)):
        np.testing.assert_allclose(checkpointed, plain, rtol=1e-12, atol=1e-12)


def test_checkpoint_passes_the_op_checks():
    # First and second order (finite differences and torch's double backward) through a
    # checkpointed function of two inputs.
    check_op(lambda a, b: st.checkpoint(lambda p, q: (p * q).tanh() + p.exp(), a, b),
             lambda a, b: (a * b).tanh() + a.exp(), [(3, 4), (3, 4)])


def test_first_order_backward_is_unchanged_after_create_graph_support():
    x = leaf(np.linspace(-1, 1, 6).reshape(2, 3))
    y = st.ops.softmax(x.tanh(), -1).sum(0).exp().sum()
    y.backward()
    xt = torch.tensor(np.linspace(-1, 1, 6).reshape(2, 3), requires_grad=True) if torch else None
    if xt is not None:
        torch.softmax(xt.tanh(), -1).sum(0).exp().sum().backward()
        np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-12)


# --------------------------------------------------------------------- hvp / hessian

def _mlp(seed=0, activation="tanh"):
    rng = np.random.default_rng(seed)
    data = {
        "x": rng.standard_normal((6, 4)),
        "y": rng.integers(0, 3, 6),
        "w1": rng.standard_normal((4, 5)) * 0.7,
        "b1": rng.standard_normal(5) * 0.1,
        "w2": rng.standard_normal((5, 3)) * 0.7,
        "b2": rng.standard_normal(3) * 0.1,
    }
    return data


def _st_mlp_loss(data, params, activation):
    w1, b1, w2, b2 = params
    x = st.tensor(data["x"], dtype="float64")
    y = st.tensor(data["y"], dtype="int64")
    h = st.ops.matmul(x, w1) + b1
    h = h.tanh() if activation == "tanh" else st.ops.gelu(h)
    return st.ops.cross_entropy(st.ops.matmul(h, w2) + b2, y)


@requires_torch
@pytest.mark.parametrize("activation", ["tanh", "gelu"])
def test_hvp_of_an_mlp_loss_matches_torch(activation):
    data = _mlp()
    names = ["w1", "b1", "w2", "b2"]
    params = [leaf(data[n]) for n in names]
    rng = np.random.default_rng(1)
    v = [rng.standard_normal(data[n].shape) for n in names]
    ours = st.autograd.hvp(lambda: _st_mlp_loss(data, params, activation), params,
                           [st.tensor(a, dtype="float64") for a in v])
    assert all(p.grad is None for p in params)

    def torch_loss(w1, b1, w2, b2):
        h = torch.from_numpy(data["x"]) @ w1 + b1
        h = torch.tanh(h) if activation == "tanh" else torch.nn.functional.gelu(h)
        return torch.nn.functional.cross_entropy(h @ w2 + b2, torch.from_numpy(data["y"]))

    _, theirs = torch.autograd.functional.hvp(
        torch_loss, tuple(torch.from_numpy(data[n]) for n in names),
        tuple(torch.from_numpy(a) for a in v))
    for name, a, b in zip(names, ours, theirs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-7, atol=1e-10, err_msg=name)


def test_hvp_accepts_a_function_of_the_params_and_gives_zeros_for_linear_ones():
    a, b = leaf([1.0, 2.0]), leaf([3.0])
    out = st.autograd.hvp(lambda p, q: (p * p * p).sum() + (q * 2.0).sum(), [a, b],
                          [st.tensor([1.0, 1.0], dtype="float64"),
                           st.tensor([1.0], dtype="float64")])
    np.testing.assert_allclose(out[0].numpy(), [6.0, 12.0])
    np.testing.assert_allclose(out[1].numpy(), [0.0])


def test_hvp_errors():
    a = leaf([1.0, 2.0])
    with pytest.raises(ValueError, match=r"\[hvp\].*shape"):
        st.autograd.hvp(lambda: (a * a).sum(), [a], [st.tensor([1.0], dtype="float64")])
    with pytest.raises(ValueError, match=r"\[hvp\].*one-element"):
        st.autograd.hvp(lambda: a * a, [a], [st.tensor([1.0, 1.0], dtype="float64")])
    with pytest.raises(ValueError, match=r"\[hvp\].*requires_grad"):
        st.autograd.hvp(lambda: (a * a).sum(), [st.tensor([1.0, 2.0], dtype="float64")],
                        [st.tensor([1.0, 1.0], dtype="float64")])


@requires_torch
def test_hessian_of_a_small_function_matches_torch():
    values = np.array([[0.3, -0.8], [1.2, 0.5]])

    def f_torch(x):
        return (x.exp() * x.tanh()).sum() + torch.logsumexp((x * x).reshape(-1), 0) + x.sum() ** 3

    x = st.tensor(values, dtype="float64")
    ours = st.autograd.hessian(lambda t: (t.exp() * t.tanh()).sum() + st.ops.logsumexp(t * t, None)
                               + t.sum() ** 3, x)
    theirs = torch.autograd.functional.hessian(f_torch, torch.from_numpy(values))
    assert ours.shape == (2, 2, 2, 2)
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-10, atol=1e-12)


def test_hessian_eigenvalues_match_eigvalsh_of_the_dense_hessian():
    data = _mlp(seed=3)
    names = ["w1", "b1", "w2", "b2"]
    params = [leaf(data[n]) for n in names]
    sizes = [data[n].size for n in names]
    n = sum(sizes)
    loss = lambda: _st_mlp_loss(data, params, "tanh")  # noqa: E731
    dense = np.zeros((n, n))
    for j in range(n):
        e = np.zeros(n)
        e[j] = 1.0
        pieces = np.split(e, np.cumsum(sizes)[:-1])
        hv = st.autograd.hvp(loss, params, [st.tensor(p.reshape(data[m].shape), dtype="float64")
                                            for p, m in zip(pieces, names)])
        dense[:, j] = np.concatenate([h.numpy().reshape(-1) for h in hv])
    np.testing.assert_allclose(dense, dense.T, atol=1e-10)
    expected = np.sort(np.linalg.eigvalsh(dense))[::-1]
    top = st.analysis.hessian_eigenvalues(loss, params, k=3, max_iter=n, tol=1e-10, seed=0)
    assert len(top) == 3
    np.testing.assert_allclose(top, expected[:3], rtol=1e-7, atol=1e-9)


def test_hessian_eigenvalues_of_a_quadratic_and_argument_errors():
    a = np.diag([5.0, 2.0, -1.0, 0.5])
    x = leaf(np.ones(4))
    at = st.tensor(a, dtype="float64")
    loss = lambda: (x * st.ops.matmul(at, x)).sum() * 0.5  # noqa: E731
    np.testing.assert_allclose(st.analysis.hessian_eigenvalues(loss, [x], k=2), [5.0, 2.0],
                               rtol=1e-8)
    with pytest.raises(ValueError, match="k must be"):
        st.analysis.hessian_eigenvalues(loss, [x], k=0)
    with pytest.raises(ValueError, match="exceeds"):
        st.analysis.hessian_eigenvalues(loss, [x], k=5)
