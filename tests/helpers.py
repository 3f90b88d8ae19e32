"""Shared checking helpers for the steepest test suite.

Every op test goes through `check_op`, which checks an op two independent ways:

1. float64 gradient check. `st.grad_check` (central differences of the full Jacobian)
   must return True, and, independently of `st.grad_check` itself, our own numpy
   finite-difference check of the vector-Jacobian product (the gradient of
   sum(out * W) for a random W) must agree with `out.backward(W)`. The second check
   is what produces a readable diagnostic (which input, which element, max error)
   when something is wrong, and it keeps the suite honest if `st.grad_check` is buggy.

2. float32 comparison against PyTorch (skipped when torch is not installed):
   forward values, output shape and dtype, and the gradient of sum(out * W) for every
   differentiable input.

3. second order (unless the op opts out with a reason): the gradient of
   s = Σ_i <∂ sum(out * W)/∂x_i, V_i>, taken by double backward (create_graph=True),
   is compared with central differences of s computed from first-order gradients (a
   float64 gradgradcheck of the Hessian-vector product), and, with torch, with torch's
   double backward of the same s in float64.

Inputs are described by shape tuples (random float data) or numpy arrays (fixed data;
integer/bool arrays are passed as constant tensors, e.g. class labels). Any float
input can be made non-contiguous (`noncontig`): the op then receives a transposed or
strided-slice view of a larger leaf tensor, so both the op's handling of strides and
the views' backward are exercised. Gradients are always checked on that leaf.
"""

import contextlib
import os
import re

import numpy as np
import pytest

import steepest as st

# torch is optional: only the reference comparison needs it. The sanitizer job turns it
# off (STEEPEST_TEST_NO_TORCH=1) because torch is not instrumented.
torch = None
F = None
if os.environ.get("STEEPEST_TEST_NO_TORCH") != "1":
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:  # pragma: no cover - exercised on machines without torch
        pass

HAS_TORCH = torch is not None
requires_torch = pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")

# float64 gradient check (the values st.grad_check defaults to).
GC_EPS = 1e-6
GC_ATOL = 1e-5
GC_RTOL = 1e-3

# float32 comparison with torch: torch.testing's own float32 defaults.
F32_RTOL = 1.3e-6
F32_ATOL = 1e-5
# Looser bound for ops that accumulate long float32 dot products (matmul, linear,
# conv2d via im2col/GEMM) or two-pass statistics (layer_norm): the summation order is
# implementation-defined and the rounding error grows with the reduction length.
LOOSE_RTOL = 1e-5
LOOSE_ATOL = 1e-4

_DOMAINS = ("normal", "positive", "nonzero", "unit")

# --------------------------------------------------------------------------- inputs

class _Input:
    """One op argument: its values, the leaf it is built from and how to view it."""

    def __init__(self, index, values, layout, domain, rng):
        self.index = index
        self.values = values  # what the op sees (after the view)
        self.is_float = values.dtype.kind == "f"
        self.layout = layout
        self.differentiable = False  # set by check_op
        if layout is None:
            self.base = values
            self.view = _identity
        elif not self.is_float:
            raise AssertionError("noncontig layouts are only for float inputs")
        elif layout == "T":
            nd = values.ndim
            assert nd >= 2, "a transposed layout needs at least 2 dims"
            # The leaf holds the data with the last two axes swapped; the op gets the
            # transposed view, whose values equal `values`.
            self.base = np.ascontiguousarray(np.swapaxes(values, -1, -2))
            self.view = lambda t: t.transpose(nd - 2, nd - 1)
        elif layout == "slice":
            assert values.ndim >= 1, "a sliced layout needs at least 1 dim"
            n = values.shape[-1]
            # Every other element, starting at offset 1: non-unit stride and a
            # non-zero storage offset. The filler must never reach the output.
            base = _draw(values.shape[:-1] + (2 * n + 1,), domain, rng)
            base[..., 1::2] = values
            self.base = base
            self.view = lambda t: t[..., 1::2]
        else:
            raise AssertionError(f"unknown layout {layout!r}; use None, 'T' or 'slice'")

    def __repr__(self):
        kind = f", {self.layout}" if self.layout else ""
        return f"input {self.index} {self.values.shape}{kind}"


