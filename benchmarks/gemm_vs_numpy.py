"""float32 GEMM throughput: steepest vs numpy (OpenBLAS) vs PyTorch, same run, same threads.

Square products 128…2048 and the tall-skinny products of training at width 1024 (batch
32 and 256: forward X·W, dX = G·Wᵀ, dW = Xᵀ·G, transposes passed as views), on 1 and 2
threads. Each library runs in its own worker process so that no two thread pools share
one process; the rounds interleave the three workers and the table reports medians, so a
burst of load on a shared machine hits all three alike.

numpy's worker starts with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed from its
environment (numpy reads them at import; some machines pin an older, safer kernel with
them) so the comparison is against OpenBLAS's best kernel for this CPU; threadpoolctl
reports which one it runs. Thread counts: OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and
MKL_NUM_THREADS in every worker, plus threadpool_limits / torch.set_num_threads /
st.set_num_threads.

    python benchmarks/gemm_vs_numpy.py                 # full table, 1 and 2 threads
    python benchmarks/gemm_vs_numpy.py --threads 1 --rounds 5 --sizes 512 1024

Peak FLOP/s = threads × FMA units × fp32 lanes × 2 × clock; the clock is --clock-ghz, or
"cpu MHz" from /proc/cpuinfo (the base clock: pass the measured boost clock for a true
fraction).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

LIBRARIES = ("steepest", "numpy", "torch")
# Variables that make numpy's OpenBLAS pick a kernel other than its best for this CPU.
OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# --- worker side ---------------------------------------------------------------------


def _library_info(lib):
    if lib == "numpy":
        import numpy as np
        from threadpoolctl import threadpool_info

        pools = [f"{p.get('internal_api')} {p.get('version')} kernel={p.get('architecture')} "
                 f"threads={p.get('num_threads')}" for p in threadpool_info()]
        return f"numpy {np.__version__}: " + "; ".join(pools)
    if lib == "torch":
        import torch

        return (f"torch {torch.__version__}: threads={torch.get_num_threads()} "
                f"mkl={torch.backends.mkl.is_available()}")
    import steepest as st

    return f"steepest {st.__version__}: threads={st.get_num_threads()} {json.dumps(st.backends())}"


def _make_matmul(lib, threads):
    """Returns (make(shape_a, shape_b, trans_a, trans_b) -> operands, matmul(a, b))."""
    import numpy as np

    rng = np.random.default_rng(0)

    def values(shape, trans):
        # A transposed operand is stored transposed and passed as a view.
        stored = rng.standard_normal(shape[::-1] if trans else shape).astype(np.float32)
        return stored, trans

    if lib == "numpy":
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)

        def make(sa, sb, ta, tb):
            (a, _), (b, _) = values(sa, ta), values(sb, tb)
            return (a.T if ta else a), (b.T if tb else b)

        return make, np.matmul
    if lib == "torch":
        import torch

        torch.set_num_threads(threads)

        def make(sa, sb, ta, tb):
            (a, _), (b, _) = values(sa, ta), values(sb, tb)
            a, b = torch.from_numpy(a), torch.from_numpy(b)
            return (a.T if ta else a), (b.T if tb else b)

        return make, torch.matmul
    import steepest as st

    st.set_num_threads(threads)

    def make(sa, sb, ta, tb):
        (a, _), (b, _) = values(sa, ta), values(sb, tb)
        a, b = st.tensor(a, dtype="float32"), st.tensor(b, dtype="float32")
        return (a.T if ta else a), (b.T if tb else b)

    return make, st.ops.matmul


def run_worker(lib, threads):
    """Answers one JSON request per stdin line: info, or time a product `reps` times."""
    make, matmul = _make_matmul(lib, threads)
    operands = {}
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "info":
            reply = {"info": _library_info(lib)}
        else:
            key = (tuple(req["a"]), tuple(req["b"]), req["ta"], req["tb"])
            if key not in operands:
                operands[key] = make(*key)
                for _ in range(3):
                    matmul(*operands[key])
            a, b = operands[key]
            t0 = time.perf_counter()
            for _ in range(req["reps"]):
                matmul(a, b)
            reply = {"seconds": (time.perf_counter() - t0) / req["reps"]}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


# --- coordinator side -----------------------------------------------------------------


class Worker:
    """A benchmark worker process for one library at one thread count."""

    def __init__(self, script, lib, threads, extra_env=None):
        env = dict(os.environ)
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(threads)
        # steepest sets libgomp's barrier spin to 10,000 at import (see its __init__); torch
        # uses libgomp too and gets the same, so both wait alike when cores are shared.
        env.setdefault("GOMP_SPINCOUNT", "10000")
        if lib == "numpy":
            for name in OPENBLAS_OVERRIDES:
                env.pop(name, None)
        env.update(extra_env or {})
        self.proc = subprocess.Popen(
            [sys.executable, script, "--worker", lib, "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, **request):
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker {self.proc.args} exited")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def interleaved_medians(workers, request, rounds, min_seconds, pause):
    """Median seconds per call for each worker, timing them in turn round after round.

    `pause` lets the previous library's idle threads stop spinning before the next one is
    timed: OpenBLAS keeps a core busy for about 0.1 s after every call (measured), which
    would otherwise land on the next library's two-thread run."""
    first = workers[0].ask(**request, reps=1)["seconds"]
    reps = max(1, int(min_seconds / max(first, 1e-9)))
    samples = {i: [] for i in range(len(workers))}
    for r in range(rounds):
        order = list(range(len(workers)))
        order = order[r % len(order):] + order[:r % len(order)]
        for i in order:
            time.sleep(pause)
            samples[i].append(workers[i].ask(**request, reps=reps)["seconds"])
    return [statistics.median(samples[i]) for i in range(len(workers))]


