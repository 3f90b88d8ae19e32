"""GPU benchmarks: steepest's CUDA backend beside PyTorch on the same device.

1. Copy bandwidth: a 1 GiB device-to-device copy (read + write counted), steepest's copy
   kernel and torch's copy_; the larger is the yardstick for the memory-bound kernels.
2. GEMM TFLOP/s for square float32 products, steepest (cuBLAS through its dlopen'ed
   GEMM) vs torch.matmul, with TF32 off (the default) and on, and in bfloat16 (cuBLAS
   with 16-bit inputs and float32 accumulation on both sides).
3. One fused AdamW step on 100M float32 parameters (one tensor, and 100 tensors of 1M):
   GB/s moved (28 bytes per parameter) and its fraction of the copy bandwidth, beside
   torch.optim.AdamW(fused=True).
4. One training step (forward, backward, AdamW) of a 4-layer 4096-wide ReLU MLP at
   batch 1024 with softmax cross-entropy, steepest ops vs PyTorch eager: in float32
   (TF32 off and on), and mixed bfloat16 (float32 master weights cast to bfloat16 in the
   forward pass, loss in float32; torch.autocast on the PyTorch side). The issue's check
   is steepest's bf16 step faster than its float32 step.

Times are the median of timed repeats after warm-up, each block closed by a device
synchronisation. Writes a JSON report when --out is given.

    python benchmarks/gpu_bench.py [--out report.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Callable

import numpy as np

import steepest as st
from steepest import ops

BYTES_PER_ADAM_PARAM = 28  # fp32: read p, g, m, v (16) + write p, m, v (12)


def timed(fn: Callable[[], object], sync: Callable[[], None], repeats: int,
          warmup: int = 2) -> float:
    """Median seconds per call of fn, each call synchronised."""
    for _ in range(warmup):
        fn()
    sync()
    samples: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def st_sync() -> None:
    st._core.synchronize("cuda")


def copy_bandwidth(torch, repeats: int) -> dict[str, float]:
    n = 256 * 2**20  # 1 GiB of float32
    src = st.ones(n, device="cuda")
    t_src = torch.ones(n, device="cuda")
    t_dst = torch.empty_like(t_src)
    return {
        "steepest_clone_gbs": 2 * 4 * n / timed(src.clone, st_sync, repeats) / 1e9,
        "torch_copy_gbs": 2 * 4 * n / timed(lambda: t_dst.copy_(t_src), torch.cuda.synchronize,
                                            repeats) / 1e9,
    }


def gemm(torch, sizes: list[int], repeats: int) -> list[dict[str, float]]:
    rows = []
    for n in sizes:
        rng = np.random.default_rng(n)
        data_a = rng.standard_normal((n, n), dtype=np.float32)
        data_b = rng.standard_normal((n, n), dtype=np.float32)
        a, b = st.tensor(data_a, device="cuda"), st.tensor(data_b, device="cuda")
        ta, tb = torch.tensor(data_a, device="cuda"), torch.tensor(data_b, device="cuda")
        flops = 2.0 * n**3
        row = {"n": n}
        for tf32 in (False, True):
            st._core.set_allow_tf32(tf32)
            torch.backends.cuda.matmul.allow_tf32 = tf32
            tag = "tf32" if tf32 else "fp32"
            seconds = timed(lambda a=a, b=b: ops.matmul(a, b), st_sync, repeats)
            row[f"steepest_{tag}_tflops"] = flops / seconds / 1e12
            seconds = timed(lambda ta=ta, tb=tb: ta @ tb, torch.cuda.synchronize, repeats)
            row[f"torch_{tag}_tflops"] = flops / seconds / 1e12
        st._core.set_allow_tf32(False)
        torch.backends.cuda.matmul.allow_tf32 = False
        ha, hb = ta.bfloat16(), tb.bfloat16()
        seconds = timed(lambda ha=ha, hb=hb: ha @ hb, torch.cuda.synchronize, repeats)
        row["torch_bf16_tflops"] = flops / seconds / 1e12
        sa, sb = a.astype("bfloat16"), b.astype("bfloat16")
        seconds = timed(lambda sa=sa, sb=sb: ops.matmul(sa, sb), st_sync, repeats)
        row["steepest_bf16_tflops"] = flops / seconds / 1e12
        rows.append(row)
    return rows


def steepest_adamw_seconds(size: int, tensors: int, repeats: int) -> float:
    params = [st.zeros(size, device="cuda", requires_grad=True) for _ in range(tensors)]
    for p in params:
        p.grad = st.full(size, 1e-3, device="cuda")
    opt = st.optimizers.AdamW(learning_rate=1e-3)
    return timed(lambda: opt.step(params), st_sync, repeats)


def torch_adamw_seconds(torch, size: int, tensors: int, repeats: int) -> float:
    params = [torch.zeros(size, device="cuda", requires_grad=True) for _ in range(tensors)]
    for p in params:
        p.grad = torch.full((size,), 1e-3, device="cuda")
    opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    return timed(opt.step, torch.cuda.synchronize, repeats)


def adamw(torch, total: int, tensors: int, repeats: int, copy_gbs: float) -> dict[str, float]:
    size = total // tensors
    step_st = steepest_adamw_seconds(size, tensors, repeats)
    st.empty_cache()
    step_torch = torch_adamw_seconds(torch, size, tensors, repeats)
    torch.cuda.empty_cache()
    moved = BYTES_PER_ADAM_PARAM * size * tensors
    return {
        "params": size * tensors,
        "tensors": tensors,
        "steepest_ms": step_st * 1e3,
        "steepest_gbs": moved / step_st / 1e9,
        "steepest_fraction_of_copy": moved / step_st / 1e9 / copy_gbs,
        "torch_fused_ms": step_torch * 1e3,
        "torch_fused_gbs": moved / step_torch / 1e9,
    }


def mlp_step(torch, width: int, depth: int, batch: int, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    x_data = rng.standard_normal((batch, width), dtype=np.float32)
    labels_data = rng.integers(0, width, batch)
    weights = [(rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
               for _ in range(depth)]

    x = st.tensor(x_data, device="cuda")
    labels = st.tensor(labels_data, device="cuda")
    ws = [st.tensor(w, device="cuda", requires_grad=True) for w in weights]
    bs = [st.zeros(width, device="cuda", requires_grad=True) for _ in range(depth)]
    params = ws + bs
    opt = st.optimizers.AdamW(learning_rate=1e-4)

    def step_st(compute: str = "float32") -> None:
        h = x.astype(compute) if compute != "float32" else x
        for i in range(depth):
            if compute == "float32":
                h = ops.linear(h, ws[i], bs[i])
            else:  # what a layer does under a mixed policy
                h = ops.linear(h, ws[i].astype(compute), bs[i].astype(compute))
            if i < depth - 1:
                h = ops.relu(h)
        loss = ops.cross_entropy(h.astype("float32") if compute != "float32" else h, labels)
        for p in params:
            p.grad = None
        loss.backward()
        opt.step(params)

    tx = torch.tensor(x_data, device="cuda")
    tlabels = torch.tensor(labels_data, device="cuda")
    tws = [torch.tensor(w, device="cuda", requires_grad=True) for w in weights]
    tbs = [torch.zeros(width, device="cuda", requires_grad=True) for _ in range(depth)]
    t_opt = torch.optim.AdamW(tws + tbs, lr=1e-4)

    def step_torch(autocast: bool = False) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            h = tx
            for i in range(depth):
                h = torch.nn.functional.linear(h, tws[i].t(), tbs[i])
                if i < depth - 1:
                    h = torch.relu(h)
        loss = torch.nn.functional.cross_entropy(h.float(), tlabels)
        t_opt.zero_grad(set_to_none=True)
        loss.backward()
        t_opt.step()

    result = {"width": width, "depth": depth, "batch": batch}
    for tf32 in (False, True):
        st._core.set_allow_tf32(tf32)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        tag = "tf32" if tf32 else "fp32"
        result[f"steepest_{tag}_ms"] = timed(step_st, st_sync, repeats) * 1e3
        result[f"torch_{tag}_ms"] = timed(step_torch, torch.cuda.synchronize, repeats) * 1e3
    st._core.set_allow_tf32(False)
    torch.backends.cuda.matmul.allow_tf32 = False
    result["steepest_bf16_ms"] = timed(lambda: step_st("bfloat16"), st_sync, repeats) * 1e3
    result["torch_autocast_bf16_ms"] = timed(lambda: step_torch(True), torch.cuda.synchronize,
                                             repeats) * 1e3
    result["steepest_bf16_vs_fp32"] = result["steepest_fp32_ms"] / result["steepest_bf16_ms"]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke test)")
    args = parser.parse_args()

    info = st.backends()
    if not info["cuda"]:
        print("no CUDA device: nothing to benchmark", file=sys.stderr)
        return 1
    import torch

    if not torch.cuda.is_available():
        print("torch sees no CUDA device: nothing to compare with", file=sys.stderr)
        return 1
    repeats = 3 if args.quick else 10
    report: dict[str, object] = {
        "device": info["cuda_device_names"][0],
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
    }
    copy = copy_bandwidth(torch, repeats)
    st.empty_cache()
    torch.cuda.empty_cache()
    report["copy"] = copy
    copy_gbs = max(copy.values())
    report["gemm"] = gemm(torch, [1024, 2048] if args.quick else [1024, 2048, 4096, 8192], repeats)
    params = 10_000_000 if args.quick else 100_000_000
    report["adamw"] = [adamw(torch, params, 1, repeats, copy_gbs),
                       adamw(torch, params, 100, repeats, copy_gbs)]
    report["mlp"] = mlp_step(torch, 1024 if args.quick else 4096, 4, 1024, repeats)
    report["cublas"] = st.backends()["cublas"]

    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