def _identity(t):
    return t


def _draw(shape, domain, rng):
    if domain == "normal":
        return rng.standard_normal(shape)
    if domain == "positive":  # log, sqrt, fractional powers, divisors
        return rng.uniform(0.5, 2.0, shape)
    if domain == "nonzero":  # keeps |x| >= 0.3 away from the kinks of relu/abs
        return rng.uniform(0.3, 1.5, shape) * rng.choice([-1.0, 1.0], shape)
    if domain == "unit":  # probabilities strictly inside (0, 1)
        return rng.uniform(0.1, 0.9, shape)
    raise AssertionError(f"unknown domain {domain!r}; use one of {_DOMAINS}")


def _per_input(option, n, default):
    """Expand a per-input option given as one value, a sequence or an {index: value} dict."""
    if isinstance(option, dict):
        return [option.get(i, default) for i in range(n)]
    if isinstance(option, (list, tuple)):
        assert len(option) == n, f"expected {n} per-input values, got {option!r}"
        return list(option)
    return [option] * n


def _st_dtype(np_dtype):
    return np.dtype(np_dtype).name  # "float32", "int64", "bool", ...


def _st_leaves(inputs, float_dtype):
    leaves = []
    for inp in inputs:
        if inp.is_float:
            leaves.append(st.tensor(inp.base.astype(float_dtype), dtype=float_dtype,
                                    requires_grad=inp.differentiable))
        else:
            leaves.append(st.tensor(inp.base, dtype=_st_dtype(inp.base.dtype)))
    return leaves


def _torch_leaves(inputs):
    leaves = []
    for inp in inputs:
        if inp.is_float:
            leaves.append(torch.tensor(inp.base.astype(np.float32),
                                       requires_grad=inp.differentiable))
        elif inp.base.dtype.kind in "iu":
            leaves.append(torch.from_numpy(inp.base.astype(np.int64)))  # torch wants long
        else:
            leaves.append(torch.from_numpy(inp.base.copy()))
    return leaves


# ------------------------------------------------------------------------ check_op

def check_op(st_fn, torch_fn, inputs, *, grad_inputs=None, domain="normal",
             positive=False, noncontig=None, seed=0,
             rtol=F32_RTOL, atol=F32_ATOL,
             gc_eps=GC_EPS, gc_atol=GC_ATOL, gc_rtol=GC_RTOL, second_order=True):
    """Check a steepest op's forward and backward.

    st_fn(*tensors) -> Tensor: the steepest op, extra arguments bound by the caller.
    torch_fn(*tensors) -> torch.Tensor: the float32 reference, or None for no torch
        comparison (gradient checks only).
    inputs: one entry per op argument: a shape tuple (random float64 data drawn from
        `domain`) or a numpy array (used as is; integer/bool arrays are constants).
    grad_inputs: indices of inputs that get requires_grad=True and are checked.
        Default: every float input.
    domain: "normal" | "positive" | "nonzero" | "unit", for all inputs or per input
        (sequence or {index: domain}). positive=True is shorthand for "positive".
    noncontig: per-input layout, None | "T" (transpose of the last two axes of a leaf)
        | "slice" (leaf[..., 1::2]), as a sequence or {index: layout}.
    rtol, atol: float32 tolerances against torch (default: torch's float32 defaults).
    gc_eps, gc_atol, gc_rtol: float64 gradient-check settings.
    second_order: True (the default) runs the second-order checks; an op where they do
        not apply opts out by passing the reason as a string instead.
    """
    assert second_order is True or (isinstance(second_order, str) and second_order), (
        "second_order is True or the reason the op is not checked at second order")
    n = len(inputs)
    if positive:
        domain = "positive"
    domains = _per_input(domain, n, "normal")
    layouts = _per_input(noncontig, n, None)
    rng = np.random.default_rng(seed)

    prepared = []
    for i, (spec, dom, layout) in enumerate(zip(inputs, domains, layouts)):
        values = _draw(spec, dom, rng) if isinstance(spec, tuple) else np.asarray(spec)
        if values.dtype.kind == "f":
            values = values.astype(np.float64)
        prepared.append(_Input(i, values, layout, dom, rng))

    float_idx = [inp.index for inp in prepared if inp.is_float]
    grad_idx = float_idx if grad_inputs is None else list(grad_inputs)
    for i in grad_idx:
        assert prepared[i].is_float, f"input {i} is not a float input and cannot get a gradient"
        prepared[i].differentiable = True

    if grad_idx:
        _check_gradients_float64(st_fn, prepared, rng, gc_eps, gc_atol, gc_rtol)
        if second_order is True:
            _check_second_order_float64(st_fn, torch_fn, prepared, rng, gc_eps, gc_atol,
                                        gc_rtol)

    if torch_fn is None:
        return
    if not HAS_TORCH:
        pytest.skip("torch is not installed: float64 gradient checks passed, "
                    "torch comparison skipped")
    _compare_with_torch(st_fn, torch_fn, prepared, rng, rtol, atol)


