"""steepest: a tensor and autograd engine in C++ with a Keras-like Python API.

The maths (every op and its backward formula) lives in the C++ extension
``steepest._core``; this package adds the Python conveniences around it.
"""

import os as _os

# libgomp spins 300,000 times at every barrier before sleeping. When another process
# holds a core (a laptop's normal state), a spinning thread waits for one that is not
# running: with both cores busy elsewhere, digits-MLP epochs took up to 109 ms instead
# of 8 ms. 10,000 spins kept the idle speed (4.0 ms either way) and the loaded worst
# case at 14 ms; OMP_WAIT_POLICY=passive cost 2x when idle. It must be set before
# libgomp loads; a value the user set wins.
_os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from . import _core  # noqa: E402
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
# NumPy/PyTorch top-level names of the everyday ops (min is st.ops.min, as st.ops.max).
from .ops import (  # noqa: E402
    argmax,
    argmin,
    cat,
    clamp,
    clip,
    concatenate,
    cumsum,
    erf,
    eye,
    flip,
    gather,
    linspace,
    logsumexp,
    maximum,
    minimum,
    pad,
    pow,
    prod,
    split,
    stack,
    std,
    take_along_axis,
    tril,
    triu,
    var,
    where,
)
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
from . import optimize, optimizers, profiler, regularizers, schedules
from . import datasets
from .optimizers import clip_grad_norm
from ._tensor_py import install as _install_tensor_methods

__version__ = _core.__version__

_install_tensor_methods()

__all__ = [
    "argmax",
    "argmin",
    "cat",
    "clamp",
    "clip",
    "concatenate",
    "cumsum",
    "erf",
    "eye",
    "flip",
    "gather",
    "linspace",
    "logsumexp",
    "maximum",
    "minimum",
    "pad",
    "prod",
    "split",
    "stack",
    "std",
    "take_along_axis",
    "tril",
    "triu",
    "var",
    "where",
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
    "profiler",
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

from . import analysis, autograd, callbacks, config, data, distributed, io  # noqa: E402
from . import integrations, layers, losses, metrics  # noqa: E402
from . import mixed_precision  # noqa: E402
from . import models  # noqa: E402
from .models import Sequential  # noqa: E402
from . import text  # noqa: E402
from ._core.ops import checkpoint as _checkpoint  # noqa: E402


def checkpoint(fn, *inputs):
    """Activation checkpointing: ``fn(*inputs)`` runs without keeping its intermediate
    activations; backward runs it again to get them. Gradients are identical.

    ``create_graph=True`` works through it (the recomputation is recorded on the inputs,
    so higher derivatives reach them and the weights ``fn`` uses). Weights used inside
    ``fn`` receive their gradient through ``.grad`` (``backward``), so
    ``st.autograd.grad`` with such a weight among its inputs does not see that part."""
    return _checkpoint(fn, *inputs)


# The NCCL backend opens libnccl when st.distributed.init("nccl") asks for it; after the
# default search path it looks in the nvidia-nccl wheel.
if _core.backends()["nccl"] and "STEEPEST_NCCL_PATH" not in _os.environ:
    import importlib.util as _util

    _nvidia = _util.find_spec("nvidia")
    if _nvidia is not None and _nvidia.submodule_search_locations:
        _os.environ["STEEPEST_NCCL_PATH"] = _os.pathsep.join(
            _os.path.join(d, "nccl", "lib") for d in _nvidia.submodule_search_locations)

# The GPU backend opens cuBLAS on its first matrix product; after the default search path
# it looks in these folders: pip's nvidia-cublas wheel (CUDA 13) and PyTorch's CUDA 12 one.
if _core.backends()["cuda"] and "STEEPEST_CUBLAS_PATH" not in _os.environ:
    import importlib.util as _util

    _nvidia = _util.find_spec("nvidia")
    if _nvidia is not None and _nvidia.submodule_search_locations:
        _os.environ["STEEPEST_CUBLAS_PATH"] = _os.pathsep.join(
            _os.path.join(d, sub)
            for d in _nvidia.submodule_search_locations
            for sub in ("cu13/lib", "cublas/lib")
        )
