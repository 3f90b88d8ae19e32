"""Data parallelism: ``st.distributed``.

Launch the same script on every process — ``mpirun -n 2 python train.py`` (or mpiexec,
a hostfile, Slurm's ``srun``) — and ``fit`` splits each global batch across them, sums
the gradients and makes one update everywhere. ``init()`` joins the job; ``fit`` calls it
by itself under a launcher (with MPI). Without a launcher the world is one process and
everything works unchanged. ``init("nccl")`` moves CUDA tensors instead, one GPU per
rank: put the model on ``f"cuda:{st.distributed.local_rank()}"``.

Collectives act in place (``all_reduce``, ``broadcast``) or return new tensors
(``all_gather``, ``reduce_scatter``), on CPU tensors with MPI and on the rank's GPU with
NCCL; every rank must make the same call with tensors of the same shape and dtype, and a
mismatch raises on every rank instead of hanging.
"""

from __future__ import annotations

import atexit
import pickle
import sys
import traceback
from typing import Any, Optional

from . import _core
from ._core import Tensor

_dist = _core.dist


def init(backend: Optional[str] = None) -> None:
    """Joins the job. ``backend``: ``"mpi"`` (CPU tensors), ``"nccl"`` (CUDA tensors,
    bootstrapped over MPI) or None to choose — MPI when a launcher started several
    processes, a single process otherwise.

    Under several processes an uncaught exception on any rank ends the whole job (MPI
    abort) instead of leaving the others waiting in a collective.
    """
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"[distributed.init] backend must be a string or None, got {type(backend).__name__}")
    already = _dist.is_initialized()
    _dist.init(backend or "")
    if already:
        return
    atexit.register(finalize)
    if _dist.world_size() > 1:
        _install_abort_on_error()


def _install_abort_on_error() -> None:
    previous = sys.excepthook

    def abort_job(kind, value, tb) -> None:
        if issubclass(kind, KeyboardInterrupt):
            previous(kind, value, tb)
        else:
            sys.stderr.write(f"[rank {rank()}] ")
            traceback.print_exception(kind, value, tb)
            sys.stderr.write(f"[rank {rank()}] uncaught {kind.__name__}: aborting the job\n")
        sys.stderr.flush()
        sys.stdout.flush()
        _dist.abort(1)

    sys.excepthook = abort_job


def _ensure_initialized() -> None:
    """fit's entry: joins the job when a launcher started several processes."""
    if not _dist.is_initialized() and _dist.launcher_world_size() > 1:
        init()


def is_initialized() -> bool:
    return _dist.is_initialized()


def rank() -> int:
    """This process's rank in [0, world_size); 0 before init."""
    return _dist.rank() if _dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes; 1 before init."""
    return _dist.world_size() if _dist.is_initialized() else 1


def local_rank() -> int:
    """The rank among the processes on this machine (e.g. which GPU to use)."""
    return _dist.local_rank() if _dist.is_initialized() else 0


def backend() -> Optional[str]:
    """"mpi", "nccl", "local" (one process, no launcher), or None before init."""
    return _dist.backend() if _dist.is_initialized() else None


def _check_tensor(op: str, t: Any) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"[{op}] expects an st.Tensor, got {type(t).__name__}")
    return t


def _joined(op: str) -> None:
    if not _dist.is_initialized():
        raise RuntimeError(f"[{op}] st.distributed is not initialized; call st.distributed.init() first")


def all_reduce(t: Tensor, op: str = "sum") -> Tensor:
    """Reduces ``t`` over all ranks in place (``op``: sum, mean, max, min); returns t."""
    _joined("all_reduce")
    _dist.all_reduce(_check_tensor("all_reduce", t), op)
    return t


def broadcast(t: Tensor, root: int = 0) -> Tensor:
    """Overwrites ``t`` on every rank with rank ``root``'s values, in place; returns t."""
    _joined("broadcast")
    _dist.broadcast(_check_tensor("broadcast", t), int(root))
    return t


def all_gather(t: Tensor) -> Tensor:
    """Every rank's ``t`` concatenated along axis 0, in rank order."""
    _joined("all_gather")
    return _dist.all_gather(_check_tensor("all_gather", t))


def reduce_scatter(t: Tensor, op: str = "sum") -> Tensor:
    """Reduces ``t`` over all ranks and returns this rank's slice of axis 0 (which must
    divide evenly by the world size)."""
    _joined("reduce_scatter")
    return _dist.reduce_scatter(_check_tensor("reduce_scatter", t), op)


def barrier() -> None:
    """Waits until every rank has reached this call."""
    _joined("barrier")
    _dist.barrier()


def finalize() -> None:
    """Leaves the job (MPI_Finalize); called at exit by itself."""
    _dist.finalize()


def _broadcast_object(obj: Any, root: int) -> Any:
    """A picklable object from rank ``root`` on every rank (a shuffle seed)."""
    payload = pickle.dumps(obj) if rank() == root else b""
    return pickle.loads(_dist.broadcast_bytes(payload, int(root)))


def _agree_any(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any."""
    return bool(flag) if world_size() == 1 else _dist.any_rank(bool(flag))


__all__ = ["all_gather", "all_reduce", "backend", "barrier", "broadcast", "finalize", "init",
           "is_initialized", "local_rank", "rank", "reduce_scatter", "world_size"]