def _call(st_fn, prepared, leaves):
    return st_fn(*[inp.view(leaf) for inp, leaf in zip(prepared, leaves)])


def _check_gradients_float64(st_fn, prepared, rng, eps, atol, rtol):
    leaves = _st_leaves(prepared, "float64")
    out = _call(st_fn, prepared, leaves)
    assert out.dtype == "float64", f"float64 inputs gave a {out.dtype} output"
    assert out.requires_grad, "output of an op on requires_grad inputs must require grad"

    weights = rng.standard_normal(out.shape)
    out.backward(st.tensor(weights, dtype="float64"))
    report = _finite_difference_report(st_fn, prepared, leaves, weights, eps, atol, rtol)

    def fn(*args):
        # Accept both calling conventions: fn(*inputs) and fn(inputs).
        if len(args) == 1 and isinstance(args[0], (list, tuple)):
            args = args[0]
        return _call(st_fn, prepared, args)

    fresh = _st_leaves(prepared, "float64")
    ok = st.grad_check(fn, fresh, eps=eps, atol=atol, rtol=rtol)
    failures = [line for bad, line in report if bad]
    assert ok and not failures, (
        f"gradient check failed (st.grad_check returned {ok})\n"
        "own finite-difference check of d sum(out * W) / d input:\n  "
        + "\n  ".join(line for _, line in report))


def _finite_difference_report(st_fn, prepared, leaves, weights, eps, atol, rtol):
    """Compare each analytic leaf gradient with central differences of sum(out * W)."""
    def objective(args):
        with st.no_grad():
            return float(np.sum(_call(st_fn, prepared, args).numpy() * weights))

    report = []
    for inp, leaf in zip(prepared, leaves):
        if not inp.differentiable:
            assert leaf.grad is None, f"{inp}: no requires_grad, yet .grad was set"
            continue
        assert leaf.grad is not None, f"{inp}: backward left .grad as None"
        analytic = leaf.grad.numpy().astype(np.float64)
        assert analytic.shape == inp.base.shape, (
            f"{inp}: .grad has shape {analytic.shape}, expected {inp.base.shape}")

        numeric = np.zeros(inp.base.shape)
        args = list(leaves)
        for j in np.ndindex(*inp.base.shape):
            vals = []
            for delta in (eps, -eps):
                moved = inp.base.copy()
                moved[j] += delta
                args[inp.index] = st.tensor(moved, dtype="float64")
                vals.append(objective(args))
            numeric[j] = (vals[0] - vals[1]) / (2 * eps)

        err = np.abs(analytic - numeric)
        bad = err > atol + rtol * np.abs(numeric)
        if err.size:
            worst = np.unravel_index(np.argmax(err), err.shape)
            line = (f"{inp}: max abs error {err.max():.3e} at {tuple(int(k) for k in worst)} "
                    f"(analytic {analytic[worst]:.6g}, numeric {numeric[worst]:.6g}), "
                    f"{int(bad.sum())}/{bad.size} elements out of tolerance")
        else:
            line = f"{inp}: empty"
        report.append((bool(bad.any()), line))
    return report