def cpu_peak_gflops(threads, clock_ghz, fma_units):
    flags, mhz = "", None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = line
                if line.startswith("cpu MHz") and mhz is None:
                    mhz = float(line.split(":")[1])
    except OSError:
        pass
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    ghz = clock_ghz or (mhz / 1000 if mhz else None)
    if ghz is None:
        return None, "clock unknown"
    source = "--clock-ghz" if clock_ghz else "/proc/cpuinfo"
    peak = threads * fma_units * lanes * 2 * ghz
    return peak, f"{threads} thr × {fma_units} FMA × {lanes} lanes × 2 × {ghz:.2f} GHz ({source})"


def gemm_cases(sizes, batches, width):
    """(label, op(A) shape, op(B) shape, trans_a, trans_b) of every product measured."""
    cases = [(f"{n}x{n}x{n}", (n, n), (n, n), False, False) for n in sizes]
    for b in batches:
        # Y = X·W, dX = G·Wᵀ (W stored width×width), dW = Xᵀ·G (X stored b×width).
        cases.append((f"fwd  X·W   {b}x{width}·{width}x{width}", (b, width), (width, width),
                      False, False))
        cases.append((f"dX = G·Wᵀ  {b}x{width}·({width}x{width})ᵀ", (b, width), (width, width),
                      False, True))
        cases.append((f"dW = Xᵀ·G  ({b}x{width})ᵀ·{b}x{width}", (width, b), (b, width), True,
                      False))
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes", type=int, nargs="*", default=[128, 256, 512, 1024, 2048])
    parser.add_argument("--batches", type=int, nargs="*", default=[32, 256])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-seconds", type=float, default=0.05,
                        help="time per timed batch of calls")
    parser.add_argument("--pause", type=float, default=0.25,
                        help="idle seconds before each timed batch")
    parser.add_argument("--clock-ghz", type=float, default=None)
    parser.add_argument("--fma-units", type=int, default=2)
    parser.add_argument("--worker", choices=LIBRARIES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, args.threads[0])
        return

    script = os.path.abspath(__file__)
    for threads in args.threads:
        workers = [Worker(script, lib, threads) for lib in LIBRARIES]
        try:
            print(f"\n== float32 GEMM, {threads} thread(s), median of {args.rounds} rounds")
            for w in workers:
                print("  " + w.ask(op="info")["info"])
            peak, how = cpu_peak_gflops(threads, args.clock_ghz, args.fma_units)
            if peak:
                print(f"  peak {peak:.0f} GFLOP/s = {how}")
            print(f"  {'product':34} {'steepest':>9} {'numpy':>9} {'torch':>9}"
                  f" {'st/np':>6} {'st/torch':>8} {'st %peak':>8}   (GFLOP/s)")
            for name, sa, sb, ta, tb in gemm_cases(args.sizes, args.batches, args.width):
                (m, k), n = sa, sb[1]
                request = {"op": "time", "a": list(sa), "b": list(sb), "ta": ta, "tb": tb}
                seconds = interleaved_medians(workers, request, args.rounds, args.min_seconds,
                                              args.pause)
                gflops = [2.0 * m * n * k / s / 1e9 for s in seconds]
                frac = f"{100 * gflops[0] / peak:7.1f}%" if peak else ""
                print(f"  {name:34} {gflops[0]:9.1f} {gflops[1]:9.1f} {gflops[2]:9.1f}"
                      f" {gflops[0] / gflops[1]:6.2f} {gflops[0] / gflops[2]:8.2f} {frac:>8}",
                      flush=True)
        finally:
            for w in workers:
                w.close()


if __name__ == "__main__":
    main()
