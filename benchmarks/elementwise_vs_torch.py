"""float32 transcendental elementwise ops: steepest vs numpy vs PyTorch, same run, same threads.

exp, log, tanh, sigmoid and gelu forward, and forward+backward through the autograd for
sigmoid, tanh and gelu, on float32 tensors of 64K and 4M elements, on 1 and 2 threads.
numpy has exp, log and tanh (single-threaded ufuncs); sigmoid and gelu come from scipy
(scipy.special.expit, and x/2·(1 + erf(x/√2)) with scipy.special.erf) when it is
installed; it has no backward. torch is skipped when it cannot be imported. Each library
runs in its own worker process and the rounds interleave them (see gemm_vs_numpy.py);
the table reports medians in milliseconds.

    python benchmarks/elementwise_vs_torch.py
    python benchmarks/elementwise_vs_torch.py --threads 1 --sizes 65536 --rounds 11
"""

import argparse
import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gemm_vs_numpy import Worker, interleaved_medians

OPS = ("exp", "log", "tanh", "sigmoid", "gelu")
BACKWARD_OPS = ("sigmoid", "tanh", "gelu")
SIZES = (1 << 16, 1 << 22)


def _inputs(n):
    """The same float32 values in every worker: log gets positive ones."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = (3 * rng.standard_normal(n)).astype(np.float32)
    positive = rng.uniform(0.01, 100.0, n).astype(np.float32)
    grad = rng.standard_normal(n).astype(np.float32)
    return x, positive, grad


def _numpy_ops():
    """op name -> float32 function, for the ops numpy (or scipy) has."""
    import numpy as np

    ops = {"exp": np.exp, "log": np.log, "tanh": np.tanh}
    if importlib.util.find_spec("scipy") is not None:
        from scipy import special

        half, inv_sqrt2 = np.float32(0.5), np.float32(0.7071067811865476)
        ops["sigmoid"] = special.expit
        ops["gelu"] = lambda x: half * x * (1 + special.erf(x * inv_sqrt2))
    return ops


def _step(fn, x, grad, backward):
    """One forward (and backward) pass; the gradient is dropped, not accumulated."""
    y = fn(x)
    if backward:
        y.backward(grad)
        x.grad = None


def run_worker(lib, threads):
    """Answers one JSON request per stdin line: info, or time one case `reps` times."""
    import json

    import numpy as np

    if lib == "torch":
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(threads)
        ops = {"exp": torch.exp, "log": torch.log, "tanh": torch.tanh,
               "sigmoid": torch.sigmoid, "gelu": F.gelu}

        def tensor(a, grad):
            return torch.tensor(a, requires_grad=grad)

        info = f"torch {torch.__version__}: threads={torch.get_num_threads()}"
    elif lib == "numpy":
        ops = _numpy_ops()
        tensor = None
        scipy = " + scipy (sigmoid, gelu)" if "gelu" in ops else ", no scipy"
        info = f"numpy {np.__version__}{scipy}: single-threaded ufuncs"
    else:
        import steepest as st

        st.set_num_threads(threads)
        ops = {name: getattr(st.ops, name) for name in OPS}

        def tensor(a, grad):
            return st.tensor(a, dtype="float32", requires_grad=grad)

        info = f"steepest {st.__version__}: threads={st.get_num_threads()}"

    cases = {}
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "info":
            sys.stdout.write(json.dumps({"info": info, "ops": sorted(ops)}) + "\n")
            sys.stdout.flush()
            continue
        name, n, backward = req["name"], req["n"], req["backward"]
        key = (n, backward)
        if key not in cases:
            x, positive, grad = _inputs(n)
            if tensor is None:
                cases[key] = (x, positive, None)
            else:
                cases[key] = (tensor(x, backward), tensor(positive, backward), tensor(grad, False))
        x, positive, grad = cases[key]
        fn, arg = ops[name], positive if name == "log" else x
        for _ in range(2):
            _step(fn, arg, grad, backward)
        t0 = time.perf_counter()
        for _ in range(req["reps"]):
            _step(fn, arg, grad, backward)
        sys.stdout.write(json.dumps({"seconds": (time.perf_counter() - t0) / req["reps"]}) + "\n")
        sys.stdout.flush()


def _size_label(n):
    return f"{n >> 20}M" if n >= 1 << 20 else f"{n >> 10}K"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-seconds", type=float, default=0.05)
    parser.add_argument("--pause", type=float, default=0.05)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, args.threads[0])
        return

    libraries = ["steepest", "numpy"]
    if importlib.util.find_spec("torch") is not None:
        libraries.append("torch")
    else:
        print("torch is not installed: its columns are left out")
    script = os.path.abspath(__file__)
    for threads in args.threads:
        workers = {lib: Worker(script, lib, threads) for lib in libraries}
        try:
            print(f"\n== float32 elementwise, {threads} thread(s), "
                  f"median of {args.rounds} rounds (ms)")
            has = {}
            for lib, w in workers.items():
                reply = w.ask(op="info")
                has[lib] = set(reply["ops"])
                print("  " + reply["info"])
            header = f"  {'op':8} {'pass':8} {'size':>5} {'steepest':>9} {'numpy':>9}"
            if "torch" in workers:
                header += f" {'torch':>9} {'st/torch':>9}"
            print(header)
            for name in OPS:
                for backward in ((False, True) if name in BACKWARD_OPS else (False,)):
                    for n in args.sizes:
                        # numpy has no autograd: it only takes part in the forward rows.
                        timed = [lib for lib in workers
                                 if name in has[lib] and not (backward and lib == "numpy")]
                        ms = interleaved_medians(
                            [workers[lib] for lib in timed],
                            {"op": "time", "name": name, "n": n, "backward": backward},
                            args.rounds, args.min_seconds, args.pause)
                        got = {lib: 1e3 * s for lib, s in zip(timed, ms)}
                        cells = [f"{got[lib]:9.3f}" if lib in got else f"{'-':>9}"
                                 for lib in ("steepest", "numpy")]
                        line = (f"  {name:8} {'fwd+bwd' if backward else 'fwd':8} "
                                f"{_size_label(n):>5} " + " ".join(cells))
                        if "torch" in workers:
                            line += f" {got['torch']:9.3f} {got['steepest'] / got['torch']:9.2f}"
                        print(line, flush=True)
        finally:
            for w in workers.values():
                w.close()


if __name__ == "__main__":
    main()
