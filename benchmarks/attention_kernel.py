"""The fused attention kernel alone: forward, and forward + backward, the calling thread's
CPU time per call (best of rounds: the minimum is the least disturbed by other work on a
shared machine), at the GPT step's heads and at long contexts.

    python benchmarks/attention_kernel.py                      # the shapes below, 1 thread
    python benchmarks/attention_kernel.py --shapes 16,6,128,32 --threads 2
"""

import argparse
import time

import numpy as np

import steepest as st

SHAPES = ["16,6,128,32", "1,6,1024,64", "1,4,2048,64"]


def best_time(fn, rounds, clock):
    fn()
    times = []
    for _ in range(rounds):
        start = clock()
        fn()
        times.append(clock() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=SHAPES, help="batch,heads,T,head_dim")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--full", action="store_true", help="non-causal")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    args = parser.parse_args()
    st.set_num_threads(args.threads)
    # One engine thread runs on the calling thread; thread time leaves out numpy's BLAS
    # threads.
    clock = time.thread_time if args.clock == "cpu" and args.threads == 1 else (
        time.process_time if args.clock == "cpu" else time.perf_counter)
    causal = not args.full
    rng = np.random.default_rng(0)
    for spec in args.shapes:
        shape = tuple(int(s) for s in spec.split(","))
        leaves = [st.tensor(rng.standard_normal(shape), dtype=args.dtype, requires_grad=True)
                  for _ in range(3)]
        grad = st.tensor(rng.standard_normal(shape), dtype=args.dtype)

        def forward():
            with st.no_grad():
                st.ops.scaled_dot_product_attention(*leaves, causal=causal)

        def both():
            # Fresh gradients: adding into the last round's would time an addition too.
            for leaf in leaves:
                leaf.grad = None
            st.ops.scaled_dot_product_attention(*leaves, causal=causal).backward(grad)

        fwd = best_time(forward, args.rounds, clock)
        total = best_time(both, args.rounds, clock)
        print(f"{spec:>14} {'causal' if causal else 'full':>6} {args.dtype}: forward "
              f"{fwd * 1e3:7.3f} ms  backward {(total - fwd) * 1e3:7.3f} ms  "
              f"(fwd+bwd {total * 1e3:7.3f})", flush=True)


if __name__ == "__main__":
    main()
