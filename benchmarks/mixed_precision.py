"""Memory of one training step of a wide MLP: float32 vs mixed_bfloat16 (and mixed_float16).

The MLP is Input(width) → depth × Dense(width, relu) → Dense(10), cross-entropy on the
float32 logits. For each policy one forward+backward runs, and the CPU allocator's
statistics (st.memory_stats, live bytes) give, above what is allocated before the step:

- peak: the most memory in use at any time during forward+backward, with the gradients
  cleared first (p.grad = None), so the float32 parameter gradients are allocated during
  the step and counted: the activations kept for backward, the gradients, and each op's
  temporaries;
- peak above grads: the same step with every parameter's float32 gradient already
  allocated before it (as when gradients are accumulated over micro-batches): each
  weight's GEMM adds dW = Xᵀ·G straight into its .grad (beta = 1; PyTorch builds dW and
  then adds it), so the peak counts everything but those buffers and no weight-sized
  temporary: the activations kept for backward and the activation gradients in flight
  (at batch 256, the top layer's incoming gradient and dX; with 16-bit activations also
  the float32 block in which the GEMM sums a 16-bit dX before rounding it);
- kept for backward: what is held once the forward is done (activations, plus any 16-bit
  weight copies the products save; none here).

The float32 parameter gradients are the same tensors under both policies, since the
master weights are float32 (as under Keras and PyTorch autocast); at small batches they
are most of the peak (16 MiB of the 4 × 1024 MLP), so the ratio of the whole peak stays
near 1 there and only the ratio above the gradients shows what 16 bits save.

Under a mixed policy the Dense layers multiply their 16-bit input by the float32 master
weight directly (matmul of a 16-bit and a float32 operand): the GEMM rounds the weight
to 16 bits while it packs it, so no 16-bit copy of a weight exists or is kept for
backward, dX's GEMM rounds it again, and dW is summed and written in float32. The GEMM
widens 16-bit operands while packing and accumulates C in float32.
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

    def step(grads_allocated: bool) -> Dict[str, float]:
        for p in params:
            p.grad = st.zeros(p.shape) if grads_allocated else None
        st.reset_peak_memory_stats()
        base = st.memory_stats()["allocated_bytes"]
        loss = st.ops.cross_entropy(model(x, training=True), y)
        kept = st.memory_stats()["allocated_bytes"] - base
        loss.backward()
        peak = st.memory_stats()["peak_allocated_bytes"] - base
        return {"peak": peak, "kept": kept}

    step(False)  # warm the allocator's cache
    memory = step(False)
    above_grads = step(True)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step(False)
        best = min(best, time.perf_counter() - start)
    return {
        "weights": weight_bytes / MIB,
        "peak": memory["peak"] / MIB,
        "peak_above_grads": above_grads["peak"] / MIB,
        "kept": memory["kept"] / MIB,
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
        f"{'batch':>6} {'policy':<15} {'peak fwd+bwd':>13} {'peak above grads':>17} "
        f"{'kept for bwd':>13} {'ms/step':>8}"
    )
    print(header)
    print("-" * len(header))
    for batch in args.batch:
        results = {p: measure(p, args.width, args.depth, batch, args.repeats) for p in policies}
        for policy, r in results.items():
            print(
                f"{batch:>6} {policy:<15} {r['peak']:>13.2f} {r['peak_above_grads']:>17.2f} "
                f"{r['kept']:>13.2f} {r['ms']:>8.1f}"
            )
        f32 = results["float32"]
        for policy in policies[1:]:
            r = results[policy]
            print(
                f"{'':>6} {policy} / float32: peak {r['peak'] / f32['peak']:.2f}×, "
                f"peak above grads {r['peak_above_grads'] / f32['peak_above_grads']:.2f}×, "
                f"kept {r['kept'] / f32['kept']:.2f}× (weights {f32['weights']:.1f} MiB)"
            )


if __name__ == "__main__":
    main()
