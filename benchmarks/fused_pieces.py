"""The fused Transformer pieces (st.ops.bias_gelu, add_layer_norm, bias_residual) against
the ops they replace, at the shapes of one block of benchmarks/gpt_step.py's default
configuration (batch 16, context 128, d_model 192, MLP 768), forward and backward.

    python benchmarks/fused_pieces.py [--batch 16 --context 128 --d-model 192 --repeats 30]

Reports the median CPU time (process time: all threads, robust on a shared machine) and
wall time per block. The matmuls are left out: both sides call the same ones.
"""

import argparse
import time

import numpy as np

import steepest as st

ops = st.ops


def composed(x, y1, y2, m, b, g, lb, b1, b2):
    x1 = x + (y1 + b)
    hidden = ops.gelu(m + b1)
    return x1, ops.layer_norm(x1, g, lb), hidden, x1 + (y2 + b2)


def fused(x, y1, y2, m, b, g, lb, b1, b2):
    x1, normed = ops.add_layer_norm(x, y1, b, g, lb)
    return x1, normed, ops.bias_gelu(m, b1), ops.bias_residual(x1, y2, b2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--d-model", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    b, t, d = args.batch, args.context, args.d_model

    def leaf(*shape):
        return st.tensor(rng.standard_normal(shape).astype(np.float32), requires_grad=True)

    inputs = [leaf(b, t, d), leaf(b, t, d), leaf(b, t, d), leaf(b, t, 4 * d),
              leaf(d), leaf(d), leaf(d), leaf(4 * d), leaf(d)]
    seeds = [st.tensor(rng.standard_normal(s).astype(np.float32))
             for s in [(b, t, d), (b, t, d), (b, t, 4 * d), (b, t, d)]]

    def step(fn):
        st.autograd.grad(list(fn(*inputs)), inputs, seeds)

    times = {"composed": [], "fused": []}
    for _ in range(args.repeats):  # interleaved, so that both see the same machine load
        for name, fn in (("composed", composed), ("fused", fused)):
            w0, c0 = time.perf_counter(), time.process_time()
            step(fn)
            times[name].append((time.process_time() - c0, time.perf_counter() - w0))
    for name, ts in times.items():
        cpu = np.median([c for c, _ in ts]) * 1e3
        wall = np.median([w for _, w in ts]) * 1e3
        print(f"{name:9s} cpu {cpu:7.2f} ms  wall {wall:7.2f} ms per block (forward + backward)")


if __name__ == "__main__":
    main()
