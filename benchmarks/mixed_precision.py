"""Memory of one training step of a wide MLP: float32 vs mixed_bfloat16 (and mixed_float16).

The MLP is Input(width) → depth × Dense(width, relu) → Dense(10), cross-entropy on the
float32 logits. For each policy one forward+backward runs with the gradients cleared,
and the CPU allocator's statistics (st.memory_stats, live bytes) give, above what is
allocated before the step (the float32 weights and the batch):

- peak: the most memory in use at any time during forward+backward (the activations
  kept for backward, the gradients, and each op's temporaries);
- kept for backward: what is held once the forward is done, split into activations
  and, under a mixed policy, the 16-bit copies of the weights that the matrix products
  save for their backward (½ of the float32 weights for 16-bit copies).

The GEMM widens 16-bit operands while it packs them (no float32 copies of A or B) and
accumulates C in float32. The activations are halved; at small batches the peak is
still above float32's, because each layer's 16-bit weight copy is kept until its
backward and its weight gradient exists in 16 bits before the cast back to the float32
master gradient (as under PyTorch autocast), while all float32 gradients are live.
Also reported: milliseconds per forward+backward (best of --repeats).

    python benchmarks/mixed_precision.py [--width 1024] [--depth 4] [--batch 256 1024 4096]
"""

from __future__ import annotations

import argparse
import time
from typing import Dict

import numpy as np
import steepest as st

MIB = 2.0**20


def measure(policy: str, width: int, depth: int, batch: int, repeats: int) -> Dict[str, float]:
    st.mixed_precision.set_global_policy(policy)
    try:
        layers = st.layers
        st.manual_seed(0)
        model = st.Sequential(
            [layers.Input((width,))]
            + [layers.Dense(width, activation="relu") for _ in range(depth)]
            + [layers.Dense(10)]
        )
        model.compile("adamw", "sparse_categorical_crossentropy")
    finally:
        st.mixed_precision.set_global_policy("float32")
    x = st.randn((batch, width), seed=1)
    y = st.tensor(np.arange(batch) % 10)
    params = model.parameters()
    weight_bytes = sum(p.numel() * 4 for p in params)
    compute = model.dtype_policy.compute_dtype
    copy_bytes = 0 if compute == "float32" else sum(p.numel() * 2 for p in params)

    def step() -> Dict[str, float]:
        for p in params:
            p.grad = None
        st.reset_peak_memory_stats()
        base = st.memory_stats()["allocated_bytes"]
        loss = st.ops.cross_entropy(model(x, training=True), y)
        kept = st.memory_stats()["allocated_bytes"] - base
        loss.backward()
        peak = st.memory_stats()["peak_allocated_bytes"] - base
        return {"peak": peak, "kept": kept}

    step()  # warm the allocator's cache
    memory = step()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return {
        "weights": weight_bytes / MIB,
        "peak": memory["peak"] / MIB,
        "kept": memory["kept"] / MIB,
        "copies": copy_bytes / MIB,
        "activations": (memory["kept"] - copy_bytes) / MIB,
        "ms": best * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--float16", action="store_true", help="also measure mixed_float16")
    args = parser.parse_args()
    policies = ["float32", "mixed_bfloat16"] + (["mixed_float16"] if args.float16 else [])
    print(
        f"MLP {args.depth} × Dense({args.width}, relu) + Dense(10); MiB above the weights; "
        f"{st.get_num_threads()} threads"
    )
    header = (
        f"{'batch':>6} {'policy':<15} {'peak fwd+bwd':>13} {'kept for bwd':>13} "
        f"{'activations':>12} {'16-bit copies':>14} {'ms/step':>8}"
    )
    print(header)
    print("-" * len(header))
    for batch in args.batch:
        results = {p: measure(p, args.width, args.depth, batch, args.repeats) for p in policies}
        for policy, r in results.items():
            print(
                f"{batch:>6} {policy:<15} {r['peak']:>13.2f} {r['kept']:>13.2f} "
                f"{r['activations']:>12.2f} {r['copies']:>14.2f} {r['ms']:>8.1f}"
            )
        f32, bf16 = results["float32"], results["mixed_bfloat16"]
        ratio = bf16["activations"] / f32["activations"]
        print(
            f"{'':>6} mixed_bfloat16 vs float32: activations {ratio:.2f}×, "
            f"peak {bf16['peak'] - f32['peak']:+.2f} MiB (weights {f32['weights']:.1f} MiB)"
        )


if __name__ == "__main__":
    main()
