"""Gradient-mode context managers."""

from __future__ import annotations

import functools

from . import _core


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
