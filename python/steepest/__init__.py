"""steepest: a tensor and autograd engine in C++ with a Keras-like Python API.

The maths (every op and its backward formula) lives in the C++ extension
``steepest._core``; this package adds the Python conveniences around it.
"""

from . import _core
from ._core import (
    Tensor,
    backends,
    empty_cache,
    get_num_threads,
    is_grad_enabled,
    manual_seed,
    memory_stats,
    reset_peak_memory_stats,
    set_grad_enabled,
    set_num_threads,
)
from . import ops
from .autograd import enable_grad, no_grad
from .creation import (
    arange,
    empty,
    from_dlpack,
    from_numpy,
    full,
    ones,
    ones_like,
    rand,
    randn,
    tensor,
    zeros,
    zeros_like,
)
from .gradcheck import grad_check
from . import optimize, optimizers, regularizers, schedules
from . import datasets
from .optimizers import clip_grad_norm
from ._tensor_py import install as _install_tensor_methods

__version__ = _core.__version__

_install_tensor_methods()

__all__ = [
    "Tensor",
    "arange",
    "backends",
    "clip_grad_norm",
    "empty",
    "empty_cache",
    "enable_grad",
    "from_dlpack",
    "from_numpy",
    "full",
    "get_num_threads",
    "grad_check",
    "is_grad_enabled",
    "manual_seed",
    "memory_stats",
    "no_grad",
    "ones",
    "ones_like",
    "ops",
    "optimize",
    "optimizers",
    "rand",
    "randn",
    "regularizers",
    "reset_peak_memory_stats",
    "schedules",
    "set_grad_enabled",
    "set_num_threads",
    "tensor",
    "zeros",
    "zeros_like",
]

from . import callbacks, layers, losses, metrics  # noqa: E402
from . import models  # noqa: E402
from .models import Sequential  # noqa: E402
