"""Gradient-mode context managers, and higher-order gradients: grad (torch's
autograd.grad, with create_graph), Hessian-vector products and small dense Hessians."""

from __future__ import annotations

import functools
import inspect
from typing import Callable, Sequence

from . import _core
from ._core import Tensor


class _GradMode:
    _enabled: bool

    def __enter__(self) -> None:
        self._previous = _core.is_grad_enabled()
        _core.set_grad_enabled(self._enabled)

    def __exit__(self, *exc) -> None:
        _core.set_grad_enabled(self._previous)

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with type(self)():
                return fn(*args, **kwargs)

        return wrapper


class no_grad(_GradMode):
    """Within this block (or decorated function) no graph is recorded."""

    _enabled = False


class enable_grad(_GradMode):
    """Turns graph recording back on inside a no_grad block."""

    _enabled = True


# ------------------------------------------------------------ higher-order gradients


def grad(
    outputs: Tensor | Sequence[Tensor],
    inputs: Tensor | Sequence[Tensor],
    grad_outputs: Tensor | Sequence[Tensor | None] | None = None,
    create_graph: bool = False,
    retain_graph: bool | None = None,
    allow_unused: bool = False,
) -> list[Tensor | None]:
    """Gradients of ``outputs`` with respect to ``inputs``, returned as a list (torch's
    ``autograd.grad``): ``d(Σ outputs·grad_outputs)/d(inputs)``; nothing is accumulated
    into any ``.grad``.

    ``grad_outputs`` may be left out (or hold None) for one-element outputs.
    ``create_graph=True`` records the backward itself, so the gradients can be
    differentiated again (Hessian-vector products, gradient penalties); ``retain_graph``
    defaults to ``create_graph``. An input the outputs do not depend on is an error
    unless ``allow_unused=True``, which gives None for it.
    """
    outs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    ins = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    if grad_outputs is None:
        seeds: list[Tensor | None] = [None] * len(outs)
    elif isinstance(grad_outputs, Tensor):
        seeds = [grad_outputs]
    else:
        seeds = list(grad_outputs)
    if len(seeds) != len(outs):
        raise ValueError(f"[grad] got {len(seeds)} grad_outputs for {len(outs)} outputs")
    retain = create_graph if retain_graph is None else retain_graph
    return _core.grad(outs, seeds, ins, retain, create_graph, allow_unused)


def _loss_caller(f: Callable[..., Tensor], params: Sequence[Tensor]) -> Callable[[], Tensor]:
    """``f`` is called as ``f()`` when it takes no required positional argument (a closure
    over the parameters, e.g. a model's loss), otherwise as ``f(*params)`` (torch's
    ``autograd.functional`` convention)."""
    try:
        required = [
            p
            for p in inspect.signature(f).parameters.values()
            if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):  # builtins without a signature
        required = [None]
    if not required:
        return f
    return lambda: f(*params)


class _HessianOperator:
    """v ↦ H·v for the Hessian of a scalar loss at the current parameters. The gradient
    is computed once with create_graph=True; every product is one more backward through
    that graph (retained), so k products cost k backward passes, not k forward passes."""

    def __init__(self, f: Callable[..., Tensor], params: Sequence[Tensor]):
        self.params = list(params)
        for i, p in enumerate(self.params):
            if not p.requires_grad:
                raise ValueError(
                    f"[hvp] parameter {i} of shape {p.shape} does not require grad; "
                    "call requires_grad_() on it")
        loss = _loss_caller(f, self.params)()
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            shape = getattr(loss, "shape", type(loss).__name__)
            raise ValueError(f"[hvp] the function must return a one-element Tensor, got {shape}")
        self.loss = loss
        grads = grad(loss, self.params, create_graph=True, allow_unused=True)
        # Parameters the loss does not depend on, or only linearly, have no row/column.
        self.grads = [(i, g) for i, g in enumerate(grads) if g is not None and g.requires_grad]

    def __call__(self, v: Sequence[Tensor]) -> list[Tensor]:
        from .creation import zeros_like

        v = list(v)
        if len(v) != len(self.params):
            raise ValueError(f"[hvp] got {len(v)} vectors for {len(self.params)} parameters")
        for i, (p, t) in enumerate(zip(self.params, v)):
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(
                    f"[hvp] v[{i}] has shape {t.shape}, parameter {i} has shape {p.shape}")
        result: list[Tensor | None] = [None] * len(self.params)
        if self.grads:
            products = grad(
                [g for _, g in self.grads],
                self.params,
                grad_outputs=[v[i].detach().astype(g.dtype) for i, g in self.grads],
                retain_graph=True,
                allow_unused=True,
            )
            result = list(products)
        return [
            r.detach() if r is not None else zeros_like(p)
            for p, r in zip(self.params, result)
        ]


def hvp(f: Callable[..., Tensor], params: Sequence[Tensor], v: Sequence[Tensor]) -> list[Tensor]:
    """The Hessian-vector product H·v of the scalar ``f`` with respect to ``params``.

    ``f`` is called as ``f()`` when it takes no arguments (a closure over the parameters,
    the usual case for a model's loss), else as ``f(*params)`` like torch's
    ``autograd.functional.hvp``. ``params`` must require grad; ``v`` is a list shaped
    like ``params``. Returns a list shaped like ``params`` (zeros where the loss does not
    depend on a parameter). Computed by double backward: H·v = ∇(∇f·v); no ``.grad``
    is touched.
    """
    return _HessianOperator(f, params)(v)


def hessian(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """The dense Hessian of the scalar ``f(x)``, of shape ``x.shape + x.shape`` (torch's
    ``autograd.functional.hessian`` for one input). One backward per element of x: meant
    for small problems. ``x`` itself is not modified; f sees a fresh leaf with its values.
    """
    import numpy as np

    from .creation import tensor

    leaf = x.detach().clone().requires_grad_()
    operator = _HessianOperator(lambda: f(leaf), [leaf])
    n = leaf.numel()
    rows = np.zeros((n, n), dtype=np.float64)
    basis = np.zeros(n, dtype=np.float64)
    for i in range(n):
        basis[:] = 0.0
        basis[i] = 1.0
        e = tensor(basis.reshape(leaf.shape), dtype=leaf.dtype, device=leaf.device)
        rows[i] = operator([e])[0].numpy().reshape(-1)
    shape = tuple(x.shape) + tuple(x.shape)
    return tensor(rows.reshape(shape), dtype=x.dtype, device=x.device)
