"""One AdamW step on ~4M float32 parameters: steepest's fused kernel vs torch.optim.AdamW.

Both run on the CPU in the same process with the same number of threads. A fused step
reads param, grad, m, v and writes param, m, v: 28 bytes per float32 parameter, so the
step is memory-bound once its arrays outgrow the caches, and its yardstick is the
machine's copy bandwidth (a large numpy copy, counted as read + write; numpy copies on
one thread, so steepest's multi-threaded copy kernel is shown beside it). Reported:
best-of-N ms/step, GB/s moved, the fraction of the numpy copy bandwidth, and how many
times faster steepest is than each torch variant (default single-tensor loop,
foreach=True, fused=True). The implementations take turns within every repeat.

    python benchmarks/optimizer_step.py [--params 4194304] [--tensors 4] [--repeats 20]
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, Dict

import numpy as np

import steepest as st

BYTES_PER_PARAM = 28  # fp32: read p, g, m, v (16) + write p, m, v (12)


def best_of(fns: Dict[str, Callable[[], None]], repeats: int, rounds: int = 3) -> Dict[str, float]:
    """Best time of each function over `rounds` blocks of `repeats` calls. Blocks take
    turns, so a burst of load from other processes hits every function alike; the pause
    before a block lets the other library's OpenMP workers stop spinning (torch and
    steepest each bring an OpenMP runtime, whose idle threads would compete)."""
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(0.05)
            fn()  # warm-up
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def copy_bandwidth(repeats: int) -> Dict[str, float]:
    """GB/s (bytes read + bytes written) of copying 256 MiB: numpy's copy (one thread)
    and steepest's copy kernel (the configured threads)."""
    src = np.ones(64 * 2**20, dtype=np.float32)
    dst = np.empty_like(src)
    tensor = st.from_numpy(src)
    seconds = best_of({"numpy copy": lambda: np.copyto(dst, src),
                       "steepest copy": lambda: tensor.clone()}, repeats)
    return {name: 2 * src.nbytes / t / 1e9 for name, t in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=int, default=4 * 2**20, help="total parameters")
    parser.add_argument("--tensors", type=int, default=4, help="split into this many tensors")
    parser.add_argument("--repeats", type=int, default=20, help="calls per timed block (3 blocks)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for both libraries (default: torch's default)")
    args = parser.parse_args()

    try:
        import torch
    except ImportError:
        torch = None
    threads = args.threads or (torch.get_num_threads() if torch else st.get_num_threads())
    st.set_num_threads(threads)
    if torch:
        torch.set_num_threads(threads)

    rng = np.random.default_rng(0)
    per_tensor = args.params // args.tensors
    numel = per_tensor * args.tensors
    data = [rng.standard_normal(per_tensor).astype(np.float32) for _ in range(args.tensors)]
    grads = [rng.standard_normal(per_tensor).astype(np.float32) * 1e-2 for _ in range(args.tensors)]

    steps: Dict[str, Callable[[], None]] = {}
    # clone(): st.tensor shares numpy's buffer, which is only 16-byte aligned; the
    # engine's allocator aligns to cache lines, as torch's does (worth ~25% at DRAM size).
    params = [st.tensor(d).clone() for d in data]
    for p, g in zip(params, grads):
        p.grad = st.tensor(g).clone()
    opt = st.optimizers.AdamW(learning_rate=1e-3, weight_decay=0.01)
    ours = "steepest AdamW (fused)"
    steps[ours] = lambda: opt.step(params)
    if torch:
        variants = {"torch AdamW (default)": {}, "torch AdamW foreach=True": {"foreach": True},
                    "torch AdamW fused=True": {"fused": True}}
        for name, kwargs in variants.items():
            tparams = [torch.tensor(d, requires_grad=True) for d in data]
            for p, g in zip(tparams, grads):
                p.grad = torch.tensor(g)
            try:
                topt = torch.optim.AdamW(tparams, lr=1e-3, weight_decay=0.01, **kwargs)
                topt.step()
            except (RuntimeError, ValueError) as err:  # e.g. fused unsupported on this CPU
                print(f"{name}: skipped ({err})")
                continue
            steps[name] = topt.step
    results = best_of(steps, args.repeats)

    bandwidth = copy_bandwidth(args.repeats)
    print(f"AdamW step, {numel:,} float32 parameters in {args.tensors} tensors, "
          f"{threads} threads, best of 3 x {args.repeats}")
    for name, gbs in bandwidth.items():
        print(f"copy bandwidth ({name}, read + write): {gbs:.1f} GB/s")
    reference = bandwidth["numpy copy"]
    print(f"{'implementation':28s} {'ms/step':>9s} {'GB/s':>7s} {'% numpy copy':>13s} "
          f"{'steepest is':>13s}")
    for name, seconds in results.items():
        gbs = BYTES_PER_PARAM * numel / seconds / 1e9
        speedup = "" if name == ours else f"{seconds / results[ours]:.2f}x faster"
        print(f"{name:28s} {seconds * 1e3:9.3f} {gbs:7.1f} {100 * gbs / reference:12.0f}% "
              f"{speedup:>13s}")
    if torch is None:
        print("torch is not installed: no comparison")


if __name__ == "__main__":
    main()