def _second_order_objective(st_fn, prepared, leaves, weights, directions, create_graph):
    """s = Σ_i <∂ sum(out * W)/∂x_i, V_i> over the differentiable leaves, and the leaves."""
    wanted = [leaf for inp, leaf in zip(prepared, leaves) if inp.differentiable]
    out = _call(st_fn, prepared, leaves)
    w = st.tensor(weights, dtype="float64")
    grads = st.autograd.grad(out, wanted, grad_outputs=w, create_graph=create_graph,
                             allow_unused=True)
    terms = [(g * st.tensor(v, dtype="float64")).sum()
             for g, v in zip(grads, directions) if g is not None]
    return terms, wanted


def _check_second_order_float64(st_fn, torch_fn, prepared, rng, eps, atol, rtol):
    """gradgradcheck: d s / d x by double backward against central differences of s."""
    leaves = _st_leaves(prepared, "float64")
    with st.no_grad():
        out_shape = _call(st_fn, prepared, leaves).shape
    weights = rng.standard_normal(out_shape)
    directions = [rng.standard_normal(inp.base.shape) for inp in prepared if inp.differentiable]

    terms, wanted = _second_order_objective(st_fn, prepared, leaves, weights, directions, True)
    recorded = [t for t in terms if t.requires_grad]
    if recorded:
        total = recorded[0]
        for t in recorded[1:]:
            total = total + t
        analytic = st.autograd.grad(total, wanted, allow_unused=True)
    else:  # the gradient does not depend on the inputs: the op is linear in them
        analytic = [None] * len(wanted)
    analytic = [np.zeros(leaf.shape) if a is None else a.numpy().astype(np.float64)
                for a, leaf in zip(analytic, wanted)]

    def objective(args):
        found, _ = _second_order_objective(st_fn, prepared, args, weights, directions, False)
        return float(sum(t.item() for t in found))

    report = []
    k = 0
    for inp in prepared:
        if not inp.differentiable:
            continue
        numeric = np.zeros(inp.base.shape)
        args = list(leaves)
        for j in np.ndindex(*inp.base.shape):
            vals = []
            for delta in (eps, -eps):
                moved = inp.base.copy()
                moved[j] += delta
                args = list(_st_leaves(prepared, "float64"))
                args[inp.index] = st.tensor(moved, dtype="float64", requires_grad=True)
                vals.append(objective(args))
            numeric[j] = (vals[0] - vals[1]) / (2 * eps)
        err = np.abs(analytic[k] - numeric)
        bad = err > atol + rtol * np.abs(numeric)
        if err.size:
            worst = np.unravel_index(np.argmax(err), err.shape)
            report.append((bool(bad.any()),
                           f"{inp}: max abs error {err.max():.3e} at "
                           f"{tuple(int(i) for i in worst)} (double backward "
                           f"{analytic[k][worst]:.6g}, numeric {numeric[worst]:.6g})"))
        k += 1
    failures = [line for bad, line in report if bad]
    assert not failures, ("second-order check (d<grad, V>/dx by double backward against "
                          "finite differences) failed:\n  " + "\n  ".join(l for _, l in report))

    if torch_fn is None or not HAS_TORCH:
        return
    t_leaves = []
    for inp in prepared:
        if inp.is_float:
            t_leaves.append(torch.tensor(inp.base, dtype=torch.float64,
                                         requires_grad=inp.differentiable))
        elif inp.base.dtype.kind in "iu":
            t_leaves.append(torch.from_numpy(inp.base.astype(np.int64)))
        else:
            t_leaves.append(torch.from_numpy(inp.base.copy()))
    t_wanted = [leaf for inp, leaf in zip(prepared, t_leaves) if inp.differentiable]
    out_t = _call(torch_fn, prepared, t_leaves)
    try:
        grads_t = torch.autograd.grad(out_t, t_wanted, grad_outputs=torch.from_numpy(weights),
                                      create_graph=True, allow_unused=True)
        s_t = sum((g * torch.from_numpy(v)).sum() for g, v in zip(grads_t, directions)
                  if g is not None and g.requires_grad)
        hessian_v = (torch.autograd.grad(s_t, t_wanted, allow_unused=True)
                     if torch.is_tensor(s_t) else [None] * len(t_wanted))
    except RuntimeError as error:
        # torch lacks some double backwards (its fused CPU attention, layer_norm without
        # weight): the finite-difference check above stands alone there.
        if "not implemented" in str(error) or "Expected a proper Tensor" in str(error):
            return
        raise
    # torch answers an all-zero derivative with a ZeroTensor, which numpy() refuses.
    expected = [np.zeros(leaf.shape) if h is None
                else (h.detach() + torch.zeros(h.shape, dtype=h.dtype)).numpy()
                for h, leaf in zip(hessian_v, t_wanted)]
    for inp, ours, theirs in zip([p for p in prepared if p.differentiable], analytic, expected):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-8,
                                   err_msg=f"double backward of {inp} differs from torch")


