"""conv2d forward and forward+backward: steepest vs PyTorch, same run, same threads.

The digits CNN's two convolutions (batch 32: 1→32 channels on 8×8, 32→64 on 4×4 after
pooling; 3×3, padding 1), a wider layer (batch 32, 64→64 channels, 32×32) and a
MobileNet-like depthwise layer (groups = 64 channels, 56×56), float32, on 1 and 2 threads. The first layer's input needs no gradient (as in training); the other
layers also compute dX. Each library runs in its own worker process and the rounds
interleave them (see gemm_vs_numpy.py); the table reports medians in milliseconds.

    python benchmarks/conv_vs_torch.py
    python benchmarks/conv_vs_torch.py --threads 2 --rounds 11
    python benchmarks/conv_vs_torch.py --layers 3      # the depthwise layer only
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gemm_vs_numpy import Worker, interleaved_medians

LIBRARIES = ("steepest", "torch")
# name, batch, in channels, image size, out channels, input needs a gradient, groups
LAYERS = [
    ("digits conv1 32x1x8x8 -> 32", 32, 1, 8, 32, False, 1),
    ("digits conv2 32x32x4x4 -> 64", 32, 32, 4, 64, True, 1),
    ("conv 32x64x32x32 -> 64", 32, 64, 32, 64, True, 1),
    ("depthwise 32x64x56x56", 32, 64, 56, 64, True, 64),
]


def step(conv, x, w, b, g, groups, backward):
    """One forward (and backward) pass; gradients are dropped, not accumulated."""
    y = conv(x, w, b, groups)
    if backward:
        y.backward(g)
        x.grad = w.grad = b.grad = None


def run_worker(lib, threads):
    """Answers one JSON request per stdin line: info, or time a layer `reps` times."""
    import json

    import numpy as np

    if lib == "torch":
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(threads)

        def tensor(a, grad):
            return torch.tensor(a, requires_grad=grad)

        def conv(x, w, b, groups):
            return F.conv2d(x, w, b, padding=1, groups=groups)

        info = f"torch {torch.__version__}: threads={torch.get_num_threads()} " \
               f"mkldnn={torch.backends.mkldnn.is_available()}"
    else:
        import steepest as st

        st.set_num_threads(threads)

        def tensor(a, grad):
            return st.tensor(a, dtype="float32", requires_grad=grad)

        def conv(x, w, b, groups):
            # Keyword-free when groups is 1, so a build without groups runs the others.
            if groups == 1:
                return st.ops.conv2d(x, w, b, 1, 1)
            return st.ops.conv2d(x, w, b, padding=1, groups=groups)

        info = f"steepest {st.__version__}: threads={st.get_num_threads()}"

    layers = {}
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "info":
            sys.stdout.write(json.dumps({"info": info}) + "\n")
            sys.stdout.flush()
            continue
        name, n, c, size, o, grad_x, groups = LAYERS[req["layer"]]
        if name not in layers:
            rng = np.random.default_rng(0)
            arrays = [rng.standard_normal(s).astype(np.float32)
                      for s in [(n, c, size, size), (o, c // groups, 3, 3), (o,), (n, o, size, size)]]
            x, w, b = tensor(arrays[0], grad_x), tensor(arrays[1], True), tensor(arrays[2], True)
            layers[name] = (x, w, b, tensor(arrays[3], False))
        x, w, b, g = layers[name]
        for _ in range(2):
            step(conv, x, w, b, g, groups, req["backward"])
        t0 = time.perf_counter()
        for _ in range(req["reps"]):
            step(conv, x, w, b, g, groups, req["backward"])
        sys.stdout.write(json.dumps({"seconds": (time.perf_counter() - t0) / req["reps"]}) + "\n")
        sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-seconds", type=float, default=0.05)
    parser.add_argument("--pause", type=float, default=0.05)
    parser.add_argument("--layers", type=int, nargs="+", default=list(range(len(LAYERS))),
                        help="indices into LAYERS")
    parser.add_argument("--worker", choices=LIBRARIES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, args.threads[0])
        return

    script = os.path.abspath(__file__)
    for threads in args.threads:
        workers = [Worker(script, lib, threads) for lib in LIBRARIES]
        try:
            print(f"\n== conv2d 3x3 pad 1, float32, {threads} thread(s), "
                  f"median of {args.rounds} rounds (ms)")
            for w in workers:
                print("  " + w.ask(op="info")["info"])
            print(f"  {'layer':32} {'pass':8} {'steepest':>9} {'torch':>9} {'st/torch':>9}")
            for index in args.layers:
                layer = LAYERS[index]
                for backward in (False, True):
                    ms = [1e3 * s for s in interleaved_medians(
                        workers, {"op": "time", "layer": index, "backward": backward}, args.rounds,
                        args.min_seconds, args.pause)]
                    label = "fwd+bwd" if backward else "fwd"
                    print(f"  {layer[0]:32} {label:8} {ms[0]:9.3f} {ms[1]:9.3f}"
                          f" {ms[0] / ms[1]:9.2f}", flush=True)
        finally:
            for w in workers:
                w.close()


if __name__ == "__main__":
    main()
