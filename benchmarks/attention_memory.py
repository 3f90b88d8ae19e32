"""Peak memory of causal attention forward + backward: the fused (flash) kernel against
the composed softmax(q·kᵀ/√d + mask)·v, which materialises the T×T scores and
probabilities (and their gradients) per head.

    python benchmarks/attention_memory.py                 # contexts 256..2048
    python benchmarks/attention_memory.py --contexts 2048 --heads 6 --head-dim 32

The peak is what st.memory_stats() reports above the inputs while forward and backward
run (the allocator's live bytes, not the process's RSS); time per fwd+bwd is printed too.
"""

import argparse
import time

import numpy as np

import steepest as st

MIB = 2**20


def composed(q, k, v):
    t, d = q.shape[-2], q.shape[-1]
    mask = np.where(np.arange(t)[None, :] > np.arange(t)[:, None], -np.inf, 0.0)
    scores = st.ops.matmul(q, st.ops.transpose(k, -1, -2)) * (1.0 / np.sqrt(d))
    return st.ops.matmul(st.ops.softmax(scores + st.tensor(mask, dtype=q.dtype), -1), v)


def fused(q, k, v):
    return st.ops.scaled_dot_product_attention(q, k, v, causal=True)


def measure(fn, shape, repeats):
    rng = np.random.default_rng(0)
    leaves = [st.tensor(rng.standard_normal(shape).astype(np.float32), requires_grad=True)
              for _ in range(3)]
    weights = st.tensor(rng.standard_normal(shape).astype(np.float32))
    peak, best = 0, float("inf")
    for _ in range(repeats + 1):  # the first run warms the allocator's cache
        for leaf in leaves:
            leaf.grad = None
        st.reset_peak_memory_stats()
        base = st.memory_stats()["allocated_bytes"]
        start = time.perf_counter()
        (fn(*leaves) * weights).sum().backward()
        best = min(best, time.perf_counter() - start)
        peak = st.memory_stats()["peak_allocated_bytes"] - base
    return peak, best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    st.set_num_threads(args.threads)
    print(f"causal attention fwd+bwd, float32, batch {args.batch}, {args.heads} heads of "
          f"{args.head_dim}, {args.threads} thread(s): peak MiB above q, k, v (ms per fwd+bwd)")
    print(f"{'context':>8} {'fused':>18} {'composed':>18} {'ratio':>7}")
    for t in args.contexts:
        shape = (args.batch, args.heads, t, args.head_dim)
        f_peak, f_time = measure(fused, shape, args.repeats)
        c_peak, c_time = measure(composed, shape, args.repeats)
        print(f"{t:>8} {f_peak / MIB:>8.1f} ({f_time * 1e3:>6.1f}ms) "
              f"{c_peak / MIB:>8.1f} ({c_time * 1e3:>6.1f}ms) {c_peak / max(f_peak, 1):>6.1f}x")


if __name__ == "__main__":
    main()
