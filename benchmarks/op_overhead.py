"""Per-op dispatch overhead of a small eager op chain with autograd, steepest vs torch.

A chain of --ops elementwise ops (add, mul, tanh, sub, mul, sigmoid, repeating) on tiny
float32 tensors that require grad, so the time is dominated by per-op overhead (Python
binding, dispatch, allocation, graph recording) rather than arithmetic. Reports the best
of --repeats runs, in microseconds per op, for the forward chain alone and for forward
plus backward, and the steepest/torch ratio (target: <= 0.5). torch is optional.

    python benchmarks/op_overhead.py --ops 2000 --repeats 20
"""

import argparse
import os
import sys
import time

import numpy as np

TARGET_RATIO = 0.5


def chain(x, w, n_ops):
    """n_ops elementwise ops; the same Python code drives both libraries."""
    y = x
    for i in range(n_ops):
        k = i % 6
        if k == 0:
            y = y + w
        elif k == 1:
            y = y * w
        elif k == 2:
            y = y.tanh()  # keeps values bounded however long the chain
        elif k == 3:
            y = y - x
        elif k == 4:
            y = y * x
        else:
            y = y.sigmoid()
    return y


def best_time(fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        best = min(best, fn())
    return best


def bench_steepest(st, xv, wv, n_ops, repeats):
    def make():
        return (st.tensor(xv, dtype="float32", requires_grad=True),
                st.tensor(wv, dtype="float32", requires_grad=True))

    def forward():
        x, w = make()
        t0 = time.perf_counter()
        chain(x, w, n_ops).numpy()  # reading the result rules out deferred execution
        return time.perf_counter() - t0

    def forward_backward():
        x, w = make()
        t0 = time.perf_counter()
        y = chain(x, w, n_ops)
        y.sum().backward()
        x.grad.numpy()
        return time.perf_counter() - t0

    return best_time(forward, repeats), best_time(forward_backward, repeats)


def bench_torch(torch, xv, wv, n_ops, repeats):
    def make():
        return (torch.tensor(xv, requires_grad=True), torch.tensor(wv, requires_grad=True))

    def forward():
        x, w = make()
        t0 = time.perf_counter()
        chain(x, w, n_ops).detach().numpy()
        return time.perf_counter() - t0

    def forward_backward():
        x, w = make()
        t0 = time.perf_counter()
        y = chain(x, w, n_ops)
        y.sum().backward()
        x.grad.numpy()
        return time.perf_counter() - t0

    return best_time(forward, repeats), best_time(forward_backward, repeats)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ops", type=int, default=2000, help="ops in the chain (default 2000)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs, best is kept (default 20)")
    p.add_argument("--size", type=int, default=64, help="elements per tensor (default 64)")
    p.add_argument("--threads", type=int, default=1, help="threads for both libraries (default 1)")
    p.add_argument("--no-torch", action="store_true", help="skip the torch baseline")
    p.add_argument("--strict", action="store_true",
                   help=f"exit 1 if a steepest/torch ratio exceeds {TARGET_RATIO}")
    args = p.parse_args(argv)

    try:
        import steepest as st
    except ImportError:  # not installed: use the in-place build under python/
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
        import steepest as st

    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("torch not installed: reporting steepest only")

    if hasattr(st, "set_num_threads"):
        st.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    xv = rng.uniform(-1.0, 1.0, args.size).astype(np.float32)
    wv = rng.uniform(0.5, 1.0, args.size).astype(np.float32)

    # Backward adds one sum op; per-op figures divide by the forward chain length.
    n = args.ops
    print(f"chain of {n} elementwise ops on {args.size}-element float32 tensors with "
          f"requires_grad, {args.threads} thread(s), best of {args.repeats}")
    s_fwd, s_fb = bench_steepest(st, xv, wv, n, args.repeats)
    print(f"{'':10s} {'forward us/op':>14s} {'fwd+bwd us/op':>14s}")
    print(f"{'steepest':10s} {s_fwd / n * 1e6:14.3f} {s_fb / n * 1e6:14.3f}")
    if torch is None:
        return 0

    t_fwd, t_fb = bench_torch(torch, xv, wv, n, args.repeats)
    print(f"{'torch':10s} {t_fwd / n * 1e6:14.3f} {t_fb / n * 1e6:14.3f}")
    r_fwd, r_fb = s_fwd / t_fwd, s_fb / t_fb
    print(f"{'ratio':10s} {r_fwd:14.3f} {r_fb:14.3f}   (steepest/torch, target <= {TARGET_RATIO})")
    ok = r_fwd <= TARGET_RATIO and r_fb <= TARGET_RATIO
    print("target met" if ok else "target NOT met")
    return 1 if args.strict and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
