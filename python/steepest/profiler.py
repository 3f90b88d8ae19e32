"""Per-op timing: where a forward, backward or training step spends its time.

    with st.profiler.profile() as prof:
        model.fit(x, y, epochs=1)
    print(prof.table())

The engine sums wall-clock time per op in C++: each op front-end (``matmul``,
``layer_norm``, ...) and each backward node the autograd engine runs (``MatmulBackward``,
...) is one row, split by phase (ops called inside ``backward()`` are in the backward
phase). ``total`` includes the ops an op called, ``self`` does not, so the self times add
up to the profiled ops' share of the wall clock. Off by default, where it costs each op
one branch. ``STEEPEST_PROFILE=1`` in the environment profiles the whole process and
prints the table at exit.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from dataclasses import dataclass
from types import TracebackType

from . import _core

__all__ = ["OpStat", "Profile", "profile"]


@dataclass(frozen=True)
class OpStat:
    """One op's sums over a profiling session (times in seconds)."""

    name: str
    phase: str  # "backward" inside backward() (nodes and the ops they call), else "forward"
    calls: int
    total: float
    self_time: float


class Profile:
    """A profiling session: started on ``__enter__``, stopped on ``__exit__``.

    Only one session records at a time (the sums are the process's); entering a new one
    clears the previous sums.
    """

    def __init__(self) -> None:
        self._stats: list[OpStat] | None = None
        self._wall = 0.0
        self._start = 0.0

    def __enter__(self) -> Profile:
        _core._profiler_start()
        self._start = time.perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stops recording and keeps the sums (idempotent)."""
        if self._stats is not None:
            return
        _core._profiler_stop()
        self._wall = time.perf_counter() - self._start
        self._stats = [
            OpStat(name, "backward" if backward else "forward", calls, total, self_s)
            for name, backward, calls, total, self_s in _core._profiler_stats()
        ]

    @property
    def wall_time(self) -> float:
        """Seconds between entering and leaving the session."""
        return self._wall

    def key_averages(self) -> list[OpStat]:
        """Per-(op, phase) sums, largest self time first."""
        if self._stats is None:
            raise RuntimeError("[profiler] key_averages() needs a finished session: leave the "
                               "`with st.profiler.profile()` block (or call stop()) first")
        return list(self._stats)

    def table(self, row_limit: int | None = 30) -> str:
        """A text table: op, phase, calls, total and self milliseconds, and each op's share
        of the summed self time; the last line compares that sum with the wall clock."""
        stats = self.key_averages()
        self_sum = sum(s.self_time for s in stats)
        shown = stats if row_limit is None else stats[:row_limit]
        width = max([len("op")] + [len(s.name) for s in shown])
        lines = [f"{'op':<{width}}  {'phase':<8}  {'calls':>8}  {'total ms':>10}  "
                 f"{'self ms':>10}  {'self %':>6}"]
        for s in shown:
            share = 100.0 * s.self_time / self_sum if self_sum > 0 else 0.0
            lines.append(f"{s.name:<{width}}  {s.phase:<8}  {s.calls:>8}  "
                         f"{s.total * 1e3:>10.2f}  {s.self_time * 1e3:>10.2f}  {share:>5.1f}%")
        if len(shown) < len(stats):
            lines.append(f"... {len(stats) - len(shown)} more ops")
        lines.append(f"ops' self time {self_sum * 1e3:.1f} ms of {self._wall * 1e3:.1f} ms wall "
                     "(the rest: Python, the optimizer, data handling)")
        return "\n".join(lines)


def profile() -> Profile:
    """A context manager that records a per-op timing table (see the module doc)."""
    return Profile()


def _profile_process() -> None:
    session = Profile().__enter__()

    def report() -> None:
        session.stop()
        print(session.table(), file=sys.stderr)

    atexit.register(report)


if os.environ.get("STEEPEST_PROFILE", "") not in ("", "0"):
    _profile_process()