def _compare_with_torch(st_fn, torch_fn, prepared, rng, rtol, atol):
    st_leaves = _st_leaves(prepared, "float32")
    t_leaves = _torch_leaves(prepared)
    out_s = _call(st_fn, prepared, st_leaves)
    out_t = _call(torch_fn, prepared, t_leaves)

    assert out_s.shape == tuple(out_t.shape), (
        f"output shape {out_s.shape}, torch gives {tuple(out_t.shape)}")
    assert out_s.dtype == str(out_t.dtype).replace("torch.", ""), (
        f"output dtype {out_s.dtype}, torch gives {out_t.dtype}")
    np.testing.assert_allclose(out_s.numpy(), out_t.detach().numpy(), rtol=rtol, atol=atol,
                               err_msg="forward differs from torch")

    if not any(inp.differentiable for inp in prepared):
        return
    weights = rng.standard_normal(out_s.shape).astype(np.float32)
    out_s.backward(st.tensor(weights, dtype="float32"))
    out_t.backward(torch.from_numpy(weights))
    for inp, ls, lt in zip(prepared, st_leaves, t_leaves):
        if not inp.differentiable:
            continue
        assert ls.grad is not None, f"{inp}: backward left .grad as None"
        assert ls.grad.dtype == "float32", f"{inp}: .grad dtype {ls.grad.dtype}"
        np.testing.assert_allclose(ls.grad.numpy(), lt.grad.numpy(), rtol=rtol, atol=atol,
                                   err_msg=f"gradient of {inp} differs from torch")


# -------------------------------------------------------------------- error checks

def shape_regex(shape):
    """Regex for a shape written as a Python tuple: (2, 3), (3,) or (3), ()."""
    shape = tuple(shape)
    if not shape:
        return r"\(\s*\)"
    body = r"\s*,\s*".join(str(int(d)) for d in shape)
    return r"\(\s*" + body + r"\s*,?\s*\)"


@contextlib.contextmanager
def raises_op(exc_type, op, *shapes, contains=()):
    """Expect exc_type whose message starts with "[op]" and names every shape given.

    A shape given as a list of tuples is satisfied by any one of them (e.g. a conv
    kernel named by its full weight shape or by its spatial size). `contains` lists
    further substrings that must appear (dtype names, the offending index, ...).
    """
    with pytest.raises(exc_type, match=r"^\[" + re.escape(op) + r"\]") as info:
        yield info
    msg = str(info.value)
    for shape in shapes:
        options = shape if isinstance(shape, list) else [shape]
        assert any(re.search(shape_regex(s), msg) for s in options), (
            f"shape {' or '.join(str(tuple(s)) for s in options)} not named in: {msg!r}")
    for text in contains:
        assert text in msg, f"{text!r} not in: {msg!r}"


def blobs(n, features, classes, seed=0):
    """A separable classification set: Gaussian blobs around random centres; (x float32, y int64)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, features)) * 3
    y = rng.integers(0, classes, n)
    x = (centers[y] + rng.standard_normal((n, features))).astype(np.float32)
    return x, y.astype(np.int64)
